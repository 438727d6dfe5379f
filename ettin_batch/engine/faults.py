"""Fault-injection hooks: make the engine fail on purpose, so tests can check how the job copes.

Off unless set: a Reranker's `faults` is None, which costs one check per forward pass. Each
hook imitates a fault that a real run meets and must survive:

    oom_above_tokens   a forward pass over more tokens than this raises torch.OutOfMemoryError,
                       as a device without room for the batch does (the engine halves the batch
                       and retries: Reranker._run_with_split).
    pause_after_pairs  once this engine has scored at least this many pairs (whole score_tokens
    pause_marker       calls), the next forward pass writes the process id to `pause_marker` and
    pause_seconds      stops there for `pause_seconds`; only if the marker does not exist yet, so
                       it happens once per marker. A test waits for the marker and kills the
                       process: a kill at a known point, mid-batch, with batches still queued.
    crash_on_token     a forward pass over a batch holding this token id ends the process at once
                       (os._exit), as a segfault in a kernel would: every retry of that batch does too.
    device_error_marker
                       the next forward pass raises torch.AcceleratorError, as a CUDA error does (an illegal
                       memory access, a GPU fault), after which a process's CUDA context is unusable; only if
                       the marker does not exist yet (it is created with the process id): once per marker.
    slow_forward_seconds
    forward_log        each forward pass lasts at least this long (a sleep, which lets other threads run, as a
                       wait on a GPU does) and appends "pid thread start end" to `forward_log`: a model as
                       slow as a big one on a GPU, whose passes a test can check never overlap.
    shift_encoder_output
                       added to every value of the pooled vectors the unpadded encoder returns, before
                       the head: a fast path that is wrong the way a faulty kernel or rotary table
                       would be (the padded path, and sentence-transformers, stay right). What
                       `ettin-batch plan`'s fidelity check must catch.

Set them on an engine with `reranker.faults = FaultHooks(...)`. In a Ray job the scoring
actors take them from the driver's Ray Data context (see ettin_batch.pipeline.score.FAULTS_KEY),
which Ray Data hands to every worker of the datasets it runs.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import torch

from .tokenize import TokenizedPairs


@dataclass(frozen=True)
class FaultHooks:
    """Faults to inject into every forward pass of one engine (see the module docstring)."""

    oom_above_tokens: int | None = None
    pause_after_pairs: int | None = None
    pause_marker: str | None = None
    pause_seconds: float = 300.0
    crash_on_token: int | None = None
    device_error_marker: str | None = None
    slow_forward_seconds: float | None = None
    forward_log: str | None = None
    shift_encoder_output: float | None = None

    def before_forward(self, pairs_scored: int, batch: TokenizedPairs) -> None:
        """Called at the start of each forward pass; `pairs_scored` counts the engine's finished pairs."""
        tokens = int(batch.offsets[-1])
        if self.crash_on_token is not None and (batch.input_ids == self.crash_on_token).any():
            os._exit(70)
        if self.oom_above_tokens is not None and tokens > self.oom_above_tokens:
            raise torch.OutOfMemoryError(f"fault injection: a forward pass over {tokens} tokens "
                                         f"(more than oom_above_tokens={self.oom_above_tokens})")
        if self.pause_after_pairs is not None and pairs_scored >= self.pause_after_pairs and self.pause_marker:
            if _first_at(self.pause_marker):
                time.sleep(self.pause_seconds)
        if self.device_error_marker and _first_at(self.device_error_marker):
            raise torch.AcceleratorError("fault injection: CUDA error: an illegal memory access was encountered")
        if self.slow_forward_seconds is not None:
            start = time.time()
            time.sleep(self.slow_forward_seconds)
            if self.forward_log:
                with open(self.forward_log, "a") as f:
                    f.write(f"{os.getpid()} {threading.get_ident()} {start} {time.time()}\n")

    def after_encoder(self, pooled: torch.Tensor) -> torch.Tensor:
        """Called on the unpadded encoder's pooled output [pairs, hidden]; returns what the head reads."""
        if self.shift_encoder_output is None:
            return pooled
        return pooled + self.shift_encoder_output


def _first_at(marker: str) -> bool:
    """Create `marker` holding this process's id; False if it exists already: a fault happens once per marker,
    even across the restarts it causes."""
    try:
        with open(marker, "x") as f:
            f.write(str(os.getpid()))
    except FileExistsError:
        return False
    return True
