"""How fast can the job feed one scoring actor whose model is as fast as a GPU? Measured on a CPU.

On an H200 the 17M shape scores ~45,000 pairs/s model-only (RESULTS.md): ~23 ms for a Ray batch of
1,024 pairs. What else one scoring actor does per call runs on the CPU while the GPU may wait: Ray
Data handing it the block and taking the output back, the attempt count (a call to the stats actor),
Arrow to token arrays, hashing and packing. This times it with the job's own ScorePairs actor and a
stand-in for the GPU: each forward pass packs its batch as on a GPU, then queues its time on one
simulated device (len(batch) / --gpu-pairs-per-s) and returns at once, as kernel launches do; the
engine's call waits for the device at its end, as its one copy back to the host does (a sleep
releases the GIL, as a wait on CUDA does). The input blocks come tokenized, so the tokenize tasks
(which scale with the node's CPUs) are not what is timed; the output goes through a Parquet write.
Each block is one actor task of several calls (--block-pairs; the job's 16 MiB blocks hold ~20,000
tokenized pairs), as in the job.

Reports, per Ray batch size and per way the actor takes its calls (MODES), pairs/s through the actor
and the share of the device's time it was busy (1.0: the actor's own work hides nothing from the
GPU), and, for one call at a time, the median milliseconds per call in the call, the device, and
between calls (Ray Data's side).

    python benchmarks/bench_actor_feed.py [--pairs 200000] [--gpu-pairs-per-s 45000] [--batch-sizes 1024,4096]
        [--block-pairs 16384] [--modes serial,prefetch,job-gpu]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workload import nq_like_pairs  # noqa: E402

from ettin_batch.config import ScoringConfig  # noqa: E402
from ettin_batch.pipeline.rejects import RejectsDir  # noqa: E402
from ettin_batch.pipeline.score import RunStats, ScorePairs  # noqa: E402
from ettin_batch.pipeline.tokenize_stage import Tokenize, canonical  # noqa: E402

MODEL = "random:ettin-17m"  # its tokenizer and a real shape; the stand-in replaces only the forward pass
GPU_TOKEN_BUDGET = 131_072  # the engine's default for the 17M shape on CUDA (reranker.default_token_budget)


class GpuStandIn(ScorePairs):
    """The job's scoring actor with the simulated device (module docstring). Adds to each row, for its call:
    `t_done` (time.time() at the call's end), `call_s` (the call), `gpu_s` (device time it queued) and `gap_s`
    (since the last call's end: Ray Data's work between calls, when calls do not overlap)."""

    def __init__(self, *, gpu_pairs_per_s: float, **kwargs):
        import torch

        from ettin_batch.engine.packing import PackedBatch

        super().__init__(**kwargs)
        engine, self.last_end, self.call = self.reranker, None, threading.local()
        device, free_at = threading.Lock(), [0.0]  # work from any thread queues as on one CUDA stream
        score_tokens = engine.score_tokens

        def forward(pairs):
            PackedBatch.from_pairs(pairs, engine.device)
            seconds = len(pairs) / gpu_pairs_per_s
            with device:
                free_at[0] = self.call.until = max(time.perf_counter(), free_at[0]) + seconds
            self.call.gpu_s += seconds
            return torch.zeros(len(pairs))

        def synced(pairs, ties=None):
            self.call.until = 0.0
            scores = score_tokens(pairs, ties)
            time.sleep(max(0.0, self.call.until - time.perf_counter()))
            return scores

        engine._forward, engine.score_tokens = forward, synced

    def __call__(self, batch: pa.Table) -> pa.Table:
        start, self.call.gpu_s = time.perf_counter(), 0.0
        gap = start - self.last_end if self.last_end is not None else float("nan")
        out = super().__call__(batch)
        self.last_end = time.perf_counter()
        figures = {"t_done": time.time(), "call_s": self.last_end - start, "gpu_s": self.call.gpu_s, "gap_s": gap}
        for name, value in figures.items():
            out = out.append_column(name, pa.array(np.full(out.num_rows, value)))
        return out


def tokenized_blocks(pairs: int, block: int) -> list[pa.Table]:
    """`pairs` real-text pairs through the job's CPU stage, as blocks of `block` rows (10,240 distinct
    pairs, repeated with fresh ids: packing and hashing cost the same on a repeat)."""
    base = 10_240
    queries, documents = nq_like_pairs(base)
    step = Tokenize(ScoringConfig(model=MODEL), RejectsDir(tempfile.mkdtemp(), pafs.LocalFileSystem()))
    one = step(canonical(pa.table({"query_id": [f"q{i // 20}" for i in range(base)], "query": queries,
                                   "doc_id": [f"d{i}" for i in range(base)], "document": documents}),
                         rename={}, header=b"bench"))
    table = pa.concat_tables([one] * -(-pairs // base)).slice(0, pairs)
    ids = pa.array([f"d{i}" for i in range(pairs)])
    table = table.set_column(table.column_names.index("doc_id"), "doc_id", ids)
    return [table.slice(i, block) for i in range(0, pairs, block)]


# How the actor takes its calls: one at a time (the job's CPU actors); Ray Data preparing the next call beside
# the running one while the UDF still takes one call at a time (the job's GPU actors from fb0552e to 2026-12-07);
# as the job's GPU actors do now (pipeline.run.actor_pool: two calls in threads, the model under ScorePairs' lock).
MODES = ("serial", "prefetch", "job-gpu")


def pool(mode: str):
    from ray.data import ActorPoolStrategy

    from ettin_batch.pipeline.run import Resources, actor_pool

    if mode == "prefetch":
        return ActorPoolStrategy(size=1, max_concurrent_calls_per_actor=2, max_tasks_in_flight_per_actor=8)
    return actor_pool(Resources(1, 1.0, 1.0, 1.0, "cuda", None, 0, calls_per_actor=1 if mode == "serial" else 2))


def run(blocks: list[pa.Table], batch_size: int, mode: str, gpu_pairs_per_s: float, out: Path) -> dict:
    import ray

    scoring = ScoringConfig(model=MODEL, dtype="float32", max_tokens_per_batch=GPU_TOKEN_BUDGET)
    ds = ray.data.from_arrow(blocks).map_batches(
        GpuStandIn, batch_format="pyarrow", batch_size=batch_size, compute=pool(mode),
        num_cpus=1, fn_constructor_kwargs=dict(
            gpu_pairs_per_s=gpu_pairs_per_s, scoring=scoring, device="cpu", threads=1, stats=RunStats.remote(),
            rejects=RejectsDir(str(out / "rejects"), pafs.LocalFileSystem())))
    start = time.perf_counter()
    ds.write_parquet(str(out / "scores"))
    wall = time.perf_counter() - start
    calls = pq.read_table(out / "scores", columns=["t_done", "call_s", "gpu_s", "gap_s"])
    pairs = calls.num_rows
    calls = calls.group_by("t_done").aggregate([("t_done", "count"), ("call_s", "max"), ("gpu_s", "max"),
                                                ("gap_s", "max")]).sort_by("t_done")
    done, per_call = calls["t_done"].to_numpy(), calls["t_done_count"].to_numpy()
    pairs_per_s = (pairs - per_call[0]) / (done[-1] - done[0])  # from the first call's end to the last's
    host = calls["call_s_max"].to_numpy() - calls["gpu_s_max"].to_numpy()
    serial = mode != "job-gpu"  # with calls in threads, a call's time includes waiting for the other's model run
    median_ms = {"gpu": round(1e3 * float(np.median(calls["gpu_s_max"].to_numpy())), 2)}
    if serial:
        median_ms.update(in_call_host=round(1e3 * float(np.median(host)), 2),
                         between_calls=round(1e3 * float(np.nanmedian(calls["gap_s_max"].to_numpy())), 2))
    return {"batch_size": batch_size, "block_pairs": blocks[0].num_rows, "mode": mode, "pairs": pairs,
            "calls": len(done), "pairs_per_s": round(pairs_per_s), "gpu_busy": round(pairs_per_s / gpu_pairs_per_s, 3),
            "median_ms": median_ms, "wall_s": round(wall, 1)}


def main() -> None:
    import ray

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=200_000)
    p.add_argument("--gpu-pairs-per-s", type=float, default=45_000.0, help="the stand-in GPU's model-only rate")
    p.add_argument("--batch-sizes", default="1024,4096")
    p.add_argument("--block-pairs", type=int, default=16_384,
                   help="pairs per block reaching the actor, each block one actor task (the job's 16 MiB blocks hold "
                        "~20,000 tokenized real-text pairs); at least the largest batch size")
    p.add_argument("--modes", default=",".join(MODES), help="how the actor takes its calls: " + ", ".join(MODES))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="append each result as a JSON line to this file")
    args = p.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    blocks = tokenized_blocks(args.pairs, max(args.block_pairs, *sizes))
    here = str(Path(__file__).resolve().parent)  # the actors unpickle GpuStandIn from this module
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    for repeat in range(args.repeats):
        for size, mode in [(size, mode) for size in sizes for mode in args.modes.split(",")]:
            with tempfile.TemporaryDirectory() as out:
                result = {**run(blocks, size, mode, args.gpu_pairs_per_s, Path(out)), "repeat": repeat,
                          "gpu_pairs_per_s": args.gpu_pairs_per_s, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
            print(json.dumps(result), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
