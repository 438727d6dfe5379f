"""The `ettin-batch` command: one parser, one subcommand a module function, one mapping of errors to exit codes.

    ettin-batch rerank --input s3://bucket/candidates/ --output s3://bucket/reranked/ \\
        --model cross-encoder/ettin-reranker-17m-v1 --top-k 10

Every subcommand's failure the user can act on is an EttinError (ettin_batch.errors): it prints
`error: <message>` and exits with that error's code (2 bad config, input or output; 3 the model;
4 a run that stopped part-way and resumes). Ctrl-C prints how to resume and exits 130. The
modules below the CLI know nothing of argparse; jobs.py and tools.py turn flags into their calls.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from ettin_batch import __version__, errors, storage
from ettin_batch.cli import jobs, tools
from ettin_batch.errors import EttinError

EXIT_INTERRUPTED = 130

# name -> (help, add the subcommand's arguments to its parser, run it and return an exit code)
SUBCOMMANDS = {**jobs.COMMANDS, **tools.COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ettin-batch",
                                     description="Offline batch reranking with Ettin cross-encoders on Ray Data.")
    parser.add_argument("--version", action="version", version=f"ettin-batch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help, add_arguments, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a flag argparse refuses (2, after printing why)
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    errors.interrupted.clear()
    previous_handler = signal.signal(signal.SIGINT, errors.on_sigint)
    try:
        return args._run(args)
    except EttinError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # an object store that cannot be used at all: the same mapping, not a traceback
        error = storage.object_store_error(e)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    finally:
        signal.signal(signal.SIGINT, previous_handler)


if __name__ == "__main__":
    sys.exit(main())
