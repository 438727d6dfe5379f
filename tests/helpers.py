"""Small helpers any test may import (`from helpers import ...`): a free port, the tiny model's name,
Parquet in and out of a filesystem. Fixtures live in the conftest files, not here."""

from __future__ import annotations

import socket

import pyarrow as pa
import pyarrow.parquet as pq

TINY = "random:ettin-tiny"


def free_port() -> int:
    """A loopback TCP port nothing listens on now (the OS picks it; free until someone binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upload_parquet(fs, table: pa.Table, path: str) -> None:
    """Write `table` as one Parquet file at `path` on `fs` (an fsspec filesystem, e.g. the `s3` fixture)."""
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)


def read_parquet_folder(fs, path: str) -> pa.Table:
    """Every Parquet file under `path`, concatenated (an empty table if there are none)."""
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    tables = []
    for p in files:
        with fs.open(p, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
