"""The subcommands around the jobs (eval, labels, submit): flags -> the library call -> what it printed."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from ettin_batch.evaluation import DEFAULT_METRICS
from ettin_batch.run_folder import HISTOGRAM, LABELS_PARQUET, QRELS_TXT


def add_s3_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--s3-max-attempts", type=int,
                   help="attempts per object-store call, with backoff (default $ETTIN_BATCH_S3_MAX_ATTEMPTS, else 12)")


def _add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="scores/ or topk/ folder, job output folder, Parquet file or TREC run file")
    p.add_argument("--qrels", required=True, help="TREC qrels file, or Parquet with query_id, doc_id, relevance")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated (default: %(default)s)")
    p.add_argument("--score-col", default="score", help="run column to rank by (default: %(default)s)")
    p.add_argument("--baseline-col", default=None, help="also score this pass-through column's order, e.g. retrieval_score")
    p.add_argument("--allow-unfinished", action="store_true",
                   help="evaluate a run that has no _SUCCESS.json (it holds part of its pairs at most)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_s3_flag(p)


def _run_eval(args: argparse.Namespace) -> int:
    from ettin_batch.evaluation import EvaluationWarning, evaluate, format_table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)  # printed once below, from the result
        result = evaluate(args.run, args.qrels, metrics=[m for m in args.metrics.split(",") if m.strip()],
                          baseline_col=args.baseline_col, score_col=args.score_col,
                          allow_unfinished=args.allow_unfinished, s3_max_attempts=args.s3_max_attempts)
    for note in result["warnings"]:
        print(f"warning: {note}", file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def _add_labels_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scores", required=True, help="the job's scores/ folder (or its output folder), any fsspec path")
    p.add_argument("--output", required=True, help=f"folder for {QRELS_TXT}, {LABELS_PARQUET}, {HISTOGRAM}")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--thresholds",
                      help="increasing score cuts, e.g. 0.0,4.0,8.0 -> grades 0-3 (score == cut takes the higher grade)")
    rule.add_argument("--top-n-relevant", type=int, help="the N best documents of each query get grade 1, the rest 0")
    p.add_argument("--score-col", default="score", help="column to grade (default: %(default)s)")
    p.add_argument("--address", help="Ray cluster for a large --top-n-relevant run (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished labels run in --output")
    p.add_argument("--allow-unfinished", action="store_true",
                   help="label a run that has no _SUCCESS.json (it holds part of its pairs at most)")
    add_s3_flag(p)


def _run_labels(args: argparse.Namespace) -> int:
    from ettin_batch.labels import backfill_labels

    summary = backfill_labels(args.scores, args.output, thresholds=args.thresholds, top_n_relevant=args.top_n_relevant,
                              score_col=args.score_col, address=args.address, overwrite=args.overwrite,
                              allow_unfinished=args.allow_unfinished, s3_max_attempts=args.s3_max_attempts)
    grades = ", ".join(f"{g}: {n}" for g, n in summary["grade_counts"].items())
    print(f"{summary['rows']} pairs labelled; pairs per grade: {grades}")
    for path in summary["files"].values():
        print(f"  {path}")
    return 0


def _add_submit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="the cluster's dashboard, e.g. http://HEAD:8265 (default: RAY_ADDRESS)")
    p.add_argument("--working-dir", help="local folder uploaded as the job's working directory (e.g. .)")
    p.add_argument("--runtime-env-json", help='extra runtime_env as JSON, e.g. \'{"pip": ["flash-attn"]}\'')
    p.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="set an environment variable in the job (NAME alone copies it from here); values are never printed")
    p.add_argument("--submission-id", help="job id to use (default: Ray picks one)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return without following")
    p.add_argument("job", nargs=argparse.REMAINDER,
                   help="after --: an ettin-batch subcommand (rerank ...) or any command (python jobs/rerank.py ...)")


def _run_submit(args: argparse.Namespace) -> int:
    from ettin_batch.cli import SUBCOMMANDS
    from ettin_batch.submit import submit

    return submit(list(args.job), address=args.address, working_dir=args.working_dir,
                  runtime_env_json=args.runtime_env_json, env=args.env, submission_id=args.submission_id,
                  no_wait=args.no_wait, commands=SUBCOMMANDS)


COMMANDS = {
    "eval": ("score a run (scores/, topk/ or a TREC run file) against qrels (TREC or Parquet) with pytrec_eval's numbers",
             _add_eval_arguments, _run_eval),
    "labels": ("turn reranker scores into graded relevance labels: TREC qrels, Parquet and a score histogram",
               _add_labels_arguments, _run_labels),
    "submit": ("submit a job (e.g. `-- rerank --config job.yaml`) to a Ray cluster, follow its logs, exit with its status",
               _add_submit_arguments, _run_submit),
}
