"""`labels --top-n-relevant` above the in-process threshold runs on Ray Data and writes what the in-process path writes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ettin_batch import labels
from ettin_batch.errors import InputError
from ettin_batch.labels import backfill_labels


@pytest.fixture
def on_ray(ray_session, monkeypatch):
    """Every top-N run in the test goes through Ray Data, however small."""
    monkeypatch.setattr(labels, "TOP_N_IN_PROCESS_ROWS", 0)


def write_files(folder, table: pa.Table, n_files: int) -> str:
    """Rows dealt round-robin over the files, so every query is spread over all of them."""
    folder.mkdir(parents=True)
    for i in range(n_files):
        pq.write_table(table.take(pa.array(np.arange(i, table.num_rows, n_files))), folder / f"part-{i}.parquet")
    return str(folder)


def tied_scores(rng, n_rows: int, query_ids, doc_ids) -> pa.Table:
    """Few distinct scores, so the N-th place is a tie in most queries; queries of 1 to ~60 rows."""
    return pa.table({"query_id": query_ids, "doc_id": doc_ids,
                     "score": pa.array(rng.choice([-1.5, 0.0, 0.25, 2.0], n_rows), pa.float32())})


def sorted_labels(folder) -> pa.Table:
    table = pq.read_table(folder / "labels.parquet")
    return table.sort_by([("query_id", "ascending"), ("doc_id", "ascending")])


def run_both(tmp_path, monkeypatch, scores: str, n: int) -> tuple:
    ray_summary = backfill_labels(scores, str(tmp_path / "ray"), top_n_relevant=n)
    monkeypatch.setattr(labels, "TOP_N_IN_PROCESS_ROWS", 10**12)
    local_summary = backfill_labels(scores, str(tmp_path / "local"), top_n_relevant=n)
    return ray_summary, local_summary


@pytest.mark.parametrize("ids", ["strings", "int64"])
def test_ray_and_in_process_top_n_write_the_same_labels(tmp_path, monkeypatch, on_ray, ids):
    rng = np.random.default_rng(7)
    n_rows = 4000
    qids = rng.integers(0, 120, n_rows)
    docs = rng.permutation(n_rows)  # 9 < 10 as numbers, "9" > "10" as trec_eval compares them
    if ids == "strings":
        qids, docs = [f"q{q}" for q in qids], [f"{'D' if d % 3 else 'd'}{d}" for d in docs]
    scores = write_files(tmp_path / "scores", tied_scores(rng, n_rows, pa.array(qids), pa.array(docs)), n_files=5)

    ray_summary, local_summary = run_both(tmp_path, monkeypatch, scores, n=5)

    assert sorted_labels(tmp_path / "ray").equals(sorted_labels(tmp_path / "local"))
    assert sorted((tmp_path / "ray" / "qrels.txt").read_text().splitlines()) == \
        sorted((tmp_path / "local" / "qrels.txt").read_text().splitlines())
    for summary in (ray_summary, local_summary):
        summary.pop("files")
    assert ray_summary == local_summary
    assert json.loads((tmp_path / "ray" / "_SUCCESS.json").read_text())["grade_counts"] == ray_summary["grade_counts"]
    assert (tmp_path / "ray" / "score_histogram.png").read_bytes() == \
        (tmp_path / "local" / "score_histogram.png").read_bytes()


def raised_in_a_task(error: InputError, scores: str) -> bool:
    """The message a Ray task raised, recovered at the driver as a plain InputError naming the scores, not
    Ray's wrapper (a subclass of InputError whose text is the task's whole traceback)."""
    return type(error) is InputError and str(error).startswith(f"{scores}: ") and "Traceback" not in str(error)


def test_a_pair_twice_in_one_file_is_an_error_on_ray(tmp_path, on_ray):
    table = pa.table({"query_id": ["q"] * 4, "doc_id": ["a", "b", "c", "a"], "score": [1.0, 2.0, 3.0, -4.0]})
    scores = write_files(tmp_path / "scores", table, n_files=1)
    with pytest.raises(InputError, match="1 \\(query_id, doc_id\\) pair\\(s\\) appear more than once") as error:
        backfill_labels(scores, str(tmp_path / "labels"), top_n_relevant=1)
    assert raised_in_a_task(error.value, scores)
    assert not (tmp_path / "labels" / "_SUCCESS.json").exists()


def test_a_pair_twice_across_files_among_the_best_is_an_error_on_ray(tmp_path, on_ray):
    table = pa.table({"query_id": ["q"] * 6, "doc_id": ["a", "a", "b", "c", "d", "e"],
                      "score": [9.0, 8.0, 1.0, 1.0, 0.0, 0.0]})
    scores = write_files(tmp_path / "scores", table, n_files=2)  # the two "a" rows land in different files
    with pytest.raises(InputError, match="pair\\(s\\) appear more than once") as error:
        backfill_labels(scores, str(tmp_path / "labels"), top_n_relevant=2)
    assert raised_in_a_task(error.value, scores)


def test_a_nan_score_is_an_error_on_ray(tmp_path, on_ray):
    table = pa.table({"query_id": ["q"] * 3, "doc_id": ["a", "b", "c"], "score": pa.array([1.0, None, float("nan")])})
    scores = write_files(tmp_path / "scores", table, n_files=1)
    with pytest.raises(InputError, match="2 row\\(s\\) have a null, NaN or infinite score") as error:
        backfill_labels(scores, str(tmp_path / "labels"), top_n_relevant=1)
    assert raised_in_a_task(error.value, scores)


def test_top_n_on_ray_reads_and_writes_s3(s3, on_ray):
    s3.mkdir("labelsray")
    with s3.open("labelsray/out/scores/part-0.parquet", "wb") as f:
        pq.write_table(pa.table({"query_id": ["q", "q", "r"], "doc_id": ["a", "b", "c"], "score": [1.0, 9.0, 0.5]}), f)
    summary = backfill_labels("s3://labelsray/out", "s3://labelsray/labels", top_n_relevant=1)
    assert summary["grade_counts"] == {"0": 1, "1": 2}
    assert sorted(s3.cat("labelsray/labels/qrels.txt").decode().splitlines()) == ["q 0 a 0", "q 0 b 1", "r 0 c 1"]
    assert s3.exists("labelsray/labels/_SUCCESS.json")
