"""The engine and the rerank job on the same pairs, one GPU node: 17M, 150M and 1B (issue 10, part 3).

For each random:<shape> (real shape, real-vocabulary tokenizer, random weights):
1. build the model (timed: the 1B build once ran past the GPU run's cap);
2. the engine in this process on the first `engine` pairs: model only (`score_tokens` on pairs
   tokenized beforehand) and end to end (`score`, tokenizing included);
3. `ettin-batch rerank` (python -m ettin_batch.cli) on a local Ray that gets the node's CPUs and
   GPU, over all `job` pairs written as Parquet; its _SUCCESS.json (pairs/s, phases_s,
   model_busy) is kept whole.

Pairs: benchmarks/workload.py's real text (a base of --base pairs, repeated with fresh ids up to
each size; repeats keep the length mix and tokenize like any text, the job sees them as new
pairs). Writes <out>/figures.json and <out>/manifests.json after every step, so a run cut short
keeps what it measured. --dry runs it all on the CPU with random:ettin-tiny and tiny sizes: it
checks the script, it measures nothing.

    python benchmarks/bench_gpu_job.py --out DIR [--shapes ettin-17m,ettin-150m,ettin-1b] [--dry]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workload import nq_like_pairs  # noqa: E402

# pairs: (engine, job, job timeout s). Sized so the whole run fits 8 minutes on an H200 node
# (~6 min expected: the 17M job at ~35,000 pairs/s, 150M ~4,000, 1B ~1,000, plus ~20 s of fixed
# cost each: Ray start, actor start, model load).
SIZES = {"ettin-17m": (50_000, 2_000_000, 200), "ettin-150m": (20_000, 200_000, 120),
         "ettin-1b": (4_000, 40_000, 120), "ettin-tiny": (200, 1_000, 300)}
GPU_SHAPES = "ettin-17m,ettin-150m,ettin-1b"


def pairs_table(base: tuple[list[str], list[str]], n: int, per_query: int = 20) -> pa.Table:
    """`n` pairs: the base pairs repeated, each repeat with its own query and doc ids."""
    queries, documents = base
    index = np.arange(n) % len(queries)
    return pa.table({
        "query_id": pa.array(np.arange(n) // per_query, pa.int64()),
        "query": pa.array(queries).take(pa.array(index)),
        "doc_id": pa.array(np.arange(n), pa.int64()),
        "document": pa.array(documents).take(pa.array(index)),
    })


def write_input(table: pa.Table, folder: Path, files: int = 16) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = -(-table.num_rows // files)
    for i in range(files):
        pq.write_table(table.slice(i * rows, rows), folder / f"part-{i:02d}.parquet")


def run_engine(shape: str, table: pa.Table, device: str) -> dict:
    import torch

    from ettin_batch import Reranker

    def synced(fn) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    rr = Reranker.from_pretrained(f"random:{shape}", device=device, max_length=512)
    q, d = table.column("query").to_pylist(), table.column("document").to_pylist()
    tokenize_s = synced(lambda: rr.tokenizer(q, d))  # one process, one core, its first pass
    pairs = rr.tokenizer(q, d)
    rr.score_tokens(pairs.take(np.arange(min(len(q), 2000))))  # warm-up: kernels, allocator
    keys = pairs.content_keys()  # the packing keys, given as the job gives its fingerprints: not timed
    # Best of two: the first pass over new lengths can pay per-shape set-up.
    model_s = min(synced(lambda: rr.score_tokens(pairs, keys)) for _ in range(2))
    e2e_s = synced(lambda: rr.score(q, d))
    n = len(q)
    return {"pairs": n, "tokens_per_pair_mean": round(float(pairs.lengths.mean()), 1),
            "tokenize_first_pass_pairs_per_s": round(n / tokenize_s), "model_only_pairs_per_s": round(n / model_s),
            "end_to_end_pairs_per_s": round(n / e2e_s), "fast_tokenizer_path": rr.tokenizer.fast_path or "on",
            "max_tokens_per_batch": rr.max_tokens_per_batch}


def run_job(shape: str, input_dir: Path, output_dir: Path, dry: bool, timeout: float) -> dict:
    """`ettin-batch rerank` as a user runs it, in its own process and local Ray."""
    cmd = [sys.executable, "-m", "ettin_batch.cli", "rerank", "--input", str(input_dir), "--output", str(output_dir),
           "--model", f"random:{shape}", "--top-k", "10", "--overwrite", "--no-progress",
           "--group-rows", "100000000"]  # one group: one actor-pool start, as one long job has
    if dry:
        cmd += ["--gpus-per-actor", "0"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        rc, tail = "timeout", str(exc.stdout or "")[-3000:]
    wall = time.perf_counter() - start
    success = output_dir / "_SUCCESS.json"
    manifest = json.loads(success.read_text()) if success.exists() else None
    return {"rc": rc, "command_wall_s": round(wall, 1), "manifest": manifest, "output_tail": tail}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default=None)
    ap.add_argument("--dry", action="store_true", help="CPU, random:ettin-tiny, tiny sizes: checks, measures nothing")
    ap.add_argument("--base", type=int, default=10_000, help="distinct real-text pairs the sizes repeat")
    ap.add_argument("--work", default="/tmp/ettin-gpu-job", help="scratch folder for inputs and outputs")
    args = ap.parse_args()
    shapes = (args.shapes or ("ettin-tiny" if args.dry else GPU_SHAPES)).split(",")
    device = "cpu" if args.dry else "cuda"
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict = {"dry": args.dry, "device": device, "shapes": {}}
    manifests: dict = {}
    t = time.perf_counter()
    base = nq_like_pairs(min(args.base, 2_000) if args.dry else args.base, seed=0)
    figures["workload_s"] = round(time.perf_counter() - t, 1)
    for shape in shapes:
        engine_pairs, job_pairs, job_timeout = SIZES[shape]
        row = figures["shapes"][shape] = {}
        try:
            row["build_s"] = build_time(shape)
            table = pairs_table(base, job_pairs)
            write_input(table, work / shape / "in")
            row["engine"] = run_engine(shape, table.slice(0, engine_pairs), device)
            save(out, figures, manifests)
            job = run_job(shape, work / shape / "in", work / shape / "out", args.dry, job_timeout)
            manifests[shape] = job.pop("manifest")
            row["job"] = job | summarize(manifests[shape], row["engine"])
        except Exception as exc:  # keep the other shapes' figures
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        print(shape, json.dumps(row, default=str)[:2000], flush=True)
        save(out, figures, manifests)


def build_time(shape: str) -> float:
    from ettin_batch.engine.random_models import random_model_path

    start = time.perf_counter()
    random_model_path(f"random:{shape}")
    return round(time.perf_counter() - start, 1)


def summarize(manifest: dict | None, engine: dict) -> dict:
    """The job's pairs/s beside the engine's, from its manifest: over the whole command (wall) and
    over its scoring phase (read, tokenize, score, write, once Ray is up: the steady rate)."""
    if not manifest:
        return {}
    rate, phases = manifest.get("pairs_per_s"), manifest.get("phases_s") or {}
    scoring = manifest.get("pairs_scored_this_run", 0) / phases["scoring"] if phases.get("scoring") else None
    model = engine["model_only_pairs_per_s"]
    return {"pairs_per_s": rate, "scoring_phase_pairs_per_s": round(scoring) if scoring else None,
            "model_busy": manifest.get("model_busy"), "phases_s": phases,
            "vs_engine_model_only": round(rate / model, 3) if rate else None,
            "scoring_phase_vs_engine_model_only": round(scoring / model, 3) if scoring else None}


def save(out: Path, figures: dict, manifests: dict) -> None:
    (out / "figures.json").write_text(json.dumps(figures, indent=2, default=str))
    (out / "manifests.json").write_text(json.dumps(manifests, indent=2, default=str))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
