"""ettin-batch: offline batch reranking with Ettin cross-encoders on Ray Data."""

__version__ = "0.1.0"

__all__ = ["Reranker", "rerank", "__version__"]


def __getattr__(name):
    # Lazy, so `import ettin_batch` (the CLI, the Ray driver) does not pay for torch until it scores.
    if name == "Reranker":
        from .engine.reranker import Reranker

        return Reranker
    if name == "rerank":
        from .pipeline.rerank import rerank

        return rerank
    raise AttributeError(name)
