"""Reranker scores equal sentence-transformers' CrossEncoder.predict on the same saved model."""

import numpy as np
import pytest
import torch
from builders import (build_bert_classifier, build_ettin, build_modernbert_classifier, random_texts,
                      relevance_task, train_relevance)
from sentence_transformers import CrossEncoder

from ettin_batch import Reranker
# The bars `ettin-batch plan` checks a user's model against: one definition for both.
from ettin_batch.plan.fidelity import FP32_TOL, HALF_RMS_RATIO


def reference_scores(path, queries, documents, max_length, dtype=torch.float32):
    ce = CrossEncoder(str(path), max_length=max_length, device="cpu")
    ce.to(dtype)
    return ce.predict(list(zip(queries, documents)), activation_fn=torch.nn.Identity(), batch_size=32)


# Queries short, documents up to ~150 tokens: well past the 16-token local window (half window 8).
QUERIES = random_texts(96, 1, 12, seed=1)
DOCUMENTS = random_texts(96, 0, 120, seed=2)

ETTIN_CONFIGS = {
    "global-every-3": dict(layers=4, global_every=3),  # last layer global: CLS-only last layer
    "global-every-2": dict(layers=5, global_every=2, heads=4),
    "local-last-layer": dict(layers=3, global_every=3),  # layer 2 is local: full last layer
    "all-global": dict(layers=2, global_every=1),
    "mean-pooling": dict(layers=4, global_every=3, pooling="mean"),
}


@pytest.fixture(scope="module", params=sorted(ETTIN_CONFIGS))
def ettin_model(request, models_dir):
    return build_ettin(models_dir / f"ettin-{request.param}", **ETTIN_CONFIGS[request.param])


def test_ettin_float32_matches_crossencoder_predict(ettin_model):
    rr = Reranker.from_pretrained(str(ettin_model), max_length=256)
    assert rr.attention == "reference"
    ours = rr.score(QUERIES, DOCUMENTS)
    ref = reference_scores(ettin_model, QUERIES, DOCUMENTS, 256)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= FP32_TOL
    assert np.std(ref) > 10 * FP32_TOL  # the comparison is not between constants


def test_ettin_padded_path_matches_reference(ettin_model):
    rr = Reranker.from_pretrained(str(ettin_model), max_length=256, attention="padded")
    assert rr.attention == "padded"
    ref = reference_scores(ettin_model, QUERIES, DOCUMENTS, 256)
    assert np.abs(rr.score(QUERIES, DOCUMENTS) - ref).max() <= FP32_TOL


@pytest.mark.parametrize("max_length", [16, 17, 33, 64])
def test_truncation_boundaries_match_reference(models_dir, max_length):
    path = build_ettin(models_dir / "ettin-trunc", layers=4)
    rr = Reranker.from_pretrained(str(path), max_length=max_length)
    lengths = rr.tokenizer(QUERIES, DOCUMENTS).lengths
    assert lengths.max() == max_length and lengths.min() < max_length
    ref = reference_scores(path, QUERIES, DOCUMENTS, max_length)
    assert np.abs(rr.score(QUERIES, DOCUMENTS) - ref).max() <= FP32_TOL


def test_query_longer_than_max_length_matches_reference(models_dir):
    path = build_ettin(models_dir / "ettin-longq", layers=4)
    queries = random_texts(8, 60, 80, seed=3)
    documents = random_texts(8, 1, 5, seed=4)
    rr = Reranker.from_pretrained(str(path), max_length=32)
    ref = reference_scores(path, queries, documents, 32)
    assert np.abs(rr.score(queries, documents) - ref).max() <= FP32_TOL


@pytest.mark.parametrize("builder", [build_bert_classifier, build_modernbert_classifier])
def test_classic_sequence_classification_crossencoders_match_reference(models_dir, builder):
    path = builder(models_dir / builder.__name__)
    rr = Reranker.from_pretrained(str(path), max_length=128)
    assert rr.attention == "padded"
    ref = reference_scores(path, QUERIES, DOCUMENTS, 128)
    ours = rr.score(QUERIES, DOCUMENTS)
    assert np.abs(ours - ref).max() <= FP32_TOL
    assert np.std(ref) > 10 * FP32_TOL


def test_bert_uses_token_type_ids(models_dir):
    path = build_bert_classifier(models_dir / "bert-types")
    pairs = Reranker.from_pretrained(str(path), max_length=64).tokenizer(["a b c"], ["d e"])
    assert pairs.segment_a is not None and pairs.segment_a[0] < pairs.lengths[0]


def test_bfloat16_error_no_larger_than_crossencoder_bfloat16(models_dir):
    path = build_ettin(models_dir / "ettin-bf16", layers=4)
    ref32 = reference_scores(path, QUERIES, DOCUMENTS, 256)
    ref16 = reference_scores(path, QUERIES, DOCUMENTS, 256, dtype=torch.bfloat16)
    ours16 = Reranker.from_pretrained(str(path), max_length=256, dtype="bfloat16").score(QUERIES, DOCUMENTS)
    rms = lambda a: float(np.sqrt(np.mean((a - ref32) ** 2)))  # noqa: E731
    assert rms(ref16) > 0  # bf16 really differs from fp32 here
    assert rms(ours16) <= HALF_RMS_RATIO * rms(ref16)


@pytest.fixture(scope="module")
def trained_model(models_dir):
    path = build_ettin(models_dir / "ettin-trained", layers=4)
    return train_relevance(path)


def test_trained_fixture_ranks_relevant_documents_first(trained_model):
    q, d, _ = relevance_task(100, 100, 10, seed=99)
    scores = Reranker.from_pretrained(str(trained_model), max_length=128).score(q, d).reshape(100, 100)
    top10 = np.argsort(-scores, axis=1)[:, :10]
    assert (top10 < 10).mean() >= 0.9  # relevant candidates are 0..9


def test_bfloat16_top10_matches_float32_top10(trained_model):
    q, d, _ = relevance_task(100, 100, 10, seed=99)
    s32 = Reranker.from_pretrained(str(trained_model), max_length=128).score(q, d).reshape(100, 100)
    s16 = Reranker.from_pretrained(str(trained_model), max_length=128, dtype="bfloat16").score(q, d).reshape(100, 100)
    top32 = np.argsort(-s32, axis=1)[:, :10]
    top16 = np.argsort(-s16, axis=1)[:, :10]
    same = np.mean([set(a) == set(b) for a, b in zip(top32, top16)])
    assert same >= 0.95
