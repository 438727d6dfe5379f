"""ettin-batch: offline batch reranking with Ettin cross-encoders on Ray Data."""

__version__ = "0.1.0"
