"""`labels` and `eval` on a real rerank run: they read it only once it finished, and never write into it.

One rerank job (module fixture) on the session's Ray; an interrupted run is that run's folder copied
without its _SUCCESS.json, which is what a run that stopped part-way leaves (the marker is written last).
"""

from __future__ import annotations

import shutil
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ettin_batch.config import RerankConfig
from ettin_batch.errors import InputError, OutputError
from ettin_batch.evaluation import EvaluationWarning, evaluate
from ettin_batch.labels import backfill_labels

from helpers import TINY

QRELS = pa.table({"query_id": ["q1", "q2"], "doc_id": ["b", "d"], "relevance": [1, 1]})


@pytest.fixture(scope="module")
def reranked(tmp_path_factory, ray_session):
    from ettin_batch.pipeline.rerank import rerank

    root = tmp_path_factory.mktemp("runs")
    (root / "in").mkdir()
    pq.write_table(pa.table({"query_id": ["q1"] * 3 + ["q2"] * 3, "query": ["river water"] * 3 + ["music film"] * 3,
                             "doc_id": ["a", "b", "c", "a", "d", "e"],
                             "document": ["river", "water school", "film", "data", "music", "night"]}),
                   root / "in" / "part-0.parquet")
    rerank(RerankConfig.of(input=[str(root / "in")], output=str(root / "out"), model=TINY, top_k=2, progress=False))
    unfinished = root / "unfinished"
    shutil.copytree(root / "out", unfinished)
    (unfinished / "_SUCCESS.json").unlink()
    return root


def _files(folder) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_labels_refuses_a_rerank_runs_folder_as_output_and_leaves_it_as_it_was(reranked, tmp_path):
    before = _files(reranked / "out")
    (tmp_path / "scores").mkdir()
    pq.write_table(pa.table({"query_id": ["q"], "doc_id": ["a"], "score": [1.0]}), tmp_path / "scores" / "part-0.parquet")
    for overwrite in (False, True):  # another command's run is never replaced, --overwrite or not
        with pytest.raises(OutputError, match=r"out holds a finished `rerank` run, not a `labels` one"):
            backfill_labels(str(tmp_path / "scores"), str(reranked / "out"), thresholds="0", overwrite=overwrite)
    with pytest.raises(OutputError, match=r"out holds the input .*out/scores"):
        backfill_labels(str(reranked / "out"), str(reranked / "out"), thresholds="0")
    assert _files(reranked / "out") == before


@pytest.mark.parametrize("entry", ["", "scores"])
def test_labels_refuses_the_scores_of_a_run_that_did_not_finish(reranked, tmp_path, entry):
    with pytest.raises(InputError, match=r"--scores .*unfinished: no _SUCCESS.json there, so the run did not finish"):
        backfill_labels(str(reranked / "unfinished" / entry), str(tmp_path / "labels"), top_n_relevant=1)
    assert not (tmp_path / "labels").exists()


def test_labels_of_a_run_that_did_not_finish_are_those_of_its_scores_when_allowed(reranked, tmp_path, caplog):
    finished = backfill_labels(str(reranked / "out"), str(tmp_path / "finished"), top_n_relevant=1)
    allowed = backfill_labels(str(reranked / "unfinished"), str(tmp_path / "allowed"), top_n_relevant=1,
                              allow_unfinished=True)
    assert "USING AN UNFINISHED RUN" in caplog.text
    assert (tmp_path / "allowed" / "qrels.txt").read_text() == (tmp_path / "finished" / "qrels.txt").read_text()
    assert allowed["grade_counts"] == finished["grade_counts"] == {"0": 4, "1": 2}


@pytest.mark.parametrize("entry", ["", "scores", "topk"])
def test_eval_refuses_a_run_that_did_not_finish_and_reads_it_when_allowed(reranked, entry, caplog):
    with pytest.raises(InputError, match=r"--run .*unfinished: no _SUCCESS.json there, so the run did not finish"):
        evaluate(str(reranked / "unfinished" / entry), QRELS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        allowed = evaluate(str(reranked / "unfinished" / entry), QRELS, ["map", "mrr"], allow_unfinished=True)
        finished = evaluate(str(reranked / "out" / entry), QRELS, ["map", "mrr"])
    assert "USING AN UNFINISHED RUN" in caplog.text
    assert allowed == finished and allowed["num_queries"] == 2
