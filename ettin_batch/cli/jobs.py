"""The job subcommands (rerank, teacher, plan, beir): flags -> one validated config -> the job -> its summary.

Every flag's default is None, so a flag given on the command line overrides the config file and an
absent one does not; `--top-k` fills the key `top_k`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import warnings

from ettin_batch import beir, evaluation
from ettin_batch.config import (ATTENTION_BACKENDS, COLUMN_FLAGS, DTYPES, JobConfig, PlanConfig, RerankConfig,
                                TeacherConfig)
from ettin_batch.cli.tools import add_s3_flag
from ettin_batch.run_folder import CANDIDATES, DATA, EVAL, QRELS_PARQUET, REJECTS, RERANK, SCORES, SUCCESS, TOPK


def _add_scoring_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="Hub id, local folder or random:<shape> (default cross-encoder/ettin-reranker-17m-v1)")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) of --model")
    p.add_argument("--max-length", type=int, help="tokens per pair after truncation (default 512)")
    p.add_argument("--dtype", choices=DTYPES, help="model dtype (auto: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--attention", choices=ATTENTION_BACKENDS, help="attention backend (default auto)")
    p.add_argument("--max-tokens-per-batch", type=int, help="token budget of one forward pass")


def _add_cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actors", type=int, help="scoring actors (default: one per GPU, 1 without GPUs)")
    p.add_argument("--gpus-per-actor", type=float, help="GPUs per scoring actor (default 1; 0 scores on CPU)")
    p.add_argument("--cpus-per-actor", type=float, help="CPUs per scoring actor")
    p.add_argument("--batch-size", type=int, help="pairs per Ray batch (default 4096 on GPUs, 1024 on CPUs)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="hide Ray Data's progress bars")
    add_s3_flag(p)


def _add_input_flags(p: argparse.ArgumentParser, outputs: str | None = None) -> None:
    """The config file, the input shards, the output folder (where the command writes `outputs`), the columns."""
    p.add_argument("--config", help="YAML or TOML file with any of the settings below (flags win)")
    p.add_argument("--input", nargs="+", help="Parquet folder(s), glob(s) or file(s); local, s3://, gs://")
    if outputs:
        p.add_argument("--output", help=f"output folder: {outputs}")
    for role, flag in COLUMN_FLAGS.items():
        p.add_argument(flag, dest=f"columns.{role}", help=f"input column holding the {role.replace('_', ' ')} "
                                                           f"(default {role})")


def _add_job_flags(p: argparse.ArgumentParser, outputs: str) -> None:
    """The flags of every job over Parquet shards: config file, inputs, output, columns, model, cluster."""
    _add_input_flags(p, outputs)
    p.add_argument("--passthrough", nargs="*", help="extra input columns copied to the output")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace a finished run in --output (removed once the inputs and model check out)")
    _add_scoring_flags(p)
    _add_cluster_flags(p)


def job_config(cls: type[JobConfig], args: argparse.Namespace, **fixed) -> JobConfig:
    """The config file (if any), the flags given on the command line on top, `fixed` keys last; validated.
    `{date}` in the output becomes today's UTC date, so one nightly config serves every night."""
    config = cls.from_file(args.config) if getattr(args, "config", None) else cls()
    changes = {k: getattr(args, k) for k in cls.keys() if k != "columns" and getattr(args, k, None) is not None}
    columns = {role: getattr(args, f"columns.{role}", None) for role in COLUMN_FLAGS}
    if any(columns.values()):
        changes["columns"] = dataclasses.replace(config.columns, **{r: n for r, n in columns.items() if n})
    config = config.replace(**{**changes, **fixed})
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return config.replace(output=config.output.replace("{date}", today)).validate()


def _add_rerank_arguments(p: argparse.ArgumentParser) -> None:
    _add_job_flags(p, f"{SCORES}/, {TOPK}/, {REJECTS}/, {SUCCESS}")
    p.add_argument("--top-k", type=int, help="candidates kept per query in topk/ (default 10)")
    p.add_argument("--reuse", metavar="PREVIOUS_OUTPUT",
                   help="a finished run's output folder: unchanged pairs keep its scores, only new or changed "
                        "pairs are scored")
    p.add_argument("--group-rows", type=int,
                   help="at least this many input rows per resume group (default $ETTIN_BATCH_GROUP_ROWS, else 1,000,000)")


def _run_rerank(args: argparse.Namespace) -> int:
    from ettin_batch.pipeline.rerank import rerank

    print(rerank(job_config(RerankConfig, args)).summary())
    return 0


def _add_teacher_arguments(p: argparse.ArgumentParser) -> None:
    _add_job_flags(p, f"{DATA}/ (the dataset), {REJECTS}/, {SUCCESS}")
    p.add_argument("--rows-per-file", type=int, help=f"rows in every {DATA}/ file but the last (default 100,000)")


def _run_teacher(args: argparse.Namespace) -> int:
    from ettin_batch.pipeline.teacher import teacher_dataset

    print(teacher_dataset(job_config(TeacherConfig, args)).summary())
    return 0


def _add_beir_arguments(p: argparse.ArgumentParser) -> None:
    """The rerank job's model and compute flags (same meaning), plus the BEIR inputs; the candidates'
    columns are the beir command's own, so the column and input flags are not offered."""
    p.add_argument("--beir", required=True, help="BEIR dataset folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    p.add_argument("--run", required=True,
                   help="first-stage run: TREC run file (qid Q0 docid rank score tag) or Parquet with query_id, doc_id, score")
    p.add_argument("--output", required=True,
                   help=f"output folder: {CANDIDATES}/, {QRELS_PARQUET}, {RERANK}/ (the rerank job's output), {EVAL}")
    p.add_argument("--split", help=f"qrels/<split>.tsv to evaluate against (default {beir.DEFAULT_SPLIT})")
    p.add_argument("--depth", type=int, help=f"candidates reranked per query, the run's best (default {beir.DEFAULT_DEPTH})")
    p.add_argument("--metrics", help=f"comma-separated (default {','.join(evaluation.DEFAULT_METRICS)})")
    p.add_argument("--json", action="store_true", help="print eval.json instead of a table")
    p.add_argument("--config", help="YAML or TOML file with the rerank job's settings (model, top_k, ...; flags win)")
    p.add_argument("--top-k", type=int, help="candidates kept per query in rerank/topk/ (default 10)")
    p.add_argument("--overwrite", action="store_true", default=None, help="redo a finished beir run in --output")
    _add_scoring_flags(p)
    _add_cluster_flags(p)


def _run_beir(args: argparse.Namespace) -> int:
    # The rerank job's settings; its input and output are OUT's folders, filled in by BeirConfig.validate.
    rerank = job_config(RerankConfig, args, input=["-"], output="-")
    changes = {name: getattr(args, name) for name in ("split", "depth") if getattr(args, name) is not None}
    if args.metrics is not None:
        changes["metrics"] = [m.strip() for m in args.metrics.split(",") if m.strip()]
    config = beir.BeirConfig(beir=args.beir, run=args.run, output=args.output, rerank=rerank, **changes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", beir.BeirWarning)  # printed once below, from the result
        result = beir.beir_rerank(config)
    for note in result.evaluation["warnings"]:
        print(f"warning: {note}", file=sys.stderr)
    print(json.dumps(result.evaluation, indent=2) if args.json else result.summary())
    return 0


def _add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """The rerank run's input, model and batching flags (a rerank config file works too), plus the cluster
    to forecast it on and the sample; no output, no Ray."""
    _add_input_flags(p)
    _add_scoring_flags(p)
    p.add_argument("--batch-size", type=int, help="pairs per Ray batch in the run (default 4096 on GPUs, 1024 on CPUs)")
    p.add_argument("--cpus-per-actor", type=float, help="CPUs each scoring actor holds in the run (default 1)")
    p.add_argument("--group-rows", type=int, help="the run's --group-rows (an input column named `path`: one model load per group)")
    p.add_argument("--reuse", metavar="PREVIOUS_OUTPUT",
                   help="a finished run's output folder: the share of pairs it already scored, and the incremental run")
    p.add_argument("--gpus", type=int, help="GPUs of the run (default 1); 0 forecasts CPU scoring on this machine's cores")
    p.add_argument("--cpus-per-gpu", type=float, help="CPUs each GPU comes with (default 12)")
    p.add_argument("--gpu-hour-price", type=float, help="price of one GPU-hour, for the cost (any currency)")
    p.add_argument("--sample", type=int, help="pairs to sample, time and check (default 2000)")
    p.add_argument("--seed", type=int, help="seed of the sample (default 0)")
    p.add_argument("--no-fidelity", dest="fidelity", action="store_false", default=None,
                   help="skip the comparison with sentence-transformers (the slowest part on a CPU)")
    add_s3_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _run_plan(args: argparse.Namespace) -> int:
    from ettin_batch.plan import plan

    report = plan(job_config(PlanConfig, args))
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.table())
    return 0


COMMANDS = {
    "rerank": ("score every (query, document) pair in Parquet shards; write scores and per-query top-k",
               _add_rerank_arguments, _run_rerank),
    "teacher": ("score every (query, document) pair with a teacher model; write a distillation dataset "
                "(query, document, label = raw logit, ids) in training-sized Parquet shards",
                _add_teacher_arguments, _run_teacher),
    "plan": ("before a run: sample the input, time the tokenizer and the model on this machine, forecast the run's "
             "wall time, GPU-hours and CPUs per GPU, and check the engine's scores against sentence-transformers",
             _add_plan_arguments, _run_plan),
    "beir": ("rerank a first-stage run over a BEIR dataset (corpus.jsonl, queries.jsonl, qrels/) and evaluate "
             "it against the first-stage order, in one command", _add_beir_arguments, _run_beir),
}
