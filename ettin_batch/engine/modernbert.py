"""Unpadded ModernBERT forward over a packed token stream.

transformers 5.x's ModernBertModel expects padded [batch, length] input; this module
runs the same weights (it holds the HF model, it copies nothing) over one flat stream
of pairs: embeddings -> N x (attention + GLU MLP) -> final norm -> one vector per pair.

Three things make it cheaper than the padded model besides the absent padding:
- rotary cos/sin come from one float32 table indexed by position, built once;
- when the last layer is global (true for every Ettin size), only the [CLS] rows of
  that layer are computed past the key/value projection: nothing reads the others;
- on the CPU the products run in oneDNN with the GLU and the residual adds fused in
  (products.py); the layer's own modules stay the reference (EngineOptions).
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import AttentionFn
from .options import EngineOptions
from .packing import PackedBatch
from .products import layer_products, onednn_usable


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding with the half-split layout: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).

    cos/sin are half-width float32 tables. Computed in float32 like the reference (a bf16 x
    times a float32 table promotes, so x needs no float copy of its own), written into one
    output buffer (no rotate_half concatenation), then cast to the compute dtype.
    """
    x1, x2 = x.chunk(2, dim=-1)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-1.0)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin)
    return out.to(x.dtype)


def _rotary_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q, k (rotated) and v [T, H, D] from the packed [T, 3, H, D] stream; v stays a strided view."""
    q, k = _apply_rotary(qkv[:, :2], cos, sin).unbind(dim=1)
    return q, k, qkv[:, 2]


class UnpaddedModernBert(nn.Module):
    """Runs a transformers ModernBertModel on a PackedBatch; returns pooled vectors [pairs, hidden]."""

    def __init__(self, model: nn.Module, attention: AttentionFn, pooling: str = "cls",
                 options: EngineOptions = EngineOptions()):
        super().__init__()
        self.model = model
        self.attention = attention
        self.pooling = pooling
        cfg = model.config
        products = options.products
        if products == "auto":  # onednn_usable says why it cannot run here, "" when it can
            products = "module" if onednn_usable(model) else "onednn"
        self.products_kind = products
        self.products = layer_products(model, products)
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.layer_types = list(cfg.layer_types)
        # |i - j| <= local_attention / 2 on local layers (transformers' bidirectional sliding mask).
        half_window = cfg.local_attention // 2
        self.windows = [half_window if t == "sliding_attention" else None for t in self.layer_types]
        self.cls_only_last = pooling == "cls" and self.windows[-1] is None
        self._rope: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _rope_tables(self, layer_type: str, length: int, device: torch.device):
        cached = self._rope.get(layer_type)
        if cached is None or cached[0].shape[0] < length or cached[0].device != device:
            inv_freq = getattr(self.model.rotary_emb, f"{layer_type}_inv_freq").to(device, torch.float32)
            size = max(length, 512)
            freqs = torch.arange(size, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
            cached = (freqs.cos(), freqs.sin())  # half width: the two halves of a head share angles
            self._rope[layer_type] = cached
        return cached

    @torch.inference_mode()
    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.model.embeddings(input_ids=batch.input_ids)
        rope = {}
        for t in set(self.layer_types):
            cos, sin = self._rope_tables(t, batch.max_seqlen, x.device)
            # [T, 1, 1, head_dim / 2]: broadcast over (q, k) and heads.
            rope[t] = (cos[batch.position_ids][:, None, None], sin[batch.position_ids][:, None, None])
        last = len(self.model.layers) - 1
        for i in range(len(self.model.layers)):
            cls_only = i == last and self.cls_only_last
            x = self._layer(i, x, batch, rope[self.layer_types[i]], self.windows[i], cls_only)
        x = self.model.final_norm(x)
        if self.cls_only_last:
            return x
        if self.pooling == "cls":
            return x[batch.cls_index]
        return _segment_mean(x, batch)

    def _layer(self, i: int, x, batch: PackedBatch, rope, window, cls_only: bool) -> torch.Tensor:
        layer, ops = self.model.layers[i], self.products[i]
        qkv = ops.qkv(layer.attn_norm(x)).view(-1, 3, self.heads, self.head_dim)  # [T, 3, H, D]
        cos, sin = rope  # [T, 1, 1, D/2] float32
        if cls_only:  # nothing reads this layer's other rows: queries, output and MLP for [CLS] only
            rows = batch.cls_index
            q = _apply_rotary(qkv[rows, 0], cos[rows, 0], sin[rows, 0])  # [B, H, D]
            k = _apply_rotary(qkv[:, 1], cos[:, 0], sin[:, 0])  # [T, H, D]
            v, x = qkv[:, 2], x[rows]  # [T, H, D], [B, hidden]
        else:
            q, k, v = _rotary_qkv(qkv, cos, sin)  # [T, H, D] each
        a = self.attention(q, k, v, batch, window, cls_only)  # [T or B, H, D]
        x = ops.out(a.reshape(a.shape[0], -1), x)  # x + Wo a
        return ops.mlp(layer.mlp_norm(x), x)  # x + Wo_mlp (gelu(Wi_act h) * Wi_gate h), h = norm(x)


def _segment_mean(x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    seg = torch.repeat_interleave(
        torch.arange(batch.num_pairs, device=x.device), torch.as_tensor(batch.lengths, device=x.device)
    )
    sums = torch.zeros(batch.num_pairs, x.shape[1], device=x.device, dtype=torch.float32)
    sums.index_add_(0, seg, x.float())
    return (sums / torch.as_tensor(batch.lengths, device=x.device, dtype=torch.float32)[:, None]).to(x.dtype)
