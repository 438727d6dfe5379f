"""`ettin-batch labels`: scores become graded labels by a stated boundary rule, in TREC and Parquet, with a histogram."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ettin_batch import ranking, trec
from ettin_batch.errors import ConfigError, InputError, OutputError
from ettin_batch.evaluation import EvaluationWarning, evaluate
from ettin_batch.labels import backfill_labels, grade_by_thresholds
from runs import write_rerank_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_scores(folder, query_ids, doc_ids, scores, n_files: int = 2) -> str:
    """A scores/ folder as the job writes it, each query's rows spread over the files."""
    table = pa.table({"query_id": query_ids, "doc_id": doc_ids, "score": pa.array(scores, pa.float32())})
    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(table.num_rows), n_files)):
        pq.write_table(table.take(pa.array(part)), folder / f"part-{i}.parquet")
    return str(folder)


def labels_by_pair(output) -> dict[tuple[str, str], int]:
    qrels = trec.read_trec_qrels(str(output / "qrels.txt"))
    return {(q, d): r for q, d, r in zip(*(qrels[c].to_pylist() for c in ("query_id", "doc_id", "relevance")))}


# ---------------------------------------------------------------- thresholds


def test_threshold_grades_follow_the_boundary_rule(tmp_path):
    scores = [-5.0, -0.5, 0.0, 3.9, 4.0, 7.9, 8.0, 100.0]
    path = write_scores(tmp_path / "scores", ["q"] * 8, [f"d{i}" for i in range(8)], scores)
    backfill_labels(path, str(tmp_path / "labels"), thresholds="0.0,4.0,8.0")
    got = labels_by_pair(tmp_path / "labels")
    assert [got[("q", f"d{i}")] for i in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_a_score_equal_to_a_threshold_takes_the_higher_grade():
    assert grade_by_thresholds(np.array([4.0], np.float32), [0.0, 4.0, 8.0]).tolist() == [2]


def test_a_float32_score_just_below_a_threshold_stays_below():
    below = np.nextafter(np.float32(4.0), np.float32(0.0))
    assert grade_by_thresholds(np.array([below], np.float32), [0.0, 4.0, 8.0]).tolist() == [1]


@pytest.mark.parametrize("thresholds", ["4.0,0.0,8.0", "0.0,4.0,4.0", [8.0, 4.0]])
def test_thresholds_out_of_order_are_an_error(tmp_path, thresholds):
    path = write_scores(tmp_path / "scores", ["q"], ["d"], [1.0], n_files=1)
    with pytest.raises(ConfigError, match="strictly increasing"):
        backfill_labels(path, str(tmp_path / "labels"), thresholds=thresholds)


@pytest.mark.parametrize("thresholds", ["0,high", "0,nan", ""])
def test_non_numeric_or_non_finite_thresholds_are_an_error(tmp_path, thresholds):
    path = write_scores(tmp_path / "scores", ["q"], ["d"], [1.0], n_files=1)
    with pytest.raises(ConfigError, match="threshold"):
        backfill_labels(path, str(tmp_path / "labels"), thresholds=thresholds)


@pytest.mark.parametrize("rules", [{}, {"thresholds": "0", "top_n_relevant": 1}])
def test_exactly_one_labelling_rule_is_required(tmp_path, rules):
    path = write_scores(tmp_path / "scores", ["q"], ["d"], [1.0], n_files=1)
    with pytest.raises(ConfigError, match="exactly one"):
        backfill_labels(path, str(tmp_path / "labels"), **rules)


# ---------------------------------------------------------------- top N per query


def test_top_n_relevant_marks_the_n_best_of_each_query_across_files(tmp_path):
    path = write_scores(
        tmp_path / "scores",
        ["a", "b", "a", "b", "a", "b", "a"],
        ["1", "1", "2", "2", "3", "3", "4"],
        [0.1, 5.0, 0.9, -1.0, 0.5, 2.0, 0.7],
    )
    backfill_labels(path, str(tmp_path / "labels"), top_n_relevant=2)
    got = labels_by_pair(tmp_path / "labels")
    assert {pair for pair, grade in got.items() if grade == 1} == {("a", "2"), ("a", "4"), ("b", "1"), ("b", "3")}
    assert len(got) == 7


def test_top_n_ties_are_broken_like_trec_eval_so_the_same_scores_evaluate_perfectly(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    qids = rng.integers(0, 60, n)
    docs = [f"d{i}" for i in rng.permutation(n)]
    scores = rng.choice([0.0, 1.0, 2.0], n)  # heavy ties at every cut
    path = write_scores(tmp_path / "scores", qids, docs, scores, n_files=3)
    backfill_labels(path, str(tmp_path / "labels"), top_n_relevant=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        result = evaluate(path, str(tmp_path / "labels" / "labels.parquet"), ["p@5", "ndcg@5", "recall@5"])
    assert result["metrics"] == pytest.approx({"p@5": 1.0, "ndcg@5": 1.0, "recall@5": 1.0})


def test_top_n_with_a_pair_scored_twice_is_an_error(tmp_path):
    path = write_scores(tmp_path / "scores", ["q", "q"], ["d", "d"], [1.0, 2.0], n_files=1)
    with pytest.raises(InputError, match="1 \\(query_id, doc_id\\) pair\\(s\\) appear more than once"):
        backfill_labels(path, str(tmp_path / "labels"), top_n_relevant=1)


@pytest.mark.parametrize("seed", range(5))
def test_per_block_candidates_and_one_cutoff_per_query_select_the_same_top_n_as_trec_eval_order(seed):
    """The Ray path's arithmetic, run here without Ray: blocks cut alone, cutoffs from the union."""
    from ettin_batch.pipeline.top_n_labels import block_candidates, query_cutoffs, relevant_mask

    rng = np.random.default_rng(seed)
    n_rows, n = 2000, int(rng.integers(1, 8))
    table = pa.table({"query_id": rng.integers(0, 80, n_rows), "doc_id": rng.permutation(n_rows),
                      "score": pa.array(rng.choice([0.0, 0.5, 1.0], n_rows), pa.float32())})
    blocks = np.array_split(rng.permutation(n_rows), int(rng.integers(1, 6)))
    candidates = pa.concat_tables([block_candidates(table.take(pa.array(b)), n=n) for b in blocks])
    cutoffs = query_cutoffs(candidates, n=n)
    got = relevant_mask(table["query_id"], table["doc_id"], table["score"], cutoffs)

    keys = pa.table({"query_id": trec.ids_as_strings(table["query_id"]), "doc_id": trec.ids_as_strings(table["doc_id"]),
                     "score": table["score"], "row": np.arange(n_rows)})
    ordered, ranks = ranking.ranked(keys)
    want = np.zeros(n_rows, bool)
    want[ordered["row"].to_numpy()] = ranks < n
    assert np.array_equal(got, want)
    assert cutoffs["min_score"].to_pylist() and min(cutoffs["min_score"].to_pylist()) == 0.0


def test_a_block_with_a_null_id_is_refused_before_it_reaches_the_shuffle():
    from ettin_batch.pipeline.top_n_labels import block_candidates

    with pytest.raises(InputError, match="1 row\\(s\\) have a null query_id"):
        block_candidates(pa.table({"query_id": ["q", None], "doc_id": ["a", "b"], "score": [1.0, 2.0]}), n=1)


@pytest.mark.parametrize("n", [0, -1, 1.5])
def test_top_n_must_be_a_positive_integer(tmp_path, n):
    path = write_scores(tmp_path / "scores", ["q"], ["d"], [1.0], n_files=1)
    with pytest.raises(ConfigError, match="positive integer"):
        backfill_labels(path, str(tmp_path / "labels"), top_n_relevant=n)


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize("rule", [{"thresholds": "0,4,8"}, {"top_n_relevant": 3}])
def test_trec_qrels_and_parquet_hold_the_same_labels(tmp_path, rule):
    rng = np.random.default_rng(1)
    path = write_scores(tmp_path / "scores", pa.array(rng.integers(0, 20, 500)), pa.array(np.arange(500)), rng.normal(4, 4, 500))
    backfill_labels(path, str(tmp_path / "labels"), **rule)
    table = pq.read_table(tmp_path / "labels" / "labels.parquet")
    assert table.schema.field("query_id").type == pa.int64()  # input id types are kept in Parquet
    assert table.schema.field("relevance").type == pa.int32()
    from_parquet = {(str(q), str(d)): r for q, d, r in zip(*(table[c].to_pylist() for c in ("query_id", "doc_id", "relevance")))}
    assert from_parquet == labels_by_pair(tmp_path / "labels")
    assert len(from_parquet) == 500


@pytest.mark.parametrize("rule", [{"thresholds": "0,4,8"}, {"top_n_relevant": 3}])
def test_histogram_is_a_valid_png(tmp_path, rule):
    rng = np.random.default_rng(2)
    path = write_scores(tmp_path / "scores", rng.integers(0, 20, 400), np.arange(400), rng.normal(4, 4, 400))
    backfill_labels(path, str(tmp_path / "labels"), **rule)
    png = tmp_path / "labels" / "score_histogram.png"
    assert png.stat().st_size > 0
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as image:
        image.verify()
        assert image.size == (900, 450)


def test_histogram_range_covers_thresholds_outside_the_scores(tmp_path):
    path = write_scores(tmp_path / "scores", ["q"] * 3, ["a", "b", "c"], [1.0, 1.0, 1.0], n_files=1)
    backfill_labels(path, str(tmp_path / "labels"), thresholds="-10,20")
    assert (tmp_path / "labels" / "score_histogram.png").read_bytes()[:8] == PNG_SIGNATURE


def test_success_json_is_written_last_with_grade_counts(tmp_path):
    write_scores(tmp_path / "scores", ["q"] * 4, ["a", "b", "c", "d"], [-1.0, 0.0, 5.0, 9.0], n_files=1)
    summary = backfill_labels(str(tmp_path), str(tmp_path / "labels"), thresholds=[0.0, 4.0, 8.0])  # a job output folder
    written = json.loads((tmp_path / "labels" / "_SUCCESS.json").read_text())
    assert written == summary
    assert written["grade_counts"] == {"0": 1, "1": 1, "2": 1, "3": 1}
    assert written["rows"] == 4 and written["thresholds"] == [0.0, 4.0, 8.0]


def test_a_failed_rerun_into_the_same_folder_leaves_no_success_marker(tmp_path):
    good = write_scores(tmp_path / "good", ["q"], ["a"], [1.0], n_files=1)
    bad = write_scores(tmp_path / "bad", ["q", "q"], ["a", "b c"], [1.0, 2.0], n_files=1)
    backfill_labels(good, str(tmp_path / "labels"), thresholds="0")
    with pytest.raises(InputError, match="1 doc_id\\(s\\) are empty or contain whitespace"):
        backfill_labels(bad, str(tmp_path / "labels"), thresholds="0", overwrite=True)
    assert not (tmp_path / "labels" / "_SUCCESS.json").exists()


def test_reads_and_writes_any_fsspec_filesystem():
    fs = fsspec.filesystem("memory")
    with fs.open("/labelstest/scores/part-0.parquet", "wb") as f:
        pq.write_table(pa.table({"query_id": ["q", "q"], "doc_id": ["a", "b"], "score": [1.0, 9.0]}), f)
    backfill_labels("memory://labelstest/scores", "memory://labelstest/labels", thresholds="0,4,8")
    assert fs.cat("/labelstest/labels/qrels.txt").decode() == "q 0 a 1\nq 0 b 3\n"
    assert fs.cat("/labelstest/labels/score_histogram.png")[:8] == PNG_SIGNATURE


def test_reads_and_writes_s3(s3):
    s3.mkdir("labelbucket")
    with s3.open("labelbucket/out/scores/part-0.parquet", "wb") as f:
        pq.write_table(pa.table({"query_id": ["q", "q"], "doc_id": ["a", "b"], "score": [1.0, 9.0]}), f)
    summary = backfill_labels("s3://labelbucket/out", "s3://labelbucket/labels", top_n_relevant=1)
    assert s3.cat("labelbucket/labels/qrels.txt").decode() == "q 0 b 1\nq 0 a 0\n"
    assert sorted(s3.ls("labelbucket/labels")) == [
        f"labelbucket/labels/{name}"
        for name in ("_SUCCESS.json", "_run.json", "labels.parquet", "qrels.txt", "score_histogram.png")
    ]
    assert summary["files"]["qrels.txt"] == "s3://labelbucket/labels/qrels.txt"


# ---------------------------------------------------------------- the output folder


def test_its_own_finished_output_is_refused_without_overwrite_and_left_as_it_was(tmp_path):
    path = write_scores(tmp_path / "scores", ["q"] * 2, ["a", "b"], [1.0, 9.0], n_files=1)
    backfill_labels(path, str(tmp_path / "labels"), thresholds="0,4,8")
    before = {p.name: p.read_bytes() for p in (tmp_path / "labels").iterdir()}
    with pytest.raises(OutputError, match=r"labels/_SUCCESS.json exists: a finished `labels` run. Pass --overwrite"):
        backfill_labels(path, str(tmp_path / "labels"), top_n_relevant=1)
    assert {p.name: p.read_bytes() for p in (tmp_path / "labels").iterdir()} == before


def test_overwrite_replaces_its_own_finished_output(tmp_path):
    path = write_scores(tmp_path / "scores", ["q"] * 2, ["a", "b"], [1.0, 9.0], n_files=1)
    backfill_labels(path, str(tmp_path / "labels"), thresholds="0,4,8")
    summary = backfill_labels(path, str(tmp_path / "labels"), top_n_relevant=1, overwrite=True)
    assert (tmp_path / "labels" / "qrels.txt").read_text() == "q 0 b 1\nq 0 a 0\n"
    assert json.loads((tmp_path / "labels" / "_SUCCESS.json").read_text()) == summary
    assert summary["kind"] == "labels" and summary["mode"] == "top_n_relevant"


@pytest.mark.parametrize("finished", [True, False])
def test_a_rerank_runs_folder_is_refused_as_output_and_left_as_it_was(tmp_path, finished):
    scores = pa.table({"query_id": ["q", "q"], "doc_id": ["a", "b"], "score": pa.array([1.0, 9.0], pa.float32())})
    rerank_out = write_rerank_run(tmp_path / "reranked", scores, finished=finished)
    path = write_scores(tmp_path / "scores", ["q"] * 2, ["a", "b"], [1.0, 9.0], n_files=1)
    before = {p: p.read_bytes() for p in (tmp_path / "reranked").rglob("*") if p.is_file()}
    with pytest.raises(OutputError, match=r"reranked.*(a finished|an unfinished) `rerank` run"):
        backfill_labels(path, rerank_out, thresholds="0")
    assert {p: p.read_bytes() for p in (tmp_path / "reranked").rglob("*") if p.is_file()} == before


def test_a_folder_of_someone_elses_files_is_refused_as_output(tmp_path):
    path = write_scores(tmp_path / "scores", ["q"], ["a"], [1.0], n_files=1)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "notes.md").write_text("mine")
    with pytest.raises(OutputError, match=r"is not empty \(notes.md\) and holds no ettin-batch run"):
        backfill_labels(path, str(tmp_path / "labels"), thresholds="0")
    assert [p.name for p in (tmp_path / "labels").iterdir()] == ["notes.md"]


# ---------------------------------------------------------------- reading a run back


@pytest.mark.parametrize("entry", ["", "scores"])
def test_scores_of_a_run_that_did_not_finish_are_refused(tmp_path, entry):
    scores = pa.table({"query_id": ["q", "q"], "doc_id": ["a", "b"], "score": pa.array([1.0, 9.0], pa.float32())})
    write_rerank_run(tmp_path / "out", scores, finished=False)
    with pytest.raises(InputError, match=r"--scores .*out: no _SUCCESS.json there, so the run did not finish"):
        backfill_labels(str(tmp_path / "out" / entry), str(tmp_path / "labels"), thresholds="0")
    assert not (tmp_path / "labels").exists()


def test_scores_of_a_run_that_did_not_finish_are_labelled_when_allowed_with_a_loud_warning(tmp_path, caplog):
    scores = pa.table({"query_id": ["q", "q"], "doc_id": ["a", "b"], "score": pa.array([1.0, 9.0], pa.float32())})
    write_rerank_run(tmp_path / "out", scores, finished=False)
    summary = backfill_labels(str(tmp_path / "out"), str(tmp_path / "labels"), top_n_relevant=1, allow_unfinished=True)
    assert (tmp_path / "labels" / "qrels.txt").read_text() == "q 0 b 1\nq 0 a 0\n"
    assert summary["rows"] == 2
    assert "USING AN UNFINISHED RUN" in caplog.text and str(tmp_path / "out") in caplog.text


def test_a_finished_runs_folder_is_read_from_its_scores_not_its_topk(tmp_path):
    scores = pa.table({"query_id": ["q"] * 3, "doc_id": ["a", "b", "c"], "score": pa.array([1.0, 9.0, 5.0], pa.float32())})
    write_rerank_run(tmp_path / "out", scores, top_k=1)
    summary = backfill_labels(str(tmp_path / "out"), str(tmp_path / "labels"), thresholds="4")
    assert summary["rows"] == 3 and summary["grade_counts"] == {"0": 1, "1": 2}


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("rule", [{"thresholds": "0"}, {"top_n_relevant": 1}])
@pytest.mark.parametrize("bad", [None, float("nan")])
def test_null_or_nan_scores_are_an_error_with_a_count(tmp_path, rule, bad):
    (tmp_path / "scores").mkdir()
    pq.write_table(pa.table({"query_id": ["q"] * 3, "doc_id": ["a", "b", "c"], "score": pa.array([1.0, bad, bad], pa.float32())}),
                   tmp_path / "scores" / "part-0.parquet")
    with pytest.raises(InputError, match="2 row\\(s\\) have a null, NaN or infinite score"):
        backfill_labels(str(tmp_path / "scores"), str(tmp_path / "labels"), **rule)


def _two_scores(doc_ids) -> pa.Table:
    return pa.table({"query_id": ["q", "q"], "doc_id": doc_ids, "score": pa.array([1.0, 2.0], pa.float32())})


# case -> (the one scores file, what the error says)
BAD_SCORES = {
    "no score column": (pa.table({"query_id": ["q"], "doc_id": ["a"], "logit": [1.0]}),
                        r"need column\(s\) \['score'\]; found \['query_id', 'doc_id', 'logit'\]"),
    "a non-numeric score column": (pa.table({"query_id": ["q"], "doc_id": ["a"], "score": ["9.1"]}),
                                   "'score' must be numeric"),
    # TREC qrels are whitespace-separated: these ids cannot be written there.
    "a doc_id with a space": (_two_scores(["ok", "two words"]), "1 doc_id\\(s\\) are empty or contain whitespace"),
    "a doc_id with a tab": (_two_scores(["ok", "tab\there"]), "1 doc_id\\(s\\) are empty or contain whitespace"),
    "an empty doc_id": (_two_scores(["ok", ""]), "1 doc_id\\(s\\) are empty or contain whitespace"),
    # An error, not a pair silently missing from the qrels.
    "a null doc_id": (_two_scores(pa.array(["ok", None])), "1 doc_id\\(s\\) are null"),
}


@pytest.mark.parametrize("case", BAD_SCORES)
def test_scores_that_cannot_be_labelled_are_an_error_naming_the_problem(tmp_path, case):
    table, says = BAD_SCORES[case]
    (tmp_path / "scores").mkdir()
    pq.write_table(table, tmp_path / "scores" / "part-0.parquet")
    with pytest.raises(InputError, match=says):
        backfill_labels(str(tmp_path / "scores"), str(tmp_path / "labels"), thresholds="0")


def test_a_cut_short_parquet_file_in_the_scores_is_an_input_error_naming_it(tmp_path):
    path = write_scores(tmp_path / "scores", ["q"] * 4, ["a", "b", "c", "d"], [1.0, 2.0, 3.0, 4.0], n_files=2)
    part = tmp_path / "scores" / "part-1.parquet"
    part.write_bytes(part.read_bytes()[:-40])
    with pytest.raises(InputError, match=rf"{path}: cannot be read as Parquet .*part-1.parquet"):
        backfill_labels(path, str(tmp_path / "labels"), thresholds="0")
    assert not (tmp_path / "labels").exists()  # refused before anything is written


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, ettin_batch.labels; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---------------------------------------------------------------- CLI


def main(args: list[str]) -> int:
    """`ettin-batch labels ARGS`, in this process."""
    from ettin_batch.cli import main as ettin_batch

    return ettin_batch(["labels", *args])


def test_cli_prints_pairs_per_grade_and_the_files(tmp_path, capsys):
    path = write_scores(tmp_path / "scores", ["q"] * 4, ["a", "b", "c", "d"], [-1.0, 0.0, 5.0, 9.0], n_files=1)
    assert main(["--scores", path, "--output", str(tmp_path / "labels"), "--thresholds", "0.0,4.0,8.0"]) == 0
    out = capsys.readouterr().out
    assert "4 pairs labelled; pairs per grade: 0: 1, 1: 1, 2: 1, 3: 1" in out
    assert "qrels.txt" in out and "labels.parquet" in out and "score_histogram.png" in out


def test_ettin_batch_labels_is_a_registered_subcommand(tmp_path):
    from ettin_batch.cli import main as ettin_batch

    path = write_scores(tmp_path / "scores", ["q"] * 2, ["a", "b"], [1.0, 9.0], n_files=1)
    assert ettin_batch(["labels", "--scores", path, "--output", str(tmp_path / "labels"), "--top-n-relevant", "1"]) == 0
    assert (tmp_path / "labels" / "qrels.txt").read_text() == "q 0 b 1\nq 0 a 0\n"


def test_cli_thresholds_out_of_order_exit_2_with_the_reason(tmp_path, capsys):
    path = write_scores(tmp_path / "scores", ["q"], ["d"], [1.0], n_files=1)
    assert main(["--scores", path, "--output", str(tmp_path / "labels"), "--thresholds", "8,4"]) == 2
    assert "strictly increasing" in capsys.readouterr().err


def test_cli_refuses_both_rules_at_once(tmp_path, capsys):
    assert main(["--scores", "x", "--output", "y", "--thresholds", "0", "--top-n-relevant", "1"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
