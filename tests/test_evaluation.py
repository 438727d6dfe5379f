"""`ettin-batch eval`: the numbers are pytrec_eval's, whatever the input format, and bad input is never silent."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytrec_eval

from ettin_batch import evaluation, trec
from ettin_batch.errors import ConfigError, InputError
from ettin_batch.evaluation import DEFAULT_METRICS, EvaluationWarning, evaluate, parse_metric
from runs import write_rerank_run

# Files from trec_eval's own test suite (source, licence and what was cut: README.md there).
TREC_EVAL_TESTS = Path(__file__).parent / "data" / "trec_eval"
ALL_METRICS = ["ndcg@10", "mrr@10", "recall@100", "map", "ndcg", "mrr", "map@5", "p@5", "mrr@3", "recall@5"]


# ---------------------------------------------------------------- fixtures and references


def random_case(seed: int, n_queries: int = 40) -> tuple[pa.Table, pa.Table]:
    """A run and qrels built to hit every corner: ties, depth > 100, queries without relevant docs,
    run-only and qrels-only queries, negative grades, doc ids whose byte order differs from numeric order."""
    rng = np.random.default_rng(seed)
    rows = {"query_id": [], "doc_id": [], "score": [], "retrieval_score": []}
    qrels = {"query_id": [], "doc_id": [], "relevance": []}
    for q in range(n_queries):
        n_docs = int(rng.integers(1, 150))
        docs = [f"{'D' if rng.random() < 0.2 else 'd'}{int(i)}" for i in rng.choice(10_000, n_docs, replace=False)]
        # Few distinct values: many ties in both score columns.
        scores = rng.choice(np.linspace(-3, 3, 7), n_docs).astype(np.float32)
        first_stage = rng.integers(0, 5, n_docs).astype(np.float64)
        if q % 10 != 9:  # every tenth query is judged but not in the run
            rows["query_id"] += [q] * n_docs
            rows["doc_id"] += docs
            rows["score"] += scores.tolist()
            rows["retrieval_score"] += first_stage.tolist()
        if q % 10 == 7:
            continue  # every tenth query is in the run only: no judgments
        judged = rng.choice(docs, min(n_docs, int(rng.integers(1, 20))), replace=False).tolist()
        if rng.random() < 0.3:
            judged.append(f"unretrieved{q}")
        # q % 5 == 0: judged, but nothing relevant
        grades = [0 if q % 5 == 0 else int(g) for g in rng.choice([-1, 0, 0, 1, 2, 3], len(judged))]
        qrels["query_id"] += [str(q)] * len(judged)
        qrels["doc_id"] += judged
        qrels["relevance"] += grades
    run = pa.table(
        {
            "query_id": pa.array(rows["query_id"], pa.int64()),
            "doc_id": pa.array(rows["doc_id"], pa.string()),
            "score": pa.array(rows["score"], pa.float32()),
            "retrieval_score": pa.array(rows["retrieval_score"], pa.float64()),
        }
    )
    return run, pa.table(qrels)


def reference(run: pa.Table, qrels: pa.Table, metrics: list[str], score_col: str = "score") -> dict[str, float]:
    """pytrec_eval on plain dicts; mrr@k is recip_rank on each query's first k docs, sorted here independently."""
    qd: dict[str, dict[str, int]] = {}
    for r in qrels.to_pylist():
        qd.setdefault(str(r["query_id"]), {})[r["doc_id"]] = int(r["relevance"])
    rd: dict[str, dict[str, float]] = {}
    for r in run.to_pylist():
        rd.setdefault(str(r["query_id"]), {})[r["doc_id"]] = float(r[score_col])
    out = {}
    for name in metrics:
        base, _, k = name.partition("@")
        if base == "mrr" and k:
            cut = {
                q: dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0].encode()), reverse=True)[: int(k)])
                for q, docs in rd.items()
            }
            res = pytrec_eval.RelevanceEvaluator(qd, {"recip_rank"}).evaluate(cut)
            key = "recip_rank"
        else:
            measure = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall", "p": "P", "mrr": "recip_rank"}[base]
            measure = measure if k else {"ndcg": "ndcg", "map": "map", "mrr": "recip_rank"}[base]
            res = pytrec_eval.RelevanceEvaluator(qd, {f"{measure}.{k}" if k else measure}).evaluate(rd)
            key = f"{measure}_{k}" if k else measure
        out[name] = float(np.mean([v[key] for v in res.values()]))
    return out


def quiet_evaluate(*args, **kwargs) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        return evaluate(*args, **kwargs)


def write_scores_folder(run: pa.Table, folder, n_files: int = 3) -> str:
    """Spread the run over several files, a query's candidates split between them, as the job writes scores/."""
    folder.mkdir(parents=True)
    order = np.random.default_rng(0).permutation(run.num_rows)
    for i, part in enumerate(np.array_split(order, n_files)):
        pq.write_table(run.take(pa.array(part)), folder / f"part-{i}.parquet")
    return str(folder)


def write_trec_run(run: pa.Table, path) -> str:
    with open(path, "w") as f:
        for i, r in enumerate(run.to_pylist()):
            f.write(f"{r['query_id']} Q0 {r['doc_id']} {i} {r['score']!r} tag\n")
    return str(path)


def write_trec_qrels(qrels: pa.Table, path) -> str:
    with open(path, "w") as f:
        for r in qrels.to_pylist():
            f.write(f"{r['query_id']} 0 {r['doc_id']} {r['relevance']}\n")
    return str(path)


# ---------------------------------------------------------------- equality with pytrec_eval


@pytest.mark.parametrize("seed", range(6))
def test_every_metric_equals_pytrec_eval_on_random_runs_with_ties(tmp_path, seed):
    run, qrels = random_case(seed)
    got = quiet_evaluate(write_scores_folder(run, tmp_path / "scores"), write_trec_qrels(qrels, tmp_path / "q.txt"), ALL_METRICS)
    want = reference(run, qrels, ALL_METRICS)
    for name in ALL_METRICS:
        assert got["metrics"][name] == pytest.approx(want[name], abs=1e-6), name


@pytest.mark.parametrize("seed", range(3))
def test_baseline_equals_pytrec_eval_on_the_pass_through_column(tmp_path, seed):
    run, qrels = random_case(seed)
    got = quiet_evaluate(write_scores_folder(run, tmp_path / "scores"), qrels, ALL_METRICS, baseline_col="retrieval_score")
    want = reference(run, qrels, ALL_METRICS, score_col="retrieval_score")
    for name in ALL_METRICS:
        assert got["baseline"][name] == pytest.approx(want[name], abs=1e-6), name
        assert got["delta"][name] == pytest.approx(got["metrics"][name] - want[name], abs=1e-12)


@pytest.mark.parametrize("chunk_pairs", [1, 150, 10**9])
def test_scoring_queries_in_chunks_gives_pytrec_eval_numbers(monkeypatch, chunk_pairs):
    """pytrec_eval sees a chunk of whole queries at a time (bounded memory); the means must not change."""
    monkeypatch.setattr(evaluation, "EVAL_CHUNK_PAIRS", chunk_pairs)
    run, qrels = random_case(11)
    got = quiet_evaluate(run, qrels, ALL_METRICS, baseline_col="retrieval_score")
    assert got["metrics"] == pytest.approx(reference(run, qrels, ALL_METRICS), abs=1e-6)
    assert got["baseline"] == pytest.approx(reference(run, qrels, ALL_METRICS, score_col="retrieval_score"), abs=1e-6)
    assert got["num_queries"] == 32  # 40 queries, minus 4 only judged and 4 only in the run


def test_pairs_scored_twice_are_counted_over_the_whole_run_not_one_chunk(monkeypatch):
    monkeypatch.setattr(evaluation, "EVAL_CHUNK_PAIRS", 1)
    run = pa.table({"query_id": ["q", "q", "r", "r"], "doc_id": ["a", "a", "b", "b"], "score": [1.0, 2.0, 1.0, 1.0]})
    qrels = pa.table({"query_id": ["q", "r"], "doc_id": ["a", "b"], "relevance": [1, 1]})
    with pytest.raises(InputError, match=r"2 \(query_id, doc_id\) pair\(s\) appear more than once"):
        evaluate(run, qrels)


def test_ties_are_broken_by_doc_id_descending_in_byte_order():
    run = pa.table({"query_id": ["q"] * 3, "doc_id": ["a", "B", "c"], "score": [1.0, 1.0, 1.0]})
    qrels = pa.table({"query_id": ["q"], "doc_id": ["B"], "relevance": [1]})
    # Byte order puts "B" (0x42) below "a" and "c": ranked c, a, B.
    assert evaluate(run, qrels, ["mrr"])["metrics"]["mrr"] == pytest.approx(1 / 3)


def test_mrr_at_k_counts_a_first_relevant_doc_beyond_k_as_zero():
    docs = [f"d{i:02d}" for i in range(12)]
    run = pa.table({"query_id": ["q"] * 12, "doc_id": docs, "score": [float(12 - i) for i in range(12)]})
    at_10 = pa.table({"query_id": ["q"], "doc_id": ["d09"], "relevance": [1]})
    at_11 = pa.table({"query_id": ["q"], "doc_id": ["d10"], "relevance": [1]})
    assert evaluate(run, at_10, ["mrr@10"])["metrics"]["mrr@10"] == pytest.approx(0.1)
    assert evaluate(run, at_11, ["mrr@10", "mrr"])["metrics"] == pytest.approx({"mrr@10": 0.0, "mrr": 1 / 11})


def test_query_without_relevant_documents_scores_zero_and_counts_in_the_mean():
    run = pa.table({"query_id": ["good", "good", "none"], "doc_id": ["a", "b", "c"], "score": [2.0, 1.0, 1.0]})
    qrels = pa.table({"query_id": ["good", "none"], "doc_id": ["a", "c"], "relevance": [1, 0]})
    with pytest.warns(EvaluationWarning, match="1 of 2 evaluated queries have no relevant document"):
        result = evaluate(run, qrels, ["ndcg@10", "map"])
    assert result["num_queries"] == 2
    assert result["metrics"] == pytest.approx({"ndcg@10": 0.5, "map": 0.5})


def test_run_queries_without_judgments_are_skipped_with_a_count():
    run = pa.table({"query_id": ["q1", "q2", "q3"], "doc_id": ["a", "a", "a"], "score": [1.0, 1.0, 1.0]})
    qrels = pa.table({"query_id": ["q1"], "doc_id": ["a"], "relevance": [1]})
    with pytest.warns(EvaluationWarning, match="2 of 3 run queries have no judgments"):
        result = evaluate(run, qrels, ["map"])
    assert result["num_queries"] == 1 and result["metrics"]["map"] == 1.0


def test_judged_queries_missing_from_the_run_are_skipped_with_a_count():
    run = pa.table({"query_id": ["q1"], "doc_id": ["a"], "score": [1.0]})
    qrels = pa.table({"query_id": ["q1", "q2"], "doc_id": ["a", "a"], "relevance": [1, 1]})
    with pytest.warns(EvaluationWarning, match="1 of 2 judged queries are not in the run"):
        result = evaluate(run, qrels, ["map"])
    assert result["num_queries"] == 1 and result["metrics"]["map"] == 1.0


# ---------------------------------------------------------------- input formats


def test_scores_folder_topk_folder_and_trec_run_file_give_the_same_numbers(tmp_path):
    run, qrels = random_case(7)
    qrels_path = write_trec_qrels(qrels, tmp_path / "qrels.txt")
    topk = run.append_column("rank", pa.array(np.arange(run.num_rows, dtype=np.int32)))  # a rank trec_eval ignores
    results = [
        quiet_evaluate(write_scores_folder(run, tmp_path / "scores"), qrels_path),
        quiet_evaluate(write_scores_folder(topk.select(["query_id", "rank", "doc_id", "score"]), tmp_path / "topk"), qrels_path),
        quiet_evaluate(write_trec_run(run, tmp_path / "run.trec"), qrels_path),
    ]
    assert results[0]["metrics"] == pytest.approx(results[1]["metrics"], abs=1e-12)
    assert results[0]["metrics"] == pytest.approx(results[2]["metrics"], abs=1e-12)


def test_a_job_output_folder_is_evaluated_on_its_full_depth_scores(tmp_path):
    run, qrels = random_case(8)
    write_scores_folder(run, tmp_path / "out" / "scores")
    shallow = run.slice(0, 5)  # a topk/ that would give different numbers
    write_scores_folder(shallow, tmp_path / "out" / "topk", n_files=1)
    got = quiet_evaluate(str(tmp_path / "out"), qrels)
    assert got["metrics"] == pytest.approx(reference(run, qrels, list(got["metrics"])), abs=1e-6)


def test_parquet_qrels_and_trec_qrels_give_the_same_numbers(tmp_path):
    run, qrels = random_case(9)
    pq.write_table(qrels, tmp_path / "qrels.parquet")
    from_parquet = quiet_evaluate(run, str(tmp_path / "qrels.parquet"))
    from_trec = quiet_evaluate(run, write_trec_qrels(qrels, tmp_path / "qrels.txt"))
    assert from_parquet["metrics"] == from_trec["metrics"]


def test_integer_query_ids_in_parquet_match_string_ids_in_trec_qrels(tmp_path):
    run = pa.table({"query_id": pa.array([7, 7], pa.int64()), "doc_id": pa.array([1, 2], pa.int64()), "score": [1.0, 2.0]})
    qrels_path = tmp_path / "qrels.txt"
    qrels_path.write_text("7 0 1 1\n")
    assert evaluate(run, str(qrels_path), ["mrr"])["metrics"]["mrr"] == 0.5


# ---------------------------------------------------------------- TREC files as trec_eval reads them


def trec_eval_expected(path: Path) -> dict[str, dict[str, str]]:
    """trec_eval's own per-query output (`measure <TAB> query <TAB> value`) as {measure: {query: value}}.

    Values stay text: a few measures (runid, relstring) are not numbers."""
    values: dict[str, dict[str, str]] = {}
    for line in path.read_text().splitlines():
        measure, query, value = line.split()
        values.setdefault(measure, {})[query] = value
    return values


def test_trec_evals_own_test_run_with_fields_after_the_tag_gives_trec_evals_own_numbers():
    """results.trunc has lines like `301 Q0 FBIS3-27619 99 2.138276 STANDARD more junk at`; trec_eval reads
    them and its test suite expects the per-query values in out.test.aqc. Ours must be the same."""
    metrics = {"ndcg": "ndcg", "ndcg@10": "ndcg_cut_10", "map": "map", "map@100": "map_cut_100",
               "recall@100": "recall_100", "p@5": "P_5", "p@30": "P_30", "mrr": "recip_rank"}
    got = evaluate(str(TREC_EVAL_TESTS / "results.trunc"), str(TREC_EVAL_TESTS / "qrels.301-303.relevant"),
                   list(metrics))
    expected = trec_eval_expected(TREC_EVAL_TESTS / "out.test.aqc.301-303")
    assert got["num_queries"] == 2 and got["warnings"] == []
    for name, measure in metrics.items():
        per_query = expected[measure]
        assert set(per_query) == {"301", "303"}
        # trec_eval prints 4 decimals: equal to within half a unit of the last one.
        assert got["metrics"][name] == pytest.approx(sum(map(float, per_query.values())) / 2, abs=5e-5), name


def test_a_run_line_is_read_up_to_its_tag_and_the_rest_ignored():
    table = trec.read_trec_run(str(TREC_EVAL_TESTS / "results.trunc"))
    assert table.num_rows == 584  # every line, the five with trailing words included
    rows = {(r["query_id"], r["doc_id"]): r["score"] for r in table.to_pylist()}
    assert rows[("301", "FBIS3-27619")] == 2.138276  # `... 2.138276 STANDARD more junk at`
    assert rows[("303", "FT934-4015")] == 1.875063  # `... 1.875063 STANDARD expansion`


def test_comment_lines_in_runs_and_qrels_are_skipped_where_trec_eval_skips_them(tmp_path):
    """trec_eval 10: a run line whose first non-blank character is '#', a qrels line that starts with '#'."""
    run = tmp_path / "run.trec"
    run.write_text("# bm25, k1=0.9 b=0.4\nq Q0 a 1 2.0 bm25\n   # indented, still a comment in a run\nq Q0 b 2 1.0 bm25\n")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("# judged 2024-05-01\nq 0 b 1\nq 0 a 0\n")
    assert trec.read_trec_run(str(run)).to_pydict() == {"query_id": ["q", "q"], "doc_id": ["a", "b"], "score": [2.0, 1.0]}
    assert evaluate(str(run), str(qrels), ["mrr"])["metrics"]["mrr"] == 0.5


def test_fields_are_split_on_ascii_whitespace_only_as_trec_eval_splits_them(tmp_path):
    """C's isspace, which trec_eval splits on, does not know Unicode spaces: an id may hold one."""
    run = tmp_path / "run.trec"
    run.write_bytes("q Q0 doc\u00a0one 1 2.5 tag\r\nq\tQ0\x0bdoc-2\x0c2 1.5 tag\r\n".encode())
    table = trec.read_trec_run(str(run))
    assert table["doc_id"].to_pylist() == ["doc\u00a0one", "doc-2"]
    assert table["score"].to_pylist() == [2.5, 1.5]


# case -> (reader, file name, file bytes, what the error says: the file and line)
BAD_LINES = {
    "a run line with five fields": (trec.read_trec_run, "run.trec", b"# header\nq Q0 a 1 2.0 tag\nq Q0 b 2 1.0\n",
                                    r"run.trec:3: a run line has at least 6 fields .* got 5"),
    "a qrels line in Latin-1, not UTF-8": (trec.read_trec_qrels, "qrels.txt", b"q 0 a 1\nq 0 caf\xe9 1\n",
                                           r"qrels.txt:2: not UTF-8 text"),
    # trec_eval: "Malformed line"
    "a qrels line with a fifth field": (trec.read_trec_qrels, "qrels.txt", b"q 0 a 1\nq 0 b 1 extra\n",
                                        r"qrels.txt:2: a qrels line has 4 fields .* got 5"),
}


@pytest.mark.parametrize("case", BAD_LINES)
def test_a_bad_line_is_an_error_naming_the_file_and_line(tmp_path, case):
    read, name, data, says = BAD_LINES[case]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError, match=says):
        read(str(tmp_path / name))


def test_reads_any_fsspec_filesystem():
    run, qrels = random_case(10)
    fs = fsspec.filesystem("memory")
    with fs.open("/evaltest/scores/part-0.parquet", "wb") as f:
        pq.write_table(run, f)
    with fs.open("/evaltest/qrels.parquet", "wb") as f:
        pq.write_table(qrels, f)
    got = quiet_evaluate("memory://evaltest/scores", "memory://evaltest/qrels.parquet")
    assert got["metrics"] == pytest.approx(reference(run, qrels, list(got["metrics"])), abs=1e-6)


def test_reads_run_and_qrels_from_s3(s3):
    run, qrels = random_case(14)
    s3.mkdir("evalbucket")
    with s3.open("evalbucket/out/scores/part-0.parquet", "wb") as f:
        pq.write_table(run, f)
    with s3.open("evalbucket/qrels.parquet", "wb") as f:
        pq.write_table(qrels, f)
    got = quiet_evaluate("s3://evalbucket/out", "s3://evalbucket/qrels.parquet")
    assert got["metrics"] == pytest.approx(reference(run, qrels, list(got["metrics"])), abs=1e-6)


# ---------------------------------------------------------------- bad input


def test_a_pair_scored_twice_in_the_run_is_an_error():
    run = pa.table({"query_id": ["q", "q"], "doc_id": ["a", "a"], "score": [1.0, 2.0]})
    qrels = pa.table({"query_id": ["q"], "doc_id": ["a"], "relevance": [1]})
    with pytest.raises(InputError, match=r"1 \(query_id, doc_id\) pair\(s\) appear more than once"):
        evaluate(run, qrels)


def test_a_pair_judged_twice_with_different_grades_is_an_error():
    run = pa.table({"query_id": ["q"], "doc_id": ["a"], "score": [1.0]})
    qrels = pa.table({"query_id": ["q", "q"], "doc_id": ["a", "a"], "relevance": [1, 2]})
    with pytest.raises(InputError, match="different grades"):
        evaluate(run, qrels)


def test_identical_duplicate_judgments_are_counted_once_with_a_warning():
    run = pa.table({"query_id": ["q", "q"], "doc_id": ["a", "b"], "score": [2.0, 1.0]})
    qrels = pa.table({"query_id": ["q", "q", "q"], "doc_id": ["b", "b", "a"], "relevance": [1, 1, 0]})
    with pytest.warns(EvaluationWarning, match="1 duplicate judgment"):
        assert evaluate(run, qrels, ["map"])["metrics"]["map"] == 0.5


def test_a_non_numeric_grade_in_trec_qrels_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q 0 a 1\nq 0 b high\n")
    with pytest.raises(InputError, match=r"qrels.txt:2: relevance must be an integer grade, got 'high'"):
        evaluate(pa.table({"query_id": ["q"], "doc_id": ["a"], "score": [1.0]}), str(path))


@pytest.mark.parametrize("grades", [["1", "x", "y"], [1.0, 0.5, 2.0]])
def test_non_integer_grades_in_parquet_qrels_are_an_error_with_a_count(tmp_path, grades):
    pq.write_table(pa.table({"query_id": ["q"] * 3, "doc_id": ["a", "b", "c"], "relevance": grades}), tmp_path / "q.parquet")
    with pytest.raises(InputError, match=r"(1|2) relevance value\(s\) are not integer grades"):
        evaluate(pa.table({"query_id": ["q"], "doc_id": ["a"], "score": [1.0]}), str(tmp_path / "q.parquet"))


def test_integral_float_grades_are_accepted():
    qrels = pa.table({"query_id": ["q"], "doc_id": ["a"], "relevance": [1.0]})
    assert evaluate(pa.table({"query_id": ["q"], "doc_id": ["a"], "score": [1.0]}), qrels, ["map"])["metrics"]["map"] == 1.0


def test_run_and_qrels_with_no_query_in_common_is_an_error():
    run = pa.table({"query_id": ["q1"], "doc_id": ["a"], "score": [1.0]})
    qrels = pa.table({"query_id": ["Q1"], "doc_id": ["a"], "relevance": [1]})
    with pytest.raises(InputError, match="share no query_id"):
        evaluate(run, qrels)


def test_rows_with_null_or_nan_scores_are_dropped_with_a_count():
    run = pa.table({"query_id": ["q"] * 3, "doc_id": ["a", "b", "c"], "score": pa.array([math.nan, None, 1.0], pa.float64())})
    qrels = pa.table({"query_id": ["q"], "doc_id": ["a"], "relevance": [1]})
    with pytest.warns(EvaluationWarning, match="2 row\\(s\\) with a null or NaN 'score' were dropped"):
        assert evaluate(run, qrels, ["recall@10"])["metrics"]["recall@10"] == 0.0


def test_a_missing_baseline_column_is_an_error_listing_the_columns(tmp_path):
    run, qrels = random_case(11)
    path = write_scores_folder(run.drop_columns(["retrieval_score"]), tmp_path / "scores")
    with pytest.raises(InputError, match=r"needs column\(s\) \['retrieval_score'\]; found"):
        evaluate(path, qrels, baseline_col="retrieval_score")


def test_a_non_numeric_score_column_is_an_error_naming_it():
    run = pa.table({"query_id": ["q"], "doc_id": ["a"], "score": [1.0], "retrieval_score": ["high"]})
    qrels = pa.table({"query_id": ["q"], "doc_id": ["a"], "relevance": [1]})
    with pytest.raises(InputError, match="'retrieval_score' must be numeric"):
        evaluate(run, qrels, baseline_col="retrieval_score")


@pytest.mark.parametrize("name", ["ndcg@0", "recall", "bleu", "mrr@x"])
def test_an_unknown_metric_is_an_error(name):
    with pytest.raises(ConfigError, match="metric"):
        parse_metric(name)


# ---------------------------------------------------------------- CLI


def main(args: list[str]) -> int:
    """`ettin-batch eval ARGS`, in this process."""
    from ettin_batch.cli import main as ettin_batch

    return ettin_batch(["eval", *args])


def test_cli_prints_run_baseline_and_delta_per_metric(tmp_path, capsys):
    run, qrels = random_case(12)
    args = ["--run", write_scores_folder(run, tmp_path / "scores"), "--qrels", write_trec_qrels(qrels, tmp_path / "q.txt"),
            "--metrics", "ndcg@10,map", "--baseline-col", "retrieval_score"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["metric", "run", "baseline", "delta"]
    assert [line.split()[0] for line in lines[1:3]] == ["ndcg@10", "map"]
    assert "run queries have no judgments" in err


def test_cli_json_holds_metrics_and_query_count(tmp_path, capsys):
    run, qrels = random_case(13)
    assert main(["--run", write_trec_run(run, tmp_path / "run.trec"), "--qrels", write_trec_qrels(qrels, tmp_path / "q.txt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["metrics"]) == {"ndcg@10", "mrr@10", "recall@100", "map"}
    assert result["metrics"] == pytest.approx(reference(run, qrels, list(result["metrics"])), abs=1e-6)


def test_ettin_batch_eval_is_a_registered_subcommand(tmp_path, capsys):
    from ettin_batch.cli import main as ettin_batch

    run, qrels = random_case(15)
    args = ["eval", "--run", write_trec_run(run, tmp_path / "run.trec"), "--qrels", write_trec_qrels(qrels, tmp_path / "q.txt"), "--json"]
    assert ettin_batch(args) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == pytest.approx(reference(run, qrels, list(DEFAULT_METRICS)), abs=1e-6)


def test_cli_bad_input_exits_2_with_the_reason(tmp_path, capsys):
    (tmp_path / "q.txt").write_text("q 0 a 1\n")
    assert main(["--run", str(tmp_path / "missing"), "--qrels", str(tmp_path / "q.txt")]) == 2
    assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------- runs that did not finish


@pytest.mark.parametrize("entry", ["", "scores", "topk"])
def test_a_run_that_did_not_finish_is_refused(tmp_path, entry):
    run, qrels = random_case(16)
    write_rerank_run(tmp_path / "out", run, finished=False)
    with pytest.raises(InputError, match=r"--run .*out: no _SUCCESS.json there, so the run did not finish"):
        evaluate(str(tmp_path / "out" / entry), qrels)


@pytest.mark.parametrize("entry", ["", "topk"])
def test_a_run_that_did_not_finish_is_evaluated_when_allowed_with_a_loud_warning(tmp_path, caplog, entry):
    run, qrels = random_case(17)
    write_rerank_run(tmp_path / "out", run, finished=False)
    got = quiet_evaluate(str(tmp_path / "out" / entry), qrels, ["ndcg@10", "map"], allow_unfinished=True)
    want = run if entry == "" else pq.read_table(tmp_path / "out" / "topk")
    assert got["metrics"] == pytest.approx(reference(want, qrels, ["ndcg@10", "map"]), abs=1e-6)
    assert "USING AN UNFINISHED RUN" in caplog.text and str(tmp_path / "out") in caplog.text


def test_a_finished_run_folder_is_evaluated_from_its_scores(tmp_path):
    run, qrels = random_case(18)
    write_rerank_run(tmp_path / "out", run, top_k=3)
    got = quiet_evaluate(str(tmp_path / "out"), qrels, ["ndcg@10", "recall@100"])
    assert got["metrics"] == pytest.approx(reference(run, qrels, ["ndcg@10", "recall@100"]), abs=1e-6)


# ---------------------------------------------------------------- files that are not what they claim to be


NOT_TEXT = {
    "gzip": (b"\x1f\x8b\x08\x00" + bytes(range(256)), "gzip-compressed"),
    "nul bytes": (b"q 0 a 1\n\x00\x00\x00\x01\n", "binary file"),
    "latin-1": ("q 0 a 1\nq 0 caf\u00e9 1\n".encode("latin-1"), r"qrels.txt:2: not UTF-8 text"),
}


@pytest.mark.parametrize("case", NOT_TEXT)
def test_a_binary_or_non_utf8_qrels_file_is_an_input_error_naming_it(tmp_path, case):
    data, what = NOT_TEXT[case]
    (tmp_path / "qrels.txt").write_bytes(data)
    with pytest.raises(InputError, match=rf"{tmp_path}/{what if ':' in what else 'qrels.txt.*' + what}"):
        evaluate(pa.table({"query_id": ["q"], "doc_id": ["a"], "score": [1.0]}), str(tmp_path / "qrels.txt"))


def test_a_parquet_file_given_as_a_trec_qrels_file_says_to_name_it_parquet(tmp_path):
    pq.write_table(pa.table({"query_id": ["q"], "doc_id": ["a"], "relevance": [1]}), tmp_path / "qrels")
    with pytest.raises(InputError, match=r"qrels is not a TREC run or qrels file .* a Parquet file: name it \*.parquet"):
        evaluate(pa.table({"query_id": ["q"], "doc_id": ["a"], "score": [1.0]}), str(tmp_path / "qrels"))


@pytest.mark.parametrize("what", ["qrels", "run"])
def test_a_corrupt_parquet_file_is_an_input_error_naming_it(tmp_path, what):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"query_id": ["q"], "doc_id": ["a"], "relevance": [1], "score": [1.0]}), good)
    bad = tmp_path / f"{what}.parquet"
    bad.write_bytes(good.read_bytes()[:-40])  # cut short, as by an interrupted copy
    args = {"qrels": (pa.table({"query_id": ["q"], "doc_id": ["a"], "score": [1.0]}), str(bad)),
            "run": (str(bad), str(good))}[what]
    with pytest.raises(InputError, match=rf"{bad}: cannot be read as Parquet"):
        evaluate(*args)


def test_a_binary_run_file_is_an_input_error_naming_it(tmp_path):
    (tmp_path / "run.trec").write_bytes(b"\x00\x01\x02\x03" * 100)
    with pytest.raises(InputError, match=rf"{tmp_path}/run.trec is not a TREC run or qrels file .*binary file"):
        evaluate(str(tmp_path / "run.trec"), pa.table({"query_id": ["q"], "doc_id": ["a"], "relevance": [1]}))
