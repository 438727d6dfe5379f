"""The errors a user can act on. Each carries the exit code the CLI gives it, so one mapping serves
every command; the message says what is wrong (the file, row, column or flag) and what to do.

    2  ConfigError, InputError, OutputError   fix the command, the config or the input
    3  ModelLoadError                         the model could not be loaded; another may work
    4  RunFailed                              the run stopped part-way; the same command resumes it
"""

from __future__ import annotations

import threading


class EttinError(Exception):
    """Base of every error ettin-batch reports to its user as `error: <message>`."""

    exit_code = 2


class ConfigError(EttinError, ValueError):
    """A setting is missing or wrong; the message names it and its flag."""


class InputError(EttinError, ValueError):
    """An input (Parquet shards, a run, qrels, a BEIR folder, a --reuse folder) cannot be used as given."""


class OutputError(EttinError, ValueError):
    """The output folder cannot be written as asked (it holds something this run must not touch)."""


class ModelLoadError(EttinError, ValueError):
    """The model cannot be found, reached or used as a cross-encoder."""

    exit_code = 3


class RunFailed(EttinError, RuntimeError):
    """The run stopped part-way; its output folder has no _SUCCESS.json and the same command resumes it."""

    exit_code = 4


# Ctrl-C, remembered. A KeyboardInterrupt can be swallowed on its way up (a finalizer or a library's
# cleanup that catches everything happens to be running when it lands); the CLI's SIGINT handler
# sets this as well as raising, and RunFolder.finish checks it before any command writes _SUCCESS.json.
interrupted = threading.Event()


def on_sigint(signum, frame) -> None:
    """The CLI's SIGINT handler: remember the interrupt, then raise as Python's own handler does."""
    interrupted.set()
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if Ctrl-C was pressed, even where the exception it raised was swallowed."""
    if interrupted.is_set():
        raise KeyboardInterrupt
