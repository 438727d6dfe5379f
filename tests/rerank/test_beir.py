"""`ettin-batch beir`: a BEIR folder and a first-stage run -> candidates -> rerank -> eval, in one command.

The dataset is built here: 40 documents (some without a title, some written with their keys in
another order), 6 queries, test and train qrels, and a TREC run whose scores tie at the depth cut
and whose rank column disagrees with its scores. One real run of the command (module fixture) on the
session's Ray; the bad-input tests stop before Ray starts.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import pytrec_eval

from ettin_batch.beir import BeirConfig, BeirWarning, beir_rerank, build_candidates
from ettin_batch.config import RerankConfig
from ettin_batch.errors import InputError, OutputError
from ettin_batch.run_folder import RunFolder

from helpers import TINY

DEPTH = 5
METRICS = {"ndcg@10": "ndcg_cut_10", "map": "map", "recall@5": "recall_5", "p@5": "P_5", "mrr": "recip_rank"}
WORDS = "river water music film school data model search query document rank score index night".split()


def _doc(i: int) -> dict:
    text = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3 + i % 9))
    if i % 5 == 0:
        return {"_id": f"doc-{i}", "text": text}  # no title: the document is the text alone
    if i % 5 == 1:
        return {"_id": f"doc-{i}", "title": "", "text": text}
    return {"_id": f"doc-{i}", "title": f"Title {i}", "text": text, "metadata": {"year": 2000 + i}}


def _write_beir(folder) -> dict:
    """A small BEIR dataset and a run over it; returns what the test needs to check the outputs."""
    (folder / "qrels").mkdir(parents=True)
    docs = [_doc(i) for i in range(40)]
    with open(folder / "corpus.jsonl", "w") as f:
        for d in docs:
            if int(d["_id"].split("-")[1]) % 4 == 3:  # keys in another order: the scan parses these in full
                f.write(json.dumps({k: d[k] for k in reversed(list(d))}) + "\n")
            else:
                f.write(json.dumps(d) + "\n")
    queries = {f"q{i}": f"what about {WORDS[i]} and {WORDS[i + 3]}" for i in range(1, 7)}
    with open(folder / "queries.jsonl", "w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text, "metadata": {}}) + "\n")
    # q1-q5 judged in test (q5 is not in the run); q6 is judged in train only.
    judged = {"q1": {"doc-7": 2, "doc-2": 1, "doc-30": 1}, "q2": {"doc-11": 1, "doc-12": 0},
              "q3": {"doc-20": 1, "doc-21": 2, "doc-22": 1}, "q4": {"doc-39": 0}, "q5": {"doc-1": 1}}
    with open(folder / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, docs_ in judged.items():
            for doc_id, grade in docs_.items():
                f.write(f"{qid}\t{doc_id}\t{grade}\n")
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq6\tdoc-0\t1\n")
    run = {
        # doc-3 and doc-7 tie at places 5 and 6: trec_eval's order (doc_id descending) keeps doc-7.
        "q1": {"doc-1": 9.0, "doc-2": 8.5, "doc-4": 8.0, "doc-5": 7.0, "doc-3": 2.0, "doc-7": 2.0, "doc-30": 1.0},
        "q2": {f"doc-{i}": float(20 - i) for i in range(8, 18)},
        "q3": {"doc-20": 1.0, "doc-21": 3.0, "doc-22": 2.0},  # fewer than DEPTH: all kept
        "q4": {f"doc-{i}": 0.5 for i in range(32, 40)},  # all tied
        "q6": {"doc-0": 1.0, "doc-1": 0.5},  # no judgments in test: not reranked
    }
    lines = [f"{qid} Q0 {doc_id} {rank} {score} bm25"
             for qid, docs_ in run.items() for rank, (doc_id, score) in enumerate(reversed(docs_.items()), 1)]
    (folder / "run.trec").write_text("\n".join(lines) + "\n")
    return {"docs": {d["_id"]: d for d in docs}, "queries": queries, "qrels": judged, "run": run}


def _expected_candidates(case: dict) -> list[tuple]:
    """(query_id, doc_id, query, document, retrieval_score, retrieval_rank), computed here independently."""
    rows = []
    for qid, docs in case["run"].items():
        if qid not in case["qrels"]:
            continue
        ranked = sorted(docs.items(), key=lambda kv: (kv[1], kv[0].encode()), reverse=True)[:DEPTH]
        for rank, (doc_id, score) in enumerate(ranked, 1):
            d = case["docs"][doc_id]
            rows.append((qid, doc_id, case["queries"][qid], (d.get("title", "") + " " + d["text"]).strip(),
                         score, rank))
    return sorted(rows)


def _cli(args: list[str]) -> tuple[int, str, str]:
    from ettin_batch.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def _args(beir, out, *extra) -> list[str]:
    return ["beir", "--beir", str(beir), "--run", str(beir / "run.trec"), "--output", str(out), "--model", TINY,
            "--depth", str(DEPTH), "--metrics", ",".join(METRICS), "--top-k", "3", "--no-progress", *extra]


@pytest.fixture(scope="module")
def done(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("beir")
    case = _write_beir(root / "scifact")
    code, stdout, stderr = _cli(_args(root / "scifact", root / "out", "--json"))
    assert code == 0, stderr
    return {"case": case, "beir": root / "scifact", "out": root / "out", "printed": json.loads(stdout),
            "stderr": stderr}


# ---------------------------------------------------------------- the one command


def test_candidates_hold_the_runs_best_depth_per_judged_query_with_beir_texts(done):
    cand = pq.read_table(done["out"] / "candidates")
    assert cand.column_names == ["query_id", "query", "doc_id", "document", "retrieval_score", "retrieval_rank"]
    got = sorted(zip(*(cand[c].to_pylist() for c in
                       ("query_id", "doc_id", "query", "document", "retrieval_score", "retrieval_rank"))))
    assert got == _expected_candidates(done["case"])


def test_a_tie_at_the_depth_cut_keeps_the_document_trec_eval_ranks_first(done):
    cand = pq.read_table(done["out"] / "candidates")
    q1 = cand.filter(pc.equal(cand["query_id"], "q1")).sort_by("retrieval_rank")
    assert q1["doc_id"].to_pylist() == ["doc-1", "doc-2", "doc-4", "doc-5", "doc-7"]


def test_documents_join_title_and_text_as_beir_does(done):
    cand = pq.read_table(done["out"] / "candidates")
    text = dict(zip(cand["doc_id"].to_pylist(), cand["document"].to_pylist()))
    docs = done["case"]["docs"]
    assert text["doc-10"] == docs["doc-10"]["text"]  # no title
    assert text["doc-11"] == docs["doc-11"]["text"]  # empty title: no leading space
    assert text["doc-12"] == "Title 12 " + docs["doc-12"]["text"]


def test_the_rerank_output_is_complete_and_keeps_the_first_stage_columns(done):
    manifest = json.loads((done["out"] / "rerank" / "_SUCCESS.json").read_text())
    n = len(_expected_candidates(done["case"]))
    assert manifest["counts"] == {**manifest["counts"], "in": n, "scored": n, "rejected": 0}
    scores = pq.read_table(done["out"] / "rerank" / "scores")
    assert {"retrieval_score", "retrieval_rank", "score"} <= set(scores.column_names)
    assert sorted(zip(scores["query_id"].to_pylist(), scores["doc_id"].to_pylist())) == \
        sorted((r[0], r[1]) for r in _expected_candidates(done["case"]))
    assert pq.read_table(done["out"] / "rerank" / "topk").num_rows == 3 * 3 + 3  # q3 has 3 candidates


def _pytrec(qrels: dict, run: dict) -> dict[str, float]:
    measures = {"ndcg_cut.10", "map", "recall.5", "P.5", "recip_rank"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    return {name: sum(v[key] for v in per_query.values()) / len(per_query) for name, key in METRICS.items()}


def test_eval_numbers_equal_pytrec_eval_on_the_scores_and_on_the_first_stage_order(done):
    scores = pq.read_table(done["out"] / "rerank" / "scores").to_pylist()
    reranked, first_stage = {}, {}
    for r in scores:
        reranked.setdefault(r["query_id"], {})[r["doc_id"]] = float(r["score"])
        first_stage.setdefault(r["query_id"], {})[r["doc_id"]] = r["retrieval_score"]
    qrels = {q: d for q, d in done["case"]["qrels"].items() if q in reranked}
    report = json.loads((done["out"] / "eval.json").read_text())
    assert report["metrics"] == pytest.approx(_pytrec(qrels, reranked), abs=1e-9)
    assert report["baseline"] == pytest.approx(_pytrec(qrels, first_stage), abs=1e-9)
    assert report["num_queries"] == 4
    assert done["printed"]["metrics"] == report["metrics"]  # --json prints eval.json


def test_skipped_queries_are_counted_in_warnings(done):
    report = json.loads((done["out"] / "eval.json").read_text())
    assert report["candidates"]["queries_without_judgments"] == 1  # q6
    assert any("1 of 5 run queries have no judgments" in w for w in report["warnings"])
    assert any("1 of 5 judged queries are not in the run" in w for w in report["warnings"])  # q5
    assert "1 of 5 run queries have no judgments" in done["stderr"]


def test_eval_json_names_the_inputs_model_and_depth(done):
    report = json.loads((done["out"] / "eval.json").read_text())
    assert report["split"] == "test" and report["depth"] == DEPTH
    assert report["model"]["model_id"] == TINY and report["model"]["is_random"] is True
    assert report["candidates"]["pairs"] == len(_expected_candidates(done["case"]))


def test_the_written_qrels_reproduce_the_numbers_with_ettin_batch_eval(done):
    code, stdout, _ = _cli(["eval", "--run", str(done["out"] / "rerank"), "--qrels", str(done["out"] / "qrels.parquet"),
                            "--metrics", ",".join(METRICS), "--baseline-col", "retrieval_score", "--json"])
    report = json.loads((done["out"] / "eval.json").read_text())
    assert code == 0 and json.loads(stdout)["metrics"] == report["metrics"]


def test_the_output_is_a_finished_beir_run_whose_success_marker_comes_last(done):
    manifest = json.loads((done["out"] / "_SUCCESS.json").read_text())
    assert manifest["kind"] == "beir" and manifest["metrics"] == done["printed"]["metrics"]
    assert manifest["rerank"] == str(done["out"] / "rerank")
    assert json.loads((done["out"] / "_run.json").read_text())["kind"] == "beir"
    written = {p.name: p.stat().st_mtime_ns for p in done["out"].iterdir()}
    assert written["_SUCCESS.json"] >= max(written.values())


def test_running_it_again_refuses_before_reading_the_corpus_unless_overwrite(done, tmp_path):
    # The BEIR folder is gone: the refusal comes before any input is read.
    code, _, err = _cli(_args(tmp_path / "nowhere", done["out"]))
    assert code == 2 and f"{done['out']}/_SUCCESS.json exists: a finished `beir` run" in err and "--overwrite" in err


# ---------------------------------------------------------------- candidates without Ray


def _config(beir, out, **kw) -> BeirConfig:
    return BeirConfig(beir=str(beir), run=kw.pop("run", str(beir / "run.trec")), output=str(out), depth=DEPTH,
                      rerank=RerankConfig.of(model=TINY, progress=False, **kw.pop("rerank", {})), **kw).validate()


def _build(beir, out, **kw) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BeirWarning)
        return build_candidates(_config(beir, out, **kw))


def test_a_parquet_run_gives_the_same_candidates_as_the_trec_run(tmp_path):
    case = _write_beir(tmp_path / "ds")
    rows = [(q, d, s) for q, docs in case["run"].items() for d, s in docs.items()]
    pq.write_table(pa.table({"query_id": [r[0] for r in rows], "doc_id": [r[1] for r in rows],
                             "score": pa.array([r[2] for r in rows], pa.float32())}), tmp_path / "run.parquet")
    _build(tmp_path / "ds", tmp_path / "a")
    _build(tmp_path / "ds", tmp_path / "b", run=str(tmp_path / "run.parquet"))
    a, b = (pq.read_table(tmp_path / x / "candidates") for x in "ab")
    assert a.equals(b)


def test_a_run_with_fields_after_the_tag_and_comment_lines_gives_the_same_candidates(tmp_path):
    """What trec_eval reads (its own test run has words after the tag; version 10 skips '#' lines)."""
    _write_beir(tmp_path / "ds")
    run = tmp_path / "ds" / "run.trec"
    plain = _lines(run)
    (tmp_path / "decorated.trec").write_text("\n".join(
        ["# bm25 k1=0.9 b=0.4", *[f"{line}\treserved for future expansion" for line in plain]]) + "\n")
    a = _build(tmp_path / "ds", tmp_path / "a")
    b = _build(tmp_path / "ds", tmp_path / "b", run=str(tmp_path / "decorated.trec"))
    assert a == b
    assert pq.read_table(tmp_path / "a" / "candidates").equals(pq.read_table(tmp_path / "b" / "candidates"))


def test_unjudged_run_queries_are_dropped_with_a_counted_warning(tmp_path):
    _write_beir(tmp_path / "ds")
    with pytest.warns(BeirWarning, match="1 of 5 run queries have no judgments"):
        counts = build_candidates(_config(tmp_path / "ds", tmp_path / "out"))
    assert counts["queries"] == 4 and counts["queries_below_depth"] == 1


def test_another_split_judges_other_queries(tmp_path):
    _write_beir(tmp_path / "ds")
    counts = _build(tmp_path / "ds", tmp_path / "out", split="train")
    assert counts["queries"] == 1 and counts["pairs"] == 2


# ---------------------------------------------------------------- bad input names the file and line


def _lines(path) -> list[str]:
    return path.read_text().splitlines()


def _rewrite(path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def _drop_lines(path, needle: str) -> None:
    _rewrite(path, [line for line in _lines(path) if needle not in line])


def _line_of(path, part: str) -> int:
    """The number (from 1) of the first line of `path` that holds `part`."""
    return 1 + next(i for i, text in enumerate(_lines(path)) if part in text)


# Each mistake edits the dataset _write_beir made in `ds` (a run.parquet beside it, if it needs one) and
# returns the build's extra settings and the error it must raise, which names the file and line or row.


def a_run_document_missing_from_the_corpus(ds):
    _drop_lines(ds / "corpus.jsonl", '"doc-4"')
    return {}, rf"run.trec:{_line_of(ds / 'run.trec', ' doc-4 ')}: document 'doc-4' is not in .*corpus.jsonl"


def a_run_query_missing_from_queries_jsonl(ds):
    _drop_lines(ds / "queries.jsonl", '"q2"')
    return {}, rf"run.trec:{_line_of(ds / 'run.trec', 'q2 Q0 ')}: query 'q2' is not in .*queries.jsonl"


def a_parquet_run_document_missing_from_the_corpus(ds):
    pq.write_table(pa.table({"query_id": ["q1", "q1"], "doc_id": ["doc-1", "nowhere"], "score": [2.0, 1.0]}),
                   ds.parent / "run.parquet")
    return {"run": str(ds.parent / "run.parquet")}, r"run.parquet \(row 2\): document 'nowhere' is not in"


def a_malformed_corpus_line_the_run_needs(ds):
    lines = _lines(ds / "corpus.jsonl")
    lines[5] = lines[5][:-1]  # doc-5, cut short
    _rewrite(ds / "corpus.jsonl", lines)
    return {}, r"corpus.jsonl:6: not a JSON line"


def a_document_defined_twice(ds):
    lines = _lines(ds / "corpus.jsonl")
    _rewrite(ds / "corpus.jsonl", lines + [lines[2]])
    return {}, r"corpus.jsonl:41: document 'doc-2' is defined again \(first at line 3\)"


def a_malformed_run_line(ds):
    lines = _lines(ds / "run.trec")
    lines[3] = "q1 Q0 doc-1 4 bm25"
    _rewrite(ds / "run.trec", lines)
    return {}, r"run.trec:4: a run line has at least 6 fields"


def comment_lines_count_in_the_line_number_named(ds):
    lines = _lines(ds / "run.trec")
    _rewrite(ds / "run.trec", ["# a first-stage run", lines[0], "", "  # another comment", lines[0]] + lines[1:])
    return {}, r"run.trec:5: query 'q1' lists document .* again"


def a_pair_listed_twice_in_the_run_named_at_its_second_line(ds):
    lines = _lines(ds / "run.trec")
    _rewrite(ds / "run.trec", lines[:2] + [lines[0].replace(" bm25", "").rsplit(" ", 1)[0] + " 0.1 bm25"] + lines[2:])
    return {}, r"run.trec:3: query 'q1' lists document .* again"


def a_non_integer_qrels_grade(ds):
    lines = _lines(ds / "qrels" / "test.tsv")
    lines[2] = "q1\tdoc-2\thigh"
    _rewrite(ds / "qrels" / "test.tsv", lines)
    return {}, r"test.tsv:3: score must be an integer grade, got 'high'"


def a_missing_split_listing_the_splits_there(ds):
    return {"split": "dev"}, r"dev.tsv: no such file; splits in .*: \['test', 'train'\]"


def binary_qrels(ds):
    (ds / "qrels" / "test.tsv").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)))
    return {}, r"qrels/test.tsv:1: not UTF-8 text .* BEIR qrels are tab-separated text"


BAD_DATASETS = [a_run_document_missing_from_the_corpus, a_run_query_missing_from_queries_jsonl,
                a_parquet_run_document_missing_from_the_corpus, a_malformed_corpus_line_the_run_needs,
                a_document_defined_twice, a_malformed_run_line, comment_lines_count_in_the_line_number_named,
                a_pair_listed_twice_in_the_run_named_at_its_second_line, a_non_integer_qrels_grade,
                a_missing_split_listing_the_splits_there, binary_qrels]


@pytest.mark.parametrize("mistake", BAD_DATASETS, ids=lambda mistake: mistake.__name__)
def test_bad_input_is_an_error_naming_the_file_and_line(tmp_path, mistake):
    _write_beir(tmp_path / "ds")
    settings, error = mistake(tmp_path / "ds")
    with pytest.raises(InputError, match=error):
        _build(tmp_path / "ds", tmp_path / "out", **settings)


def test_a_malformed_corpus_line_the_run_does_not_need_is_not_parsed(tmp_path):
    case = _write_beir(tmp_path / "ds")
    corpus = tmp_path / "ds" / "corpus.jsonl"
    lines = _lines(corpus)
    lines[25] = lines[25][:-1]  # doc-25: in no query's candidates
    _rewrite(corpus, lines)
    assert _build(tmp_path / "ds", tmp_path / "out")["pairs"] == len(_expected_candidates(case))


def test_the_command_exits_2_with_the_reason_on_bad_input(tmp_path):
    _write_beir(tmp_path / "ds")
    _drop_lines(tmp_path / "ds" / "corpus.jsonl", '"doc-9"')
    code, _, err = _cli(_args(tmp_path / "ds", tmp_path / "out"))
    assert code == 2 and "document 'doc-9' is not in" in err and "run.trec:" in err


def test_column_flags_do_not_apply_to_the_beir_command(tmp_path):
    code, _, err = _cli(_args(tmp_path, tmp_path / "out", "--doc-id-col", "pid"))
    assert code == 2 and "--doc-id-col" in err


def test_rebuilding_the_candidates_gives_the_same_files_so_an_interrupted_rerank_resumes(tmp_path):
    # The rerank job resumes an unfinished output when its input files and row counts are unchanged.
    _write_beir(tmp_path / "ds")
    _build(tmp_path / "ds", tmp_path / "out", rows_per_file=7)
    first = {p.name: pq.read_table(p) for p in (tmp_path / "out" / "candidates").iterdir()}
    _build(tmp_path / "ds", tmp_path / "out", rows_per_file=7)
    again = {p.name: pq.read_table(p) for p in (tmp_path / "out" / "candidates").iterdir()}
    assert len(first) == 3 and first.keys() == again.keys()
    assert all(first[name].equals(again[name]) for name in first)


# ---------------------------------------------------------------- OUT is a run folder


def _files(folder) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_an_output_holding_another_commands_run_is_refused_and_left_as_it_was(tmp_path):
    _write_beir(tmp_path / "ds")
    labels = RunFolder.open(str(tmp_path / "out"), "labels")
    labels.check(overwrite=False)
    labels.begin()
    (tmp_path / "out" / "qrels.txt").write_text("q1 0 doc-1 1\n")
    labels.finish({"mode": "thresholds"})
    before = _files(tmp_path / "out")
    with pytest.raises(OutputError, match=r"out holds a finished `labels` run, not a `beir` one"):
        beir_rerank(_config(tmp_path / "ds", tmp_path / "out"))
    assert _files(tmp_path / "out") == before


def _quiet_beir(config: BeirConfig):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BeirWarning)
        return beir_rerank(config)


def test_overwrite_replaces_a_finished_beir_run(tmp_path, ray_session):
    case = _write_beir(tmp_path / "ds")
    old = RunFolder.open(str(tmp_path / "out"), "beir")  # a finished run of other settings, as it was left
    old.check(overwrite=False)
    old.begin()
    (tmp_path / "out" / "candidates").mkdir()
    pq.write_table(pa.table({"query_id": ["old"]}), tmp_path / "out" / "candidates" / "part-00099.parquet")
    (tmp_path / "out" / "eval.json").write_text('{"metrics": {}}')
    old.finish({"depth": 1})

    result = _quiet_beir(_config(tmp_path / "ds", tmp_path / "out", rerank={"overwrite": True}))
    assert sorted(p.name for p in (tmp_path / "out" / "candidates").iterdir()) == ["part-00000.parquet"]
    assert json.loads((tmp_path / "out" / "eval.json").read_text()) == result.evaluation
    assert json.loads((tmp_path / "out" / "_SUCCESS.json").read_text())["depth"] == DEPTH
    assert result.rerank.counts["scored"] == len(_expected_candidates(case))


def test_a_run_that_stopped_part_way_is_taken_up_again_and_its_rerank_resumes(tmp_path, ray_session):
    _write_beir(tmp_path / "ds")
    config = _config(tmp_path / "ds", tmp_path / "out")
    first = _quiet_beir(config)
    out = tmp_path / "out"
    for name in ("_SUCCESS.json", "eval.json"):  # it stopped after the rerank finished
        (out / name).unlink()

    corpus = tmp_path / "ds" / "corpus.jsonl"
    corpus.rename(tmp_path / "corpus.away")  # the refusal comes before the corpus is read
    with pytest.raises(OutputError, match=r"out/rerank/_SUCCESS.json exists: that rerank finished"):
        _quiet_beir(_config(tmp_path / "ds", out))
    (tmp_path / "corpus.away").rename(corpus)

    (out / "rerank" / "_SUCCESS.json").unlink()  # now it stopped in the rerank's top-k, after the scoring
    again = _quiet_beir(_config(tmp_path / "ds", out))
    assert again.rerank.manifest["resume"]["groups_skipped"] == again.rerank.manifest["resume"]["groups"] == 1
    assert again.rerank.manifest["pairs_scored_this_run"] == 0
    assert again.evaluation["metrics"] == first.evaluation["metrics"]
    assert json.loads((out / "_SUCCESS.json").read_text())["kind"] == "beir"
