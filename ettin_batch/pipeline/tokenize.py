"""The CPU stage: rename columns, set aside rows that cannot be scored, tokenize the rest.

Runs as plain Ray tasks on Arrow batches. Text stops here: the batch that goes on to the
scoring actors carries ids, pass-through columns and token ids, never the texts.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ettin_batch.pipeline.reuse import FINGERPRINT_COL, add_fingerprints, reused_mask


REJECT_REASON_COL = "reason"
# Checked in this order; a row with several problems lists them all, joined by "; ".
_NULL_CHECKS = ("query_id", "doc_id", "query", "document")


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str, revision: str | None, max_length: int):
    # Ray reuses worker processes across tasks, so each worker loads the tokenizer once.
    from ettin_batch.engine import resolve_model
    from ettin_batch.engine.tokenize import PairTokenizer

    return PairTokenizer.from_pretrained(resolve_model(model, revision=revision).path, max_length)


def reject_reasons(batch: pa.Table) -> tuple[np.ndarray, list[str]]:
    """Which rows cannot be scored (bool [n]) and, for those rows only, why."""
    nulls = {name: pc.is_null(batch.column(name)).to_numpy(zero_copy_only=False) for name in _NULL_CHECKS}
    bad = np.logical_or.reduce(list(nulls.values()))
    reasons = ["; ".join(f"null {name}" for name in _NULL_CHECKS if nulls[name][i]) for i in np.flatnonzero(bad)]
    return bad, reasons


def _write_rejects(rejects: pa.Table, rejects_dir: str, filesystem: pafs.FileSystem) -> None:
    # A retried task writes the same rows to the same name, so a retry never duplicates rejects.
    digest = hashlib.sha1()
    for name in ("query_id", "doc_id"):
        digest.update(repr(rejects.column(name).to_pylist()).encode())
    filesystem.create_dir(rejects_dir, recursive=True)
    pq.write_table(rejects, f"{rejects_dir}/rejects-{digest.hexdigest()[:20]}.parquet", filesystem=filesystem)


def _with_reasons(rows: pa.Table, reasons: list[str]) -> pa.Table:
    # Rejects hold the input row (canonical names) and why, whatever stage the batch was at.
    rows = rows.drop_columns([c for c in (FINGERPRINT_COL, "score") if c in rows.column_names])
    return rows.append_column(REJECT_REASON_COL, pa.array(reasons, pa.string()))


@dataclass(frozen=True)
class RejectsDir:
    """Where a stage sets aside the rows it cannot score; pickles to Ray workers with its filesystem."""

    path: str
    filesystem: pafs.FileSystem
    # (name in the batch, name in rejects/): columns a stage carries under private names,
    # such as the teacher job's texts, get their input names back.
    restore: tuple[tuple[str, str], ...] = ()

    def write(self, rows: pa.Table, reasons: list[str]) -> None:
        """`rows` (canonical names) with their `reason`, as one Parquet file named after its rows
        (see _write_rejects): a retried batch overwrites it."""
        names = dict(self.restore)
        rows = rows.rename_columns([names.get(n, n) for n in rows.column_names])
        _write_rejects(_with_reasons(rows, reasons), self.path, self.filesystem)


def _row_problem(batch: pa.Table, i: int, tokenizer) -> str | None:
    """Why row `i` cannot be tokenized on its own, or None if it can."""
    texts = []
    for name in ("query", "document"):
        try:
            texts.append(batch.column(name)[i].as_py())
        except UnicodeDecodeError as e:
            return f"{name} is not valid UTF-8 ({e.reason} at byte {e.start})"
    try:
        tokenizer([texts[0]], [texts[1]])
    except Exception as e:  # noqa: BLE001 - whatever the tokenizer raises is this row's reason
        return f"tokenization failed: {type(e).__name__}: {e}"[:500]
    return None


def _tokenize(batch: pa.Table, tokenizer):
    queries = batch.column("query").to_pylist()
    documents = batch.column("document").to_pylist()
    return tokenizer(queries, documents)


def tokenize_batch(batch: pa.Table, *, model: str, revision: str | None, max_length: int,
                   rename: dict[str, str], rejects_dir: str, filesystem: pafs.FileSystem,
                   fingerprint_header: bytes | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """One Ray batch in (input column names), tokenized pairs out (canonical names, no texts).

    Rows with a null id or text, and rows the tokenizer cannot take (a text that is not valid
    UTF-8, or anything else it raises on), are written to `rejects_dir` with a `reason` column
    and dropped; the rest of the batch goes on. The batch is tokenized in one call; only when
    that raises is it retried row by row, to find the rows at fault.

    With `fingerprint_header`, each pair gets its fingerprint (see reuse.py). In a `--reuse` run the batch arrives from the
    join, already renamed, fingerprinted and with a `score` column: rows that have a score keep
    it and skip the tokenizer (their token columns are null); `schema` restores the column types
    the join changed (e.g. string -> large_string), so the output equals a full run's.
    """
    batch = batch.rename_columns([rename.get(n, n) for n in batch.column_names])
    if schema is not None:
        batch = batch.cast(pa.schema([schema.field(n) if n in schema.names else batch.schema.field(n)
                                      for n in batch.column_names]))
    bad, reasons = reject_reasons(batch)
    rejected = [_with_reasons(batch.filter(pa.array(bad)), reasons)]
    batch = batch.filter(pa.array(~bad))
    if fingerprint_header is not None and FINGERPRINT_COL not in batch.column_names:
        batch = add_fingerprints(batch, header=fingerprint_header)
    reused = reused_mask(batch)
    kept = None
    if reused is not None:
        kept, batch = batch.filter(reused), batch.filter(pc.invert(reused))
    tokenizer = _tokenizer(model, revision, max_length)
    try:
        pairs = _tokenize(batch, tokenizer)
    except Exception:  # noqa: BLE001 - find the rows at fault; the others are scored
        problems = [_row_problem(batch, i, tokenizer) for i in range(batch.num_rows)]
        poisoned = np.array([p is not None for p in problems], bool)
        rejected.append(_with_reasons(batch.filter(pa.array(poisoned)), [p for p in problems if p is not None]))
        batch = batch.filter(pa.array(~poisoned))
        pairs = _tokenize(batch, tokenizer)
    rejects = pa.concat_tables(rejected)
    if rejects.num_rows:
        _write_rejects(rejects, rejects_dir, filesystem)
    out = batch.drop_columns(["query", "document"])
    for name, column in pairs.to_arrow().items():
        out = out.append_column(name, column)
    if kept is not None and kept.num_rows:
        kept = kept.drop_columns(["query", "document"])
        for field in out.schema.names[kept.num_columns:]:
            kept = kept.append_column(out.schema.field(field), pa.nulls(kept.num_rows, out.schema.field(field).type))
        out = pa.concat_tables([out, kept])
    return out
