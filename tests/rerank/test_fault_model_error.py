"""A row that makes the model itself raise goes to rejects/ with its reason; the rest of its batch
and the job go on, and in = scored + rejected.

The fault is real, not mocked: a model whose tokenizer knows one token more than the model has
embeddings (a checkpoint saved after add_tokens without resize_token_embeddings). A pair holding
that token tokenizes fine and makes the engine raise IndexError (before the forward pass, which on a GPU
would stop at a device-side assert: tests/test_engine_behaviour.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from builders import (OVERFLOW_TOKEN, UNEMBEDDED_TOKEN, build_ettin_with_an_overflowing_token,
                      build_ettin_with_an_unembedded_token)

from ettin_batch.config import RerankConfig
from ettin_batch import rerank
from ettin_batch.pipeline.score import ScorePairs
from ettin_batch.config import ScoringConfig
from ettin_batch.pipeline.rejects import RejectsDir
from ettin_batch.pipeline.tokenize_stage import Tokenize

from .faults import accounting, make_shards, record

REASON = ("the model failed on this pair: IndexError: token id 588 has no embedding in this model (it embeds ids "
          "below 588): its tokenizer has tokens the model was not given (tokenizer.add_tokens without "
          "model.resize_token_embeddings?)")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(build_ettin_with_an_unembedded_token(tmp_path_factory.mktemp("unembedded") / "model"))


def _poisoned(n: int, poisoned_at: tuple[int, ...], seed: int = 0) -> pa.Table:
    table = make_shards(files=1, pairs_per_file=n, seed=seed)[0]
    docs = [f"{d} {UNEMBEDDED_TOKEN}" if i in poisoned_at else d for i, d in enumerate(table["document"].to_pylist())]
    return table.set_column(table.column_names.index("document"), "document", pa.array(docs))


def _stats():
    """The job's own stats actor (a stand-in fell behind it once: the actor gained a report ScorePairs makes)."""
    from ettin_batch.pipeline.score import RunStats

    return RunStats.remote()


class _StatsThatCannotAdd:
    """The real stats actor, but reporting figures raises, as a call to a lost actor can."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    @property
    def add(self):
        def broken(*args, **kwargs):
            raise ConnectionError("the stats actor is gone")

        return SimpleNamespace(remote=broken)


def test_the_scoring_step_rejects_only_the_pairs_the_model_raises_on_and_a_retry_rewrites_them(tmp_path, model, ray_session):
    fs = pafs.LocalFileSystem()
    tokenized = Tokenize(ScoringConfig(model=model), RejectsDir(str(tmp_path / "tokenizer-rejects"), fs))(_poisoned(16, (3, 11)))
    assert tokenized.num_rows == 16  # the tokenizer takes every row; only the model fails
    step = ScorePairs(scoring=ScoringConfig(model=model, dtype="float32"), device="cpu", threads=None, stats=_stats(),
                      rejects=RejectsDir(str(tmp_path / "rejects"), fs))
    out = step(tokenized)
    assert out.num_rows == 14
    assert ("q0-0", "d3") not in set(zip(out["query_id"].to_pylist(), out["doc_id"].to_pylist()))
    assert step(tokenized).equals(out)  # a retried batch: same rows out, the same rejects file rewritten
    rejects = pq.read_table(tmp_path / "rejects")
    assert len(list((tmp_path / "rejects").iterdir())) == 1
    assert rejects.select(["query_id", "doc_id", "reason"]).to_pylist() == [
        {"query_id": "q0-0", "doc_id": "d3", "reason": REASON}, {"query_id": "q0-1", "doc_id": "d1", "reason": REASON}]
    clean = tokenized.filter(pa.array([i not in (3, 11) for i in range(16)]))
    alone = step(clean)["score"].to_numpy()  # the others' scores are their own (packed differently: float noise)
    assert abs(alone - out["score"].to_numpy()).max() < 1e-5


def test_a_batch_where_every_pair_fails_alone_fails_instead_of_rejecting_everything(tmp_path, model, ray_session):
    fs = pafs.LocalFileSystem()
    tokenized = Tokenize(ScoringConfig(model=model), RejectsDir(str(tmp_path / "tokenizer-rejects"), fs))(_poisoned(4, (0, 1, 2, 3)))
    step = ScorePairs(scoring=ScoringConfig(model=model, dtype="float32"), device="cpu", threads=None, stats=_stats(),
                      rejects=RejectsDir(str(tmp_path / "rejects"), fs))
    with pytest.raises(RuntimeError, match="the model or the device is broken"):
        step(tokenized)
    assert not (tmp_path / "rejects").exists()


def test_an_error_outside_the_model_call_is_not_blamed_on_the_rows(tmp_path, model, ray_session):
    fs = pafs.LocalFileSystem()
    tokenized = Tokenize(ScoringConfig(model=model), RejectsDir(str(tmp_path / "tokenizer-rejects"), fs))(_poisoned(4, ()))

    stats = _StatsThatCannotAdd(_stats())
    step = ScorePairs(scoring=ScoringConfig(model=model, dtype="float32"), device="cpu", threads=None, stats=stats,
                      rejects=RejectsDir(str(tmp_path / "rejects"), fs))
    with pytest.raises(ConnectionError):
        step(tokenized)
    assert not (tmp_path / "rejects").exists()


def test_a_job_with_rows_the_model_raises_on_scores_the_rest_and_rejects_them(tmp_path, ray_session, model):
    clean = make_shards(files=1, pairs_per_file=30, seed=1)[0]
    clean = clean.set_column(0, "query_id", pa.array([f"clean-{q}" for q in clean["query_id"].to_pylist()]))
    shards = [_poisoned(40, (3, 17)), clean]
    (tmp_path / "in").mkdir()
    for i, table in enumerate(shards):
        pq.write_table(table, tmp_path / "in" / f"part-{i}.parquet")
    result = rerank(RerankConfig.of(input=[str(tmp_path / "in")], output=str(tmp_path / "out"), model=model,
                                 batch_size=16, progress=False))
    assert result.counts == {**result.counts, "in": 70, "scored": 68, "rejected": 2}
    rejects = pq.read_table(tmp_path / "out" / "rejects", columns=["query_id", "doc_id", "reason"])
    assert sorted(rejects["doc_id"].to_pylist()) == ["d3", "d7"]
    assert set(rejects["reason"].to_pylist()) == {REASON}
    scores = pq.read_table(tmp_path / "out" / "scores")
    figures = accounting(pa.concat_tables(shards), scores, rejects)
    record("test_a_job_with_rows_the_model_raises_on_scores_the_rest_and_rejects_them",
           {"fault": "2 rows holding a token the model has no embedding for (the engine raises IndexError)",
            **figures, "model_pairs": result.manifest["model_pairs"]})
    assert figures == {"in": 70, "out": 70, "duplicates": 0, "lost": 0, "unknown": 0}
    assert result.manifest["model_pairs"] == 68  # every scored pair once: the calls that raised scored nothing


def test_the_teacher_job_rejects_the_rows_the_model_raises_on_with_their_texts(tmp_path, ray_session, model):
    from ettin_batch.config import TeacherConfig
    from ettin_batch.pipeline.teacher import teacher_dataset

    shard = _poisoned(40, (3, 17), seed=2)
    (tmp_path / "in").mkdir()
    pq.write_table(shard, tmp_path / "in" / "part-0.parquet")
    result = teacher_dataset(TeacherConfig.of(input=[str(tmp_path / "in")], output=str(tmp_path / "out"), model=model,
                                           batch_size=16, progress=False))
    assert result.manifest["counts"] == {**result.manifest["counts"], "in": 40, "scored": 38, "rejected": 2}
    rejects = pq.read_table(tmp_path / "out" / "rejects").sort_by("doc_id")
    poisoned = shard.take([3, 17]).sort_by("doc_id")
    assert rejects["reason"].to_pylist() == [REASON, REASON]
    for name in ("query_id", "doc_id", "query", "document"):  # the input row, under its own names
        assert rejects[name].to_pylist() == poisoned[name].to_pylist(), name
    data = pq.read_table(tmp_path / "out" / "data")
    assert data.num_rows == 38 and not set(zip(data["query_id"].to_pylist(), data["doc_id"].to_pylist())) & set(
        zip(rejects["query_id"].to_pylist(), rejects["doc_id"].to_pylist()))


def test_a_pair_the_model_gives_no_finite_score_is_rejected_not_written_as_nan(tmp_path, ray_session):
    """A NaN score sorts anywhere in a top-k and stops `labels`: such a pair (here, a token whose embedding is
    infinite) goes to rejects/ with why; the rest of its batch scores."""
    model = str(build_ettin_with_an_overflowing_token(tmp_path / "model"))
    table = make_shards(files=1, pairs_per_file=40, seed=3)[0]
    docs = [f"{d} {OVERFLOW_TOKEN}" if i in (5, 22) else d for i, d in enumerate(table["document"].to_pylist())]
    table = table.set_column(table.column_names.index("document"), "document", pa.array(docs))
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "part-0.parquet")
    result = rerank(RerankConfig.of(input=[str(tmp_path / "in")], output=str(tmp_path / "out"), model=model,
                                    batch_size=16, progress=False))
    assert result.counts == {**result.counts, "in": 40, "scored": 38, "rejected": 2}
    rejects = pq.read_table(tmp_path / "out" / "rejects").sort_by("doc_id")
    assert rejects["doc_id"].to_pylist() == sorted(table["doc_id"].take([5, 22]).to_pylist())
    assert set(rejects["reason"].to_pylist()) == {
        "the model's score for this pair is nan, not a finite number (the model ran in float32: in float16, an "
        "overflow, so use bfloat16 or float32; else check the model's weights)"}
    scores = pq.read_table(tmp_path / "out" / "scores")
    assert scores.num_rows == 38 and np.isfinite(scores["score"].to_numpy()).all()
    assert np.isfinite(pq.read_table(tmp_path / "out" / "topk")["score"].to_numpy()).all()
    figures = accounting(table, scores, rejects)
    record("test_a_pair_the_model_gives_no_finite_score_is_rejected_not_written_as_nan",
           {"fault": "2 rows holding a token whose embedding is infinite (the model scores them NaN)", **figures,
            "model_pairs": result.manifest["model_pairs"]})
    assert figures == {"in": 40, "out": 40, "duplicates": 0, "lost": 0, "unknown": 0}
