"""Variable-length (unpadded) attention backends.

Every backend takes q, k, v as [T, heads, head_dim] token streams plus a PackedBatch
and attends only within each pair. `window` is ModernBERT's half window on local
layers: token i sees keys j with |i - j| <= window (None: the whole pair).

- flash:     flash-attn's flash_attn_varlen_func (optional, CUDA, fp16/bf16).
- torch:     torch.nn.attention.varlen.varlen_attn (PyTorch >= 2.10, CUDA, fp16/bf16).
- reference: exact, any device and dtype: each run of equal-length pairs becomes one
             dense SDPA call, with a band mask on local layers.
- matmul:    CPU (the default there in bfloat16): the batch's pairs as one padded block
             (length-sorted batches pad little), two batched matrix products with a
             softmax between (float32 inside), and on local layers of long pairs query
             blocks that see only their band of keys. PyTorch's CPU SDPA kernel runs bf16
             at float32 speed on CPUs without AMX (it converts its tiles); bf16 matrix
             products run at 3-4x that, and the band skips what the window masks anyway.
             Scores are rounded to bf16 once (as in transformers' eager attention); the
             bf16 fidelity bar holds (tests/test_engine_fidelity.py).

With `cls_only`, the queries are only each pair's first token ([CLS]); the engine uses
it on a global last layer, whose other outputs nothing reads.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .packing import PackedBatch

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, PackedBatch, "int | None", bool], torch.Tensor]
BACKENDS = ("flash", "torch", "matmul", "reference")


def _flash(q, k, v, batch: PackedBatch, window, cls_only):
    from flash_attn import flash_attn_varlen_func

    v = v.contiguous()  # the engine passes v as a strided view of the packed qkv

    # flash-attn aligns a shorter query run to the *end* of its keys; cls_only is only used on
    # global layers (window None), where alignment does not matter.
    cu_q, max_q = (_arange_cu(batch), 1) if cls_only else (batch.cu_seqlens, batch.max_seqlen)
    w = (-1, -1) if window is None else (window, window)
    return flash_attn_varlen_func(q, k, v, cu_q, batch.cu_seqlens, max_q, batch.max_seqlen, window_size=w)


def _torch_varlen(q, k, v, batch: PackedBatch, window, cls_only):
    from torch.nn.attention.varlen import varlen_attn

    v = v.contiguous()  # the engine passes v as a strided view of the packed qkv

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


# Score elements of one dense product (256 MiB in bf16, twice with the softmax's output): a batch past it
# (long pairs on a global layer, e.g. max_length 8192 with many heads) goes to the reference, whose SDPA
# kernel never holds the whole square.
DENSE_LIMIT = 1 << 27


def _matmul(q, k, v, batch: PackedBatch, window, cls_only):
    # The batch's pairs as one padded block [n, H, L, D], L = its longest pair: batches are
    # length-sorted, so the padding is small, and a layer costs a handful of ops, not a few per pair.
    n, heads, dim, longest = batch.num_pairs, q.shape[1], q.shape[2], batch.max_seqlen
    banded = window is not None and _blocks_pay(longest, window)
    if not cls_only and not banded and n * heads * longest ** 2 > DENSE_LIMIT:
        return _reference(q, k, v, batch, window, cls_only)
    slot, lengths, token_pair = _slots(batch)  # [n, L] token row of each (pair, position); [n]; [T]
    kp, vp = _gather(k, slot), _gather(v, slot)  # [n, H, L, D]
    keys = torch.arange(longest, device=q.device) < lengths[:, None]  # [n, L] real keys
    if cls_only:
        o = _dense(q.reshape(n, heads, 1, dim), kp, vp, keys[:, None, None, :])  # [n, H, 1, D]
        return o.view(n, heads, dim)
    qp = _gather(q, slot)  # [n, H, L, D]
    if banded:
        o = _banded(qp, kp, vp, lengths, window)
    else:
        mask = keys[:, None, None, :]  # [n, 1, 1, L]
        if window is not None and longest > window + 1:
            mask = mask & _band(longest, window, q.device)
        o = _dense(qp, kp, vp, mask)
    return o[token_pair, :, batch.position_ids]  # [T, H, D]: each token's row back out of the block


def _slots(batch: PackedBatch):
    """Index tensors of the padded block, built once per batch: slot [n, L], lengths [n], token_pair [T]."""
    if "matmul_slots" not in batch.cache:
        lengths, device = batch.lengths, batch.cu_seqlens.device
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        positions = np.minimum(np.arange(batch.max_seqlen)[None, :], lengths[:, None] - 1)  # padding: last token
        slot = torch.from_numpy(offsets[:-1, None] + positions).to(device)
        token_pair = np.zeros(batch.input_ids.shape[0], np.int64)
        token_pair[: offsets[-1]] = np.repeat(np.arange(len(lengths)), lengths)
        token_pair = torch.from_numpy(token_pair).to(device)
        batch.cache["matmul_slots"] = (slot, torch.from_numpy(lengths).to(device), token_pair)
    return batch.cache["matmul_slots"]


def _gather(x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """[T, H, D] token rows (any strides) -> the padded block [n, H, L, D], heads first, in one gather."""
    heads = torch.arange(x.shape[1], device=x.device)
    return x[slot[:, None, :], heads[None, :, None]]


def _dense(q, k, v, mask):
    """softmax(q k^T / sqrt(D)) v on [n, H, Lq, D] x [n, H, L, D]; mask broadcasts to [n, H, Lq, L]."""
    n, heads, lq, dim = q.shape
    q3, k3, v3 = q.reshape(n * heads, lq, dim), k.reshape(n * heads, -1, dim), v.reshape(n * heads, -1, dim)
    s = torch.baddbmm(q3.new_empty(n * heads, lq, k3.shape[1]), q3, k3.transpose(1, 2), beta=0,
                      alpha=dim ** -0.5)  # [n * H, Lq, L], the scale applied inside the product
    s.view(n, heads, lq, -1).masked_fill_(~mask, float("-inf"))
    return torch.bmm(torch.softmax(s, dim=-1), v3).view(n, heads, lq, dim)  # softmax in float32, rounded once


BLOCK = 64  # queries per block on banded local layers


def _blocks_pay(length: int, window: int) -> bool:
    """Whether query blocks over their band of keys do clearly less work than the full square."""
    blocks = -(-length // BLOCK)
    return blocks * BLOCK * (BLOCK + 2 * window) <= 0.7 * length * length


def _banded(q, k, v, lengths: torch.Tensor, window: int):
    """Local attention in query blocks: block b's BLOCK queries see keys [b*BLOCK - w, (b+1)*BLOCK + w).

    q, k, v: [n, H, L, D]. Keys and values are padded by w on both sides so every block's keys
    are one window of BLOCK + 2w rows (unfold: a strided view; one copy for the product).
    """
    n, heads, length, dim = q.shape
    nh, w, blocks = n * heads, window, -(-length // BLOCK)
    tail = blocks * BLOCK - length
    qb = F.pad(q, (0, 0, 0, tail)).view(nh * blocks, BLOCK, dim)  # [n * H * nb, B, D]
    kw, vw = (F.pad(t, (0, 0, w, tail + w)).unfold(2, BLOCK + 2 * w, BLOCK) for t in (k, v))  # [n, H, nb, D, B+2w]
    kw = kw.reshape(nh * blocks, dim, BLOCK + 2 * w)
    vw = vw.transpose(-1, -2).reshape(nh * blocks, BLOCK + 2 * w, dim)
    s = torch.baddbmm(qb.new_empty(nh * blocks, BLOCK, BLOCK + 2 * w), qb, kw, beta=0, alpha=dim ** -0.5)
    s.view(n, heads, blocks, BLOCK, -1).masked_fill_(~_block_mask(lengths, length, w), float("-inf"))
    o = torch.bmm(torch.softmax(s, dim=-1), vw)  # [n * H * nb, B, D]
    return o.view(n, heads, blocks * BLOCK, dim)[:, :, :length]


def _block_mask(lengths: torch.Tensor, length: int, window: int) -> torch.Tensor:
    """[n, 1, nb, B, B + 2w]: True where pair p's query i = b*B + r may see key j = b*B + c - w.

    Within the window and inside the pair. A padding query row (i >= its pair's length) sees
    only itself, so no row is all -inf (those rows are never read).
    """
    band, i, j = _block_geometry(length, window, lengths.device)  # [nb, B, B+2w], [nb, B, 1], [nb, 1, B+2w]
    lengths = lengths[:, None, None, None]
    seen = band & (j >= 0) & (j < lengths)
    itself = (i >= lengths) & (j == i)
    return (seen | itself)[:, None]


@lru_cache(maxsize=1024)
def _block_geometry(length: int, window: int, device: torch.device):
    blocks = -(-length // BLOCK)
    b = torch.arange(blocks, device=device)[:, None, None]
    r = torch.arange(BLOCK, device=device)[None, :, None]
    c = torch.arange(BLOCK + 2 * window, device=device)[None, None, :]
    return (c >= r) & (c <= r + 2 * window), b * BLOCK + r, b * BLOCK + c - window


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
    """Pick the attention backend: the fastest one this device and dtype allow.

    `requested` is "auto", a name from BACKENDS, or "padded" (no varlen attention at all).
    "auto" on the CPU is matmul in bfloat16/float16 and the exact reference in float32.
    A named backend that cannot run here is an error, not a silent fallback.
    """
    half = dtype in (torch.float16, torch.bfloat16)
    on_cuda = device.type == "cuda"
    usable = {
        "flash": on_cuda and half and flash_available(),
        "torch": on_cuda and half and torch_varlen_available(),
        "matmul": device.type == "cpu",
        "reference": True,
    }
    if requested == "auto":
        return next(name for name in BACKENDS if usable[name] and (half or name != "matmul"))
    if requested == "padded":
        return "padded"
    if requested not in usable:
        raise ValueError(f"unknown attention backend {requested!r}; choose auto, padded or one of {BACKENDS}")
    if not usable[requested]:
        raise ValueError(
            f"attention backend {requested!r} cannot run on {device.type} with {dtype}: flash and torch need CUDA "
            "with bfloat16/float16 (and flash needs `pip install flash-attn`), matmul needs the CPU; "
            "use 'reference' or 'auto'"
        )
    return requested


def get_backend(name: str) -> AttentionFn:
    return {"flash": _flash, "torch": _torch_varlen, "matmul": _matmul, "reference": _reference}[name]
