"""A scoring actor's process is killed (SIGKILL, as the OOM killer or a lost node would) mid-batch:
Ray restarts it, its batches are scored again, and every pair is written exactly once.

The kill lands at a known point: the engine's pause hook (ettin_batch.engine.faults) stops the
actor inside a forward pass once it has scored 300 of the 1,200 pairs, and the test kills it
there. A kill timed by the clock instead (the first version: 1 s after the actor came up) was
flaky: with warm Ray workers the tiny model scores these pairs in about 2 s, so the kill
sometimes came after the actor's last batch or after the job had ended.

And the actors' lifecycle: a resume group's actor ends before the next one starts, and a run ends its own
actors on a Ray that outlives it."""

from __future__ import annotations

import dataclasses
import gc
import os
import signal
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ettin_batch.config import RerankConfig
from ettin_batch.engine.faults import FaultHooks
from ettin_batch import rerank

from helpers import TINY
from .faults import accounting, injected, make_shards, record, write_local

PAUSE_AFTER_PAIRS = 300


def _score_actors(name: str = "ScorePairs") -> list[dict]:
    # GCS's actor table (the state API needs a dashboard, which the test Ray runs without).
    import ray

    return [a for a in ray._private.state.actors().values() if name in a["ActorClassName"]]


def _calls_at_once(monkeypatch, calls: int) -> None:
    """The job's scoring actors take `calls` calls at once, as GPU actors take 2 (pipeline.run.plan_resources);
    with more than one, each input file is its own block, so its own actor call: calls run and queue side by side."""
    from ettin_batch.pipeline import run

    layout = run.plan_resources
    monkeypatch.setattr(run, "plan_resources",
                        lambda config, cluster: dataclasses.replace(layout(config, cluster), calls_per_actor=calls))
    if calls > 1:
        monkeypatch.setenv(run.READ_UNIT_ENV, "1")  # a read task, so a block, per file


@pytest.fixture(params=[1, 2], ids=["one call at a time", "calls overlapped as on a GPU"])
def calls_per_actor(request, monkeypatch):
    """The scoring actors take one call at a time (CPU), or, as GPU actors do, two at once with more queued
    (pipeline.run.plan_resources): a killed actor then loses its queued calls too."""
    _calls_at_once(monkeypatch, request.param)
    return request.param


def test_killing_a_scoring_actor_mid_batch_loses_and_duplicates_nothing(tmp_path, ray_session, calls_per_actor):
    shards = make_shards(files=6, pairs_per_file=200)
    write_local(shards, tmp_path / "in")
    out, marker = tmp_path / "out", tmp_path / "paused"
    config = RerankConfig.of(input=[str(tmp_path / "in")], output=str(out), model=TINY, batch_size=50, progress=False)
    before = {a["ActorID"] for a in _score_actors()}
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = rerank(config)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = e

    with injected(FaultHooks(pause_after_pairs=PAUSE_AFTER_PAIRS, pause_marker=str(marker), pause_seconds=120)):
        job = threading.Thread(target=run)
        job.start()
        deadline = time.monotonic() + 300
        while job.is_alive() and not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = None
        if marker.exists():
            pid = int(marker.read_text())
            victim = [a for a in _score_actors() if a["Pid"] == pid and a["ActorID"] not in before]
            assert victim and victim[0]["State"] == "ALIVE", f"process {pid} is not a live scoring actor of this job"
            killed = {"pid": pid, "id": victim[0]["ActorID"], "at": time.monotonic()}
            os.kill(pid, signal.SIGKILL)
        job.join(timeout=600)
    finished = time.monotonic()

    assert killed is not None, f"the actor never paused mid-batch: {outcome.get('error')}"
    assert "error" not in outcome, outcome.get("error")
    inputs = pa.concat_tables(shards)
    # The dead actor's work went on elsewhere: Ray restarted it, or Ray Data's pool started a replacement.
    actors = [a for a in _score_actors() if a["ActorID"] not in before]
    restarts = sum(a["NumRestarts"] for a in actors if a["ActorID"] == killed["id"])
    replacements = len([a for a in actors if a["ActorID"] != killed["id"]])
    assert restarts + replacements >= 1, actors
    scores = pq.read_table(out / "scores")
    figures = accounting(inputs, scores)
    manifest = outcome["result"].manifest
    record("test_killing_a_scoring_actor_mid_batch_loses_and_duplicates_nothing",
           {"fault": f"scoring actor SIGKILLed inside a forward pass after {PAUSE_AFTER_PAIRS} pairs "
                     f"({calls_per_actor} call(s) at once)", **figures,
            "job_seconds_after_kill": round(finished - killed["at"], 1),
            "actor_restarts": restarts, "replacement_actors": replacements,
            "model_pairs": manifest["model_pairs"]})
    assert figures == {"in": 1200, "out": 1200, "duplicates": 0, "lost": 0, "unknown": 0}
    assert outcome["result"].counts["scored"] == 1200
    # The batch cut off mid-forward was scored again by the restarted actor.
    assert manifest["model_pairs"] >= 1200


def test_a_batch_that_kills_its_actor_every_time_fails_the_job_instead_of_looping(tmp_path, ray_session):
    from ettin_batch.engine import PairTokenizer, resolve_model
    from ettin_batch.errors import RunFailed

    shards = make_shards(files=1, pairs_per_file=40)
    poison = "zyzzyva"  # its first token appears in no other pair
    token = int(PairTokenizer.from_pretrained(resolve_model(TINY).path, 64)([poison], [""]).input_ids[1])
    docs = shards[0]["document"].to_pylist()
    docs[7] = f"{poison} {docs[7]}"
    shards[0] = shards[0].set_column(shards[0].column_names.index("document"), "document", pa.array(docs))
    write_local(shards, tmp_path / "in")
    config = RerankConfig.of(input=[str(tmp_path / "in")], output=str(tmp_path / "out"), model=TINY, batch_size=10,
                             progress=False)
    with injected(FaultHooks(crash_on_token=token)), pytest.raises(RunFailed, match="killed its scoring actor 4 times"):
        rerank(config)
    assert not (tmp_path / "out" / "_SUCCESS.json").exists()


def test_with_calls_overlapped_as_on_a_gpu_the_model_still_runs_one_call_at_a_time(tmp_path, ray_session, monkeypatch):
    """GPU actors take two calls at once, each in a thread, so one call's host work hides behind the other's
    model run (pipeline.run.actor_pool); two model runs at once would hold two batches' activations on the
    GPU. A slow model (each forward pass 200 ms, a sleep that frees the thread as a GPU wait does, so calls
    queue up at the actor even on a loaded machine) logs its passes: they come from both threads, and never
    overlap."""
    _calls_at_once(monkeypatch, 2)
    write_local(make_shards(files=8, pairs_per_file=50), tmp_path / "in")
    log = tmp_path / "forward.log"
    config = RerankConfig.of(input=[str(tmp_path / "in")], output=str(tmp_path / "out"), model=TINY, batch_size=25,
                             progress=False)
    with injected(FaultHooks(slow_forward_seconds=0.2, forward_log=str(log))):
        result = rerank(config)
    assert result.manifest["counts"]["scored"] == 400
    passes = sorted((float(start), float(end), thread) for _, thread, start, end in
                    (line.split() for line in log.read_text().splitlines()))
    assert len({thread for *_, thread in passes}) >= 2, "the calls never ran in threads of their own"
    overlaps = [(a, b) for a, b in zip(passes, passes[1:]) if b[0] < a[1]]
    assert not overlaps, overlaps[:3]


def _scoring_processes() -> set[int]:
    """Pids of the scoring actors' processes on this machine, by their title (what they are while their
    model loads, before the GCS knows their pid), zombies left out (they hold no memory)."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read()
            with open(f"/proc/{entry}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, ValueError):
            continue
        if title.startswith(b"ray::") and b"ScorePairs" in title and not zombie:
            found.add(int(entry))
    return found


def _scoring_processes_during(run) -> list[set[int]]:
    """The scoring actor processes alive at each moment while `run()` runs (every 20 ms), other tests' aside."""
    earlier = _scoring_processes()  # other tests' actors, still exiting
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(_scoring_processes() - earlier)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run()
    finally:
        stop.set()
        watcher.join()
    return seen


def test_the_resume_groups_share_one_scoring_actor_and_groups_run_apart_never_overlap_theirs(tmp_path, ray_session):
    """The groups of a run, --reuse or not, stream through one actor pool: one model load for the run, not one a
    group. An input with a column named `path` hides each row's file, so there each group runs in a pool of its
    own; Ray frees a finished pool's CPUs at once, but its process exits seconds later, and the next group's
    actor must not load a model beside it (that overlap was the 2M-pair job's memory peak, RESULTS.md, Scale)."""
    shards = make_shards(files=3, pairs_per_file=200, seed=7)
    write_local(shards, tmp_path / "in")
    config = RerankConfig.of(input=[str(tmp_path / "in")], output=str(tmp_path / "out"), model=TINY, batch_size=50,
                             progress=False, group_rows=200)  # one file per group: three groups
    results = []
    seen = _scoring_processes_during(lambda: results.append(rerank(config)))
    assert results[0].manifest["resume"]["groups"] == 3
    assert len(set().union(*seen)) == 1  # one actor process for the three groups

    again = config.replace(output=str(tmp_path / "again"), reuse=str(tmp_path / "out"))
    seen = _scoring_processes_during(lambda: results.append(rerank(again)))
    assert results[1].manifest["resume"]["groups"] == 3 and results[1].manifest["reuse"]["pairs_reused"] == 600
    assert len(set().union(*seen)) == 1

    apart_shards = shards[:2]  # two groups: each its own pool, one after the other
    write_local([t.append_column("path", pa.array([f"/docs/{n}" for n in range(t.num_rows)])) for t in apart_shards],
                tmp_path / "with-path")
    apart = config.replace(input=[str(tmp_path / "with-path")], output=str(tmp_path / "apart"))
    seen = _scoring_processes_during(lambda: results.append(rerank(apart)))
    assert results[2].manifest["resume"]["groups"] == 2 and len(list((tmp_path / "apart" / "_done").glob("*"))) == 2
    assert sorted(pq.read_table(tmp_path / "apart" / "scores")["path"].to_pylist()) == \
        sorted(f"/docs/{n}" for t in apart_shards for n in range(t.num_rows))  # the input's own `path` values
    assert len(set().union(*seen)) == 2  # one actor process per group, each seen
    assert max(len(running) for running in seen) == 1, [sorted(r) for r in seen if len(r) > 1][:3]


def test_each_scoring_actor_process_is_handed_to_one_wait_only(ray_session):
    """A later group's wait must not check the pids of actors an earlier wait saw exit: the system may have
    given such a pid to another process since, and the job would wait out the cap for a stranger."""
    import ray

    from ettin_batch.pipeline.score import RunStats

    stats = RunStats.remote()
    try:
        stats.started.remote("node-a", 101)
        stats.started.remote("node-b", 102)
        assert ray.get(stats.take_actor_processes.remote()) == [("node-a", 101), ("node-b", 102)]
        stats.started.remote("node-a", 103)
        assert ray.get(stats.take_actor_processes.remote()) == [("node-a", 103)]
        assert ray.get(stats.take_actor_processes.remote()) == []
    finally:
        ray.kill(stats)


def test_a_run_on_a_ray_that_outlives_it_leaves_none_of_its_actors_running(tmp_path, ray_session):
    """A caller's own Ray (ray.init, --address) outlives the run: its stats and scoring actors must end with
    it. Ray Data's plans hold the stats actor's handle in reference cycles, so it lived on (~165 MiB a run)
    until the driver's next full GC; GC stays off here so that cannot hide it."""
    write_local(make_shards(files=2, pairs_per_file=100, seed=3), tmp_path / "in")
    config = RerankConfig.of(input=[str(tmp_path / "in")], output=str(tmp_path / "out"), model=TINY, batch_size=50,
                             progress=False)
    ours = ("RunStats", "ScorePairs")
    before = {a["ActorID"] for name in ours for a in _score_actors(name)}

    def started() -> list[dict]:
        return [a for name in ours for a in _score_actors(name) if a["ActorID"] not in before]

    gc.disable()
    try:
        rerank(config)
        deadline = time.monotonic() + 20
        while any(a["State"] != "DEAD" for a in started()) and time.monotonic() < deadline:
            time.sleep(0.2)
        actors = started()
    finally:
        gc.enable()
    assert {a["ActorClassName"] for a in actors} >= {"RunStats", "MapWorker(MapBatches(ScorePairs))"}
    assert [a["ActorClassName"] for a in actors if a["State"] != "DEAD"] == []
