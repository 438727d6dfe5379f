"""The Ray Data plan of one rerank run.

    check inputs and model (driver, before any work)
    read_parquet (projected columns)
      -> tokenize_batch    CPU tasks; null rows go to rejects/
      -> ScorePairs        actor pool, one model per GPU (or CPU), all started together
      -> write_parquet     scores/
    read scores/ (ids + score) -> partial_topk per block -> groupby(query_id) -> final_topk -> topk/
    count rows in the written files -> _SUCCESS.json (last)

Top-k reads back what was written rather than branching the scoring stream, so the
model runs once per pair and the dataset is never materialised.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ettin_batch import storage
from ettin_batch.config import RerankConfig
from ettin_batch.pipeline import manifest as mf
from ettin_batch.pipeline.inputs import InputPlan, inspect_inputs

log = logging.getLogger("ettin_batch.pipeline")


class OutputError(ValueError):
    """The output folder cannot be written as asked."""


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


def _prepare_output(config: RerankConfig) -> storage.Location:
    out = storage.resolve(config.output)
    success = out.join(mf.SUCCESS)
    if out.fs.exists(success) and not config.overwrite:
        raise OutputError(f"{out.url(success)} exists: that run finished. Pass --overwrite to replace it, "
                          "or choose another --output.")
    # Anything else there is an unfinished run: Ray names files uniquely, so old parts would mix in.
    for sub in ("scores", "topk", "rejects", mf.SUCCESS):
        storage.remove_tree(out, out.join(sub))
    return out


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


def _score(config: RerankConfig, plan: InputPlan, out: storage.Location, res: Resources, stats) -> None:
    import ray
    from ray.data import ActorPoolStrategy

    from ettin_batch.pipeline.score import ScorePairs
    from ettin_batch.pipeline.tokenize import tokenize_batch

    ds = ray.data.read_parquet(plan.files, filesystem=plan.location.pa_fs, columns=plan.read_columns,
                               num_cpus=res.cpus_per_task)
    ds = ds.map_batches(
        tokenize_batch, batch_format="pyarrow", batch_size=config.batch_size, num_cpus=res.cpus_per_task,
        fn_kwargs=dict(model=config.model, revision=config.revision, max_length=config.max_length,
                       rename=plan.rename, rejects_dir=out.join("rejects"), filesystem=out.pa_fs),
    )
    ds = ds.map_batches(
        ScorePairs, batch_format="pyarrow", batch_size=config.batch_size,
        # min == max: every actor loads its model at the start, none waits to be scaled up.
        compute=ActorPoolStrategy(min_size=res.actors, max_size=res.actors),
        num_gpus=res.gpus_per_actor or None, num_cpus=res.cpus_per_actor, **ACTOR_FAULT_TOLERANCE,
        fn_constructor_kwargs=dict(model=config.model, revision=config.revision, dtype=config.dtype,
                                   max_length=config.max_length, max_tokens_per_batch=config.max_tokens_per_batch,
                                   attention=config.attention, device=res.device, threads=res.threads, stats=stats),
    )
    ds.write_parquet(out.join("scores"), filesystem=out.pa_fs, ray_remote_args={"num_cpus": res.cpus_per_task})


def _topk(config: RerankConfig, plan: InputPlan, out: storage.Location, scored: int) -> None:
    import ray

    from ettin_batch.pipeline.topk import final_topk, partial_topk, topk_schema

    scores_dir = out.join("scores")
    if scored == 0:
        # Nothing was scored (every row rejected, or no rows): empty files keep the layout the same for readers.
        id_types = {plan.rename[n]: plan.schema.field(n).type for n in plan.read_columns[:4]}
        scores_schema = pa.schema([("query_id", id_types["query_id"]), ("doc_id", id_types["doc_id"]),
                                   *[plan.schema.field(n) for n in plan.passthrough], ("score", pa.float32())])
        for sub, schema in (("scores", scores_schema), ("topk", topk_schema(id_types["query_id"], id_types["doc_id"]))):
            out.pa_fs.create_dir(out.join(sub), recursive=True)
            pq.write_table(schema.empty_table(), out.join(sub, "empty.parquet"), filesystem=out.pa_fs)
        return
    ds = ray.data.read_parquet(scores_dir, filesystem=out.pa_fs, columns=["query_id", "doc_id", "score"])
    ds = ds.map_batches(partial_topk, batch_format="pyarrow", batch_size=None, fn_kwargs={"k": config.top_k})
    # Only k rows per query and block reach the shuffle: a few partitions are plenty.
    partitions = max(1, min(64, scored // 1_000_000 + 1, int(ray.cluster_resources().get("CPU", 1))))
    ds = ds.groupby("query_id", num_partitions=partitions).map_groups(
        final_topk, batch_format="pyarrow", fn_kwargs={"k": config.top_k})
    ds.write_parquet(out.join("topk"), filesystem=out.pa_fs)


def rerank(config: RerankConfig) -> mf.RunResult:
    """Run one rerank job end to end and return its manifest (also written to _SUCCESS.json).

    Errors about the inputs, the output folder or the model are raised before Ray starts.
    """
    from ettin_batch.engine import resolve_model

    config.validate()
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    plan = inspect_inputs(config)
    resolved = resolve_model(config.model, config.revision)
    out = _prepare_output(config)

    import ray
    from ray.data import DataContext

    from ettin_batch.pipeline.score import RunStats

    started_ray = _ensure_ray(config)
    try:
        DataContext.get_current().enable_progress_bars = config.progress
        res = plan_resources(config, ray.cluster_resources())
        log.info("scoring on %s", res)
        stats = RunStats.remote()
        _score(config, plan, out, res, stats)
        scored = mf.count_rows(out, out.join("scores"))
        _topk(config, plan, out, scored)
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
    wall = time.perf_counter() - t0
    manifest = mf.build_manifest(config=config, plan=plan, model=model_info, counts=counts, tokens=totals["tokens"],
                                 wall_time_s=wall, actors=res.as_dict(), started_at=started.isoformat(),
                                 model_pairs=totals["pairs"],
                                 finished_at=dt.datetime.now(dt.timezone.utc).isoformat())
    storage.write_json(out, out.join(mf.SUCCESS), manifest)
    return mf.RunResult(output=out.url(), manifest=manifest)
