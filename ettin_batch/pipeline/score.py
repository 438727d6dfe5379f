"""The scoring stage: a thin Ray actor around the engine's Reranker, one model per actor.

The actor only turns Arrow token columns into scores; packing, attention and the model
live in `ettin_batch.engine`, which runs and is tested without Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

import numpy as np
import pyarrow as pa
import ray

from ettin_batch.config import ScoringConfig
from ettin_batch.engine.tokenize import IDS_COL, SPLIT_COL, TRUNC_COL
from ettin_batch.pipeline.rejects import RejectsDir

log = logging.getLogger("ettin_batch.pipeline")

TOKEN_COLS = (IDS_COL, SPLIT_COL, TRUNC_COL)
# Key of the Ray Data context config holding an engine.faults.FaultHooks: tests set it on the
# driver (DataContext.get_current().set_config) and Ray Data carries it to every scoring actor.
FAULTS_KEY = "ettin_batch.fault_hooks"


# Figures the stages report; totals() gives each, 0 when nothing reported it.
FIGURES = ("pairs", "tokens", "truncated", "model_seconds", "reused", "oom_splits", "device_errors", "blank_texts")
# A batch that kills its actor (a segfault, the OOM killer) is retried on a restarted actor by Ray
# Data, without limit; this many starts of one batch fail the job instead of looping all night.
MAX_BATCH_ATTEMPTS = 4
# The exit status of a scoring actor that ends itself after a device error (ScorePairs._start_afresh).
EXIT_DEVICE_ERROR = 75


@ray.remote(num_cpus=0)
class RunStats:
    """Totals the stages report, so the driver can write tokens/s and the model info.

    Counts of rows come from the written files, not from here: a retried batch is counted
    twice here, never in the output.
    """

    def __init__(self):
        self.figures = dict.fromkeys(FIGURES, 0)
        self.attempts: dict[str, int] = {}
        self.info: dict | None = None
        self.processes: list[tuple[str, int]] = []  # (node id, pid) of scoring actors started, not yet taken

    def started(self, node: str, pid: int) -> None:
        self.processes.append((node, pid))

    def take_actor_processes(self) -> list[tuple[str, int]]:
        """The scoring actors started since the last call: each is waited for once, so a later group does not
        wait on an earlier group's pid that the system may have handed to another process since."""
        taken, self.processes = self.processes, []
        return taken

    def add(self, figures: dict) -> None:
        for name, value in figures.items():
            self.figures[name] += value

    def attempt(self, batch: str) -> int:
        """Count one more start of scoring `batch`; returns how many there have been."""
        self.attempts[batch] = self.attempts.get(batch, 0) + 1
        return self.attempts[batch]

    def set_info(self, info: dict) -> None:
        if self.info is None:
            self.info = info

    def totals(self) -> dict:
        return {**self.figures, "info": self.info}


def check_same_tokenizer(reranker) -> None:
    """The tokenize tasks read the model's tokenizer.json without transformers; the model's own tokenizer,
    as transformers loaded it here, must be the same one, or the ids they hand over would be another's."""
    from ettin_batch.engine import PairTokenizer
    from ettin_batch.errors import ModelLoadError

    tasks = PairTokenizer.from_pretrained(reranker.resolved.path, reranker.max_length)
    if tasks.spec != reranker.tokenizer.spec:
        raise ModelLoadError(f"{reranker.resolved.model_id}: transformers changes its tokenizer.json when it loads "
                             "it (tokenizer_config.json overrides it), so the job's tokenize tasks, which read the "
                             "file as it is, would give other token ids. Save the tokenizer again "
                             "(AutoTokenizer.from_pretrained(...).save_pretrained(...)) so that the two agree.")


def fingerprint_keys(batch: pa.Table) -> np.ndarray | None:
    """The first 8 bytes of each row's pair fingerprint (reuse.py), as uint64: the order the engine packs pairs of
    one length in (Reranker.score_tokens' `ties`), read in place instead of hashing every token id again (3.5 ms
    of a 4,096-pair call's ~10 ms of host work on the dev VM). None where the job writes no fingerprint."""
    from ettin_batch.pipeline.reuse import FINGERPRINT_COL, FINGERPRINT_TYPE

    if FINGERPRINT_COL not in batch.column_names:
        return None
    column = batch.column(FINGERPRINT_COL).combine_chunks()
    if column.type != FINGERPRINT_TYPE or column.null_count:
        return None
    words = np.frombuffer(column.buffers()[1], np.uint64)  # two words per 16-byte fingerprint
    return words[2 * column.offset: 2 * (column.offset + len(column)): 2]


def wait_for_exit(processes: list[tuple[str, int]], timeout: float = 30.0) -> list[tuple[str, int]]:
    """Wait until these (node id, pid) processes have exited; returns those still running after `timeout`.

    Ray Data lets a finished dataset's actors go by dropping their handles: Ray then frees their CPUs and
    GPUs at once, but each process takes a few more seconds to exit, holding its model (and its GPU
    memory) until it has. A resume group that starts its actors in that time loads a second model beside
    the first (the 2M-pair job's memory peak: RESULTS.md, Scale)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}  # a lost node's processes are gone
    by_node: dict[str, list[int]] = {}
    for node, pid in processes:
        if node in alive:
            by_node.setdefault(node, []).append(pid)
    remote = {node: _wait_here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
              .remote(pids, timeout) for node, pids in by_node.items() if node != here}
    left = [(here, pid) for pid in _wait_for_pids(by_node.get(here, []), timeout)]
    for node, ref in remote.items():
        left += [(node, pid) for pid in ray.get(ref)]
    return left


def _wait_for_pids(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (running := [pid for pid in pids if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


@ray.remote(num_cpus=0)
def _wait_here(pids: list[int], timeout: float) -> list[int]:
    return _wait_for_pids(pids, timeout)


def _running(pid: int) -> bool:
    """Whether the process runs (an exited one not yet reaped has freed its memory: it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): only whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


class ScorePairs:
    """Ray Data callable class: a batch of tokenized pairs in, the same rows with `score` out.

    A pair the model raises on (not an out-of-memory error, which the engine handles by splitting
    the batch, nor a device error) is written to `rejects` with its reason and left out; the rest
    of the batch is scored.
    """

    def __init__(self, *, scoring: ScoringConfig, device: str, threads: int | None, stats, rejects: RejectsDir):
        import torch
        import transformers
        from ray.data import DataContext

        from ettin_batch.engine import Reranker

        transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar per actor in the job's log
        if threads:
            # Ray sets OMP_NUM_THREADS from the actor's CPU share, rounded down; use what was reserved.
            torch.set_num_threads(threads)
        self._time = time.perf_counter
        self.reranker = Reranker.from_config(scoring, device=device)
        self.reranker.faults = DataContext.get_current().get_config(FAULTS_KEY)
        check_same_tokenizer(self.reranker)
        # Errors that say nothing about the rows: they fail the batch (and the job) as before.
        self._not_row_faults = (torch.OutOfMemoryError, MemoryError)
        self._device_error = torch.AcceleratorError
        self.rejects = rejects
        self.stats = stats
        # Calls may run in threads of their own (pipeline.run.actor_pool); the model, one at a time.
        self._model = threading.Lock()
        self.stats.set_info.remote(self.reranker.info)
        self.stats.started.remote(ray.get_runtime_context().get_node_id(), os.getpid())

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Score every row (in a --reuse run, only the rows whose `score` is still null); rows the model
        raises on are written to `rejects` and left out."""
        from ettin_batch.engine.tokenize import TokenizedPairs
        from ettin_batch.pipeline.reuse import reused_mask

        self._count_attempt(batch)
        out = batch.drop_columns([c for c in TOKEN_COLS if c in batch.column_names])
        reused = reused_mask(batch)
        if reused is None:
            todo = np.arange(batch.num_rows)
            scores = np.empty(batch.num_rows, np.float32)
        else:
            reused = reused.to_numpy(zero_copy_only=False)
            todo = np.flatnonzero(~reused)
            scores = batch.column("score").to_numpy(zero_copy_only=False).astype(np.float32)
            out = out.drop_columns(["score"])
            if len(todo) < batch.num_rows:
                self.stats.add.remote({"reused": batch.num_rows - len(todo)})
        refused: dict[int, str] = {}
        if len(todo):
            part = batch.take(todo) if reused is not None else batch
            scores[todo], refused_in_pairs = self._score_finding_faults(TokenizedPairs.from_arrow(part),
                                                                        fingerprint_keys(part))
            refused = {int(todo[i]): why for i, why in refused_in_pairs.items()}
        if refused:
            rows = sorted(refused)
            self.rejects.write(out.take(pa.array(rows, pa.int64())), [refused[i] for i in rows])
            keep = np.ones(batch.num_rows, bool)
            keep[rows] = False
            out, scores = out.filter(pa.array(keep)), scores[keep]
        return out.append_column("score", pa.array(scores, pa.float32()))

    def _count_attempt(self, batch: pa.Table) -> None:
        """Fail the job once one batch has started MAX_BATCH_ATTEMPTS times (it kills its actor)."""
        import ray

        ends = [batch.slice(i, 1).select(["query_id", "doc_id"]).to_pylist() for i in (0, batch.num_rows - 1)]
        key = repr((batch.num_rows, ends))
        attempts = ray.get(self.stats.attempt.remote(key))
        if attempts > MAX_BATCH_ATTEMPTS:
            raise RuntimeError(f"a batch of {batch.num_rows} pairs (from {ends[0]} to {ends[1]}) killed its scoring "
                               f"actor {attempts - 1} times; the job stops rather than retry it again. Look for "
                               "the actor's crash in the Ray logs (out of memory? a faulty node?).")

    def _start_afresh(self, error: Exception) -> None:
        """End this process after a device error. A CUDA error leaves the process's CUDA context unusable, so every
        later call here would fail too (and with it the job); Ray starts the actor again in a new process and
        Ray Data retries the calls this one held. A batch that ends its actor MAX_BATCH_ATTEMPTS times stops
        the job (_count_attempt), so an error that is the batch's own does not loop."""
        log.error("scoring actor (pid %d) hit a device error, %s: %s; it exits so that Ray starts it again in a "
                  "fresh process, and its batches are retried there", os.getpid(), type(error).__name__, error)
        with contextlib.suppress(Exception):
            ray.get(self.stats.add.remote({"device_errors": 1}), timeout=10)
        os._exit(EXIT_DEVICE_ERROR)

    def _score_finding_faults(self, pairs, ties: np.ndarray | None) -> tuple[np.ndarray, dict[int, str]]:
        """Scores (float32 [n]) and, by row, why the model failed on it or gave it no finite score.

        The batch is scored in one call; only when that raises is it bisected: each half is
        scored on its own, and a row that still raises alone is refused. That costs about
        2 log2(n) extra calls per poisoned row, on ever smaller parts. A batch of several rows
        in which no row scores points at the model or the device, not the rows: that fails.
        """
        scores = np.zeros(len(pairs), np.float32)
        refused: dict[int, str] = {}
        todo, error = [np.arange(len(pairs))], None
        while todo:
            index = todo.pop()
            part = pairs if len(index) == len(pairs) else pairs.take(index)
            try:  # only the model call: an error anywhere else says nothing about the rows
                with self._model:
                    start, splits = self._time(), self.reranker.stats["oom_splits"]
                    scores[index] = self.reranker.score_tokens(part, None if ties is None else ties[index])
                    seconds, splits = self._time() - start, self.reranker.stats["oom_splits"] - splits
            except self._device_error as e:
                self._start_afresh(e)
            except self._not_row_faults:
                raise
            except Exception as e:  # noqa: BLE001 - whatever the model raises on a row is that row's reason
                error = e
                if len(index) == 1:
                    refused[int(index[0])] = f"the model failed on this pair: {type(e).__name__}: {e}"[:500]
                else:
                    half = len(index) // 2
                    todo += [index[half:], index[:half]]
                continue
            self.stats.add.remote({"pairs": len(part), "tokens": int(part.offsets[-1]), "truncated": part.num_truncated,
                                   "model_seconds": seconds, "oom_splits": splits})
        if len(refused) == len(pairs) > 1:
            raise RuntimeError(f"the model failed on each of the {len(pairs)} pairs of a batch on its own: "
                               "the model or the device is broken, not the rows") from error
        for i in np.flatnonzero(~np.isfinite(scores)):  # a NaN would sort anywhere in a top-k, and break labels
            refused[int(i)] = (f"the model's score for this pair is {scores[i]}, not a finite number (the model ran "
                               f"in {self.reranker.info['dtype']}: in float16, an overflow, so use bfloat16 or "
                               "float32; else check the model's weights)")
        return scores, refused

