"""Which implementation runs the matrix products of the unpadded forward pass.

Every fast path has an exact reference beside it, and the default is the path measured to be
faster where it runs: oneDNN products with their elementwise steps fused in on the CPU
(benchmarks/RESULTS.md); on CUDA the layer's own modules.
"""

from __future__ import annotations

from dataclasses import dataclass

PRODUCTS = ("auto", "module", "onednn")


@dataclass(frozen=True)
class EngineOptions:
    """Switches of the unpadded engine (a ModernBERT encoder scored from a packed stream).

    products: the layer's matrix products and the step after each (products.py): "auto"
              (oneDNN where it can run, else the modules), "module" (the reference:
              transformers' own modules), "onednn" (CPU only).
    """

    products: str = "auto"

    def __post_init__(self):
        if self.products not in PRODUCTS:
            raise ValueError(f"unknown products {self.products!r}; choose one of {PRODUCTS}")
