"""Teacher-score datasets: every (query, document) pair with the teacher's raw logit as `label`,
written as training-sized Parquet shards that `datasets.load_dataset("parquet", ...)` reads.

    check inputs and model (driver, before any work)
    read_parquet (the four roles, plus any pass-through columns asked for)
      -> tokenize_keeping_text   the rerank job's tokenize_batch (nulls to rejects/), with the
                                 query and document texts carried on under private names
      -> ScorePairs              the rerank job's actor pool, unchanged
      -> training_rows           query, document, label (float32 raw logit), query_id, doc_id
      -> repartition             exactly rows_per_file rows per block (streaming, no shuffle)
      -> write_parquet           data/, one file per block
    count rows in the written files -> _SUCCESS.json (last; names the teacher and its revision)

The texts ride along with the tokens to the scoring actors rather than being joined back
afterwards: a join would shuffle the whole dataset, while the extra columns cost one more
copy of the text through the object store.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ettin_batch import storage
from ettin_batch.config import ConfigError, RerankConfig
from ettin_batch.pipeline import manifest as mf
from ettin_batch.pipeline.inputs import InputError, InputPlan, inspect_inputs
from ettin_batch.pipeline.job import OutputError, _ensure_ray, plan_resources, score_stage

log = logging.getLogger("ettin_batch.pipeline.teacher")

DATA = "data"
REJECTS = "rejects"
LABEL = "label"
# The columns of the dataset the Ettin rerankers were trained on, then the ids; pass-through columns follow.
TRAINING_COLUMNS = ("query", "document", LABEL, "query_id", "doc_id")
# The texts' names while they travel beside the tokens (tokenize_batch drops `query` and `document`).
_CARRIED = {"query": "_teacher_query", "document": "_teacher_document"}
DEFAULT_ROWS_PER_FILE = 100_000

TEACHER_HELP = ("score every (query, document) pair with a teacher model; write a distillation dataset "
                "(query, document, label = raw logit, ids) in training-sized Parquet shards")


@dataclass
class TeacherConfig(RerankConfig):
    """A rerank config plus the shard size; `top_k` is not used (a teacher dataset has no top-k).

    rows_per_file: rows in every data/ file but the last.
    passthrough:   extra input columns copied next to the training columns; default none, so the
                   dataset has exactly the training schema (None keeps every other column).
    """

    passthrough: list[str] | None = dataclasses.field(default_factory=list)
    rows_per_file: int = DEFAULT_ROWS_PER_FILE

    def validate(self) -> TeacherConfig:
        super().validate()
        if self.reuse:
            raise ConfigError("reuse (--reuse) does not apply to a teacher dataset: every pair is scored")
        if self.group_rows is not None:
            raise ConfigError("group_rows (--group-rows) does not apply to a teacher dataset: it is written in one "
                              "pass, without resume groups")
        n = self.rows_per_file
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"rows_per_file={n!r} must be a positive integer (--rows-per-file)")
        if self.passthrough:
            clash = sorted(set(self.passthrough) & ({LABEL, "query", "document"} | set(_CARRIED.values())))
            if clash:
                raise ConfigError(f"passthrough column(s) {clash} clash with the teacher dataset's columns "
                                  f"{list(TRAINING_COLUMNS)}")
        return self


class TeacherResult(mf.RunResult):
    """What `teacher_dataset` returns: the manifest written to _SUCCESS.json, and where."""

    def summary(self) -> str:
        m, c = self.manifest, self.manifest["counts"]
        d = m["dataset"]
        return "\n".join([
            f"ettin-batch teacher: done in {m['wall_time_s']:.1f} s",
            f"  pairs in {c['in']:,}  scored {c['scored']:,}  rejected {c['rejected']:,}"
            f"  (truncated at {m['max_length']} tokens: {c['truncated']:,})",
            f"  {m['pairs_per_s']:,.0f} pairs/s  {m['tokens_per_s']:,.0f} tokens/s",
            *mf.busy_lines(m),
            f"  teacher {m['model']['model_id']} revision {m['model'].get('revision')} "
            f"({m['model'].get('dtype')}, {m['model'].get('device')})"
            + ("  RANDOM WEIGHTS: labels are meaningless" if m["model"].get("is_random") else ""),
            f"  output {self.output}  ({d['path']} {d['files']} file(s) of at most {d['rows_per_file']:,} rows, "
            f"{REJECTS}/, {mf.SUCCESS})",
        ])


# --- the Ray Data stages -------------------------------------------------------------------------

def tokenize_keeping_text(batch: pa.Table, *, rename: dict[str, str], **kwargs) -> pa.Table:
    """The rerank job's `tokenize_batch`, with the surviving rows' query and document texts appended
    under private names. Rejected rows go to rejects/ exactly as in the rerank job."""
    from ettin_batch.pipeline.tokenize import reject_reasons, tokenize_batch

    canonical = batch.rename_columns([rename.get(n, n) for n in batch.column_names])
    bad, _ = reject_reasons(canonical)
    scorable = canonical.filter(pa.array(~bad)) if bad.any() else canonical
    out = tokenize_batch(batch, rename=rename, **kwargs)
    texts = texts_of(scorable, out)
    for name, carried in _CARRIED.items():
        out = out.append_column(carried, texts.column(name))
    return out


def texts_of(scorable: pa.Table, tokenized: pa.Table) -> pa.Table:
    """The rows of `scorable` (canonical names, nulls already removed) that `tokenized` holds, in its order.

    `tokenized` keeps the rows it did not reject in input order: usually all of them, so this
    is a check; when the tokenizer also refused some rows, they are matched on (query_id, doc_id),
    which must then be unique within the batch (the input contract) or the texts could land on
    the wrong pair, so a duplicate stops the job instead.
    """
    ids = ("query_id", "doc_id")
    if tokenized.num_rows == scorable.num_rows and all(tokenized.column(c).equals(scorable.column(c)) for c in ids):
        return scorable
    keys = list(zip(*(scorable.column(c).to_pylist() for c in ids)))
    position = {key: i for i, key in enumerate(keys)}
    if len(position) != len(keys):
        raise RuntimeError("a batch holds the same (query_id, doc_id) twice and the tokenizer rejected some of "
                           "its rows: the teacher job cannot tell which texts belong to which label. "
                           "Remove the duplicate pairs from the input.")
    wanted = list(zip(*(tokenized.column(c).to_pylist() for c in ids)))
    missing = [k for k in wanted if k not in position]
    if missing:
        raise RuntimeError(f"tokenize_batch returned pairs that were not in its input, e.g. {missing[0]}")
    return scorable.take(pa.array([position[k] for k in wanted], pa.int64()))


def training_rows(batch: pa.Table, *, passthrough: list[str]) -> pa.Table:
    """Scored rows (ids, carried texts, `score`) -> query, document, label, query_id, doc_id, pass-through."""
    return pa.table(
        [batch.column(_CARRIED["query"]), batch.column(_CARRIED["document"]), batch.column("score"),
         batch.column("query_id"), batch.column("doc_id"), *[batch.column(n) for n in passthrough]],
        names=[*TRAINING_COLUMNS, *passthrough],
    )


def output_schema(plan: InputPlan) -> pa.Schema:
    """The schema of every data/ file (used for the empty file when nothing was scored)."""
    field = {plan.rename[n]: plan.schema.field(n) for n in plan.read_columns[:4]}

    def text(name: str) -> pa.DataType:  # an all-null text column is typed null: nothing from it is scored
        t = field[name].type
        return pa.string() if pa.types.is_null(t) else t

    return pa.schema([("query", text("query")), ("document", text("document")), (LABEL, pa.float32()),
                      ("query_id", field["query_id"].type), ("doc_id", field["doc_id"].type),
                      *[plan.schema.field(n) for n in plan.passthrough]])


# --- the job -------------------------------------------------------------------------------------

def _prepare_output(config: TeacherConfig) -> storage.Location:
    out = storage.resolve(config.output, s3_max_attempts=config.s3_max_attempts)
    success = out.join(mf.SUCCESS)
    if out.fs.exists(success) and not config.overwrite:
        raise OutputError(f"{out.url(success)} exists: that run finished. Pass --overwrite to replace it, "
                          "or choose another --output.")
    # Anything else of ours there is an unfinished run: Ray names files uniquely, so old parts would mix in.
    for sub in (DATA, REJECTS, mf.SUCCESS):
        storage.remove_tree(out, out.join(sub))
    return out


def _write_dataset(config: TeacherConfig, plan: InputPlan, out: storage.Location, res, stats) -> None:
    import ray

    from ettin_batch.pipeline.tokenize import RejectsDir

    ds = ray.data.read_parquet(plan.files, filesystem=plan.location.pa_fs, columns=plan.read_columns,
                               num_cpus=res.cpus_per_task)
    ds = ds.map_batches(
        tokenize_keeping_text, batch_format="pyarrow", batch_size=config.batch_size, num_cpus=res.cpus_per_task,
        fn_kwargs=dict(model=config.model, revision=config.revision, max_length=config.max_length,
                       rename=plan.rename, rejects_dir=out.join(REJECTS), filesystem=out.pa_fs),
    )
    # The rerank job's actor pool, restarts and batch retries: a dead actor costs a retry, never a pair.
    # A pair the model raises on goes to rejects/ with its texts under their input names again.
    rejects = RejectsDir(out.join(REJECTS), out.pa_fs, restore=tuple((v, k) for k, v in _CARRIED.items()))
    ds = score_stage(ds, config, res, stats, rejects=rejects)
    ds = ds.map_batches(training_rows, batch_format="pyarrow", batch_size=None, num_cpus=res.cpus_per_task,
                        fn_kwargs={"passthrough": plan.passthrough})
    # strict: every block but the last holds exactly rows_per_file rows, so every file but the last does too.
    ds = ds.repartition(target_num_rows_per_block=config.rows_per_file, strict=True)
    ds.write_parquet(out.join(DATA), filesystem=out.pa_fs, min_rows_per_file=config.rows_per_file,
                     max_rows_per_file=config.rows_per_file, ray_remote_args={"num_cpus": res.cpus_per_task})


def teacher_dataset(config: TeacherConfig) -> TeacherResult:
    """Write a teacher-score dataset end to end; returns its manifest (also written to _SUCCESS.json).

    Errors about the inputs, the output folder or the model are raised before Ray starts.
    """
    from ettin_batch.engine import resolve_model

    config.validate()
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    plan = inspect_inputs(config)
    clash = sorted(set(plan.passthrough) & {LABEL, *_CARRIED.values()})
    if clash:
        raise InputError(f"pass-through column(s) {clash} would collide with the teacher dataset's columns "
                         f"{list(TRAINING_COLUMNS)}; list the ones to keep with --passthrough")
    resolved = resolve_model(config.model, config.revision)
    out = _prepare_output(config)
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
        stats = RunStats.remote()
        _write_dataset(config, plan, out, res, stats)
        phases.mark("scoring")
        totals = ray.get(stats.totals.remote())
    finally:
        if started_ray:
            ray.shutdown()

    data_dir = out.join(DATA)
    scored = mf.count_rows(out, data_dir)
    if scored == 0:
        # Every row rejected (or no rows): one empty file keeps the dataset loadable, with its schema.
        out.pa_fs.create_dir(data_dir, recursive=True)
        pq.write_table(output_schema(plan).empty_table(), out.join(DATA, "empty.parquet"), filesystem=out.pa_fs)
    counts = {"in": plan.num_rows, "scored": scored, "rejected": mf.count_rows(out, out.join(REJECTS)),
              "truncated": totals["truncated"]}
    if counts["in"] != counts["scored"] + counts["rejected"]:
        raise RuntimeError(f"row counts do not add up: {counts['in']} in, {counts['scored']} scored, "
                           f"{counts['rejected']} rejected; {mf.SUCCESS} not written, the run is incomplete")
    model_info = dict(totals["info"] or {"dtype": config.dtype})
    model_info.update(model_id=resolved.model_id, revision=resolved.revision, is_random=resolved.is_random)
    phases.mark("finish")
    manifest = mf.build_manifest(config=config, plan=plan, model=model_info, counts=counts, tokens=totals["tokens"],
                                 wall_time_s=phases.total(), actors=res.as_dict(), started_at=started.isoformat(),
                                 model_pairs=totals["pairs"], phases=phases.seconds, model_seconds=totals["model_seconds"],
                                 finished_at=dt.datetime.now(dt.timezone.utc).isoformat())
    manifest.pop("top_k", None)
    manifest.pop("repeated_pairs", None)  # a top-k figure; the teacher cuts no top-k
    files = sorted(p for p in out.fs.find(data_dir) if p.endswith(".parquet"))
    manifest = {"kind": "teacher", **manifest,
                "dataset": {"path": f"{DATA}/", "format": "parquet", "columns": [*TRAINING_COLUMNS, *plan.passthrough],
                            "label": "the teacher's raw logit (float32), not rescaled",
                            "rows_per_file": config.rows_per_file, "files": len(files)}}
    storage.write_json(out, out.join(mf.SUCCESS), manifest)
    return TeacherResult(output=out.url(), manifest=manifest)


# --- the `ettin-batch teacher` subcommand -----------------------------------------------------------

def add_teacher_arguments(p: argparse.ArgumentParser) -> None:
    """The rerank job's flags (same meaning), without --top-k, plus --rows-per-file."""
    from ettin_batch.cli import _add_rerank_arguments

    _add_rerank_arguments(p)
    for action in p._actions:
        if action.dest in ("top_k", "reuse", "group_rows"):
            action.help = argparse.SUPPRESS  # accepted by the parser, refused in teacher_config / validate
        elif action.dest == "output":
            action.help = f"output folder: {DATA}/ (the dataset), {REJECTS}/, {mf.SUCCESS}"
        elif action.dest == "passthrough":
            action.help = "extra input columns copied into the dataset (default: none)"
        elif action.dest == "config":
            action.help = "YAML or TOML file with any of the settings below, and rows_per_file (flags win)"
    p.add_argument("--rows-per-file", type=int,
                   help=f"rows in every {DATA}/ file but the last (default {DEFAULT_ROWS_PER_FILE:,})")


def teacher_config(args: argparse.Namespace) -> TeacherConfig:
    """The config file (if any) with the flags given on the command line applied on top, validated."""
    from ettin_batch.cli import rerank_config

    if args.top_k is not None:
        raise ConfigError("--top-k does not apply to a teacher dataset (every pair is written)")
    return rerank_config(args, TeacherConfig)


def run_teacher(args: argparse.Namespace) -> int:
    from ettin_batch.cli import run_reporting_errors

    code, result = run_reporting_errors(lambda: teacher_dataset(teacher_config(args)))
    if result is not None:
        print(result.summary())
    return code
