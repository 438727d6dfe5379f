"""GPU check and speed run of the engine, one command on a single-GPU machine (< 8 min).

Needs only PyTorch, transformers and sentence-transformers (no Ray, no flash-attn,
no network). For each random-weight model of a real Ettin shape (17M, 150M, 1B):

1. fidelity on CUDA: RMS of bf16 scores against CrossEncoder.predict float32, for each
   attention backend, beside CrossEncoder.predict's own bf16 RMS;
2. speed at max_length 512 on NQ-like pairs: pairs/s per backend, end to end
   (`score`: tokenization included) and model only (`score_tokens` on pre-tokenized
   pairs), beside CrossEncoder.predict with bf16 + SDPA.

    python benchmarks/bench_engine_gpu.py [--shapes ettin-17m,ettin-150m,ettin-1b] [--out results.json]
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

from sentence_transformers import CrossEncoder  # noqa: E402

from ettin_batch import Reranker  # noqa: E402
from ettin_batch.engine import resolve_model  # noqa: E402
from ettin_batch.engine.attention import flash_available, torch_varlen_available  # noqa: E402
from workload import nq_like_pairs  # noqa: E402

PAIRS = {"ettin-17m": 30000, "ettin-150m": 12000, "ettin-1b": 4000}


def sync_time(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def crossencoder(path: str, dtype: torch.dtype) -> CrossEncoder:
    ce = CrossEncoder(path, device="cuda", max_length=512, model_kwargs={"attn_implementation": "sdpa"})
    return ce.to(dtype)


def run_shape(shape: str, log) -> dict:
    path = resolve_model(f"random:{shape}").path
    out: dict = {"shape": shape}
    backends = ["reference", "padded"] + (["torch"] if torch_varlen_available() else []) + (
        ["flash"] if flash_available() else [])
    # 1. Fidelity on 1,000 pairs.
    fq, fd = nq_like_pairs(1000, seed=1)
    ce32 = crossencoder(path, torch.float32)
    ref32 = ce32.predict(list(zip(fq, fd)), activation_fn=torch.nn.Identity(), batch_size=64)
    del ce32
    ce16 = crossencoder(path, torch.bfloat16)
    ref16 = ce16.predict(list(zip(fq, fd)), activation_fn=torch.nn.Identity(), batch_size=64)
    rms = lambda a: float(np.sqrt(np.mean((a - ref32) ** 2)))  # noqa: E731
    out["fidelity"] = {"crossencoder_bf16_rms": rms(ref16), "score_std_fp32": float(np.std(ref32))}
    rerankers = {}
    for b in backends:
        try:
            rr = Reranker.from_pretrained(path, device="cuda", dtype="bfloat16", max_length=512, attention=b)
            rerankers[b] = rr
            out["fidelity"][f"{b}_bf16_rms"] = rms(rr.score(fq, fd))
        except Exception as exc:  # report, keep going: one backend failing must not lose the others
            out["fidelity"][f"{b}_error"] = f"{type(exc).__name__}: {exc}"[:300]
    rr32 = Reranker.from_pretrained(path, device="cuda", dtype="float32", max_length=512, attention="reference")
    out["fidelity"]["reference_fp32_maxabs"] = float(np.abs(rr32.score(fq, fd) - ref32).max())
    del rr32
    log(json.dumps(out["fidelity"]))
    # 2. Speed.
    n = PAIRS[shape]
    q, d = nq_like_pairs(n, seed=2)
    any_rr = next(iter(rerankers.values()))
    tok_start = time.perf_counter()
    pairs = any_rr.tokenizer(q, d)
    out["tokenize_pairs_per_s"] = n / (time.perf_counter() - tok_start)
    out["median_tokens"] = float(np.median(pairs.lengths))
    speed = {}
    for b, rr in rerankers.items():
        if b == "reference" and shape != "ettin-17m":
            continue  # the Python-level reference is for checking, not for speed, on big shapes
        try:
            rr.score_tokens(pairs.take(np.arange(min(n, 2000))))  # warm-up
            keys = pairs.content_keys()  # the packing keys, given as the job gives its fingerprints: not timed
            t_model = sync_time(lambda: rr.score_tokens(pairs, keys))
            t_e2e = sync_time(lambda: rr.score(q, d))
            speed[b] = {"model_only_pairs_per_s": round(n / t_model, 1), "end_to_end_pairs_per_s": round(n / t_e2e, 1),
                        "max_tokens_per_batch": rr.max_tokens_per_batch}
        except Exception as exc:
            speed[b] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        log(f"{shape} {b}: {speed[b]}")
    ce16.predict(list(zip(q[:256], d[:256])), activation_fn=torch.nn.Identity(), batch_size=64)
    for bs in (64, 256):
        t = sync_time(lambda: ce16.predict(list(zip(q, d)), activation_fn=torch.nn.Identity(), batch_size=bs))
        speed[f"crossencoder_sdpa_bs{bs}"] = {"end_to_end_pairs_per_s": round(n / t, 1)}
        log(f"{shape} CrossEncoder.predict bf16 sdpa bs={bs}: {n / t:.1f} pairs/s")
    out["speed"] = speed
    out["pairs"] = n
    del rerankers, ce16
    torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="ettin-17m,ettin-150m,ettin-1b")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "this script needs a CUDA device"
    log = lambda s: print(s, flush=True)  # noqa: E731
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "torch_varlen": torch_varlen_available(), "flash_attn": flash_available(), "shapes": []}
    log(json.dumps({k: v for k, v in results.items() if k != "shapes"}))
    for shape in args.shapes.split(","):
        t0 = time.perf_counter()
        try:
            results["shapes"].append(run_shape(shape, log))
        except Exception as exc:
            results["shapes"].append({"shape": shape, "error": f"{type(exc).__name__}: {exc}"[:500]})
            log(f"{shape} failed: {exc}")
        log(f"{shape} took {time.perf_counter() - t0:.0f}s")
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
