"""Where `Reranker.score_tokens` spends its time on the CPU, by kind of work.

Times every aten / mkldnn op of the engine's forward pass on NQ-like pairs (pre-tokenized:
tokenization is not the engine's cost) and sums them into kinds: GEMMs, attention, rotary
and other elementwise work, norms, casts and copies, embedding and index work. Beside the
GEMMs it prints what they would take at this machine's matrix-product rate (a [2048, K] x
[K, N] product of the model's own shapes, timed alone), so "expected vs got" is visible.

The clock is the thread's CPU time, one intra-op thread, op by op (a TorchDispatchMode): on
a shared machine wall time measures the neighbours (two OpenMP threads wait for each other
at every op whenever another process takes one of them), CPU time measures the work. The
per-kind shares carry over to two threads; the absolute figures are single-core.

    python benchmarks/profile_engine_cpu.py [--model random:ettin-17m] [--pairs 300] [--dtypes bfloat16,float32]
        [--attention auto|reference|matmul] [--products auto|module|onednn]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ettin_batch import Reranker  # noqa: E402
from ettin_batch.engine import resolve_model  # noqa: E402
from ettin_batch.engine.options import EngineOptions  # noqa: E402
from workload import nq_like_pairs  # noqa: E402

KINDS = [  # first match wins: (kind, substrings of the op name)
    ("attention: products", ("aten.bmm", "baddbmm")),
    ("gemm", ("addmm", "aten.mm", "linear", "matmul")),
    ("attention: SDPA", ("scaled_dot_product", "flash_attention")),
    ("attention: softmax, mask", ("softmax", "masked_fill")),
    ("norm", ("layer_norm",)),
    ("cast/copy", ("_to_copy", "copy_", "clone", "aten.cat", "aten.stack", "constant_pad", "aten.pad")),
    ("index/embedding", ("embedding", "index", "gather", "repeat_interleave", "arange")),
    ("activation", ("gelu",)),
    ("elementwise", ("mul", "add", "sub", "div", "where", "fill", "bitwise", "logical", "lt", "ge", "le", "eq")),
]
FREE = ("view", "reshape", "transpose", "unbind", "select", "slice", "split", "chunk", "expand", "unsqueeze",
        "t.default", "permute", "detach", "alias", "empty", "unfold", "_unsafe_view", "as_strided", "squeeze")


def kind_of(name: str) -> str:
    return next((k for k, keys in KINDS if any(s in name for s in keys)), "other: " + name)


class OpClock(TorchDispatchMode):
    """Thread CPU time of each op that reaches the dispatcher, by (op, input shapes)."""

    def __init__(self):
        super().__init__()
        self.by_op = defaultdict(lambda: [0.0, 0])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.thread_time_ns()
        out = func(*args, **(kwargs or {}))
        ms = (time.thread_time_ns() - start) / 1e6
        name = str(func)
        if not any(f in name for f in FREE):
            shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
            entry = self.by_op[(name, str(shapes)[:70])]
            entry[0] += ms
            entry[1] += 1
        return out


def gemm_rate(dtype: torch.dtype, k: int, n: int, tokens: int = 2048, repeats: int = 20) -> float:
    """GFLOP/s of x[tokens, k] @ w[n, k].T, this machine, this dtype, thread CPU time (best of `repeats`)."""
    x, w = torch.randn(tokens, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        torch.nn.functional.linear(x, w)
        best = min(best, time.thread_time() - start)
    return 2 * tokens * k * n / best / 1e9


def profile(rr: Reranker, pairs) -> dict:
    rr.score_tokens(pairs)  # warm-up: oneDNN primitives, rotary tables
    clock = OpClock()
    start = time.thread_time()
    with clock:
        rr.score_tokens(pairs)
    total_cpu = time.thread_time() - start
    by_kind = defaultdict(float)
    for (name, _), (ms, _) in clock.by_op.items():
        by_kind[kind_of(name)] += ms
    return {"cpu_ms": total_cpu * 1e3, "by_kind": dict(by_kind), "by_op": dict(clock.by_op)}


def gemm_flops(rr: Reranker, pairs) -> float:
    """FLOPs of the encoder's linear layers for these pairs (the last layer's [CLS]-only rows counted as run)."""
    cfg = rr._encoder.model.config
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    tokens, n = float(np.sum(pairs.lengths)), len(pairs)
    per_row = 2 * (h * h + 2 * h * inter + inter * h)  # attention out, GLU in (two halves), GLU out
    qkv = 2 * h * 3 * h
    cls_last = rr._encoder.cls_only_last
    full_layers = layers - 1 if cls_last else layers
    return tokens * layers * qkv + tokens * full_layers * per_row + (n * per_row if cls_last else 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:ettin-17m")
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--max-tokens", type=int, default=None, help="token budget (default: the engine's)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--products", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(1)  # see the module docstring
    path = resolve_model(args.model).path
    q, d = nq_like_pairs(args.pairs, seed=5)
    for dtype_name in args.dtypes.split(","):
        rr = Reranker.from_pretrained(path, device="cpu", dtype=dtype_name, max_length=512,
                                      max_tokens_per_batch=args.max_tokens, attention=args.attention)
        rr._use_engine(EngineOptions(products=args.products))
        pairs = rr.tokenizer(q, d)
        res = profile(rr, pairs)
        cfg = rr._encoder.model.config
        rate = gemm_rate(rr.dtype, cfg.hidden_size, 3 * cfg.hidden_size)
        flops = gemm_flops(rr, pairs)
        total = sum(res["by_kind"].values())
        print(f"\n== {args.model} {dtype_name}, attention {rr.attention}, products {rr._encoder.products_kind}: "
              f"{len(pairs)} pairs, {int(np.sum(pairs.lengths))} tokens, budget {rr.max_tokens_per_batch}: "
              f"{res['cpu_ms']:.0f} ms of one core ({len(pairs) / res['cpu_ms'] * 1e3:.1f} pairs/s a core) "
              f"under the op clock, ops {total:.0f} ms")
        for kind, ms in sorted(res["by_kind"].items(), key=lambda kv: -kv[1]):
            print(f"  {kind:<22} {ms:8.1f} ms  {100 * ms / total:5.1f}%")
        print(f"  GEMM FLOPs {flops / 1e9:.1f} G; at {rate:.0f} GFLOP/s (a [2048, {cfg.hidden_size}] x "
              f"[{cfg.hidden_size}, {3 * cfg.hidden_size}] product alone) they would take {flops / rate / 1e6:.0f} ms")
        by_name = defaultdict(lambda: [0.0, 0])
        for (name, _), (ms, calls) in res["by_op"].items():
            by_name[name][0] += ms
            by_name[name][1] += calls
        print("  by op: " + ", ".join(f"{n.removesuffix('.default')} {ms:.0f} ms/{c}"
                                     for n, (ms, c) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:16]))
        print(f"  top {args.top} ops (name, input shapes, ms, calls):")
        for (name, shapes), (ms, calls) in sorted(res["by_op"].items(), key=lambda kv: -kv[1][0])[: args.top]:
            print(f"    {ms:8.1f} {calls:5d}  {name:<45} {shapes}")


if __name__ == "__main__":
    main()
