"""An encoder layer's matrix products and the elementwise step after each.

A ModernBERT layer has four products, each followed by a cheap elementwise step that
transformers runs as a separate pass over its output:

    qkv = Wqkv h                                      [T, 3 * hidden]
    x   = x + Wo a                                    residual add
    g   = gelu(Wi_act h) * (Wi_gate h)                the GLU (Wi's two halves)
    x   = x + Wo_mlp g                                residual add

Two implementations, one interface (`qkv`, `out`, `mlp`):

- ModuleProducts: the layer's own modules, exactly as transformers runs them (the
  reference; any device, any dtype, any activation).
- OneDnnProducts (CPU): each elementwise step is a post-op of its product in oneDNN
  (`torch.ops.mkldnn._linear_pointwise`, the kernels torch.compile's CPU backend uses):
  no separate pass over [T, 3 * intermediate] or [T, hidden], and in bf16 one rounding
  where transformers rounds after the product and again after the step. Weights are
  packed once into oneDNN's blocked layout.
"""

from __future__ import annotations

import torch
from torch import nn

# transformers' activation names -> oneDNN post-op (name, algorithm).
_ONEDNN_ACT = {"gelu": ("gelu", "none"), "gelu_pytorch_tanh": ("gelu", "tanh"), "gelu_new": ("gelu", "tanh")}


class ModuleProducts:
    """The reference: the layer's modules, then each elementwise step as its own op."""

    def __init__(self, layer: nn.Module):
        self.layer = layer

    def qkv(self, h: torch.Tensor) -> torch.Tensor:
        return self.layer.attn.Wqkv(h)

    def out(self, a: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return residual + self.layer.attn.Wo(a)

    def mlp(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return residual + self.layer.mlp(h)


class OneDnnProducts:
    """oneDNN products with the elementwise step fused in (CPU only)."""

    def __init__(self, layer: nn.Module, activation: str):
        self.act, self.act_algorithm = _ONEDNN_ACT[activation]
        attn, mlp = layer.attn, layer.mlp
        half = mlp.Wi.weight.shape[0] // 2  # Wi stacks [act half; gate half], as transformers' chunk(2) reads it
        self.wqkv, self.bqkv = _pack(attn.Wqkv.weight), attn.Wqkv.bias
        self.wo, self.bo = _pack(attn.Wo.weight), attn.Wo.bias
        self.wi_act, self.bi_act = _pack(mlp.Wi.weight[:half]), _half(mlp.Wi.bias, 0, half)
        self.wi_gate, self.bi_gate = _pack(mlp.Wi.weight[half:]), _half(mlp.Wi.bias, half, None)
        self.wo_mlp, self.bo_mlp = _pack(mlp.Wo.weight), mlp.Wo.bias

    def qkv(self, h: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(h, self.wqkv, self.bqkv, "none", [], "")

    def out(self, a: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise.binary(a, residual, self.wo, self.bo, "add")

    def mlp(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        g = torch.ops.mkldnn._linear_pointwise(h, self.wi_act, self.bi_act, self.act, [], self.act_algorithm)
        g = torch.ops.mkldnn._linear_pointwise.binary(h, g, self.wi_gate, self.bi_gate, "mul")  # gate * act
        return torch.ops.mkldnn._linear_pointwise.binary(g, residual, self.wo_mlp, self.bo_mlp, "add")


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous())


def _half(bias: torch.Tensor | None, start: int, stop: int | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach()[start:stop]


def onednn_usable(model: nn.Module) -> str:
    """Why the oneDNN products cannot run this model here ("" when they can)."""
    param = next(model.parameters())
    if param.device.type != "cpu":
        return f"weights on {param.device.type}"
    if not torch.backends.mkldnn.is_available():
        return "this torch has no oneDNN"
    if param.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "this CPU has no bf16 support in oneDNN"
    if param.dtype not in (torch.float32, torch.bfloat16):
        return f"dtype {param.dtype}"
    activation = getattr(model.config, "hidden_activation", None)
    if activation not in _ONEDNN_ACT:
        return f"activation {activation!r} has no oneDNN post-op here"
    return ""


def layer_products(model: nn.Module, kind: str) -> list:
    """One products object per layer: kind "module" (the reference) or "onednn" (CPU)."""
    if kind == "module":
        return [ModuleProducts(layer) for layer in model.layers]
    if kind != "onednn":
        raise ValueError(f"unknown products {kind!r}; choose module or onednn")
    why = onednn_usable(model)
    if why:
        raise ValueError(f"the oneDNN products cannot run here: {why}; use 'module'")
    return [OneDnnProducts(layer, model.config.hidden_activation) for layer in model.layers]
