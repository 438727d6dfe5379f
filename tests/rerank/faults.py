"""Helpers shared by the fault-injection tests: input shards, exactly-once accounting."""

from __future__ import annotations

import contextlib
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = "river water music film school data model search query document rank score index night".split()


def make_shards(files: int, pairs_per_file: int, seed: int = 0) -> list[pa.Table]:
    """`files` shards of (query_id, query, doc_id, document, position); 10 candidates per query."""
    rng = np.random.default_rng(seed)
    tables = []
    for f in range(files):
        rows = []
        for i in range(pairs_per_file):
            q = f"q{f}-{i // 10}"
            rows.append({"query_id": q, "query": f"what about {' '.join(rng.choice(WORDS, 4))} {q}",
                         "doc_id": f"d{i % 10}", "document": " ".join(rng.choice(WORDS, rng.integers(20, 80))),
                         "position": i})
        tables.append(pa.Table.from_pylist(rows))
    return tables


def write_local(shards: list[pa.Table], folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, table in enumerate(shards):
        pq.write_table(table, folder / f"part-{i:03d}.parquet")


def accounting(inputs: pa.Table, scores: pa.Table, rejects: pa.Table | None = None) -> dict:
    """Pairs in, pairs out (scored + rejected), duplicates and lost, by (query_id, doc_id)."""
    keys_in = Counter(zip(inputs["query_id"].to_pylist(), inputs["doc_id"].to_pylist()))
    out = Counter(zip(scores["query_id"].to_pylist(), scores["doc_id"].to_pylist()))
    if rejects is not None and rejects.num_rows:
        out.update(zip(rejects["query_id"].to_pylist(), rejects["doc_id"].to_pylist()))
    return {"in": sum(keys_in.values()), "out": sum(out.values()),
            "duplicates": sum(n - 1 for n in out.values() if n > 1),
            "lost": sum(1 for k in keys_in if k not in out),
            "unknown": sum(1 for k in out if k not in keys_in)}


def record(test: str, figures: dict) -> None:
    """Append a test's reliability figures to $ETTIN_FAULT_REPORT (JSON lines) when it is set."""
    import json
    import os

    path = os.environ.get("ETTIN_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": test, **figures}) + "\n")


def invalid_utf8_strings(values: list[bytes]) -> pa.Array:
    """A string column holding these raw bytes unchecked, as a writer that skips UTF-8
    validation leaves it (Parquet stores strings as bytes; readers decode them later)."""
    offsets = np.cumsum([0] + [len(v) for v in values]).astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(values),
                                 [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(values))])


@contextlib.contextmanager
def injected(hooks):
    """Scoring actors of the jobs run inside this block get these engine fault hooks
    (ettin_batch.engine.faults.FaultHooks), through the Ray Data context Ray Data hands them."""
    from ray.data import DataContext

    from ettin_batch.pipeline.score import FAULTS_KEY

    context = DataContext.get_current()
    context.set_config(FAULTS_KEY, hooks)
    try:
        yield hooks
    finally:
        context.remove_config(FAULTS_KEY)
