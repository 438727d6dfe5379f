"""The Ray Data plan of one rerank run.

    check inputs and model (driver, before any work); resume or replace an unfinished output
    for each group of input files not finished by an earlier run (see shard_groups):
      read_parquet (projected columns)
        -> tokenize_batch    CPU tasks; null and untokenizable rows go to rejects/<group>/
        -> ScorePairs        actor pool, one model per GPU (or CPU), all started together;
                             a dead actor is restarted and its batches retried; a pair the
                             model raises on goes to rejects/<group>/ (found by bisecting its batch)
        -> write_parquet     scores/<group>/
      -> _done/<group>.json
    read scores/ (ids + score) -> partial_topk per block -> groupby(query_id) -> final_topk -> topk/
        (each distinct (query_id, doc_id) once, at its higher score)
        (up to TOPK_IN_DRIVER_ROWS scored pairs: final_topk in the driver, no shuffle to start)
    count rows in the written files -> _SUCCESS.json (last)

Top-k reads back what was written rather than branching the scoring stream, so the
model runs once per pair and the dataset is never materialised.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ettin_batch import storage
from ettin_batch.config import RerankConfig, dtype_name
from ettin_batch.pipeline import manifest as mf
from ettin_batch.pipeline import reuse
from ettin_batch.pipeline.inputs import InputPlan, inspect_inputs

log = logging.getLogger("ettin_batch.pipeline")


class OutputError(ValueError):
    """The output folder cannot be written as asked."""


class RunFailed(RuntimeError):
    """The run stopped part-way; its output folder has no _SUCCESS.json. The message names the cause."""


def _root_cause(error: BaseException) -> BaseException:
    # Ray wraps a task's exception (RayTaskError.cause); chained exceptions keep theirs in __cause__.
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None) or error.__cause__
        if not isinstance(inner, BaseException):
            break
        error = inner
    return error


def _user_error(error: BaseException) -> str | None:
    """`Type: message` of the exception a UDF raised, which Ray Data keeps only as traceback text."""
    import re

    found = re.findall(r"^(\w[\w.]*(?:Error|Exception|Exit|Interrupt)): (.+)$", str(error), re.MULTILINE)
    found = [f"{name}: {text}" for name, text in found if not name.endswith("UserCodeException")]
    return found[-1] if found else None


def _failure_message(error: BaseException, out: storage.Location, config: RerankConfig | None = None) -> str:
    root = _root_cause(error)
    text = str(root).strip().splitlines()[-1] if str(root).strip() else ""
    cause = f"{type(root).__name__}: {text}"
    if type(root).__name__ == "UserCodeException":  # the useful part is the UDF's own exception
        cause = _user_error(error) or cause
    message = (f"the run did not finish: {cause}. {mf.SUCCESS} was not written, "
               f"so {out.url()} holds an incomplete run.")
    transient = isinstance(root, OSError) and not isinstance(root, (FileNotFoundError, PermissionError))
    if out.scheme == "s3" and transient:
        message += (f" The object store kept failing after {storage.s3_max_attempts(config and config.s3_max_attempts)} "
                    f"attempts per call (--s3-max-attempts, s3_max_attempts in the config or "
                    f"{storage.S3_MAX_ATTEMPTS_ENV} sets how many); once it is back, run the same command again.")
    return message


# A scoring actor that dies (node lost, preempted, killed by the OOM killer) is restarted as
# often as it takes over a night; the batch it held is resubmitted to the new actor. A batch
# that kills its actor this many times in a row fails the job instead of looping forever.
ACTOR_FAULT_TOLERANCE = {"max_restarts": -1, "max_task_retries": 3}


@dataclass
class Resources:
    """How the scoring stage is laid out on the cluster."""

    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    cpus_per_task: float  # read, tokenize and write tasks
    device: str
    threads: int | None  # torch threads in a CPU actor

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def plan_resources(config: RerankConfig, cluster: dict) -> Resources:
    """One actor per `gpus_per_actor` GPUs; without GPUs, CPU actors that leave room for the CPU tasks."""
    from ettin_batch.pipeline.score import actor_threads

    gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    if gpus > 0 and config.gpus_per_actor > 0:
        actors = config.actors or max(1, int(gpus // config.gpus_per_actor))
        return Resources(actors, config.gpus_per_actor, config.cpus_per_actor or 1.0, 1.0, "cuda", None)
    actors = config.actors or 1
    # Ray Data's ListFiles step asks for one whole CPU, so the actors leave one free (or the job
    # stalls); the model still gets threads for every core, since tokenizing costs a few percent of it.
    per_actor = config.cpus_per_actor or max(0.5, (cpus - 1) / actors)
    threads = actor_threads(config.cpus_per_actor) if config.cpus_per_actor else max(1, int(cpus // actors))
    return Resources(actors, 0.0, per_actor, 0.25, "cpu", threads)


# Resume. The inputs are cut into groups of whole files, scored one group after another; each
# group's files go to scores/<group>/ and rejects/<group>/, and _done/<group>.json is written
# once they are all there. `_run.json`, written first, holds the run's fingerprint (model,
# settings that change scores, input files and their row counts). The same command run again on
# an unfinished folder with the same fingerprint skips the groups with a marker and deletes the
# unmarked groups' partial files before scoring them again; any other unfinished folder is
# replaced. A resumed run therefore redoes at most the groups that were in flight.
RUN_RECORD = "_run.json"
DONE_DIR = "_done"
GROUP_ROWS_ENV = "ETTIN_BATCH_GROUP_ROWS"
DEFAULT_GROUP_ROWS = 1_000_000  # each group restarts the actor pool (model load), so not too small
MAX_GROUPS = 16  # a bigger input gets bigger groups: a resume redoes at most ~1/16 of the work


@dataclass
class Group:
    key: str
    files: list[str]
    rows: int


def group_rows(configured: int | None = None) -> int:
    """The smallest group, in rows: `configured` (config.group_rows) if given, else $ETTIN_BATCH_GROUP_ROWS, else 1M."""
    return storage.setting(configured, GROUP_ROWS_ENV, DEFAULT_GROUP_ROWS, "rows")


def shard_groups(plan: InputPlan, floor: int | None = None) -> list[Group]:
    """Consecutive whole files, about max(group_rows(floor), rows / 16) rows each."""
    import hashlib
    import math

    target = max(1, group_rows(floor), math.ceil(plan.num_rows / MAX_GROUPS))
    groups: list[Group] = []
    files: list[str] = []
    rows = 0
    for path, n in zip(plan.files, plan.file_rows):
        files.append(path)
        rows += n
        if rows >= target:
            groups.append(Group("", files, rows))
            files, rows = [], 0
    if files or not groups:
        groups.append(Group("", files, rows))
    for i, g in enumerate(groups):
        g.key = f"g{i:04d}-" + hashlib.sha1("\n".join(g.files).encode()).hexdigest()[:12]
    return groups


def run_fingerprint(config: RerankConfig, plan: InputPlan, resolved) -> dict:
    """What must match for an unfinished output to be resumed rather than replaced."""
    return {"model": resolved.model_id, "revision": resolved.revision, "dtype": config.dtype,
            "max_length": config.max_length, "attention": config.attention,
            "columns": config.columns.required(), "passthrough": plan.passthrough,
            # Another grouping names other groups: their finished markers would not match, and
            # their files in scores/ would stay beside the new groups' (duplicates).
            "group_rows": group_rows(config.group_rows),
            "files": [[plan.location.url(p), n] for p, n in zip(plan.files, plan.file_rows)]}


def _prepare_output(config: RerankConfig, fingerprint: dict) -> tuple[storage.Location, set[str]]:
    """Refuse a finished run (unless --overwrite); resume an unfinished one with the same
    fingerprint (returns its finished groups); replace anything else."""
    out = storage.resolve(config.output, s3_max_attempts=config.s3_max_attempts)
    success = out.join(mf.SUCCESS)
    finished = out.fs.exists(success)
    if finished and not config.overwrite:
        raise OutputError(f"{out.url(success)} exists: that run finished. Pass --overwrite to replace it, "
                          "or choose another --output.")
    record = out.join(RUN_RECORD)
    if not finished and out.fs.exists(record) and storage.read_json(out, record).get("fingerprint") == fingerprint:
        done_dir = out.join(DONE_DIR)
        done = {p.rsplit("/", 1)[-1].removesuffix(".json") for p in out.fs.find(done_dir)} \
            if out.fs.exists(done_dir) else set()
        storage.remove_tree(out, out.join("topk"))  # rebuilt from all of scores/
        log.info("resuming %s: %d group(s) already done", out.url(), len(done))
        return out, done
    # Anything else there is another run's output: Ray names files uniquely, so old parts would mix in.
    for sub in ("scores", "topk", "rejects", DONE_DIR, RUN_RECORD, mf.SUCCESS):
        storage.remove_tree(out, out.join(sub))
    storage.write_json(out, record, {"fingerprint": fingerprint})
    return out, set()


def _ensure_ray(config: RerankConfig) -> bool:
    """Connect to the configured cluster or start a local Ray; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        # A local Ray is this job's alone: no dashboard, whose processes would take CPU from the model.
        ray.init(include_dashboard=False)
    return True


def score_stage(ds, config: RerankConfig, res: Resources, stats, rejects=None):
    """`ds` (tokenized batches) through the scoring actor pool: one model per actor, all started
    together; with `rejects` (a RejectsDir), pairs the model raises on go there."""
    from ray.data import ActorPoolStrategy

    from ettin_batch.pipeline.score import ScorePairs

    with warnings.catch_warnings():
        # Ray 2.60 deprecates remote args such as max_task_retries in map_batches with nothing to replace
        # them yet; the warning would be printed on every run (pyproject pins ray<2.64, which removes them).
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(
            ScorePairs, batch_format="pyarrow", batch_size=config.batch_size,
            # min == max: every actor loads its model at the start, none waits to be scaled up.
            compute=ActorPoolStrategy(min_size=res.actors, max_size=res.actors),
            num_gpus=res.gpus_per_actor or None, num_cpus=res.cpus_per_actor, **ACTOR_FAULT_TOLERANCE,
            fn_constructor_kwargs=dict(model=config.model, revision=config.revision, dtype=config.dtype,
                                       max_length=config.max_length, max_tokens_per_batch=config.max_tokens_per_batch,
                                       attention=config.attention, device=res.device, threads=res.threads, stats=stats,
                                       rejects=rejects),
        )


def _score(config: RerankConfig, plan: InputPlan, group: Group, out: storage.Location, res: Resources,
           stats, header: bytes, previous=None) -> None:
    import ray

    from ettin_batch.pipeline.reuse import add_fingerprints, attach_previous, fingerprint_schema
    from ettin_batch.pipeline.tokenize import RejectsDir, tokenize_batch

    ds = ray.data.read_parquet(group.files, filesystem=plan.location.pa_fs, columns=plan.read_columns,
                               num_cpus=res.cpus_per_task)
    rename, schema = plan.rename, None
    if previous is not None:  # --reuse: pairs whose fingerprint the previous run scored keep that score
        ds = ds.map_batches(add_fingerprints, batch_format="pyarrow", batch_size=config.batch_size,
                            num_cpus=res.cpus_per_task, fn_kwargs=dict(header=header, rename=plan.rename))
        ds = attach_previous(ds, previous, partitions=max(1, min(64, math.ceil(group.rows / 500_000))))
        rename, schema = {}, fingerprint_schema(plan)
    ds = ds.map_batches(
        tokenize_batch, batch_format="pyarrow", batch_size=config.batch_size, num_cpus=res.cpus_per_task,
        fn_kwargs=dict(model=config.model, revision=config.revision, max_length=config.max_length,
                       rename=rename, rejects_dir=out.join("rejects", group.key), filesystem=out.pa_fs,
                       fingerprint_header=header, schema=schema),
    )
    ds = score_stage(ds, config, res, stats, rejects=RejectsDir(out.join("rejects", group.key), out.pa_fs))
    ds.write_parquet(out.join("scores", group.key), filesystem=out.pa_fs,
                     ray_remote_args={"num_cpus": res.cpus_per_task})


# Up to this many scored pairs, top-k runs in the driver (~20 bytes a row, read in well under a second);
# above, on Ray Data. Starting the shuffle costs a few seconds that a small run would notice.
TOPK_IN_DRIVER_ROWS = 1_000_000


def _topk(config: RerankConfig, plan: InputPlan, out: storage.Location, scored: int) -> int | None:
    """Write topk/; return how many scored rows repeat another's (query_id, doc_id), counted only
    when the cut runs in the driver (None above TOPK_IN_DRIVER_ROWS)."""
    import ray

    from ettin_batch.pipeline.topk import distinct_pairs, final_topk, partial_topk, topk_schema

    scores_dir = out.join("scores")
    if scored == 0:
        # Nothing was scored (every row rejected, or no rows): empty files keep the layout the same for readers.
        id_types = {plan.rename[n]: plan.schema.field(n).type for n in plan.read_columns[:4]}
        scores_schema = pa.schema([("query_id", id_types["query_id"]), ("doc_id", id_types["doc_id"]),
                                   *[plan.schema.field(n) for n in plan.passthrough],
                                   (reuse.FINGERPRINT_COL, reuse.FINGERPRINT_TYPE), ("score", pa.float32())])
        for sub, schema in (("scores", scores_schema), ("topk", topk_schema(id_types["query_id"], id_types["doc_id"]))):
            out.pa_fs.create_dir(out.join(sub), recursive=True)
            pq.write_table(schema.empty_table(), out.join(sub, "empty.parquet"), filesystem=out.pa_fs)
        return 0
    if scored <= TOPK_IN_DRIVER_ROWS:
        # Three narrow columns of a small run fit in the driver; the same cut, without starting a shuffle.
        table = pq.read_table(scores_dir, filesystem=out.pa_fs, columns=["query_id", "doc_id", "score"])
        table, repeated, example = distinct_pairs(table)
        out.pa_fs.create_dir(out.join("topk"), recursive=True)
        pq.write_table(final_topk(table, k=config.top_k), out.join("topk", "topk.parquet"), filesystem=out.pa_fs)
        if repeated:
            log.warning("%d scored row(s) repeat the (query_id, doc_id) of another row, e.g. %r: each row was "
                        "scored and is in scores/; topk/ ranks each document once, with its higher score. "
                        "`ettin-batch eval` refuses duplicate pairs: remove them from the input.", repeated, example)
        return repeated
    ds = ray.data.read_parquet(scores_dir, filesystem=out.pa_fs, columns=["query_id", "doc_id", "score"])
    ds = ds.map_batches(partial_topk, batch_format="pyarrow", batch_size=None, fn_kwargs={"k": config.top_k})
    # Only k rows per query and block reach the shuffle: a few partitions are plenty.
    partitions = max(1, min(64, scored // 1_000_000 + 1, int(ray.cluster_resources().get("CPU", 1))))
    ds = ds.groupby("query_id", num_partitions=partitions).map_groups(
        final_topk, batch_format="pyarrow", fn_kwargs={"k": config.top_k})
    ds.write_parquet(out.join("topk"), filesystem=out.pa_fs)
    return None


def rerank(config: RerankConfig) -> mf.RunResult:
    """Run one rerank job end to end and return its manifest (also written to _SUCCESS.json).

    Errors about the inputs, the output folder or the model are raised before Ray starts.
    """
    from ettin_batch.engine import resolve_model

    config.validate()
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    plan = inspect_inputs(config)
    resolved = resolve_model(config.model, config.revision)
    attempts = config.s3_max_attempts
    previous = (reuse.open_previous(config.reuse, storage.resolve(config.output, s3_max_attempts=attempts),
                                    s3_max_attempts=attempts) if config.reuse else None)
    out, done = _prepare_output(config, run_fingerprint(config, plan, resolved))
    groups = shard_groups(plan, config.group_rows)
    phases = mf.Phases(t0)
    phases.mark("setup")

    import ray
    from ray.data import DataContext

    from ettin_batch.pipeline.score import RunStats

    started_ray = _ensure_ray(config)
    phases.mark("ray_start")
    try:
        DataContext.get_current().enable_progress_bars = config.progress
        res = plan_resources(config, ray.cluster_resources())
        log.info("scoring on %s", res)
        settings = {"model_id": resolved.model_id, "revision": resolved.revision,
                    "max_length": config.max_length, "dtype": dtype_name(config.dtype, res.device)}
        header = reuse.fingerprint_header(**settings)
        stats = RunStats.remote()
        try:
            previous_scores = None
            if previous is not None and previous.matches(settings):
                to_score = sum(1 for g in groups if g.key not in done and g.files)
                previous_scores = reuse.previous_scores(previous, shared=to_score > 1)
            for group in groups:
                if group.key in done:
                    continue
                for sub in ("scores", "rejects"):  # an unfinished group's partial files
                    storage.remove_tree(out, out.join(sub, group.key))
                if group.files:
                    _score(config, plan, group, out, res, stats, header, previous_scores)
                storage.write_json(out, out.join(DONE_DIR, f"{group.key}.json"),
                                   {"files": [out.url(f) for f in group.files], "rows": group.rows})
            phases.mark("scoring")
            scored = mf.count_rows(out, out.join("scores"))
            repeated = _topk(config, plan, out, scored)
            phases.mark("topk")
        except Exception as e:  # noqa: BLE001 - one clear message; the original stays chained
            raise RunFailed(_failure_message(e, out, config)) from e
        totals = ray.get(stats.totals.remote())
    finally:
        if started_ray:
            ray.shutdown()

    counts = {"in": plan.num_rows, "scored": scored,
              "rejected": mf.count_rows(out, out.join("rejects")), "truncated": totals["truncated"]}
    if counts["in"] != counts["scored"] + counts["rejected"]:
        raise RuntimeError(f"row counts do not add up: {counts['in']} in, {counts['scored']} scored, "
                           f"{counts['rejected']} rejected; {mf.SUCCESS} not written, the run is incomplete")
    model_info = dict(totals["info"] or {"model_id": resolved.model_id, "revision": resolved.revision,
                                         "is_random": resolved.is_random, "dtype": config.dtype})
    model_info.update(model_id=resolved.model_id, revision=resolved.revision, is_random=resolved.is_random)
    phases.mark("finish")
    manifest = mf.build_manifest(config=config, plan=plan, model=model_info, counts=counts, tokens=totals["tokens"],
                                 wall_time_s=phases.total(), actors=res.as_dict(), started_at=started.isoformat(),
                                 model_pairs=totals["pairs"], oom_splits=totals["oom_splits"],
                                 phases=phases.seconds, model_seconds=totals["model_seconds"], repeated_pairs=repeated,
                                 resume={"groups": len(groups), "groups_skipped": len(done & {g.key for g in groups}),
                                         "pairs_skipped": sum(g.rows for g in groups if g.key in done),
                                         "pairs_scored_earlier": sum(mf.count_rows(out, out.join("scores", g.key))
                                                                     for g in groups if g.key in done)},
                                 reuse=previous and {**previous.summary(), "pairs_reused": totals["reused"]},
                                 finished_at=dt.datetime.now(dt.timezone.utc).isoformat())
    storage.write_json(out, out.join(mf.SUCCESS), manifest)
    return mf.RunResult(output=out.url(), manifest=manifest)
