"""rejects/: the rows a stage could not score, each with its `reason`, readable by any Parquet tool.

A stage writes the rows it sets aside as one Parquet file named after their ids, so a retried task
overwrites its own file and never duplicates a reject; rows that carry their resume group (groups.GROUP_COL)
go to that group's folder. Text that is not valid UTF-8 (a writer
that skipped validation) would make the whole folder unreadable for pyarrow, pandas and polars;
such values are written with their bad bytes replaced by U+FFFD, and the reason says so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ettin_batch.pipeline.groups import GROUP_COL, split_by_group

REASON = "reason"
# Columns that only travel between stages: never part of a reject.
_INTERNAL = ("pair_fingerprint", "score")


@dataclass(frozen=True)
class RejectsDir:
    """Where a stage sets aside the rows it cannot score; pickles to Ray workers with its filesystem."""

    path: str
    filesystem: pafs.FileSystem
    groups: tuple[str, ...] = ()  # the run's resume groups, by GROUP_COL index: rows go to path/<group>/

    def write(self, rows: pa.Table, reasons: list[str]) -> None:
        """`rows` (canonical names) with their `reason`, as one file named after their ids."""
        if rows.num_rows == 0:
            return
        if GROUP_COL in rows.column_names:
            for i, part in split_by_group(rows.append_column(REASON, pa.array(reasons, pa.string()))):
                folder = RejectsDir(f"{self.path}/{self.groups[i]}", self.filesystem)
                folder.write(part.drop_columns([REASON]), part.column(REASON).to_pylist())
            return
        rows = rows.drop_columns([c for c in _INTERNAL if c in rows.column_names])
        rows, reasons = readable(rows, reasons)
        rows = rows.append_column(REASON, pa.array(reasons, pa.string()))
        digest = hashlib.sha1()
        for name in ("query_id", "doc_id"):
            digest.update(repr(rows.column(name).to_pylist()).encode())
        self.filesystem.create_dir(self.path, recursive=True)
        pq.write_table(rows, f"{self.path}/rejects-{digest.hexdigest()[:20]}.parquet", filesystem=self.filesystem)


def readable(rows: pa.Table, reasons: list[str]) -> tuple[pa.Table, list[str]]:
    """String columns with invalid UTF-8 re-encoded (bad bytes -> U+FFFD), and the reasons of those rows
    saying which column was changed."""
    reasons = list(reasons)
    for i, f in enumerate(rows.schema):
        if not (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)):
            continue
        try:
            rows.column(i).validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        raw = rows.column(i).cast(pa.large_binary() if pa.types.is_large_string(f.type) else pa.binary()).to_pylist()
        fixed = []
        for row, value in enumerate(raw):
            text = None if value is None else value.decode("utf-8", errors="replace")
            if value is not None and text.encode() != value:
                reasons[row] += f"; {f.name} shown with its invalid bytes replaced by U+FFFD"
            fixed.append(text)
        rows = rows.set_column(i, f, pa.array(fixed, f.type))
    return rows, reasons
