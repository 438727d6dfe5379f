"""Variable-length (unpadded) attention backends.

Every backend takes q, k, v as [T, heads, head_dim] token streams plus a PackedBatch
and attends only within each pair. `window` is ModernBERT's half window on local
layers: token i sees keys j with |i - j| <= window (None: the whole pair).

- flash:     flash-attn's flash_attn_varlen_func (optional, CUDA, fp16/bf16).
- torch:     torch.nn.attention.varlen.varlen_attn (PyTorch >= 2.10, CUDA, fp16/bf16).
- reference: exact, any device and dtype: each run of equal-length pairs becomes one
             dense SDPA call, with a band mask on local layers.

With `cls_only`, the queries are only each pair's first token ([CLS]); the engine uses
it on a global last layer, whose other outputs nothing reads.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F

from .packing import PackedBatch

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, PackedBatch, "int | None", bool], torch.Tensor]
BACKENDS = ("flash", "torch", "reference")


def _flash(q, k, v, batch: PackedBatch, window, cls_only):
    from flash_attn import flash_attn_varlen_func

    # flash-attn aligns a shorter query run to the *end* of its keys; cls_only is only used on
    # global layers (window None), where alignment does not matter.
    cu_q, max_q = (_arange_cu(batch), 1) if cls_only else (batch.cu_seqlens, batch.max_seqlen)
    w = (-1, -1) if window is None else (window, window)
    return flash_attn_varlen_func(q, k, v, cu_q, batch.cu_seqlens, max_q, batch.max_seqlen, window_size=w)


def _torch_varlen(q, k, v, batch: PackedBatch, window, cls_only):
    from torch.nn.attention.varlen import varlen_attn

    cu_q, max_q = (_arange_cu(batch), 1) if cls_only else (batch.cu_seqlens, batch.max_seqlen)
    if window is None:
        return varlen_attn(q, k, v, cu_q, batch.cu_seqlens, max_q, batch.max_seqlen)
    if not _WINDOW_VIA_ATEN:
        try:
            return varlen_attn(q, k, v, cu_q, batch.cu_seqlens, max_q, batch.max_seqlen, window_size=(window, window))
        except (TypeError, RuntimeError):  # older torch (no window_size) or its cuDNN path (no windows)
            _WINDOW_VIA_ATEN.append(True)
    # The flash kernel varlen_attn wraps has taken a window since torch 2.5.
    return torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, batch.cu_seqlens, max_q, batch.max_seqlen, 0.0, False, False,
        window_size_left=window, window_size_right=window,
    )[0]


_WINDOW_VIA_ATEN: list = []


def _arange_cu(batch: PackedBatch) -> torch.Tensor:
    return torch.arange(batch.num_pairs + 1, device=batch.cu_seqlens.device, dtype=torch.int32)


@lru_cache(maxsize=256)
def _band(length: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean mask, True where |i - j| <= window; built once per length."""
    i = torch.arange(length, device=device)
    return (i[:, None] - i[None, :]).abs() <= window


def _reference(q, k, v, batch: PackedBatch, window, cls_only):
    heads, dim = q.shape[1], q.shape[2]
    out = torch.empty_like(q)
    pair = 0
    for first, n, length in batch.groups:
        # A run of n pairs of one length is a dense [n, length] block of the token stream.
        kg = k[first : first + n * length].view(n, length, heads, dim).transpose(1, 2)
        vg = v[first : first + n * length].view(n, length, heads, dim).transpose(1, 2)
        mask = None if window is None or length <= window + 1 else _band(length, window, q.device)
        if cls_only:
            qg = q[pair : pair + n].view(n, 1, heads, dim).transpose(1, 2)
            o = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=None if mask is None else mask[:1])
            out[pair : pair + n] = o.transpose(1, 2).reshape(n, heads, dim)
        else:
            qg = q[first : first + n * length].view(n, length, heads, dim).transpose(1, 2)
            o = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask)
            out[first : first + n * length] = o.transpose(1, 2).reshape(n * length, heads, dim)
        pair += n
    return out


def flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def torch_varlen_available() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """Pick the attention backend: the fastest exact one this device and dtype allow.

    `requested` is "auto", a name from BACKENDS, or "padded" (no varlen attention at all).
    A named backend that cannot run here is an error, not a silent fallback.
    """
    half = dtype in (torch.float16, torch.bfloat16)
    on_cuda = device.type == "cuda"
    usable = {
        "flash": on_cuda and half and flash_available(),
        "torch": on_cuda and half and torch_varlen_available(),
        "reference": True,
    }
    if requested == "auto":
        return next(name for name in BACKENDS if usable[name])
    if requested == "padded":
        return "padded"
    if requested not in usable:
        raise ValueError(f"unknown attention backend {requested!r}; choose auto, padded or one of {BACKENDS}")
    if not usable[requested]:
        raise ValueError(
            f"attention backend {requested!r} cannot run on {device.type} with {dtype}: flash and torch need CUDA "
            "with bfloat16/float16 (and flash needs `pip install flash-attn`); use 'reference' or 'auto'"
        )
    return requested


def get_backend(name: str) -> AttentionFn:
    return {"flash": _flash, "torch": _torch_varlen, "reference": _reference}[name]
