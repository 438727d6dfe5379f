"""Find the input Parquet files and check them before any work starts.

Only footers are read (schema and row count), in parallel threads, so checking
thousands of shards on object storage costs one small read each. A file that is not
Parquet, or lacks a column, fails here with its name.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ettin_batch import storage
from ettin_batch.config import COLUMN_FLAGS, Columns, RerankConfig
from ettin_batch.pipeline.reuse import FINGERPRINT_COL

# The canonical names every later stage (and every output) uses.
CANONICAL = ("query_id", "query", "doc_id", "document")


class InputError(ValueError):
    """The input cannot be used as given; the message names the file or column and the fix."""


@dataclass
class InputPlan:
    """What the read stage needs: the files, the columns to project, and the row count."""

    location: storage.Location
    files: list[str]
    read_columns: list[str]  # input names: the four roles, then pass-through columns
    passthrough: list[str]
    rename: dict[str, str]  # input name -> canonical name
    num_rows: int
    file_rows: list[int]  # rows in each of `files`
    schema: pa.Schema  # of the projected columns, input names


def _footer(loc: storage.Location, path: str) -> tuple[pa.Schema, int]:
    try:
        meta = pq.read_metadata(path, filesystem=loc.pa_fs)
        return meta.schema.to_arrow_schema(), meta.num_rows
    except Exception as e:  # noqa: BLE001 - every failure here means the same thing to the user
        raise InputError(f"cannot read Parquet file {loc.url(path)}: {type(e).__name__}: {e}. "
                         "Fix or remove that file and rerun.") from None


def missing_columns_message(missing: list[str], found: list[str], columns: Columns, where: str) -> str:
    roles = {getattr(columns, role): role for role in COLUMN_FLAGS}
    hints = ", ".join(f"{COLUMN_FLAGS[roles[name]]} NAME" for name in missing)
    return (f"{where} lacks required column(s) {missing}; columns found: {found}. "
            f"Remap them with {hints} (or `columns:` in the config file).")


def inspect_inputs(config: RerankConfig) -> InputPlan:
    """List and check the inputs of `config` (already validated). Raises InputError or FileNotFoundError."""
    loc, files = storage.list_parquet(config.input, s3_max_attempts=config.s3_max_attempts)
    with ThreadPoolExecutor(max_workers=min(32, len(files))) as pool:
        footers = list(pool.map(lambda p: _footer(loc, p), files))

    columns = config.columns
    required = columns.required()
    first_schema = footers[0][0]
    if config.passthrough is None:
        passthrough = [n for n in first_schema.names if n not in required]
    else:
        passthrough = list(config.passthrough)
    # Outputs use canonical names, so an extra column called e.g. `query_id` next to a remapped id would collide.
    reserved = {"score", "rank", "reason", FINGERPRINT_COL} | (set(CANONICAL) - set(required))
    clash = sorted(set(passthrough) & reserved)
    if clash:
        raise InputError(f"pass-through column(s) {clash} would collide with an output column; "
                         "rename them in the input or list the ones to keep with --passthrough")
    wanted = required + passthrough
    for path, (schema, _) in zip(files, footers):
        missing = [n for n in wanted if n not in schema.names]
        if missing:
            if set(missing) & set(required):
                raise InputError(missing_columns_message([m for m in missing if m in required], schema.names,
                                                         columns, f"input file {loc.url(path)}"))
            raise InputError(f"input file {loc.url(path)} lacks pass-through column(s) {missing} that "
                             f"{loc.url(files[0])} has; columns found: {schema.names}. "
                             "Pass --passthrough with the columns every file has.")
        for name in wanted:
            if schema.field(name).type != first_schema.field(name).type:
                raise InputError(f"column {name!r} is {schema.field(name).type} in {loc.url(path)} but "
                                 f"{first_schema.field(name).type} in {loc.url(files[0])}; all shards need one type")
    for role, name in zip(("query", "document"), (columns.query, columns.document)):
        t = first_schema.field(name).type
        # An all-null column is typed null; its rows are rejected, so it is no reason to stop.
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
            raise InputError(f"{role} column {name!r} is {t}, not a string")
    return InputPlan(
        location=loc,
        files=files,
        read_columns=wanted,
        passthrough=passthrough,
        rename=dict(zip(required, CANONICAL)),
        num_rows=sum(n for _, n in footers),
        file_rows=[n for _, n in footers],
        schema=pa.schema([first_schema.field(n) for n in wanted]),
    )
