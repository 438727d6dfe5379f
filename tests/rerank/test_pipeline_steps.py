"""The pipeline's steps are plain functions on Arrow tables: checked here without Ray."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ettin_batch import ranking
from ettin_batch.config import ScoringConfig
from ettin_batch.engine.tokenize import IDS_COL, TokenizedPairs
from ettin_batch.pipeline.rejects import RejectsDir
from ettin_batch.pipeline.tokenize_stage import Tokenize, canonical

from helpers import TINY

RENAME = {"qid": "query_id", "q": "query", "pid": "doc_id", "text": "document"}


def _batch():
    return pa.table({"qid": [1, 1, 2, None], "q": ["a query", None, "other", "x"], "pid": ["d1", "d2", "d1", "d9"],
                     "text": [None, "doc", "some document", "y"], "lang": ["en", "de", "fr", "it"]})


def _tokenize(batch, rejects_dir, keep_text=False):
    step = Tokenize(ScoringConfig(model=TINY, max_length=32), RejectsDir(str(rejects_dir), pafs.LocalFileSystem()),
                    keep_text=keep_text)
    return step(canonical(batch, rename=RENAME, header=None))


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


def test_tokenize_step_carries_the_texts_on_when_asked(tmp_path):
    out = _tokenize(_batch(), tmp_path / "rejects", keep_text=True)
    assert out["query"].to_pylist() == ["other"] and out["document"].to_pylist() == ["some document"]


def test_a_retried_batch_rewrites_the_same_rejects_file(tmp_path):
    _tokenize(_batch(), tmp_path / "rejects")
    _tokenize(_batch(), tmp_path / "rejects")
    assert len(list((tmp_path / "rejects").iterdir())) == 1


def test_a_batch_without_problems_writes_no_rejects(tmp_path):
    batch = _batch().slice(2, 1)
    out = _tokenize(batch, tmp_path / "rejects")
    assert out.num_rows == 1 and IDS_COL in out.column_names
    assert not (tmp_path / "rejects").exists()


def _topk_table(rows, rank):
    return list(zip(rows["doc_id"].to_pylist(), rank.tolist()))


def test_topk_ranks_by_score_then_doc_id_descending_as_trec_eval_does():
    group = pa.table({"query_id": ["q"] * 4, "doc_id": ["d3", "d1", "d2", "d0"],
                      "score": pa.array([0.5, 0.9, 0.5, 0.1], pa.float32())})
    assert _topk_table(*ranking.top_k(group, 3)) == [("d1", 1), ("d3", 2), ("d2", 3)]


def test_topk_compares_integer_doc_ids_as_text_like_trec_eval():
    # trec_eval reads ids as text: at a tie "9" ranks above "10" (strcmp), not below it.
    group = pa.table({"query_id": [1, 1, 1], "doc_id": pa.array([10, 9, 2], pa.int64()),
                      "score": pa.array([0.5, 0.5, 0.1], pa.float32())})
    rows, _ = ranking.top_k(group, 2)
    assert rows["doc_id"].to_pylist() == [9, 10] and rows.schema.field("doc_id").type == pa.int64()


def test_a_document_listed_twice_fills_one_place_in_a_part_and_in_the_final_cut():
    # Part 1 lists d1 twice: kept twice, it would take both of the part's k=2 places and push d2
    # out of the part's top-k, losing it from the final cut.
    part1 = pa.table({"query_id": ["q"] * 4, "doc_id": ["d1", "d1", "d2", "d3"],
                      "score": pa.array([0.9, 0.8, 0.7, 0.1], pa.float32())})
    part2 = pa.table({"query_id": ["q"] * 2, "doc_id": ["d1", "d4"], "score": pa.array([0.95, 0.2], pa.float32())})
    merged = pa.concat_tables([ranking.top_k(p, 2)[0] for p in (part1, part2)])
    rows, rank = ranking.top_k(merged, 2)
    assert rows["doc_id"].to_pylist() == ["d1", "d2"]
    assert rows["score"].to_pylist() == pytest.approx([0.95, 0.7])  # d1 at its highest score
    whole = ranking.top_k(pa.concat_tables([part1, part2]), 2)
    assert rows.equals(whole[0]) and rank.tolist() == whole[1].tolist()
    assert ranking.repeated_pairs(pa.concat_tables([part1, part2])) == (2, ("q", "d1"))


def test_the_tokenize_step_reads_the_tokenizer_without_transformers_and_gives_the_engines_ids(tmp_path):
    # A BERT cross-encoder (token type ids) and an Ettin one: the task's tokenizer, read from tokenizer.json
    # alone, gives the ids, truncation flags and segment split of the one transformers loads for the engine.
    import subprocess
    import sys

    from builders import build_bert_classifier, random_texts
    from transformers import AutoTokenizer

    from ettin_batch.engine import PairTokenizer, resolve_model

    queries, documents = random_texts(50, 2, 8, seed=1), random_texts(50, 5, 300, seed=2)
    for path in (str(build_bert_classifier(tmp_path / "bert")), resolve_model(TINY).path):
        task = PairTokenizer.from_pretrained(path, 64)(queries, documents)
        engine = PairTokenizer(AutoTokenizer.from_pretrained(path), 64)(queries, documents)
        assert (task.input_ids == engine.input_ids).all() and (task.truncated == engine.truncated).all()
        if engine.segment_a is not None:
            assert (task.segment_a == engine.segment_a).all()
    code = (f"import sys; from ettin_batch.engine import PairTokenizer; PairTokenizer.from_pretrained({path!r}, 64)"
            "(['a'], ['b']); sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # no torch in a tokenize task


def test_a_scoring_actor_refuses_a_model_whose_tokenizer_json_is_not_the_one_it_loaded(tmp_path):
    import shutil

    from builders import build_bert_classifier

    from ettin_batch.engine import Reranker, resolve_model
    from ettin_batch.errors import ModelLoadError
    from ettin_batch.pipeline.score import check_same_tokenizer

    shutil.copytree(resolve_model(TINY).path, tmp_path / "model")
    reranker = Reranker.from_pretrained(str(tmp_path / "model"), device="cpu")
    check_same_tokenizer(reranker)  # the same file: no complaint
    shutil.copy(build_bert_classifier(tmp_path / "bert") / "tokenizer.json", tmp_path / "model" / "tokenizer.json")
    with pytest.raises(ModelLoadError, match="would give other token ids"):
        check_same_tokenizer(reranker)


def test_the_scoring_step_reads_each_rows_fingerprint_as_its_packing_key():
    import numpy as np

    from ettin_batch.pipeline.reuse import fingerprints
    from ettin_batch.pipeline.score import fingerprint_keys

    queries, documents = pa.array([f"q{i}" for i in range(10)]), pa.array([f"doc {i}" for i in range(10)])
    table = pa.table({"query": queries, "pair_fingerprint": fingerprints(queries, documents, b"header")})
    table = pa.concat_tables([table.slice(0, 4), table.slice(4)]).slice(3, 6)  # two chunks, an offset
    want = [int.from_bytes(fp[:8], "little") for fp in table["pair_fingerprint"].to_pylist()]
    assert fingerprint_keys(table).tolist() == want and len(set(want)) == 6
    assert fingerprint_keys(table.drop_columns(["pair_fingerprint"])) is None
    assert fingerprint_keys(pa.table({"pair_fingerprint": pa.array([b"x" * 16, None], pa.binary(16))})) is None
    assert fingerprint_keys(table).dtype == np.uint64
