"""GPU sizing for cluster/README.md: peak memory and speed by model size and token budget (< 6 min on one GPU).

For each random-weight Ettin shape and each `max_tokens_per_batch`:
  - peak GPU memory (torch.cuda.max_memory_allocated) scoring pairs that all fill max_length 512 (the worst case);
  - model-only pairs/s on NQ-like pairs (median ~170 tokens), bf16, the engine's default attention;
and, once, single-core tokenization pairs/s (what one CPU tokenize task delivers), so the number of CPU
tasks that keeps one GPU fed is speed / tokenize speed.

    python benchmarks/bench_token_budget_gpu.py [--shapes ...] [--budgets ...] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ettin_batch import Reranker  # noqa: E402
from workload import nq_like_pairs  # noqa: E402

SHAPES = "ettin-17m,ettin-68m,ettin-150m,ettin-400m,ettin-1b"
BUDGETS = "16384,32768,65536,131072,262144"
PAIRS = {"ettin-17m": 20000, "ettin-32m": 20000, "ettin-68m": 12000, "ettin-150m": 8000, "ettin-400m": 4000,
         "ettin-1b": 3000}


def timed(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--budgets", default=BUDGETS)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)  # tokenization speed per core
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    q_long, d_long = nq_like_pairs(600, seed=3)
    d_long = [d + " " + d + " " + d for d in d_long]  # every pair truncated to max_length
    q, d = nq_like_pairs(max(PAIRS.values()), seed=2)
    for shape in args.shapes.split(","):
        try:
            rr = Reranker.from_pretrained(f"random:{shape}", device="cuda", dtype="bfloat16", max_length=512)
        except Exception as e:
            results["rows"].append({"shape": shape, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        torch.cuda.synchronize()
        results["attention"] = rr.attention
        weights = torch.cuda.memory_allocated()
        if "tokenize_pairs_per_s_1core" not in results:
            t = time.perf_counter()
            rr.tokenizer(q[:5000], d[:5000])
            results["tokenize_pairs_per_s_1core"] = round(5000 / (time.perf_counter() - t), 1)
        long_pairs = rr.tokenizer(q_long, d_long)
        n = PAIRS[shape]
        pairs = rr.tokenizer(q[:n], d[:n])
        rr.score_tokens(pairs.take(np.arange(min(n, 1000))))  # warm-up
        for budget in map(int, args.budgets.split(",")):
            row = {"shape": shape, "max_tokens_per_batch": budget, "weights_gib": round(weights / 2**30, 2)}
            rr.max_tokens_per_batch = budget  # the engine reads it per call
            try:
                torch.cuda.reset_peak_memory_stats()
                rr.score_tokens(long_pairs)
                torch.cuda.synchronize()
                row["peak_gib_at_512"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                row["pairs_per_s_nq_like"] = round(n / timed(lambda: rr.score_tokens(pairs)), 1)
                row["tokens_per_s"] = round(float(np.sum(pairs.lengths)) * row["pairs_per_s_nq_like"] / n)
            except torch.cuda.OutOfMemoryError as e:
                row["error"] = f"OOM: {str(e)[:120]}"
            except Exception as e:  # report and keep going: one failure must not lose the other rows
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            torch.cuda.empty_cache()
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=2))
        del rr
        torch.cuda.empty_cache()
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}))


if __name__ == "__main__":
    main()
