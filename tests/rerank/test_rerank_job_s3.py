"""The rerank job end to end: shards on a real S3 server, a real local Ray, the tiny random model.

One run (module fixture) and one behaviour per test, read back over HTTP like a user would.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ettin_batch.config import RerankConfig
from ettin_batch import rerank
from ettin_batch import ranking

from helpers import TINY, read_parquet_folder, upload_parquet

K = 3
WORDS = "river water music film school data model search query document rank score index night".split()


def _text(rng, n_min, n_max):
    return " ".join(rng.choice(WORDS, rng.integers(n_min, n_max)))


def _rows(rng, query_id, doc_ids, positions_from=0):
    query = f"what about {_text(rng, 2, 6)} {query_id}"
    return [{"query_id": query_id, "query": query, "doc_id": d, "document": _text(rng, 3, 60),
             "lang": "en", "position": positions_from + i} for i, d in enumerate(doc_ids)]


SCHEMA = pa.schema([("query_id", pa.string()), ("query", pa.string()), ("doc_id", pa.string()),
                    ("document", pa.string()), ("lang", pa.string()), ("position", pa.int64())])


@pytest.fixture(scope="module")
def shards():
    """Three shards: q-split spans shard 0 and 1; q-a and q-b share doc_ids; shard 2 is empty;
    shard 1 also holds one row with a null query and one with a null document, and repeats
    q-dup's row for d0 word for word (overlapping shards) beside its d1."""
    rng = np.random.default_rng(7)
    shard0 = _rows(rng, "q-a", [f"d{i}" for i in range(8)]) + _rows(rng, "q-b", [f"d{i}" for i in range(5)]) \
        + _rows(rng, "q-split", [f"s{i}" for i in range(4)])
    split_rest = _rows(rng, "q-split", [f"s{i}" for i in range(4, 10)], positions_from=4)
    split_rest = [dict(r, query=shard0[-1]["query"]) for r in split_rest]
    bad = _rows(rng, "q-bad", ["b0", "b1", "b2"])
    bad[0]["query"] = None
    bad[1]["document"] = None
    dup = _rows(rng, "q-dup", ["d0", "d1"])
    shard0 += dup[:1]
    shard1 = split_rest + bad + dup
    return [pa.Table.from_pylist(rows, schema=SCHEMA) for rows in (shard0, shard1, [])]


@pytest.fixture(scope="module")
def job(s3, ray_session, shards):
    """Upload the shards, run the job once, read every output back over HTTP."""
    s3.mkdir("ettin-in")
    s3.mkdir("ettin-out")
    for i, table in enumerate(shards):
        upload_parquet(s3, table, f"ettin-in/candidates/part-{i}.parquet")
    config = RerankConfig.of(input=["s3://ettin-in/candidates/"], output="s3://ettin-out/reranked/run-1/",
                          model=TINY, top_k=K, batch_size=8, progress=False)
    result = rerank(config)
    out = "ettin-out/reranked/run-1"
    with s3.open(f"{out}/_SUCCESS.json") as f:
        manifest = json.load(f)
    return {
        "result": result,
        "manifest": manifest,
        "input": pa.concat_tables(shards),
        "scores": read_parquet_folder(s3, f"{out}/scores"),
        "topk": read_parquet_folder(s3, f"{out}/topk"),
        "rejects": read_parquet_folder(s3, f"{out}/rejects"),
    }


def _keys(table):
    return sorted(zip(table.column("query_id").to_pylist(), table.column("doc_id").to_pylist()))


def _valid(table):
    return table.filter(pa.compute.and_(table["query"].is_valid(), table["document"].is_valid()))


def test_every_scorable_pair_is_in_scores_exactly_once(job):
    assert _keys(job["scores"]) == _keys(_valid(job["input"]))


def test_each_score_equals_the_engine_scoring_that_pair_alone(job, reference_reranker):
    expected = {}
    for row in _valid(job["input"]).to_pylist():
        expected[row["query_id"], row["doc_id"]] = float(reference_reranker.score([row["query"]], [row["document"]])[0])
    scores = job["scores"]
    assert scores.schema.field("score").type == pa.float32()
    got = dict(zip(zip(scores["query_id"].to_pylist(), scores["doc_id"].to_pylist()), scores["score"].to_pylist()))
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-5), key


def test_topk_is_the_k_best_of_the_written_scores_ties_by_doc_id_descending(job):
    scores = job["scores"].select(["query_id", "doc_id", "score"])
    expected = []
    for qid in sorted(set(scores["query_id"].to_pylist())):
        best = {}  # a document listed twice ranks once, with its higher score
        for r in scores.to_pylist():
            if r["query_id"] == qid and r["score"] > best.get(r["doc_id"], {"score": -np.inf})["score"]:
                best[r["doc_id"]] = r
        rows = list(best.values())
        rows.sort(key=lambda r: (r["score"], r["doc_id"].encode()), reverse=True)  # trec_eval's order
        expected += [(qid, rank, r["doc_id"], r["score"]) for rank, r in enumerate(rows[:K], start=1)]
    topk = job["topk"]
    assert topk.column_names == ["query_id", "rank", "doc_id", "score"]
    got = sorted(zip(*(topk[c].to_pylist() for c in topk.column_names)))
    assert got == sorted(expected)


def test_a_query_split_across_two_shards_gets_one_topk_over_all_its_candidates(job):
    split = job["topk"].filter(pa.compute.equal(job["topk"]["query_id"], "q-split"))
    assert sorted(split["rank"].to_pylist()) == list(range(1, K + 1))
    all_split = job["scores"].filter(pa.compute.equal(job["scores"]["query_id"], "q-split"))
    assert all_split.num_rows == 10
    best = sorted(all_split.to_pylist(), key=lambda r: (r["score"], r["doc_id"].encode()), reverse=True)[:K]
    assert split.sort_by("rank")["doc_id"].to_pylist() == [r["doc_id"] for r in best]


def test_duplicate_doc_ids_in_different_queries_are_scored_separately(job):
    scores = job["scores"]
    for qid, n in (("q-a", 8), ("q-b", 5)):
        rows = scores.filter(pa.compute.equal(scores["query_id"], qid))
        assert sorted(rows["doc_id"].to_pylist()) == sorted(f"d{i}" for i in range(n))


def test_a_document_listed_twice_for_a_query_is_scored_twice_and_ranked_once(job):
    scores = job["scores"].filter(pa.compute.equal(job["scores"]["query_id"], "q-dup"))
    assert sorted(scores["doc_id"].to_pylist()) == ["d0", "d0", "d1"]
    topk = job["topk"].filter(pa.compute.equal(job["topk"]["query_id"], "q-dup")).sort_by("rank")
    assert sorted(topk["doc_id"].to_pylist()) == ["d0", "d1"] and topk["rank"].to_pylist() == [1, 2]
    assert job["manifest"]["repeated_pairs"] == 1


def test_an_empty_shard_is_read_and_adds_nothing(job):
    assert job["manifest"]["input"]["files"] == 3
    assert job["manifest"]["counts"]["in"] == job["input"].num_rows


def test_pass_through_columns_survive_unchanged(job):
    scores = job["scores"]
    assert {"lang", "position"} <= set(scores.column_names)
    assert "query" not in scores.column_names and "document" not in scores.column_names
    source = {(r["query_id"], r["doc_id"]): (r["lang"], r["position"]) for r in job["input"].to_pylist()}
    for r in scores.to_pylist():
        assert (r["lang"], r["position"]) == source[r["query_id"], r["doc_id"]]
    assert scores.schema.field("position").type == pa.int64()


def test_rows_with_a_null_query_or_document_go_to_rejects_with_a_reason(job):
    rejects = sorted(job["rejects"].to_pylist(), key=lambda r: r["doc_id"])
    assert [(r["query_id"], r["doc_id"], r["reason"]) for r in rejects] == [
        ("q-bad", "b0", "null query"), ("q-bad", "b1", "null document")]
    assert rejects[0]["lang"] == "en"  # rejects keep the whole row


def test_counts_in_the_manifest_add_up(job):
    counts = job["manifest"]["counts"]
    assert counts == {**counts, "in": 29, "scored": 27, "rejected": 2}
    assert counts["in"] == counts["scored"] + counts["rejected"]


def test_manifest_records_model_speed_and_version(job):
    m = job["manifest"]
    assert m["model"]["model_id"] == TINY and m["model"]["is_random"] is True
    assert m["dtype"] == "float32" and m["max_length"] == 512 and m["top_k"] == K
    assert m["wall_time_s"] > 0 and m["pairs_per_s"] > 0 and m["tokens_per_s"] > 0
    assert m["package_version"]


def test_manifest_says_where_the_wall_time_went_and_how_busy_the_model_was(job):
    m = job["manifest"]
    assert list(m["phases_s"]) == ["setup", "ray_start", "scoring", "topk", "finish"]
    assert all(s >= 0 for s in m["phases_s"].values())
    assert sum(m["phases_s"].values()) == pytest.approx(m["wall_time_s"], abs=0.01)
    # One actor scores one batch at a time: its seconds in the model fit inside the scoring phase.
    assert 0 < m["model_seconds"] < m["phases_s"]["scoring"]
    assert m["model_busy"] == pytest.approx(m["model_seconds"] / m["phases_s"]["scoring"], abs=1e-3)


def test_summary_names_counts_speed_and_output(job):
    text = job["result"].summary()
    for part in ("pairs in 29", "scored 27", "rejected 2", "pairs/s", "tokens/s", "s3://ettin-out/reranked/run-1",
                 "RANDOM WEIGHTS", "model busy"):
        assert part in text


def test_topk_merged_over_many_files_equals_topk_of_the_whole(tmp_path, monkeypatch):
    from ettin_batch.pipeline import topk
    from ettin_batch.run_folder import RunFolder

    rng = np.random.default_rng(0)
    n = 400
    table = pa.table({"query_id": rng.integers(0, 20, n), "doc_id": rng.permutation(n),
                      "score": rng.integers(0, 5, n).astype(np.float32)})  # many ties
    (tmp_path / "scores" / "g0").mkdir(parents=True)
    for i in range(0, n, 50):
        pq.write_table(table.slice(i, 50), tmp_path / "scores" / "g0" / f"part-{i:03d}.parquet")
    monkeypatch.setattr(topk, "MERGE_ROWS", 10)  # merge the kept rows after every few files
    assert topk.write_topk(RunFolder.open(str(tmp_path), "rerank"), 4, n) == (0, None)
    whole, whole_rank = ranking.top_k(table, 4)
    written = pq.read_table(tmp_path / "topk")
    assert written.select(["query_id", "doc_id", "score"]).to_pylist() == whole.to_pylist()
    assert written["rank"].to_pylist() == whole_rank.tolist()


def test_a_run_where_every_row_is_rejected_still_completes(tmp_path, ray_session):
    table = pa.table({"query_id": ["q1", "q1"], "query": pa.array([None, None], pa.string()),
                      "doc_id": ["d1", "d2"], "document": ["a", "b"], "lang": ["en", "en"]})
    pq.write_table(table, tmp_path / "part-0.parquet")
    result = rerank(RerankConfig.of(input=[str(tmp_path / "part-0.parquet")], output=str(tmp_path / "out"),
                                 model=TINY, progress=False))
    assert result.counts["scored"] == 0 and result.counts["rejected"] == 2
    assert pq.read_table(tmp_path / "out" / "scores").column_names == ["query_id", "doc_id", "lang", "pair_fingerprint", "score"]
    assert pq.read_table(tmp_path / "out" / "topk").num_rows == 0
