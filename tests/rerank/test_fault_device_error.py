"""A device (CUDA) error mid-run costs a restart of one scoring actor, not the night's run.

After a CUDA error (an illegal memory access, a GPU fault) a process's CUDA context is unusable: every later
call in it fails. The scoring actor therefore ends itself; Ray starts it again in a fresh process and Ray Data
retries its batches there. The engine's fault hook (ettin_batch.engine.faults) raises torch.AcceleratorError,
the error PyTorch raises for a CUDA error, in one forward pass of the run."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from ettin_batch import rerank
from ettin_batch.config import RerankConfig
from ettin_batch.engine.faults import FaultHooks
from helpers import TINY

from .faults import accounting, injected, make_shards, record, write_local


def test_a_device_error_restarts_its_actor_and_every_pair_is_still_scored_once(tmp_path, ray_session):
    shards = make_shards(files=3, pairs_per_file=100, seed=5)
    write_local(shards, tmp_path / "in")
    marker = tmp_path / "device-error"
    with injected(FaultHooks(device_error_marker=str(marker))):
        result = rerank(RerankConfig.of(input=[str(tmp_path / "in")], output=str(tmp_path / "out"), model=TINY,
                                        batch_size=50, progress=False))

    pid = int(marker.read_text())  # the process the error happened in
    figures = accounting(pa.concat_tables(shards), pq.read_table(tmp_path / "out" / "scores"))
    m = result.manifest
    record("test_a_device_error_restarts_its_actor_and_every_pair_is_still_scored_once",
           {"fault": "torch.AcceleratorError (a CUDA error) in one forward pass", **figures,
            "device_errors": m["device_errors"], "model_pairs": m["model_pairs"]})
    assert figures == {"in": 300, "out": 300, "duplicates": 0, "lost": 0, "unknown": 0}
    assert m["device_errors"] == 1 and m["counts"]["rejected"] == 0
    assert "1 scoring actor(s) hit a device (CUDA) error and were started again" in result.summary()
    assert not os.path.exists(f"/proc/{pid}/status") or "State:\tZ" in open(f"/proc/{pid}/status").read()
