"""The pipeline's steps are plain functions on Arrow tables: checked here without Ray."""

from __future__ import annotations

import pyarrow as pa
import pytest
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ettin_batch.engine.tokenize import IDS_COL, TokenizedPairs
from ettin_batch.pipeline.topk import distinct_pairs, final_topk, partial_topk
from ettin_batch.pipeline.tokenize import tokenize_batch

from .conftest import TINY

RENAME = {"qid": "query_id", "q": "query", "pid": "doc_id", "text": "document"}


def _batch():
    return pa.table({"qid": [1, 1, 2, None], "q": ["a query", None, "other", "x"], "pid": ["d1", "d2", "d1", "d9"],
                     "text": [None, "doc", "some document", "y"], "lang": ["en", "de", "fr", "it"]})


def _tokenize(batch, rejects_dir):
    return tokenize_batch(batch, model=TINY, revision=None, max_length=32, rename=RENAME,
                          rejects_dir=str(rejects_dir), filesystem=pafs.LocalFileSystem())


def test_tokenize_step_sets_null_rows_aside_with_every_reason(tmp_path):
    _tokenize(_batch(), tmp_path / "rejects")
    rejects = pq.read_table(tmp_path / "rejects").sort_by("doc_id")
    assert rejects.column_names == ["query_id", "query", "doc_id", "document", "lang", "reason"]
    assert list(zip(rejects["doc_id"].to_pylist(), rejects["reason"].to_pylist())) == [
        ("d1", "null document"), ("d2", "null query"), ("d9", "null query_id")]


def test_tokenize_step_emits_canonical_ids_tokens_and_pass_through_but_no_text(tmp_path):
    out = _tokenize(_batch(), tmp_path / "rejects")
    assert out["query_id"].to_pylist() == [2] and out["doc_id"].to_pylist() == ["d1"]
    assert out["lang"].to_pylist() == ["fr"]
    assert "query" not in out.column_names and "document" not in out.column_names
    pairs = TokenizedPairs.from_arrow(out)
    assert len(pairs) == 1 and 0 < pairs.lengths[0] <= 32


def test_a_retried_batch_rewrites_the_same_rejects_file(tmp_path):
    _tokenize(_batch(), tmp_path / "rejects")
    _tokenize(_batch(), tmp_path / "rejects")
    assert len(list((tmp_path / "rejects").iterdir())) == 1


def test_a_batch_without_problems_writes_no_rejects(tmp_path):
    batch = _batch().slice(2, 1)
    out = _tokenize(batch, tmp_path / "rejects")
    assert out.num_rows == 1 and IDS_COL in out.column_names
    assert not (tmp_path / "rejects").exists()


def test_final_topk_ranks_by_score_then_doc_id_descending_as_trec_eval_does():
    group = pa.table({"query_id": ["q"] * 4, "doc_id": ["d3", "d1", "d2", "d0"],
                      "score": pa.array([0.5, 0.9, 0.5, 0.1], pa.float32())})
    top = final_topk(group, k=3)
    assert top.column_names == ["query_id", "rank", "doc_id", "score"]
    assert top["doc_id"].to_pylist() == ["d1", "d3", "d2"] and top["rank"].to_pylist() == [1, 2, 3]


def test_final_topk_compares_integer_doc_ids_as_text_like_trec_eval():
    # trec_eval reads ids as text: at a tie "9" ranks above "10" (strcmp), not below it.
    group = pa.table({"query_id": [1, 1, 1], "doc_id": pa.array([10, 9, 2], pa.int64()),
                      "score": pa.array([0.5, 0.5, 0.1], pa.float32())})
    top = final_topk(group, k=2)
    assert top["doc_id"].to_pylist() == [9, 10] and top.schema.field("doc_id").type == pa.int64()


def test_a_document_listed_twice_fills_one_place_in_a_block_and_in_the_final_cut():
    # Block 1 lists d1 twice: kept twice, it would take both of the block's k=2 places and push d2
    # out of the block's partial top-k, losing it from the final cut.
    block1 = pa.table({"query_id": ["q"] * 4, "doc_id": ["d1", "d1", "d2", "d3"],
                       "score": pa.array([0.9, 0.8, 0.7, 0.1], pa.float32())})
    block2 = pa.table({"query_id": ["q"] * 2, "doc_id": ["d1", "d4"], "score": pa.array([0.95, 0.2], pa.float32())})
    parts = pa.concat_tables([partial_topk(b, k=2) for b in (block1, block2)])
    top = final_topk(parts, k=2)
    assert top["doc_id"].to_pylist() == ["d1", "d2"]
    assert top["score"].to_pylist() == pytest.approx([0.95, 0.7])  # d1 at its highest score
    assert top.equals(final_topk(pa.concat_tables([block1, block2]), k=2))
    assert distinct_pairs(pa.concat_tables([block1, block2]))[1:] == (2, ("q", "d1"))
