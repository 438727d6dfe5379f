"""The scoring engine: one process, one device, no Ray.

`Reranker` (and torch with it) is imported on first use, so the job's tokenize workers,
which need only `PairTokenizer` and `resolve_model`, start without loading torch.
"""

from .loading import ModelLoadError, ResolvedModel, resolve_model
from .tokenize import PairTokenizer, TokenizedPairs

__all__ = ["ModelLoadError", "PairTokenizer", "Reranker", "ResolvedModel", "TokenizedPairs", "resolve_model"]


def __getattr__(name: str):
    if name == "Reranker":
        from .reranker import Reranker

        return Reranker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
