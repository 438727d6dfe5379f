"""The scoring engine: one process, one device, no Ray.

`Reranker` (and torch with it) is imported on first use, so the job's driver, which needs only
`resolve_model`, never loads torch. (The tokenize workers load it anyway: transformers'
AutoTokenizer imports it.)
"""

from .loading import ModelLoadError, ResolvedModel, resolve_model
from .tokenize import PairTokenizer, TokenizedPairs

__all__ = ["ModelLoadError", "PairTokenizer", "Reranker", "ResolvedModel", "TokenizedPairs", "resolve_model"]


def __getattr__(name: str):
    if name == "Reranker":
        from .reranker import Reranker

        return Reranker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
