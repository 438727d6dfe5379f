"""Incremental re-scoring: `--reuse` with 5% of pairs changed against a full run, same pairs, same model.

    python benchmarks/bench_rerank_incremental.py [--pairs 50000] [--changed 0.05] [--model random:ettin-17m]

1. night 1: writes the pairs as Parquet shards (ettin_batch.sample_data, seeded) and reranks them;
2. night 2: the same shards with `--changed` of the rows' documents edited (seeded, spread over
   every shard and query);
3. times, each as a fresh `ettin-batch rerank` process exactly as a user runs it (its own local
   Ray): night 2 in full, then night 2 with `--reuse` night 1, and checks the two outputs agree
   (every pair's score within 1e-4, the same top-k ids).

Target (issue 5): the incremental run's wall time <= 15% of the full run's. Workers run at
niceness 0 (see bench_rerank_overhead.py). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))


def _rerank(args, data: str, out: str, *extra: str) -> tuple[float, dict]:
    # A fresh folder: an unfinished one (an interrupted earlier run) would be resumed, not rerun.
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "ettin_batch.cli", "rerank", "--input", data, "--output", out, "--model",
           args.model, "--overwrite", "--no-progress", "--gpus-per-actor", "0", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=sys.stderr, env={**os.environ, "RAY_worker_niceness": "0"})
    command_s = time.perf_counter() - start
    with open(os.path.join(out, "_SUCCESS.json")) as f:
        return command_s, json.load(f)


def _edit(src: str, dst: str, fraction: float, seed: int) -> int:
    """Copy every shard, appending a word to `fraction` of the documents; returns how many changed."""
    rng = np.random.default_rng(seed)
    os.makedirs(dst, exist_ok=True)
    changed = 0
    for name in sorted(os.listdir(src)):
        table = pq.read_table(os.path.join(src, name))
        pick = rng.random(table.num_rows) < fraction
        changed += int(pick.sum())
        docs = pc.if_else(pa.array(pick), pc.binary_join_element_wise(table["document"], "edited", " "),
                          table["document"])
        pq.write_table(table.set_column(table.schema.get_field_index("document"), "document", docs),
                       os.path.join(dst, name))
    return changed


def _scores(out: str) -> pa.Table:
    return pq.read_table(os.path.join(out, "scores"), columns=["query_id", "doc_id", "score"]).sort_by(
        [("query_id", "ascending"), ("doc_id", "ascending")])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=50_000)
    p.add_argument("--changed", type=float, default=0.05)
    p.add_argument("--model", default="random:ettin-17m")
    p.add_argument("--doc-words", type=int, nargs=2, default=(10, 60))
    p.add_argument("--work", default=os.path.join(HERE, "_work", "incremental"))
    args = p.parse_args()

    from ettin_batch.sample_data import write_sample

    shutil.rmtree(args.work, ignore_errors=True)
    night1, night2 = os.path.join(args.work, "night1"), os.path.join(args.work, "night2")
    candidates = 20
    write_sample(night1, queries=args.pairs // candidates, candidates=candidates, shards=8,
                 doc_words=tuple(args.doc_words))
    changed = _edit(night1, night2, args.changed, seed=1)

    out1, full, inc = (os.path.join(args.work, n) for n in ("out-night1", "out-full", "out-incremental"))
    first_s, _ = _rerank(args, night1, out1)
    full_s, full_m = _rerank(args, night2, full)
    inc_s, inc_m = _rerank(args, night2, inc, "--reuse", out1)

    a, b = _scores(full), _scores(inc)
    same_pairs = a["query_id"].equals(b["query_id"]) and a["doc_id"].equals(b["doc_id"])
    max_diff = float(np.max(np.abs(a["score"].to_numpy() - b["score"].to_numpy()))) if same_pairs else None
    topk = [pq.read_table(os.path.join(o, "topk"), columns=["query_id", "rank", "doc_id"]).sort_by(
        [("query_id", "ascending"), ("rank", "ascending")]) for o in (full, inc)]

    result = {
        "benchmark": "rerank_incremental", "pairs": full_m["counts"]["in"], "changed": changed,
        "model": args.model, "night1_wall_s": round(first_s, 1),
        "full_wall_s": full_m["wall_time_s"], "full_command_s": round(full_s, 1),
        "incremental_wall_s": inc_m["wall_time_s"], "incremental_command_s": round(inc_s, 1),
        "ratio_incremental_over_full": round(inc_m["wall_time_s"] / full_m["wall_time_s"], 3),
        "incremental_model_pairs": inc_m["model_pairs"], "pairs_reused": inc_m["reuse"]["pairs_reused"],
        "outputs_agree": bool(same_pairs and max_diff is not None and max_diff <= 1e-4 and topk[0].equals(topk[1])),
        "max_abs_score_diff": max_diff,
        "cpus": os.cpu_count(), "machine": platform.machine(), "load_avg_after": os.getloadavg(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
