"""The driver of one job run, shared by every job shape (rerank, teacher, and the next one).

    run = Run(config)                     # validated; inputs and model checked; nothing written yet
    run.check_output(fingerprint)         # the output folder: new, resume or replace? refuse what it must not touch
    with run.session() as done:           # Ray up (a local one unless --address / RAY_ADDRESS), folder begun
        ds = run.tokenize(run.read(files))    # the job's own stages, each built from run.config
        ds = run.score(ds)
        run.write(ds, SCORES)
    with run.reporting():                 # driver-side steps after Ray is down (rerank: top-k)
        ...
    result = run.finish(SCORES, top_k=...)    # counts from the files, in = scored + rejected, _SUCCESS.json

A failure inside the session (or `reporting()`) becomes RunFailed (exit 4: the same command resumes), carrying the
cause a stage raised rather than Ray's wrapper; an EttinError raised there keeps its own exit code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import math
import re
import time
from dataclasses import dataclass

from ettin_batch import storage
from ettin_batch.config import ConfigError, JobConfig, dtype_name
from ettin_batch.errors import EttinError, InputError, ModelLoadError, RunFailed
from ettin_batch.pipeline import manifest as mf
from ettin_batch.pipeline.inputs import inspect_inputs
from ettin_batch.pipeline.rejects import RejectsDir
from ettin_batch.pipeline.tokenize_stage import Tokenize, canonical
from ettin_batch.run_folder import REJECTS, SUCCESS, RunFolder

log = logging.getLogger("ettin_batch.pipeline")


@dataclass
class Resources:
    """How the scoring stage is laid out on the cluster."""

    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    cpus_per_task: float  # read, tokenize and write tasks
    device: str
    threads: int | None  # torch threads in a CPU actor
    batch_size: int  # pairs per tokenize task batch and actor call
    calls_per_actor: int  # actor calls Ray Data runs at once: the model runs one at a time, the rest is overlap


# One actor call is one Ray batch. On a GPU an actor's own work per call (Ray handing it the block and taking
# the output back, Arrow to token arrays, packing) leaves the GPU idle unless it is small next to the model's
# time, or hidden behind it. With a 17M-fast stand-in for the GPU, one actor kept it busy 55-58% of the time at
# 1,024 pairs and one call at a time, 96-97% at 4,096 pairs with two calls in threads (actor_pool)
# (benchmarks/bench_actor_feed.py, RESULTS.md). On a CPU the model takes seconds a call, so small batches keep
# progress and retries fine-grained and the actor's memory low.
GPU_BATCH, CPU_BATCH = 4096, 1024


def batch_size(config: JobConfig, gpu: bool) -> int:
    """Pairs per Ray batch: the config's, else GPU_BATCH or CPU_BATCH."""
    return config.batch_size or (GPU_BATCH if gpu else CPU_BATCH)


def plan_resources(config: JobConfig, cluster: dict) -> Resources:
    """One actor per `gpus_per_actor` GPUs; without GPUs, CPU actors that leave room for the CPU tasks."""
    gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    if gpus > 0 and config.gpus_per_actor > 0:
        actors = config.actors or max(1, int(gpus // config.gpus_per_actor))
        return Resources(actors, config.gpus_per_actor, config.cpus_per_actor or 1.0, 1.0, "cuda", None,
                         batch_size(config, gpu=True), calls_per_actor=2)
    actors = config.actors or 1
    # Ray Data's ListFiles step asks for one whole CPU, so the actors leave one free (or the job
    # stalls); the model still gets threads for every core, since tokenizing costs a few percent of it.
    per_actor = config.cpus_per_actor or max(0.5, (cpus - 1) / actors)
    threads = max(1, math.ceil(config.cpus_per_actor)) if config.cpus_per_actor else max(1, int(cpus // actors))
    return Resources(actors, 0.0, per_actor, 0.25, "cpu", threads, batch_size(config, gpu=False), calls_per_actor=1)


def check_attention(attention: str, device: str) -> None:
    """Refuse, before the output is touched, an attention backend the scoring actors' device cannot run."""
    if device != "cuda" and attention in ("flash", "torch"):
        raise ConfigError(f"attention={attention!r} needs a GPU, and this run scores on the CPU (no GPU in the "
                          "cluster, or --gpus-per-actor 0); use --attention auto")
    if device == "cuda" and attention == "matmul":
        raise ConfigError("attention='matmul' runs on the CPU, and this run scores on GPUs; use --attention auto "
                          "(or --gpus-per-actor 0 to score on the CPU)")


@contextlib.contextmanager
def ray_session(address: str | None):
    """Ray for one command: the Ray this process already runs, the cluster at `address` (else
    RAY_ADDRESS), or a new local Ray of its own, never whatever cluster `ray start` last recorded
    in /tmp/ray (it may be dead, or someone else's). Yields the cluster's resources."""
    import ray

    if ray.is_initialized():
        if ray.util.client.ray.is_connected():
            raise ConfigError(_RAY_CLIENT.format(what="this process's Ray (ray.init('ray://...'))"))
        yield ray.cluster_resources()
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith("ray://"):  # refused before connecting: nothing is written
        raise ConfigError(_RAY_CLIENT.format(what=f"the Ray address {address}"))
    try:
        if address:
            log.warning("connecting to the Ray cluster at %s", address)
            ray.init(address=address)
        else:  # no dashboard: its processes would take CPU from the model
            with worker_environment():
                ray.init(address="local", include_dashboard=False)
    except (ConnectionError, TimeoutError, ValueError) as e:
        raise ConfigError(f"could not connect to Ray at {address}: {e}. Check --address / RAY_ADDRESS, or leave "
                          "both unset to run on a local Ray") from None
    try:
        yield ray.cluster_resources()
    except KeyboardInterrupt:
        _let_ray_data_stop()
        raise
    finally:
        ray.shutdown()


# Ray Data's executor needs a driver on the cluster: through Ray Client it fails once the dataset starts
# (Ray 2.60: "'Worker' object has no attribute 'core_worker'"), after the output folder is begun.
_RAY_CLIENT = ("{what} goes through Ray Client, and Ray Data cannot run a job through Ray Client. Submit the job to the "
               "cluster instead, to the dashboard's address: `ettin-batch submit --address http://HEAD:8265 -- "
               "<this command>`; or run it on a node of the cluster with --address HEAD:6379")


# What the job's workers need in their environment, unless the user set it. pyarrow's allocator (mimalloc)
# keeps the pages Arrow freed for a while: a worker that read Parquet held ~450-560 MiB as an idle worker,
# the peak of a 2M-pair job; returned at once, the scale run's peak went from 1.22x to 1.13x of the 200k run's
# (RESULTS.md, Scale). A local Ray's workers inherit it from here; a cluster's get it from `ettin-batch
# submit`'s runtime_env or cluster/rayjob.yaml.
WORKER_ENV = {"MIMALLOC_PURGE_DELAY": "0"}


@contextlib.contextmanager
def worker_environment():
    """WORKER_ENV in os.environ while a local Ray starts (its raylet and so its workers inherit it)."""
    added = {name: value for name, value in WORKER_ENV.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _let_ray_data_stop(timeout: float = 30.0) -> None:
    """Stop Ray Data's executors and wait for their threads. An interrupted dataset stops its executor in
    the background and waits for it only 2 s (or not at all, interrupted before it started streaming);
    shutting Ray down under an executor thread still using it ends the process with exit 1 before the
    interrupt can be reported (seen under load)."""
    import threading

    deadline = time.monotonic() + timeout
    log.warning("interrupted: stopping the run's Ray Data stages (up to %.0f s)", timeout)
    for thread in threading.enumerate():
        if type(thread).__name__ == "StreamingExecutor":  # Ray Data's executor is its own thread
            with contextlib.suppress(Exception):
                thread.shutdown(force=True)
            while time.monotonic() < deadline:
                try:
                    thread.join(max(0.0, deadline - time.monotonic()))
                    break
                except RuntimeError:  # interrupted as it started: enumerate() lists it before join() may wait
                    time.sleep(0.01)


BLOCK_BYTES = 16 * 2**20  # Ray Data's blocks: ~16k real-text pairs, a second or two of one tokenize task
READ_UNIT_BYTES = 16 * 2**20  # Parquet row groups per read task (Ray Data's default: 128 MiB)
READ_UNIT_ENV = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"


def actor_pool(res: Resources):
    """Ray Data's pool of scoring actors. min == max: every actor loads its model at the start, none waits to be
    scaled up. With more than one call at once, each call runs in a thread of its own: Ray Data fetches the
    next block and sends the last output beside the running call, and a call's own host work (Arrow to arrays,
    the attempt count, the output table) overlaps the other's model run. The model still runs one call at a
    time (ScorePairs holds a lock around it), so the GPU holds one batch's activations, not two."""
    from ray.data import ActorPoolStrategy

    overlap = {} if res.calls_per_actor == 1 else dict(max_concurrent_calls_per_actor=res.calls_per_actor,
                                                          max_tasks_in_flight_per_actor=4 * res.calls_per_actor,
                                                          enable_true_multi_threading=True)
    return ActorPoolStrategy(min_size=res.actors, max_size=res.actors, **overlap)


class Run:
    """One job run from the driver (see the module docstring)."""

    def __init__(self, config: JobConfig):
        from ettin_batch.engine.loading import check_model

        config.validate()
        self.config, self.scoring = config, config.scoring
        self.started_at, self.phases = dt.datetime.now(dt.timezone.utc), mf.Phases(time.perf_counter())
        self.plan = inspect_inputs(config)
        self.model = check_model(self.scoring.model, self.scoring.revision, self.scoring.max_length)
        self.folder = RunFolder.open(config.output, config.KIND, s3_max_attempts=config.s3_max_attempts)
        self.resources: Resources | None = None
        self.stats, self.totals = None, {}

    def check_output(self, fingerprint: dict | None = None, inputs: list[str] = ()) -> None:
        self.folder.check(overwrite=self.config.overwrite, inputs=[*self.config.input, *inputs],
                          fingerprint=fingerprint)
        self.phases.mark("setup")

    def dtype(self) -> str:
        """The dtype the model runs in (needs the session: it depends on the device)."""
        return dtype_name(self.scoring.dtype, self.resources.device)

    @contextlib.contextmanager
    def session(self):
        """Ray up, resources planned, the output folder begun; yields the resume groups already done."""
        import ray
        from ray.data import DataContext

        from ettin_batch.pipeline.score import RunStats

        with ray_session(self.config.address) as cluster:
            self.phases.mark("ray_start")
            context = DataContext.get_current()
            context.enable_progress_bars = self.config.progress
            # Ray Data reads files into blocks of up to this size (default 128 MiB, coalescing small files):
            # a block is one tokenize task, so big blocks mean few tasks for many CPUs and a task's memory
            # growing with the input until the cap (RESULTS.md, Scale).
            context.target_max_block_size = BLOCK_BYTES
            # Parquet reads leave a worker's heap large (apache/arrow#39808): keep read tasks in workers of
            # their own, so the tokenize tasks do not inherit that heap (Ray Data's own advice in read_parquet).
            context.isolate_read_workers = True
            self.resources = plan_resources(self.config, cluster)
            check_attention(self.scoring.attention, self.resources.device)
            log.info("scoring on %s", self.resources)
            self.stats = RunStats.remote()
            try:
                done = self.folder.begin()
                with self.reporting():
                    yield done
                    self.totals = ray.get(self.stats.totals.remote())
            finally:  # Ray Data's plans hold its handle in reference cycles: on a Ray that outlives the run
                # (a caller's own ray.init, --address) the actor lived on until the driver's next full GC.
                with contextlib.suppress(Exception):
                    ray.kill(self.stats)

    @contextlib.contextmanager
    def reporting(self):
        """A stage's failure as one clear error (stage_error); the run's own errors and Ctrl-C as they are."""
        try:
            yield
        except (EttinError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - one clear message; the original stays chained
            raise stage_error(e, self.folder, self.config) from e

    # --- the stages every job shares, each built from the run's config ----------------------------

    def read(self, files: list[str], *, include_paths: bool = False):
        """The input files' projected columns; with `include_paths`, Ray Data's `path` column too (groups.TagGroups)."""
        import ray

        # Read tasks of READ_UNIT_BYTES (Ray Data packs row groups into units of up to 128 MiB, and a worker
        # reading one grew to ~1 GB), one in flight per scoring actor: a unit is read far faster than a model
        # scores it, and every read running ahead holds its heap until the model catches up. RESULTS.md, Scale.
        # Ray Data reads the unit size from the environment when the read is planned, here in the driver.
        saved = os.environ.get(READ_UNIT_ENV)
        os.environ[READ_UNIT_ENV] = saved or str(READ_UNIT_BYTES)  # a user's own setting wins
        try:
            return ray.data.read_parquet(files, filesystem=self.plan.location.pa_fs, columns=self.plan.read_columns,
                                         include_paths=include_paths, num_cpus=self.resources.cpus_per_task,
                                         concurrency=self.resources.actors)
        finally:
            if saved is None:
                os.environ.pop(READ_UNIT_ENV, None)

    def map(self, ds, fn, **fn_kwargs):
        """A CPU step over whole batches (pyarrow), sized like the tokenize tasks."""
        return ds.map_batches(fn, batch_format="pyarrow", batch_size=self.resources.batch_size,
                              num_cpus=self.resources.cpus_per_task, fn_kwargs=fn_kwargs or None)

    def canonical(self, ds, header: bytes | None = None):
        return self.map(ds, canonical, rename=self.plan.rename, header=header)

    def tokenize(self, ds, rejects: RejectsDir, *, schema=None, keep_text: bool = False):
        step = Tokenize(self.scoring, rejects, schema=schema, keep_text=keep_text, stats=self.stats)
        return self.map(ds, step)

    def rejects(self, *parts: str, groups: tuple[str, ...] = ()) -> RejectsDir:
        return RejectsDir(self.folder.path(REJECTS, *parts), self.folder.loc.pa_fs, groups)

    def score(self, ds, rejects: RejectsDir):
        """The scoring actor pool: one model per actor (per GPU), all started together; a pair the model
        raises on goes to `rejects`. Ray Data restarts a dead actor and resubmits its batch."""
        from ettin_batch.pipeline.score import ScorePairs

        res = self.resources
        return ds.map_batches(
            ScorePairs, batch_format="pyarrow", batch_size=res.batch_size, compute=actor_pool(res),
            num_gpus=res.gpus_per_actor or None, num_cpus=res.cpus_per_actor,
            fn_constructor_kwargs=dict(scoring=self.scoring, device=res.device, threads=res.threads,
                                       stats=self.stats, rejects=rejects))

    def after_last_actors(self) -> None:
        """Wait for the scoring actors of the run's last Ray Data execution to exit (score.wait_for_exit): Ray
        frees their CPUs and GPUs at once, but the processes exit seconds later, and the next execution's must
        not load a model beside them."""
        import ray

        from ettin_batch.pipeline.score import wait_for_exit

        if left := wait_for_exit(ray.get(self.stats.take_actor_processes.remote())):
            log.info("%d scoring actor(s) of the last execution still running: going on beside them", len(left))

    def write(self, ds, *parts: str, **options) -> None:
        """Run the stages into `parts`, once the last execution's scoring actors have exited."""
        self.after_last_actors()
        ds.write_parquet(self.folder.path(*parts), filesystem=self.folder.loc.pa_fs,
                         ray_remote_args={"num_cpus": self.resources.cpus_per_task}, **options)

    # --- the end -----------------------------------------------------------------------------------

    def finish(self, scored: str, **extra) -> mf.RunResult:
        """Counts from the written files; the manifest (`extra` adds the job's own keys) to _SUCCESS.json."""
        counts = {"in": self.plan.num_rows, "scored": self.folder.count_rows(scored),
                  "rejected": self.folder.count_rows(REJECTS), "truncated": self.totals["truncated"],
                  "blank_texts": self.totals["blank_texts"]}
        if counts["in"] != counts["scored"] + counts["rejected"]:
            raise RunFailed(f"row counts do not add up: {counts['in']} in, {counts['scored']} scored, "
                            f"{counts['rejected']} rejected; {SUCCESS} not written, the run is incomplete")
        self.phases.mark("finish")
        manifest = mf.build_manifest(self, counts, **extra)
        self.folder.finish(manifest)
        for warning in mf.warnings_of(manifest):
            log.warning(warning)
        return mf.RunResult(output=self.folder.url(), manifest=self.folder.manifest())


def stage_error(error: BaseException, folder: RunFolder, config: JobConfig) -> EttinError:
    """The error a failed session reports: a stage's own EttinError keeps its type (a model that fails to
    load in an actor keeps exit 3); else RunFailed naming the cause a stage raised and what to do."""
    chain = _chain(error)
    for e in chain:
        if isinstance(e, EttinError):
            return type(e)(str(e))
    root = chain[-1]
    text = str(root).strip().splitlines()[-1] if str(root).strip() else ""
    # Ray Data keeps a stage's own exception only as traceback text in its wrappers' messages.
    cause = next((found for found in map(_user_error, chain) if found), None) or f"{type(root).__name__}: {text}"
    for kind in (ModelLoadError, ConfigError, InputError):  # raised in a worker, known only as text
        if cause.startswith(f"{kind.__name__}: ") or f".{kind.__name__}: " in cause:
            return kind(cause.split(": ", 1)[1])
    if any("error raised in its creation task" in str(e) for e in chain):
        return ModelLoadError(f"the scoring actors could not start: {cause}. Check the model folder and the "
                              "device (--model, --attention, --dtype)")
    message = (f"the run did not finish: {cause}. {SUCCESS} was not written, "
               f"so {folder.url()} holds an incomplete run; once the cause is fixed, the same command resumes it.")
    transient = isinstance(root, OSError) and not isinstance(root, (FileNotFoundError, PermissionError))
    if folder.loc.scheme == "s3" and transient:
        message += (f" The object store kept failing after {storage.s3_max_attempts(config.s3_max_attempts)} "
                    f"attempts per call (--s3-max-attempts, s3_max_attempts in the config or "
                    f"{storage.S3_MAX_ATTEMPTS_ENV} sets how many).")
    return RunFailed(message)


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions behind it: Ray's wrappers keep a task's in `cause`, Python in __cause__."""
    chain = [error]
    while len(chain) < 20:
        inner = getattr(chain[-1], "cause", None) or chain[-1].__cause__
        if not isinstance(inner, BaseException) or inner in chain:
            break
        chain.append(inner)
    return chain


def _user_error(error: BaseException) -> str | None:
    """The last `Type: message` line in an exception's text, skipping Ray's own wrappers."""
    found = re.findall(r"^\s*(\w[\w.]*(?:Error|Exception|Exit|Interrupt)): (.+)$", str(error), re.MULTILINE)
    found = [f"{name.rsplit('.', 1)[-1]}: {text}" for name, text in found
             if not name.endswith(("UserCodeException", "RayTaskError", "SystemException"))]
    return found[-1] if found else None
