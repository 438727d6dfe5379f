"""What this machine does with the sample, timed through the job's own code.

    CPU stage   `canonical` (names, pair fingerprints) then `Tokenize`, as the job's CPU tasks run them:
                Arrow batches of `batch_size` pairs, one thread (TOKENIZERS_PARALLELISM=false, as in a
                Ray task holding one CPU). Timed in CPU seconds of this process, so the figure is what
                one core does, not what a busy machine let it do. One pass over the sample: a
                tokenizer that caches what it has seen is timed nearly cold, so a long run's tasks
                may go faster than this (timing a second pass over the same texts would overstate it).
    model       `Reranker.score_tokens` on chunks of `batch_size` tokenized pairs, as a scoring actor
                calls it, with the job's token budget for the device; wall seconds (the device's
                throughput), after one untimed warm-up call, over whole passes of the sample
                repeated for at least MIN_MEASURE_S. The packing keys are given, untimed, as the
                job's actors give their pair fingerprints.

A faster tokenizer or engine therefore shows up here without a change to this module.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from ettin_batch.config import ScoringConfig
from ettin_batch.engine.tokenize import IDS_COL, TokenizedPairs
from ettin_batch.pipeline.inputs import InputPlan
from ettin_batch.pipeline.rejects import RejectsDir
from ettin_batch.pipeline.tokenize_stage import Tokenize, canonical


@dataclass
class CpuStage:
    """The CPU stage on the sample. Seconds are CPU seconds of one thread (core-seconds)."""

    pairs_in: int
    pairs_out: int  # tokenized; the others were rejected (null id or text, untokenizable)
    fingerprint_s: float
    tokenize_s: float
    device: str

    @property
    def pairs_per_core_s(self) -> float:
        """Pairs one core takes through the whole CPU stage per second."""
        return self.pairs_in / max(self.fingerprint_s + self.tokenize_s, 1e-9)

    def as_dict(self) -> dict:
        return {"pairs_per_s_per_core": round(self.pairs_per_core_s, 1), "device": self.device,
                "fingerprint_core_s_per_pair": self.fingerprint_s / max(self.pairs_in, 1),
                "tokenize_core_s_per_pair": self.tokenize_s / max(self.pairs_in, 1),
                "pairs": self.pairs_in, "rejected": self.pairs_in - self.pairs_out}


@contextlib.contextmanager
def _one_thread_tokenizer():
    # The Rust tokenizer reads this on every batch call; "false" keeps encode_batch on the calling thread.
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def run_cpu_stage(table: pa.Table, plan: InputPlan, scoring: ScoringConfig, header: bytes,
                  batch_size: int) -> tuple[CpuStage, pa.Table]:
    """Time the CPU stage on `table` (input column names). Returns the timing and the stage's output:
    query_id, query, doc_id, document, pair_fingerprint and the token columns, one row per tokenized pair."""
    batches = [table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)]
    with tempfile.TemporaryDirectory(prefix="ettin-plan-") as rejects, _one_thread_tokenizer():
        step = Tokenize(scoring, RejectsDir(rejects, pafs.LocalFileSystem()), keep_text=True)
        step(canonical(table.slice(0, 1), rename=plan.rename, header=header))  # loads the tokenizer, untimed
        start = time.process_time()
        named = [canonical(b, rename=plan.rename, header=header) for b in batches]
        middle = time.process_time()
        out = [step(b) for b in named]
        end = time.process_time()
    result = pa.concat_tables(out) if out else pa.table({})
    stage = CpuStage(table.num_rows, result.num_rows, middle - start, end - middle, f"cpu: {cpu_name()}, 1 thread")
    return stage, result


MIN_MEASURE_S, MAX_PASSES = 2.0, 50  # the model is timed over whole passes of the sample, at least this long


@dataclass
class ModelRun:
    """The model on the sample's tokenized pairs."""

    pairs: int
    tokens: int
    seconds: float  # wall, warm-up excluded
    load_s: float  # loading the model (sentence-transformers' loader, then to the device)
    info: dict  # Reranker.info: device, dtype, attention, max_tokens_per_batch, ...
    device: str  # words: "cuda: NVIDIA H200" or "cpu: AMD EPYC, 2 threads"

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / max(self.seconds, 1e-9)

    def as_dict(self) -> dict:
        info = self.info
        return {"pairs_per_s": round(self.pairs_per_s, 1), "device": self.device, "dtype": info["dtype"],
                "attention": info["attention"], "max_tokens_per_batch": info["max_tokens_per_batch"],
                "pairs": self.pairs, "tokens": self.tokens, "seconds": round(self.seconds, 3),
                "load_s": round(self.load_s, 2)}


def load_engine(scoring: ScoringConfig, device: str, faults=None):
    """The engine as a scoring actor builds it, on `device`; returns it and the seconds the model load took
    (the imports before it, ~4 s, are in forecast.ACTOR_START_S, with the rest of an actor's start)."""
    import sentence_transformers  # noqa: F401 - imported before the clock: see the docstring

    from ettin_batch.engine import Reranker

    start = time.perf_counter()
    engine = Reranker.from_config(scoring, device=device)
    engine.faults = faults
    return engine, time.perf_counter() - start


def measure_model(engine, pairs: TokenizedPairs, batch_size: int, load_s: float,
                  threads: int | None = None) -> tuple[ModelRun, np.ndarray]:
    """Score `pairs` in chunks of `batch_size` (one scoring-actor call each), on a CPU with `threads`
    threads as the job's CPU actor has (pipeline.run.plan_resources); returns the timing and the scores
    (float32 [n], input order)."""
    import torch

    saved = torch.get_num_threads()
    if engine.device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        engine.score_tokens(pairs.take(np.arange(min(64, len(pairs)))))  # first-call setup, as an actor pays once
        keys = pairs.content_keys()  # the job's actors get these free (its pair fingerprints): not timed
        scores = np.empty(len(pairs), np.float32)
        passes, start = 0, time.perf_counter()
        # A GPU scores a 2,000-pair sample in tens of milliseconds: repeat the passes for a steadier figure.
        while passes == 0 or (time.perf_counter() - start < MIN_MEASURE_S and passes < MAX_PASSES):
            for i in range(0, len(pairs), batch_size):
                index = np.arange(i, min(i + batch_size, len(pairs)))
                scores[index] = engine.score_tokens(pairs.take(index), keys[index])
            passes += 1
        seconds = (time.perf_counter() - start) / passes
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(saved)
    run = ModelRun(len(pairs), int(pairs.offsets[-1]), seconds, load_s, engine.info,
                   device_words(engine.device, used))
    return run, scores


def tokenized_pairs(stage_output: pa.Table) -> TokenizedPairs:
    """The token columns of the CPU stage's output, as the scoring actor reads them."""
    if IDS_COL not in stage_output.column_names:
        return TokenizedPairs(np.zeros(0, np.int32), np.zeros(1, np.int64), None, np.zeros(0, bool))
    return TokenizedPairs.from_arrow(stage_output)


def device_words(device, threads: int) -> str:
    """'cuda: NVIDIA H200' or 'cpu: AMD EPYC, 2 threads'."""
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_name()}, {threads} thread{'s' if threads != 1 else ''}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """This machine, for the plan's record: a busy machine measures low."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None,)
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_1m": load[0],
            "python": platform.python_version()}
