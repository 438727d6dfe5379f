"""The CPU fast paths against their references, interleaved in one process (what they give, alone).

Same model, same pre-tokenized real-text pairs, same threads; each dtype is scored by
  reference: attention "reference" (one SDPA per run of equal-length pairs), products "module"
             (transformers' own Linear / GLU modules): the engine before the fast paths;
  fast:      the engine's defaults on the CPU (bfloat16: "matmul" attention and oneDNN products;
             float32: "reference" attention and oneDNN products),
taking turns (reference, fast, reference, ...) so that a neighbour's load hits both alike; best of
--repeats each. Prints pairs/s, the ratio and the largest score difference between the two.

    python benchmarks/bench_engine_cpu_paths.py [--pairs 400] [--repeats 5] [--model random:ettin-17m] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workload import nq_like_pairs  # noqa: E402

from ettin_batch import Reranker  # noqa: E402
from ettin_batch.engine import resolve_model  # noqa: E402
from ettin_batch.engine.options import EngineOptions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random:ettin-17m")
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="append one JSON line per dtype to this file")
    args = ap.parse_args()
    path = resolve_model(args.model).path
    queries, docs = nq_like_pairs(args.pairs, seed=5)
    for dtype in ("bfloat16", "float32"):
        ways = {}
        for name, attention, products in (("reference", "reference", "module"), ("fast", "auto", "auto")):
            rr = Reranker.from_pretrained(path, device="cpu", dtype=dtype, max_length=512, attention=attention)
            rr._use_engine(EngineOptions(products=products))
            pairs = rr.tokenizer(queries, docs)
            rr.score_tokens(pairs)  # warm-up: oneDNN primitives, rotary tables
            ways[name] = (rr, pairs)
        best, scores = dict.fromkeys(ways, float("inf")), {}
        for _ in range(args.repeats):
            for name, (rr, pairs) in ways.items():
                start = time.perf_counter()
                scores[name] = rr.score_tokens(pairs)
                best[name] = min(best[name], time.perf_counter() - start)
        fast = ways["fast"][0]
        row = {"model": args.model, "dtype": dtype, "pairs": args.pairs, "threads": torch.get_num_threads(),
               "reference_pairs_per_s": round(args.pairs / best["reference"], 1),
               "fast_pairs_per_s": round(args.pairs / best["fast"], 1),
               "ratio": round(best["reference"] / best["fast"], 3),
               "fast_path": f"attention {fast.attention}, products {fast._encoder.products_kind}",
               "max_abs_score_diff": float(np.abs(scores["fast"] - scores["reference"]).max()),
               "load_average": os.getloadavg(), "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
