"""Reranker.score vs sentence-transformers CrossEncoder.predict on the CPU, same run.

Same random-weight model of the real 17M shape, same 2,000 NQ-like pairs, same thread
count, truncated at 512 tokens; float32 and bfloat16. Prints pairs/s and the ratio.

    python benchmarks/bench_engine_cpu.py [--pairs 2000] [--threads N] [--model random:ettin-17m]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout, installed or not

from sentence_transformers import CrossEncoder  # noqa: E402

from ettin_batch import Reranker  # noqa: E402
from ettin_batch.engine import resolve_model  # noqa: E402
from workload import nq_like_pairs  # noqa: E402


def timed_pair(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Best wall time of each, runs interleaved (a, b, a, b, ...) so load spikes hit both alike."""
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, fn in enumerate((fn_a, fn_b)):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:ettin-17m")
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    path = resolve_model(args.model).path
    queries, documents = nq_like_pairs(args.pairs)
    results = {"model": args.model, "pairs": args.pairs, "threads": args.threads, "cpu": platform.processor()
               or platform.machine(), "torch": torch.__version__}
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        rr = Reranker.from_pretrained(path, device="cpu", dtype=dtype_name, max_length=args.max_length)
        ce = CrossEncoder(path, device="cpu", max_length=args.max_length)
        ce.to(dtype)
        lengths = rr.tokenizer(queries, documents).lengths
        results["median_tokens_per_pair"] = float(np.median(lengths))
        results["truncated_pairs"] = int((lengths >= args.max_length).sum())
        warm_q, warm_d = queries[:64], documents[:64]
        rr.score(warm_q, warm_d)
        ce.predict(list(zip(warm_q, warm_d)), activation_fn=torch.nn.Identity())
        t_ours, t_ref = timed_pair(
            lambda: rr.score(queries, documents),
            lambda: ce.predict(list(zip(queries, documents)), activation_fn=torch.nn.Identity(), batch_size=32),
            args.repeats)
        results[dtype_name] = {
            "reranker_pairs_per_s": round(args.pairs / t_ours, 1),
            "crossencoder_pairs_per_s": round(args.pairs / t_ref, 1),
            "speedup": round(t_ref / t_ours, 3),
            "attention": rr.attention,
        }
        print(f"{dtype_name}: Reranker.score {args.pairs / t_ours:.1f} pairs/s, "
              f"CrossEncoder.predict {args.pairs / t_ref:.1f} pairs/s, ratio {t_ref / t_ours:.2f}x", flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
