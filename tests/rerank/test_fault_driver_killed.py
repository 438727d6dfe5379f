"""The driver is killed (SIGKILL) mid-job: the same command run again resumes, scoring only the
groups of input files that had not finished, and the output equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

from ettin_batch.cli import main
from ettin_batch.config import RerankConfig
from ettin_batch import rerank

from helpers import TINY
from .faults import accounting, make_shards, record, write_local

GROUP_ROWS = 200  # one input file per group: four groups in the kill test
# The first attempt's driver: blocks of 16 KiB (these small files would be one block of the 16 MiB a real run
# reads, so every group would finish at once) and a slow model, 0.3 s a batch of 50 (about 1.2 s a group).
SLOW_DRIVER = """
import sys
from ettin_batch.cli import main
from ettin_batch.engine.faults import FaultHooks
from ettin_batch.pipeline import run
from faults import injected
run.BLOCK_BYTES = 16 * 1024
with injected(FaultHooks(slow_forward_seconds=0.3)):
    sys.exit(main(sys.argv[1:]))
"""


def _by_pair(table: pa.Table) -> dict:
    return dict(zip(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist()), table["score"].to_pylist()))


def test_a_killed_driver_resumes_where_it_stopped_and_ends_equal_to_an_uninterrupted_run(tmp_path, ray_session):
    import ray

    shards = make_shards(files=4, pairs_per_file=200, seed=5)
    write_local(shards, tmp_path / "in")
    reference = rerank(RerankConfig.of(input=[str(tmp_path / "in")], output=str(tmp_path / "reference"), model=TINY,
                                    batch_size=50, progress=False, group_rows=GROUP_ROWS))

    out = tmp_path / "out"
    argv = ["rerank", "--input", str(tmp_path / "in"), "--output", str(out), "--model", TINY,
            "--batch-size", "50", "--no-progress", "--group-rows", str(GROUP_ROWS)]
    # The first attempt is its own driver process (SLOW_DRIVER) on the same Ray cluster, so it can be killed
    # between the second group's marker and the third's.
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address,
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
    driver = subprocess.Popen([sys.executable, "-c", SLOW_DRIVER, *argv], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 400
    while driver.poll() is None and time.monotonic() < deadline:
        if len(list((out / "_done").glob("*.json"))) >= 2:
            driver.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    driver.wait(timeout=60)
    stderr = driver.stderr.read().decode(errors="replace")[-2000:]
    assert driver.returncode == -signal.SIGKILL, f"the driver was not killed mid-job: {driver.returncode} {stderr}"
    done_at_kill = sorted(p.stem for p in (out / "_done").glob("*.json"))
    assert not (out / "_SUCCESS.json").exists() and len(done_at_kill) < 4
    partial_rows = sum(pq.read_metadata(f).num_rows for f in (out / "scores").rglob("*.parquet")
                       if f.parent.name not in done_at_kill)

    assert main(argv) == 0  # the same command again
    manifest = json.loads((out / "_SUCCESS.json").read_text())
    resume = manifest["resume"]
    assert resume["groups"] == 4 and resume["groups_skipped"] == len(done_at_kill)
    assert resume["pairs_skipped"] == 200 * len(done_at_kill)
    assert manifest["model_pairs"] == 800 - resume["pairs_skipped"]  # nothing finished was scored again
    assert manifest["pairs_scored_this_run"] == 800 - resume["pairs_scored_earlier"] == 800 - resume["pairs_skipped"]

    scores, expected = pq.read_table(out / "scores"), pq.read_table(tmp_path / "reference" / "scores")
    figures = accounting(pa.concat_tables(shards), scores)
    record("test_a_killed_driver_resumes_where_it_stopped_and_ends_equal_to_an_uninterrupted_run",
           {"fault": "driver SIGKILLed after 2 of 4 file groups finished, same command rerun", **figures,
            "groups_done_at_kill": len(done_at_kill), "pairs_skipped_on_resume": resume["pairs_skipped"],
            "pairs_scored_on_resume": manifest["model_pairs"],
            "partial_rows_discarded": partial_rows})
    assert figures == {"in": 800, "out": 800, "duplicates": 0, "lost": 0, "unknown": 0}
    got, want = _by_pair(scores), _by_pair(expected)
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in want) < 1e-5
    topk = pq.read_table(out / "topk").sort_by([("query_id", "ascending"), ("rank", "ascending")])
    ref_topk = pq.read_table(tmp_path / "reference" / "topk").sort_by([("query_id", "ascending"), ("rank", "ascending")])
    assert topk.select(["query_id", "rank", "doc_id"]).to_pylist() == ref_topk.select(["query_id", "rank", "doc_id"]).to_pylist()
    assert reference.counts["scored"] == 800


def test_an_unfinished_run_with_other_settings_is_replaced_not_mixed(tmp_path, ray_session):
    write_local(make_shards(files=2, pairs_per_file=20, seed=6), tmp_path / "in")
    out = tmp_path / "out"
    stale = out / "scores" / "g0000-stale"
    stale.mkdir(parents=True)
    pq.write_table(pa.table({"query_id": ["old"], "doc_id": ["old"], "score": pa.array([1.0], pa.float32())}),
                   stale / "part.parquet")
    (out / "_run.json").write_text(json.dumps({"fingerprint": {"model": "some-other-model"}}))
    result = rerank(RerankConfig.of(input=[str(tmp_path / "in")], output=str(out), model=TINY, progress=False,
                                 group_rows=GROUP_ROWS))
    assert result.manifest["resume"]["groups_skipped"] == 0
    assert "old" not in pq.read_table(out / "scores")["query_id"].to_pylist()
    assert result.counts["scored"] == 40


def test_a_resumed_runs_rate_counts_only_the_pairs_it_scored(tmp_path, ray_session):
    import time

    write_local(make_shards(files=2, pairs_per_file=20, seed=7), tmp_path / "in")
    out = tmp_path / "out"
    config = RerankConfig.of(input=[str(tmp_path / "in")], output=str(out), model=TINY, progress=False, group_rows=20)
    first = rerank(config).manifest
    assert first["pairs_scored_this_run"] == 40 and first["rate_basis"].startswith("this run only")
    # As if the run had stopped after its first group: the second group's marker and the success file gone.
    (out / "_SUCCESS.json").unlink()
    last = max((out / "_done").glob("*.json"))
    last.unlink()

    started = time.perf_counter()
    result = rerank(config)
    elapsed = time.perf_counter() - started
    m = result.manifest
    assert m["resume"]["groups_skipped"] == 1 and m["resume"]["pairs_scored_earlier"] == 20
    assert m["counts"]["scored"] == 40 and m["pairs_scored_this_run"] == 20 == m["model_pairs"]
    assert m["pairs_per_s"] == round(20 / m["wall_time_s"], 1) and m["wall_time_s"] <= elapsed
    assert "this run scored 20; 20 were scored by the run it resumed" in result.summary()
