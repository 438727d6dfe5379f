"""The Ray Data plan: read -> tokenize on CPU tasks -> score on an actor pool -> write, then top-k."""

from ettin_batch.pipeline.job import rerank
from ettin_batch.pipeline.manifest import RunResult

__all__ = ["RunResult", "rerank"]
