"""The scoring stage: a thin Ray actor around the engine's Reranker, one model per actor.

The actor only turns Arrow token columns into scores; packing, attention and the model
live in `ettin_batch.engine`, which runs and is tested without Ray.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import ray

from ettin_batch.engine.tokenize import IDS_COL, SPLIT_COL, TRUNC_COL

TOKEN_COLS = (IDS_COL, SPLIT_COL, TRUNC_COL)


@ray.remote(num_cpus=0)
class RunStats:
    """Totals the scoring actors report, so the driver can write tokens/s and the model info.

    Counts of rows come from the written files, not from here: a retried batch is counted
    twice here, never in the output.
    """

    def __init__(self):
        self.tokens = 0
        self.truncated = 0
        self.pairs = 0
        self.reused = 0
        self.model_seconds = 0.0
        self.info: dict | None = None

    def add(self, pairs: int, tokens: int, truncated: int, seconds: float, reused: int = 0) -> None:
        self.pairs += pairs
        self.reused += reused
        self.tokens += tokens
        self.truncated += truncated
        self.model_seconds += seconds

    def set_info(self, info: dict) -> None:
        if self.info is None:
            self.info = info

    def totals(self) -> dict:
        return {"pairs": self.pairs, "reused": self.reused, "tokens": self.tokens, "truncated": self.truncated,
                "model_seconds": self.model_seconds, "info": self.info}


class ScorePairs:
    """Ray Data callable class: a batch of tokenized pairs in, the same rows with `score` out."""

    def __init__(self, *, model: str, revision: str | None, dtype: str, max_length: int,
                 max_tokens_per_batch: int | None, attention: str, device: str, threads: int | None, stats):
        import time

        import torch

        from ettin_batch.engine import Reranker

        if threads:
            # Ray sets OMP_NUM_THREADS from the actor's CPU share, rounded down; use what was reserved.
            torch.set_num_threads(threads)
        self._time = time.perf_counter
        self.reranker = Reranker.from_pretrained(model, revision=revision, device=device, dtype=dtype,
                                                 max_length=max_length, max_tokens_per_batch=max_tokens_per_batch,
                                                 attention=attention)
        self.stats = stats
        self.stats.set_info.remote(self.reranker.info)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Score every row; in a --reuse run, only the rows whose `score` is still null."""
        from ettin_batch.engine.tokenize import TokenizedPairs
        from ettin_batch.pipeline.reuse import reused_mask

        out = batch.drop_columns([c for c in TOKEN_COLS if c in batch.column_names])
        reused = reused_mask(batch)
        if reused is None:
            todo = np.arange(batch.num_rows)
            scores = np.empty(batch.num_rows, np.float32)
        else:
            reused = reused.to_numpy(zero_copy_only=False)
            todo = np.flatnonzero(~reused)
            scores = batch.column("score").to_numpy(zero_copy_only=False).astype(np.float32)
            out = out.drop_columns(["score"])
        if len(todo):
            pairs = TokenizedPairs.from_arrow(batch.take(todo) if reused is not None else batch)
            start = self._time()
            scores[todo] = self.reranker.score_tokens(pairs)
            self.stats.add.remote(len(pairs), int(pairs.offsets[-1]), pairs.num_truncated, self._time() - start,
                                  reused=batch.num_rows - len(todo))
        elif batch.num_rows:
            self.stats.add.remote(0, 0, 0, 0.0, reused=batch.num_rows)
        return out.append_column("score", pa.array(scores, pa.float32()))


def actor_threads(cpus_per_actor: float) -> int:
    """Torch threads for a CPU actor that reserved `cpus_per_actor` logical CPUs."""
    return max(1, math.ceil(cpus_per_actor))
