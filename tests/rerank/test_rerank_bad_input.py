"""Bad input, tried as a user would from the command line: each mistake gets `error: <what to do>` and its
documented exit code, before any work where it can be known before work, and nothing that was in the
folders beforehand is removed or changed (every case snapshots its files before and after)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ettin_batch.cli import main

from helpers import TINY, upload_parquet

GOOD = pa.table({"query_id": ["q1", "q1"], "query": ["a query", "a query"], "doc_id": ["d1", "d2"],
                 "document": ["a document", "another one"]})
REPO = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _finished_run(out: Path) -> None:
    """What a finished rerank run leaves (enough for the output folder checks)."""
    (out / "scores" / "g0000-abc").mkdir(parents=True)
    pq.write_table(GOOD.select(["query_id", "doc_id"]), out / "scores" / "g0000-abc" / "part-0.parquet")
    (out / "_run.json").write_text(json.dumps({"kind": "rerank", "entries": ["scores", "topk", "rejects", "_done"]}))
    (out / "_SUCCESS.json").write_text(json.dumps({"kind": "rerank", "counts": {"scored": 2}}))


def _setup(case: str, d: Path) -> list[str]:
    """Files for `case` under `d`; returns the command's arguments (after `rerank`, unless it names another)."""
    pq.write_table(GOOD, d / "in.parquet")
    base = ["--input", str(d / "in.parquet"), "--output", str(d / "out"), "--model", TINY, "--no-progress"]
    if case == "output holds a user's files":
        (d / "out" / "scores").mkdir(parents=True)
        (d / "out" / "scores" / "notes.md").write_text("mine")
        return base
    if case == "output holds a user's scores/, with --overwrite":
        (d / "out" / "scores").mkdir(parents=True)
        (d / "out" / "scores" / "notes.md").write_text("mine")
        return [*base, "--overwrite"]
    if case == "input inside the output":
        (d / "x" / "scores").mkdir(parents=True)
        pq.write_table(GOOD, d / "x" / "scores" / "part.parquet")
        return ["--input", str(d / "x" / "scores"), "--output", str(d / "x"), "--model", TINY]
    if case == "output inside the input":
        return ["--input", str(d), "--output", str(d / "out"), "--model", TINY]
    if case == "finished run, --overwrite, a folder that is not a model":
        _finished_run(d / "out")
        (d / "not-a-model").mkdir()
        (d / "not-a-model" / "weights.txt").write_text("no")
        return [*base[:-3], "--model", str(d / "not-a-model"), "--overwrite"]
    if case == "finished run with a user's file in scores/, --overwrite":
        _finished_run(d / "out")
        (d / "out" / "scores" / "notes.md").write_text("mine")
        return [*base, "--overwrite"]
    if case == "a finished run, no --overwrite":
        _finished_run(d / "out")
        return base
    if case == "output is a file":
        (d / "out").write_text("a file")
        return base
    if case == "random:nonexistent":
        return [*base[:-3], "--model", "random:nonexistent"]
    if case == "max_length above the model's":
        return [*base, "--max-length", "100000"]
    if case == "unknown attention backend":
        return [*base, "--attention", "bogus"]
    if case == "mixed local and s3:// inputs":
        return ["--input", str(d / "in.parquet"), "s3://bucket/in/", "--output", str(d / "out")]
    if case == "gs:// without gcsfs":
        return ["--input", "gs://bucket/in/", "--output", str(d / "out")]
    if case.startswith("config: "):
        (d / "job.yaml").write_text(case.removeprefix("config: ").replace("; ", "\n") + "\n")
        return [*base, "--config", str(d / "job.yaml")]
    if case == "list<string> doc_id":
        pq.write_table(GOOD.set_column(2, "doc_id", pa.array([["d1"], ["d2"]])), d / "in.parquet")
        return base
    if case == "float64 query_id":
        pq.write_table(GOOD.set_column(0, "query_id", pa.array([1.0, 1.0])), d / "in.parquet")
        return base
    if case == "--passthrough of a column no file has":
        return [*base, "--passthrough", "nosuchcol"]
    if case == "a missing column":
        pq.write_table(GOOD.rename_columns(["query_id", "query", "doc_id", "passage"]), d / "in.parquet")
        return base
    if case == "shards that disagree on a type":
        (d / "shards").mkdir()
        pq.write_table(GOOD, d / "shards" / "a.parquet")
        pq.write_table(GOOD.set_column(0, "query_id", pa.array([1, 1], pa.int64())), d / "shards" / "b.parquet")
        return ["--input", str(d / "shards"), "--output", str(d / "out"), "--model", TINY]
    if case == "an input that does not exist":
        return ["--input", str(d / "nowhere"), "--output", str(d / "out"), "--model", TINY]
    raise AssertionError(case)


# case -> (exit code, what the error says). All of these fail before Ray starts.
BEFORE_WORK = {
    "output holds a user's files": (2, "is not empty (scores) and holds no ettin-batch run"),
    "output holds a user's scores/, with --overwrite": (2, "already has scores, not written by ettin-batch"),
    "input inside the output": (2, "holds the input"),
    "output inside the input": (2, "is inside the input"),
    "finished run, --overwrite, a folder that is not a model": (3, "neither modules.json nor config.json"),
    "finished run with a user's file in scores/, --overwrite": (2, "notes.md was not written by ettin-batch"),
    "a finished run, no --overwrite": (2, "a finished `rerank` run. Pass --overwrite"),
    "output is a file": (2, "is a file; give a folder"),
    "random:nonexistent": (3, "unknown random model 'random:nonexistent'"),
    "max_length above the model's": (2, "max_length=100000 is above what random:ettin-tiny can read (7999 tokens)"),
    "unknown attention backend": (2, "invalid choice: 'bogus'"),
    "mixed local and s3:// inputs": (2, "all inputs must be on one filesystem"),
    "gs:// without gcsfs": (2, "install its fsspec package (gcsfs for gs://"),
    "config: top_k: 5: 6": (2, "job.yaml:1: not valid YAML"),
    "config: gpus_per_actor: lots": (2, "gpus_per_actor='lots' must be a number (--gpus-per-actor)"),
    "config: overwrite: 'no'": (2, "overwrite='no' must be true or false (--overwrite)"),
    "config: passthrough: bm25": (2, "--passthrough column(s) ['bm25'] are not in"),
    "list<string> doc_id": (2, "doc_id column 'doc_id' in"),
    "float64 query_id": (2, "query_id column 'query_id' in"),
    "--passthrough of a column no file has": (2, "--passthrough column(s) ['nosuchcol'] are not in"),
    "a missing column": (2, "lacks required column(s) ['document']; columns found"),
    "shards that disagree on a type": (2, "b.parquet but string in"),
    "an input that does not exist": (2, "nowhere does not exist"),
}


@pytest.mark.parametrize("case", list(BEFORE_WORK))
def test_a_mistake_is_refused_before_any_work_and_nothing_is_lost(tmp_path, capsys, case):
    args = _setup(case, tmp_path)
    before = _files(tmp_path)
    code = main(["rerank", *args])
    err = capsys.readouterr().err
    expected_code, says = BEFORE_WORK[case]
    assert (code, says in err) == (expected_code, True), err
    assert "Traceback" not in err
    after = _files(tmp_path)
    assert {k: after.get(k) for k in before} == before  # nothing removed, nothing changed
    assert not [k for k in after if k not in before and k.startswith("out/")], "wrote into the output"


def test_a_bad_variable_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ETTIN_BATCH_GROUP_ROWS", "lots")
    pq.write_table(GOOD, tmp_path / "in.parquet")
    assert main(["rerank", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"), "--model", TINY]) == 2
    assert "ETTIN_BATCH_GROUP_ROWS='lots' is not a whole number of rows" in capsys.readouterr().err


def test_s3_without_credentials_or_reachable_endpoint_is_a_clear_error(tmp_path, capsys, caplog, monkeypatch,
                                                                       s3_endpoint):
    import s3fs

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    args = ["rerank", "--input", "s3://ettin-nocreds/in/", "--output", str(tmp_path / "out"), "--model", TINY]
    assert main(args) == 2
    assert "no credentials for the object store" in capsys.readouterr().err
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s3fs.S3FileSystem.clear_instance_cache()
    assert main([*args, "--s3-max-attempts", "2"]) == 2
    assert "cannot reach the object store at http://127.0.0.1:9" in capsys.readouterr().err
    assert "waiting for the object store at http://127.0.0.1:9" in caplog.text  # said while it retried
    s3fs.S3FileSystem.clear_instance_cache()


def test_unreadable_file_on_s3_is_named_in_the_error(s3, tmp_path, capsys):
    s3.mkdir("ettin-bad")
    upload_parquet(s3, GOOD, "ettin-bad/in/part-0.parquet")
    with s3.open("ettin-bad/in/part-1.parquet", "wb") as f:
        f.write(b"this is not parquet at all")
    assert main(["rerank", "--input", "s3://ettin-bad/in/", "--output", "s3://ettin-bad/out/", "--model", TINY]) == 2
    assert "cannot read Parquet file s3://ettin-bad/in/part-1.parquet" in capsys.readouterr().err


# --- mistakes found once Ray is up: still before anything is written --------------------------------

def test_a_gpu_attention_backend_on_a_cpu_run_is_refused_before_the_output_is_touched(tmp_path, capsys, ray_session):
    args = _setup("a finished run, no --overwrite", tmp_path)
    before = _files(tmp_path)
    assert main(["rerank", *args, "--attention", "flash", "--overwrite"]) == 2
    assert "attention='flash' needs a GPU" in capsys.readouterr().err
    assert _files(tmp_path) == before


def test_a_model_that_fails_to_load_in_the_actors_reports_the_actors_own_exception(tmp_path, capsys, ray_session):
    from ettin_batch.engine import resolve_model

    shutil.copytree(resolve_model(TINY).path, tmp_path / "broken")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not safetensors")  # passes the driver's checks
    pq.write_table(GOOD, tmp_path / "in.parquet")
    assert main(["rerank", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"),
                 "--model", str(tmp_path / "broken"), "--no-progress"]) == 3
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: the scoring actors could not start: SafetensorError: ")


# --- what a run with nothing to score says ---------------------------------------------------------

@pytest.mark.parametrize("rows, says", [(0, "warning: the input has no rows"),
                                        (2, "warning: no pair was scored: all 2 rows were rejected")])
def test_a_run_that_scores_nothing_finishes_and_says_so(tmp_path, capsys, ray_session, rows, says):
    table = GOOD.set_column(1, "query", pa.array([None, None], pa.string())).slice(0, rows)
    pq.write_table(table, tmp_path / "in.parquet")
    assert main(["rerank", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"),
                 "--model", TINY, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert says in out and ("rejects/" in out) == bool(rows)


def test_blank_texts_are_scored_and_counted(tmp_path, ray_session):
    from ettin_batch import rerank
    from ettin_batch.config import RerankConfig

    pq.write_table(GOOD.set_column(3, "document", pa.array(["  ", "a document"])), tmp_path / "in.parquet")
    result = rerank(RerankConfig.of(input=[str(tmp_path / "in.parquet")], output=str(tmp_path / "out"), model=TINY,
                                    progress=False))
    assert result.counts == {**result.counts, "scored": 2, "blank_texts": 1}
    assert "1 pair(s) have an empty or whitespace-only query or document" in result.summary()


def test_a_ctrl_c_that_something_swallowed_still_leaves_the_run_unfinished(tmp_path, ray_session):
    # The CLI's SIGINT handler remembers the interrupt as well as raising it; a KeyboardInterrupt lost on
    # its way up (a finalizer or a library's catch-all running when it landed) must not end in _SUCCESS.json.
    from ettin_batch import errors, rerank
    from ettin_batch.config import RerankConfig

    pq.write_table(GOOD, tmp_path / "in.parquet")
    errors.interrupted.set()
    try:
        with pytest.raises(KeyboardInterrupt):
            rerank(RerankConfig.of(input=[str(tmp_path / "in.parquet")], output=str(tmp_path / "out"), model=TINY,
                                   progress=False))
    finally:
        errors.interrupted.clear()
    assert (tmp_path / "out" / "_run.json").exists() and not (tmp_path / "out" / "_SUCCESS.json").exists()


# --- the process as a whole: a stale Ray address, Ctrl-C ---------------------------------------------

def _cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ettin_batch.cli", *args], env={**os.environ, **env}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_stale_ray_address_recorded_by_ray_start_is_ignored_for_a_local_ray(tmp_path):
    # `ray start` records its cluster in <ray temp dir>/ray_current_cluster; ray.init() with no address
    # attaches to it, alive or dead. The job must start a Ray of its own instead.
    ray_tmp = Path(tempfile.mkdtemp(prefix="eb-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    (ray_tmp / "ray_current_cluster").write_text("127.0.0.1:9\n")
    pq.write_table(GOOD, tmp_path / "in.parquet")
    try:
        job = _cli(["rerank", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"), "--model",
                    TINY, "--no-progress"], {"RAY_TMPDIR": str(ray_tmp)})
        out, err = job.communicate(timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert job.returncode == 0, err[-2000:]
    assert "pairs in 2" in out and (tmp_path / "out" / "_SUCCESS.json").exists()
    # The job's log, while here: the driver and the scoring actor say RANDOM (the tokenize workers, many on a
    # big node, do not), and no actor draws transformers' "Loading weights" bar into it.
    assert err.count("RANDOM weights") == 2 and "Loading weights" not in err, err[-4000:]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_ray_client_address_is_refused_before_anything_is_written_and_says_to_submit(tmp_path, how):
    # Ray Data cannot run through Ray Client: the job used to connect, begin the output folder, then fail
    # inside Ray Data with "'Worker' object has no attribute 'core_worker'" (exit 4, "resume it").
    pq.write_table(GOOD, tmp_path / "in.parquet")
    address = "ray://127.0.0.1:9"  # nothing listens: the refusal must come before any connection
    args = ["rerank", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"), "--model", TINY,
            "--no-progress"]
    job = _cli(args + ["--address", address], {}) if how == "flag" else _cli(args, {"RAY_ADDRESS": address})
    _, err = job.communicate(timeout=300)
    assert job.returncode == 2, err[-2000:]
    assert f"the Ray address {address} goes through Ray Client" in err and "ettin-batch submit --address" in err
    assert not (tmp_path / "out").exists()


def test_a_local_rays_workers_get_the_worker_settings_and_the_caller_keeps_its_environment():
    code = ("import os, ray\n"
            "from ettin_batch.pipeline.run import ray_session\n"
            "with ray_session(None):\n"
            "    print(ray.get(ray.remote(lambda: os.environ.get('MIMALLOC_PURGE_DELAY')).remote()))\n"
            "    print(os.environ.get('MIMALLOC_PURGE_DELAY'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MIMALLOC_PURGE_DELAY")}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "None"]  # the workers' value; the driver's own environment as it was


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path):
    pq.write_table(GOOD, tmp_path / "in.parquet")
    job = _cli(["rerank", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"), "--model",
                TINY, "--no-progress"], {})
    deadline = time.monotonic() + 120
    while not (tmp_path / "out" / "_run.json").exists() and time.monotonic() < deadline:  # Ray is up, work begun
        time.sleep(0.1)
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130, err[-2000:]
    assert "interrupted: run the same command to resume" in err and "Traceback" not in err.split("interrupted")[-1]
    assert not (tmp_path / "out" / "_SUCCESS.json").exists()


def test_quickstart_with_a_mistyped_model_fails_instead_of_falling_back_to_random_weights(tmp_path):
    done = subprocess.run(["make", "--no-print-directory", "quickstart", f"MODEL={tmp_path}/no-such-model",
                           f"SAMPLE={tmp_path}/sample"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "does not exist" in done.stderr, done.stderr[-2000:]
    assert "RANDOM weights" not in done.stdout and not (tmp_path / "sample" / "reranked" / "_SUCCESS.json").exists()


def test_stopping_ray_data_on_ctrl_c_waits_out_an_executor_thread_that_has_not_started_yet(monkeypatch):
    # A Ctrl-C as Ray Data starts its executor: threading.enumerate() already lists the thread (start()
    # called), and join() raises "cannot join thread before it is started" (CI saw exit 4 instead of 130).
    import threading
    import time

    from ettin_batch.pipeline import run

    class StreamingExecutor(threading.Thread):
        def shutdown(self, force: bool) -> None:
            pass

    starting = StreamingExecutor()
    monkeypatch.setattr(threading, "enumerate", lambda: [starting])
    start = time.monotonic()
    run._let_ray_data_stop(timeout=0.3)  # returns, once the thread has had its time
    assert time.monotonic() - start < 5
