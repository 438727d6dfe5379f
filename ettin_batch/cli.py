"""The `ettin-batch` command. Subcommands register themselves in SUBCOMMANDS.

    ettin-batch rerank --input s3://bucket/candidates/ --output s3://bucket/reranked/ \\
        --model cross-encoder/ettin-reranker-17m-v1 --top-k 10

Flags override the values in `--config job.yaml` (or .toml); the result is validated once.
`{date}` in the output path becomes today's UTC date (YYYY-MM-DD).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from ettin_batch import __version__, beir, evaluation, labels
from ettin_batch import submit as submit_command
from ettin_batch.config import COLUMN_FLAGS, DTYPES, ConfigError, RerankConfig
from ettin_batch.pipeline import teacher

EXIT_USAGE = 2  # bad config, input or output: fix the command
EXIT_MODEL = 3  # the model could not be loaded (e.g. the Hub is unreachable): scripts may retry with another
EXIT_FAILED = 4  # the run stopped part-way (e.g. the object store stayed down): rerun the same command to resume

T = TypeVar("T")

# name -> (add the subcommand's arguments to its parser, run it and return an exit code)
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}

def register(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int]) -> None:
    """Add `ettin-batch NAME`: `add_arguments` fills its parser, `run` executes it and returns an exit code."""
    SUBCOMMANDS[name] = (help, add_arguments, run)


def _add_rerank_arguments(p: argparse.ArgumentParser) -> None:
    # Every default is None: a flag given on the command line overrides the config file, an absent one does not.
    p.add_argument("--config", help="YAML or TOML file with any of the settings below (flags win)")
    p.add_argument("--input", nargs="+", help="Parquet folder(s), glob(s) or file(s); local, s3://, gs://")
    p.add_argument("--output", help="output folder: scores/, topk/, rejects/, _SUCCESS.json")
    p.add_argument("--model", help="Hub id, local folder or random:<shape> (default cross-encoder/ettin-reranker-17m-v1)")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) of --model")
    p.add_argument("--top-k", type=int, help="candidates kept per query in topk/ (default 10)")
    p.add_argument("--max-length", type=int, help="tokens per pair after truncation (default 512)")
    p.add_argument("--dtype", choices=DTYPES, help="model dtype (auto: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--attention", help="attention backend: auto, flash, torch, reference, padded")
    p.add_argument("--actors", type=int, help="scoring actors (default: one per GPU, 1 without GPUs)")
    p.add_argument("--gpus-per-actor", type=float, help="GPUs per scoring actor (default 1; 0 scores on CPU)")
    p.add_argument("--cpus-per-actor", type=float, help="CPUs per scoring actor")
    p.add_argument("--max-tokens-per-batch", type=int, help="token budget of one forward pass")
    p.add_argument("--batch-size", type=int, help="pairs per Ray batch (default 1024)")
    p.add_argument("--query-id-col", help="input column holding the query id (default query_id)")
    p.add_argument("--query-col", help="input column holding the query text (default query)")
    p.add_argument("--doc-id-col", help="input column holding the document id (default doc_id)")
    p.add_argument("--document-col", help="input column holding the document text (default document)")
    p.add_argument("--passthrough", nargs="*", help="extra columns copied to scores/ (default: all others)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace a finished run's output")
    p.add_argument("--reuse", metavar="PREVIOUS_OUTPUT",
                   help="a finished run's output folder: unchanged pairs keep its scores, only new or changed "
                        "pairs are scored")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="hide Ray Data's progress bars")
    p.add_argument("--group-rows", type=int,
                   help="at least this many input rows per resume group (default $ETTIN_BATCH_GROUP_ROWS, else 1,000,000)")
    p.add_argument("--s3-max-attempts", type=int,
                   help="attempts per object-store call, with backoff (default $ETTIN_BATCH_S3_MAX_ATTEMPTS, else 12)")


def rerank_config(args: argparse.Namespace, cls: type[RerankConfig] = RerankConfig) -> RerankConfig:
    """The config file (if any) with the flags given on the command line applied on top, validated.

    A flag fills the config field of its own name (`--top-k` -> top_k); `cls` may be a subclass
    with more fields (the teacher job's TeacherConfig)."""
    import dataclasses

    config = cls.from_file(args.config) if args.config else cls()
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
               if f.name != "columns" and getattr(args, f.name, None) is not None}
    columns = {role: getattr(args, flag.lstrip("-").replace("-", "_")) for role, flag in COLUMN_FLAGS.items()}
    columns = {role: name for role, name in columns.items() if name}
    if columns:
        changes["columns"] = dataclasses.replace(config.columns, **columns)
    config = config.replace(**changes)
    # `{date}` in the output (nightly configs) becomes today's UTC date, so one file serves every night.
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return config.replace(output=config.output.replace("{date}", today)).validate()


def run_reporting_errors(job: Callable[[], T], *usage_errors: type[Exception]) -> tuple[int, T | None]:
    """Run `job`; a failure the user can act on prints `error: ...` and gives its exit code
    (EXIT_FAILED, EXIT_MODEL or EXIT_USAGE; `usage_errors` adds a subcommand's own input errors).
    Returns (0, the job's result) when it succeeds."""
    from ettin_batch.engine import ModelLoadError
    from ettin_batch.pipeline.inputs import InputError
    from ettin_batch.pipeline.job import OutputError, RunFailed
    from ettin_batch.pipeline.reuse import ReuseError

    try:
        return 0, job()
    except RunFailed as e:
        error, code = e, EXIT_FAILED
    except ModelLoadError as e:
        # The engine's message already says how to pass a local folder or a random: model.
        error, code = e, EXIT_MODEL
    except (ConfigError, InputError, OutputError, ReuseError, FileNotFoundError, *usage_errors) as e:
        error, code = e, EXIT_USAGE
    print(f"error: {error}", file=sys.stderr)
    return code, None


def _run_rerank(args: argparse.Namespace) -> int:
    from ettin_batch.pipeline import rerank

    code, result = run_reporting_errors(lambda: rerank(rerank_config(args)))
    if result is not None:
        print(result.summary())
    return code


register("rerank", "score every (query, document) pair in Parquet shards; write scores and per-query top-k",
         _add_rerank_arguments, _run_rerank)
register("beir", beir.BEIR_HELP, beir.add_beir_arguments, beir.run_beir)
register("eval", evaluation.EVAL_HELP, evaluation.add_eval_arguments, evaluation.run_eval)
register("labels", labels.LABELS_HELP, labels.add_labels_arguments, labels.run_labels)
register("submit", submit_command.SUBMIT_HELP, submit_command.add_submit_arguments, submit_command.run_submit)
register("teacher", teacher.TEACHER_HELP, teacher.add_teacher_arguments, teacher.run_teacher)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ettin-batch", description="Offline batch reranking with Ettin cross-encoders on Ray Data.")
    parser.add_argument("--version", action="version", version=f"ettin-batch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help, add_arguments, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
