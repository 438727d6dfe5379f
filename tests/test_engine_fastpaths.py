"""Each fast path of the unpadded engine computes what its reference computes.

The references: the `reference` attention backend (one SDPA per run of equal-length pairs)
and the layer's own modules (`products="module"`). Bounds against CrossEncoder.predict
itself are in test_engine_fidelity.py; here each fast path is held to its reference.
"""

import numpy as np
import pytest
import torch
from builders import build_ettin, random_texts

from ettin_batch import Reranker
from ettin_batch.engine import attention
from ettin_batch.engine.attention import _matmul, _reference
from ettin_batch.engine.options import EngineOptions
from ettin_batch.engine.packing import PackedBatch
from ettin_batch.engine.tokenize import TokenizedPairs

QUERIES = random_texts(48, 1, 12, seed=21)
DOCUMENTS = random_texts(48, 0, 160, seed=22)  # up to ~170 tokens: the banded blocks run at window 8


@pytest.fixture(scope="module")
def model(models_dir):
    return build_ettin(models_dir / "ettin-fastpaths", layers=4)


def packed(lengths, device="cpu") -> PackedBatch:
    lengths = np.asarray(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.random.default_rng(0).integers(5, 1000, offsets[-1]).astype(np.int32)
    pairs = TokenizedPairs(ids, offsets, None, np.zeros(len(lengths), bool))
    return PackedBatch.from_pairs(pairs, torch.device(device))


# Lengths that take every path of the matmul backend at half windows 8 and 64: one token, short
# runs, several equal-length pairs, dense with a band mask, query blocks, a ragged last block.
LENGTHS = [1, 3, 17, 17, 40, 100, 150, 150, 300, 513]


@pytest.mark.parametrize("window", [None, 8, 64])
def test_matmul_attention_equals_the_reference_in_float64(window):
    batch = packed(LENGTHS)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(len(batch.input_ids), 3, 32, generator=gen, dtype=torch.float64) for _ in range(3))
    ref = _reference(q, k, v, batch, window, False)
    assert torch.allclose(_matmul(q, k, v, batch, window, False), ref, rtol=0, atol=1e-12)
    if window is None:  # the [CLS]-only last layer
        qc = q[batch.cls_index]
        assert torch.allclose(_matmul(qc, k, v, batch, None, True), _reference(qc, k, v, batch, None, True),
                              rtol=0, atol=1e-12)


def test_matmul_attention_leaves_a_square_past_its_limit_to_the_reference(monkeypatch):
    # A long pair on a global layer (max_length 8192, many heads) would hold n * H * L^2 scores at once.
    limit, sizes = 4 * 150 * 150, []
    monkeypatch.setattr(attention, "DENSE_LIMIT", limit)
    dense = attention._dense
    monkeypatch.setattr(attention, "_dense", lambda q, k, *a: sizes.append(q.shape[0] * q.shape[1] * q.shape[2]
                                                                           * k.shape[2]) or dense(q, k, *a))
    gen = torch.Generator().manual_seed(4)
    for lengths in ([150, 150], [300], [17, 40, 100]):
        batch = packed(lengths)
        q, k, v = (torch.randn(len(batch.input_ids), 2, 16, generator=gen, dtype=torch.float64) for _ in range(3))
        for window in (None, 8):
            assert torch.allclose(_matmul(q, k, v, batch, window, False), _reference(q, k, v, batch, window, False),
                                  rtol=0, atol=1e-12)
    assert sizes and max(sizes) <= limit  # the small batches still ran dense


def test_cpu_defaults_are_matmul_and_onednn_in_bfloat16_and_the_reference_attention_in_float32(model):
    bf16 = Reranker.from_pretrained(str(model), max_length=256, dtype="bfloat16")
    fp32 = Reranker.from_pretrained(str(model), max_length=256)
    assert (bf16.attention, bf16._encoder.products_kind) == ("matmul", "onednn")
    assert (fp32.attention, fp32._encoder.products_kind) == ("reference", "onednn")


def test_fused_products_score_like_the_modules_in_float32(model):
    ref = Reranker.from_pretrained(str(model), max_length=256)
    ref._use_engine(EngineOptions(products="module"))
    fast = Reranker.from_pretrained(str(model), max_length=256)
    fast._use_engine(EngineOptions(products="onednn"))
    expected = ref.score(QUERIES, DOCUMENTS)
    assert np.abs(fast.score(QUERIES, DOCUMENTS) - expected).max() <= 1e-5
    assert np.std(expected) > 1e-2


def test_matmul_attention_scores_like_the_reference_in_float32(model):
    ref = Reranker.from_pretrained(str(model), max_length=256, attention="reference")
    fast = Reranker.from_pretrained(str(model), max_length=256, attention="matmul")
    assert np.abs(fast.score(QUERIES, DOCUMENTS) - ref.score(QUERIES, DOCUMENTS)).max() <= 1e-5


def test_unknown_products_is_an_error():
    with pytest.raises(ValueError, match="unknown products 'fast'"):
        EngineOptions(products="fast")
