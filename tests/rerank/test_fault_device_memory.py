"""A batch too large for device memory is split and retried rather than failing the job.

The engine's fault hook (ettin_batch.engine.faults) makes every forward pass over more than 400
tokens raise torch.OutOfMemoryError, as a device without room for it would; the job's batches
hold about 1,700 tokens (the CPU token budget is 2,048), so each is halved until it fits."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ettin_batch.config import RerankConfig
from ettin_batch.engine.faults import FaultHooks
from ettin_batch import rerank

from helpers import TINY
from .faults import accounting, injected, make_shards, record, write_local

OOM_ABOVE_TOKENS = 400


def test_batches_that_run_out_of_device_memory_are_halved_and_every_pair_is_scored_once(
        tmp_path, ray_session, reference_reranker):
    shards = make_shards(files=2, pairs_per_file=150, seed=7)
    write_local(shards, tmp_path / "in")
    with injected(FaultHooks(oom_above_tokens=OOM_ABOVE_TOKENS)):
        result = rerank(RerankConfig.of(input=[str(tmp_path / "in")], output=str(tmp_path / "out"), model=TINY,
                                     batch_size=50, progress=False))

    inputs = pa.concat_tables(shards)
    scores = pq.read_table(tmp_path / "out" / "scores")
    figures = accounting(inputs, scores)
    m = result.manifest
    record("test_batches_that_run_out_of_device_memory_are_halved_and_every_pair_is_scored_once",
           {"fault": f"torch.OutOfMemoryError for every forward pass over {OOM_ABOVE_TOKENS} tokens", **figures,
            "oom_splits": m["oom_splits"], "model_pairs": m["model_pairs"]})
    assert figures == {"in": 300, "out": 300, "duplicates": 0, "lost": 0, "unknown": 0}
    assert m["oom_splits"] > 0 and m["model_pairs"] == 300  # split and retried, nothing scored twice
    expected = reference_reranker.score(inputs["query"].to_pylist(), inputs["document"].to_pylist())
    want = dict(zip(zip(inputs["query_id"].to_pylist(), inputs["doc_id"].to_pylist()), expected))
    got = dict(zip(zip(scores["query_id"].to_pylist(), scores["doc_id"].to_pylist()), scores["score"].to_pylist()))
    assert max(abs(got[k] - want[k]) for k in want) < 1e-5
    assert np.ptp(expected) > 0  # the comparison is not between constants
