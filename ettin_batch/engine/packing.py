"""Length bucketing and token-budget packing.

Pairs are sorted by token length (the buckets are runs of that order) and cut into
batches by a token budget rather than a pair count, so a batch of short pairs holds
many of them, a batch of long pairs few, and device memory stays bounded either way.
The packed tensors of one batch (`PackedBatch`) are what the forward pass consumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .tokenize import TokenizedPairs


def pack_batches(lengths: np.ndarray, max_tokens: int, *, padded: bool = False,
                 ties: np.ndarray | None = None) -> list[np.ndarray]:
    """Split pair indices into batches whose cost stays within `max_tokens`.

    Cost is the sum of lengths when unpadded, or pairs x longest pair when `padded`.
    Each batch's indices come out sorted by ascending length, pairs of one length by `ties`
    (else by index); the batches themselves go longest first, so a budget too large for the
    device fails on the first batch. A pair longer than the budget gets a batch of its own.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable") if ties is None else np.lexsort((ties, lengths))
    batches: list[np.ndarray] = []
    if padded:
        # Sorted ascending, so the last pair of a batch is its longest: cost = count * length[last].
        start = 0
        while start < len(order):
            stop = start + 1
            while stop < len(order) and (stop - start + 1) * lengths[order[stop]] <= max_tokens:
                stop += 1
            batches.append(order[start:stop])
            start = stop
    else:
        csum = np.cumsum(lengths[order])
        start, used = 0, 0
        while start < len(order):
            stop = int(np.searchsorted(csum, used + max_tokens, side="right"))
            stop = max(stop, start + 1)
            batches.append(order[start:stop])
            used = int(csum[stop - 1])
            start = stop
    return batches[::-1]


@dataclass
class PackedBatch:
    """One batch as a single token stream.

    input_ids:    int64 [T] on the device, every pair back to back.
    position_ids: int64 [T], restarting at 0 for each pair.
    cu_seqlens:   int32 [B + 1] on the device, pair boundaries (flash-attn's format).
    cls_index:    int64 [B], offset of each pair's first token ([CLS]).
    max_seqlen:   longest pair, tokens (a host int: kernels need it without a sync).
    groups:       (first token, pairs, length) runs of equal-length pairs, for the exact
                  CPU attention, which batches each run as one dense SDPA call.
    cache:        what an attention backend derives from the batch once for all layers.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    cls_index: torch.Tensor
    max_seqlen: int
    groups: list[tuple[int, int, int]]
    lengths: np.ndarray
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_pairs(self) -> int:
        return len(self.lengths)

    @classmethod
    def from_pairs(cls, pairs: TokenizedPairs, device: torch.device) -> PackedBatch:
        lengths = pairs.lengths
        offsets = pairs.offsets
        starts = offsets[:-1]
        positions = np.arange(offsets[-1], dtype=np.int64) - np.repeat(starts, lengths)
        # Runs of equal length: contiguous in token space because pairs are back to back.
        change = np.flatnonzero(np.diff(lengths)) + 1
        bounds = np.concatenate([[0], change, [len(lengths)]])
        groups = [(int(starts[a]), int(b - a), int(lengths[a])) for a, b in zip(bounds[:-1], bounds[1:])]
        pin = device.type == "cuda"

        def to_dev(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(a)).to(dtype)
            return t.pin_memory().to(device, non_blocking=True) if pin else t.to(device)

        return cls(
            input_ids=to_dev(pairs.input_ids, torch.int64),
            position_ids=to_dev(positions, torch.int64),
            cu_seqlens=to_dev(offsets, torch.int32),
            cls_index=to_dev(starts, torch.int64),
            max_seqlen=int(lengths.max()) if len(lengths) else 0,
            groups=groups,
            lengths=lengths,
        )
