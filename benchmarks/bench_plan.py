"""`ettin-batch plan`'s forecast against real runs of the job on this machine (issue 14).

    python benchmarks/bench_plan.py --models random:ettin-tiny random:ettin-17m --pairs 20000 200000

For each model:
  1. Ray's fixed start-up, measured: the job (`ettin-batch rerank`, fresh process, its own local Ray)
     on FIXED_PAIRS pairs; nearly all of its wall time is start-up (Ray, actor, imports, model load,
     top-k, shutdown), and it is what the forecast leaves out and reports apart.
  2. For each size: `ettin-batch plan --gpus 0 --no-fidelity --json` (a forecast for CPU scoring on
     this machine's cores) in a fresh process, then the job on the same input right after it.

Compared: the forecast's wall time (without start-up) against the job's wall time minus the fixed
run's, and the forecast's start-up estimate against the fixed run. Target: within 25%.

`--flags` passes the same extra flags to both (e.g. `--cpus-per-actor 1`: a one-thread scoring actor,
the tokenize tasks on the other core).

Input: the benchmark workload (benchmarks/workload.py, `nq_like_pairs`: whatever text and lengths it
gives), 20 candidates per query, shards of 50,000 pairs in row groups of 10,000. The job runs as in
bench_rerank_scale.py (workers at niceness 0, --gpus-per-actor 0). Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_rerank_scale import run_job  # noqa: E402

FIXED_PAIRS = 200
CANDIDATES = 20
SHARD_PAIRS, ROW_GROUP = 50_000, 10_000


def write_input(folder: str, n: int, seed: int = 0) -> str:
    """`n` workload pairs as Parquet shards (written once; reused while the _DONE marker is there)."""
    from workload import nq_like_pairs

    if os.path.exists(os.path.join(folder, "_DONE")):
        return folder
    os.makedirs(folder, exist_ok=True)
    queries, documents = nq_like_pairs(n, seed)
    for shard, start in enumerate(range(0, n, SHARD_PAIRS)):
        rows = range(start, min(n, start + SHARD_PAIRS))
        pq.write_table(pa.table({
            "query_id": pa.array([i // CANDIDATES for i in rows], pa.int64()),
            # One text per query: the first of its pairs (the workload may give each pair its own).
            "query": [queries[i // CANDIDATES * CANDIDATES] for i in rows],
            "doc_id": [f"d{i:09d}" for i in rows],
            "document": [documents[i] for i in rows],
        }), os.path.join(folder, f"part-{shard:05d}.parquet"), row_group_size=ROW_GROUP)
    open(os.path.join(folder, "_DONE"), "w").close()
    return folder


def run_plan(data: str, model: str, sample: int, flags: list[str]) -> tuple[dict, float]:
    """The plan's JSON and the seconds the command took, in a fresh process like a user's."""
    cmd = [sys.executable, "-m", "ettin_batch.cli", "plan", "--input", data, "--model", model, "--gpus", "0",
           "--no-fidelity", "--json", "--sample", str(sample), *flags]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"plan failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout), time.perf_counter() - start


def job(data: str, out: str, model: str, batch_size: int, flags: list[str]) -> dict:
    """The job's wall time (command start to exit) and its manifest's phases."""
    result = run_job(data, out, model, batch_size, flags)
    with open(os.path.join(out, "_SUCCESS.json")) as f:
        manifest = json.load(f)
    return {**result, "phases_s": manifest["phases_s"], "model_seconds": manifest["model_seconds"],
            "tokens": manifest["tokens"]}


def compare(model: str, n: int, plan: dict, plan_s: float, run: dict, fixed: dict, flags: list[str]) -> dict:
    f, measured = plan["forecast"], plan["measured"]
    variable = run["wall_s"] - fixed["wall_s"]
    return {
        "benchmark": "plan_forecast", "model": model, "pairs": n, "flags": " ".join(flags),
        "forecast_wall_s": f["wall_s"], "forecast_model_s": f["model_s"], "forecast_cpu_s": f["cpu_s"],
        "forecast_startup_s": f["startup_s"], "bottleneck": f["bottleneck"],
        "measured_model_pairs_per_s": measured["model"]["pairs_per_s"],
        "measured_cpu_stage_pairs_per_s_per_core": measured["cpu_stage"]["pairs_per_s_per_core"],
        "tokens_per_pair_median": plan["input"]["tokens_per_pair"]["median"],
        "plan_command_s": round(plan_s, 1), "plan_load_1m": measured["machine"]["load_average_1m"],
        "job_wall_s": run["wall_s"], "fixed_run_wall_s": fixed["wall_s"], "job_wall_minus_fixed_s": round(variable, 1),
        "job_phases_s": run["phases_s"], "job_model_seconds": run["model_seconds"],
        "forecast_error": round(f["wall_s"] / variable - 1, 3) if variable > 0 else None,
        "forecast_with_startup_error": round((f["wall_s"] + f["startup_s"]) / run["wall_s"] - 1, 3),
        "load_after": os.getloadavg()[0],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["random:ettin-tiny", "random:ettin-17m"])
    p.add_argument("--pairs", type=int, nargs="+", default=[20_000, 200_000])
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--flags", default="", help="extra flags for both plan and rerank, e.g. '--cpus-per-actor 1'")
    p.add_argument("--work", default=os.path.join(HERE, "_work", "plan"))
    args = p.parse_args()
    flags = args.flags.split()
    for model in args.models:
        tag = model.replace(":", "-")
        fixed_in = write_input(os.path.join(args.work, f"in-{FIXED_PAIRS}"), FIXED_PAIRS)
        fixed = job(fixed_in, os.path.join(args.work, f"out-{tag}-fixed"), model, args.batch_size, flags)
        print(json.dumps({"benchmark": "plan_fixed_startup", "model": model, "pairs": FIXED_PAIRS,
                          "flags": args.flags, **fixed}), flush=True)
        for n in args.pairs:
            data = write_input(os.path.join(args.work, f"in-{n}"), n)
            plan, plan_s = run_plan(data, model, args.sample, flags)
            run = job(data, os.path.join(args.work, f"out-{tag}-{n}"), model, args.batch_size, flags)
            print(json.dumps(compare(model, n, plan, plan_s, run, fixed, flags)), flush=True)


if __name__ == "__main__":
    main()
