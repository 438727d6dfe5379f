"""The scoring engine: one process, one device, no Ray."""

from .loading import ModelLoadError, ResolvedModel, resolve_model
from .reranker import Reranker
from .tokenize import PairTokenizer, TokenizedPairs

__all__ = ["ModelLoadError", "PairTokenizer", "Reranker", "ResolvedModel", "TokenizedPairs", "resolve_model"]
