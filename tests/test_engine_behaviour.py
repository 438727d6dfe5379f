"""Reranker behaviour beyond fidelity: packing, ordering, bad input, loading rules."""

import json
import logging
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from builders import build_ettin, random_texts
from sentence_transformers import CrossEncoder

from ettin_batch import Reranker
from ettin_batch.engine import ModelLoadError, PairTokenizer, TokenizedPairs
from ettin_batch.engine.packing import pack_batches

QUERIES = random_texts(64, 1, 10, seed=11)
DOCUMENTS = random_texts(64, 0, 90, seed=12)


@pytest.fixture(scope="module")
def model(models_dir):
    return build_ettin(models_dir / "ettin-behaviour", layers=4)


@pytest.fixture(scope="module")
def reranker(model):
    return Reranker.from_pretrained(str(model), max_length=128)


def test_scores_come_back_in_input_order(reranker):
    scores = reranker.score(QUERIES, DOCUMENTS)
    perm = np.random.default_rng(0).permutation(len(QUERIES))
    shuffled = reranker.score([QUERIES[i] for i in perm], [DOCUMENTS[i] for i in perm])
    np.testing.assert_allclose(shuffled, scores[perm], atol=1e-5)


def test_the_same_pairs_in_another_order_give_the_same_bits(reranker):
    # A pair's float rounding depends on where it sits in a batch; Ray hands the actors the same rows in
    # whatever order their blocks arrived, so pairs of one length are ordered by content, not by arrival.
    queries, documents = random_texts(96, 3, 3, seed=21), random_texts(96, 20, 20, seed=22)  # many of one length
    scores = reranker.score(queries, documents)
    for seed in (1, 2):
        perm = np.random.default_rng(seed).permutation(len(queries))
        shuffled = reranker.score([queries[i] for i in perm], [documents[i] for i in perm])
        assert shuffled.tobytes() == scores[perm].tobytes()


def test_pairs_of_one_length_are_packed_in_the_order_of_the_keys_given(reranker):
    # The job passes each row's pair fingerprint as the key; any key that goes with the pair keeps the bits.
    queries, documents = random_texts(96, 3, 3, seed=23), random_texts(96, 20, 20, seed=24)
    pairs = reranker.tokenizer(queries, documents)
    keys = np.random.default_rng(0).permutation(len(queries)).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    scores = reranker.score_tokens(pairs, keys)
    np.testing.assert_allclose(scores, reranker.score_tokens(pairs), atol=1e-5)
    for seed in (1, 2):
        perm = np.random.default_rng(seed).permutation(len(queries))
        assert reranker.score_tokens(pairs.take(perm), keys[perm]).tobytes() == scores[perm].tobytes()


def test_token_budget_does_not_change_scores(model, reranker):
    small = Reranker.from_pretrained(str(model), max_length=128, max_tokens_per_batch=128)
    np.testing.assert_allclose(small.score(QUERIES, DOCUMENTS), reranker.score(QUERIES, DOCUMENTS), atol=1e-5)
    assert small.stats["batches"] > 10


def test_pack_batches_respects_token_budget_and_covers_every_pair():
    lengths = np.random.default_rng(1).integers(3, 512, 1000)
    batches = pack_batches(lengths, 2048)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(lengths[b].sum() <= 2048 for b in batches)
    assert all(np.all(np.diff(lengths[b]) >= 0) for b in batches)  # length-sorted inside a batch


def test_padded_packing_bounds_pairs_times_longest():
    lengths = np.random.default_rng(2).integers(3, 512, 1000)
    batches = pack_batches(lengths, 4096, padded=True)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(len(b) * lengths[b].max() <= 4096 for b in batches)


def test_pair_longer_than_budget_gets_its_own_batch():
    batches = pack_batches(np.array([10, 5000, 20]), 1000)
    assert [len(b) for b in batches] == [1, 2]


def test_tokenized_pairs_round_trip_through_arrow(reranker):
    pairs = reranker.tokenizer(QUERIES, DOCUMENTS)
    table = pa.table(pairs.to_arrow())
    back = TokenizedPairs.from_arrow(table.slice(5, 20))
    expected = pairs.take(np.arange(5, 25))
    np.testing.assert_array_equal(back.input_ids, expected.input_ids)
    np.testing.assert_array_equal(back.offsets, expected.offsets)
    np.testing.assert_array_equal(back.truncated, expected.truncated)


def test_score_tokens_equals_score(reranker):
    pairs = reranker.tokenizer(QUERIES, DOCUMENTS)
    np.testing.assert_array_equal(reranker.score_tokens(pairs), reranker.score(QUERIES, DOCUMENTS))


def test_truncated_pairs_are_counted(model):
    rr = Reranker.from_pretrained(str(model), max_length=32)
    untruncated = PairTokenizer.from_pretrained(str(model), 4096)(QUERIES, DOCUMENTS)
    pairs = rr.tokenizer(QUERIES, DOCUMENTS)
    assert pairs.num_truncated == int((untruncated.lengths > 32).sum())
    rr.score_tokens(pairs)
    assert rr.stats["truncated"] == pairs.num_truncated > 0


def test_tokenizers_over_one_model_do_not_share_truncation(model):
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(str(model))  # one tokenizer object under both
    short = PairTokenizer(hf_tokenizer, 32)
    long = PairTokenizer(hf_tokenizer, 4096)
    assert short(QUERIES, DOCUMENTS).lengths.max() == 32
    assert long(QUERIES, DOCUMENTS).lengths.max() > 32
    assert short(QUERIES, DOCUMENTS).lengths.max() == 32  # building and using `long` changed nothing


def test_empty_strings_score_like_the_reference(model, reranker):
    queries, documents = ["", "alpha", ""], ["beta", "", ""]
    ref = CrossEncoder(str(model), max_length=128).predict(list(zip(queries, documents)),
                                                           activation_fn=torch.nn.Identity())
    assert np.abs(reranker.score(queries, documents) - ref).max() <= 1e-4


def test_empty_input_gives_empty_scores(reranker):
    assert reranker.score([], []).shape == (0,)


def test_mismatched_lengths_is_a_value_error(reranker):
    with pytest.raises(ValueError, match="3 queries, 2 documents"):
        reranker.score(["a", "b", "c"], ["x", "y"])


def test_none_text_names_its_index(reranker):
    with pytest.raises(ValueError, match="document at index 1"):
        reranker.score(["a", "b"], ["x", None])
    with pytest.raises(ValueError, match="query at index 0"):
        reranker.score([None, "b"], ["x", "y"])


def test_folder_that_is_not_a_cross_encoder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel"):
        Reranker.from_pretrained(str(tmp_path))


def test_sentence_transformer_embedding_model_is_refused(tmp_path):
    (tmp_path / "modules.json").write_text("[]")
    (tmp_path / "config_sentence_transformers.json").write_text(json.dumps({"model_type": "SentenceTransformer"}))
    with pytest.raises(ModelLoadError, match="SentenceTransformer, not a CrossEncoder"):
        Reranker.from_pretrained(str(tmp_path))


def test_pickle_only_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="safetensors only"):
        Reranker.from_pretrained(str(tmp_path))


def test_missing_local_folder_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Reranker.from_pretrained(str(tmp_path / "nope"))


def test_unreachable_hub_says_to_pass_a_local_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="pass its local folder"):
        Reranker.from_pretrained("cross-encoder/ettin-reranker-17m-v1")


def test_random_model_has_the_real_shape_and_warns(caplog):
    from transformers.utils.logging import warning_once

    warning_once.cache_clear()  # sentence-transformers warns once per process: let an earlier test not hide it
    with caplog.at_level(logging.WARNING):
        rr = Reranker.from_pretrained("random:ettin-17m", max_length=64)
    assert "RANDOM weights" in caplog.text
    # Saved in bfloat16 (below), loaded in float32: no "loaded in torch.bfloat16 on CPU" warning for a
    # dtype the engine does not run in.
    assert "bfloat16" not in caplog.text and rr.dtype == torch.float32
    assert rr.info["is_random"] and rr.info["model_id"] == "random:ettin-17m"
    saved = CrossEncoder(rr.info["path"], device="cpu")  # the folder the engine loaded, read by sentence-transformers
    cfg = saved[0].model.config
    assert saved[0].model.dtype == torch.bfloat16
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
            cfg.vocab_size) == (7, 256, 384, 4, 50368)
    assert sum(p.numel() for p in saved.parameters()) == pytest.approx(17.6e6, rel=0.05)


def test_named_backend_that_cannot_run_here_is_an_error(model):
    with pytest.raises(ValueError, match="cannot run on cpu"):
        Reranker.from_pretrained(str(model), attention="torch")


def test_engine_does_not_import_ray():
    code = "import sys, ettin_batch.engine; from ettin_batch import Reranker; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_token_the_model_does_not_embed_fails_on_the_host_before_the_model_runs(tmp_path, caplog):
    """A tokenizer saved with tokens the model was never given (add_tokens without resize_token_embeddings):
    on a GPU such an id is a device-side assert that leaves the process's CUDA context unusable, so every
    later batch of a scoring actor fails too. The engine says so at load and refuses the ids before any
    forward pass, on every device, with an IndexError the job rejects the pair for (tests/rerank)."""
    from builders import UNEMBEDDED_TOKEN, build_ettin_with_an_unembedded_token

    from ettin_batch.engine.faults import FaultHooks

    with caplog.at_level(logging.WARNING, logger="ettin_batch"):
        reranker = Reranker.from_pretrained(str(build_ettin_with_an_unembedded_token(tmp_path / "m")), max_length=64)
    assert any("1 token(s) of its tokenizer have no embedding" in r.getMessage() for r in caplog.records)
    forwards = tmp_path / "forwards.log"
    reranker.faults = FaultHooks(slow_forward_seconds=0.0, forward_log=str(forwards))
    good = reranker.score(["a query"], ["a document"])
    assert np.isfinite(good).all() and len(forwards.read_text().splitlines()) == 1
    with pytest.raises(IndexError, match=r"token id \d+ has no embedding in this model"):
        reranker.score(["a query", "another"], ["a document", f"a document with {UNEMBEDDED_TOKEN}"])
    assert len(forwards.read_text().splitlines()) == 1  # no forward pass saw the batch


def test_a_pair_that_runs_out_of_device_memory_alone_says_what_to_change(reranker):
    from ettin_batch.engine.faults import FaultHooks

    pairs = reranker.tokenizer(QUERIES, DOCUMENTS)
    longest = int(pairs.lengths.max())
    reranker.faults = FaultHooks(oom_above_tokens=longest - 1)  # every pair fits alone but the longest
    splits = reranker.stats["oom_splits"]
    try:
        with pytest.raises(torch.OutOfMemoryError) as raised:
            reranker.score_tokens(pairs)
    finally:
        reranker.faults = None
    message = str(raised.value)
    assert f"one pair of {longest} tokens does not fit in cpu memory on its own" in message
    assert "max_length 128" in message and "--max-length" in message and "nvidia-smi" in message
    assert "fault injection: a forward pass over" in message  # the device's own words are kept
    assert reranker.stats["oom_splits"] > splits  # batches were halved down to the one pair first
