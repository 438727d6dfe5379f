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
from ettin_batch.config import COLUMN_FLAGS, Columns, JobConfig
from ettin_batch.errors import InputError
from ettin_batch.pipeline.reuse import FINGERPRINT_COL

# The canonical names every later stage (and every output) uses.
CANONICAL = ("query_id", "query", "doc_id", "document")


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


def inspect_inputs(config: JobConfig) -> InputPlan:
    """List and check the inputs of `config` (already validated). Raises InputError."""
    loc, files = storage.list_parquet(config.input, s3_max_attempts=config.s3_max_attempts)
    with ThreadPoolExecutor(max_workers=min(32, len(files))) as pool:
        footers = list(pool.map(lambda p: _footer(loc, p), files))
    required, first = config.columns.required(), footers[0][0]
    passthrough = _passthrough(config, first, loc.url(files[0]))
    wanted = required + passthrough
    for path, (schema, _) in zip(files, footers):
        missing = [n for n in wanted if n not in schema.names]
        if set(missing) & set(required):
            raise InputError(missing_columns_message([m for m in missing if m in required], schema.names,
                                                     config.columns, f"input file {loc.url(path)}"))
        if missing:
            raise InputError(f"input file {loc.url(path)} lacks pass-through column(s) {missing} that "
                             f"{loc.url(files[0])} has; columns found: {schema.names}. "
                             "Pass --passthrough with the columns every file has.")
        for name in wanted:
            if schema.field(name).type != first.field(name).type:
                raise InputError(f"column {name!r} is {schema.field(name).type} in {loc.url(path)} but "
                                 f"{first.field(name).type} in {loc.url(files[0])}; all shards need one type")
    _check_types(config.columns, first, loc.url(files[0]))
    return InputPlan(location=loc, files=files, read_columns=wanted, passthrough=passthrough,
                     rename=dict(zip(required, CANONICAL)), num_rows=sum(n for _, n in footers),
                     file_rows=[n for _, n in footers], schema=pa.schema([first.field(n) for n in wanted]))


def _passthrough(config: JobConfig, first: pa.Schema, where: str) -> list[str]:
    required = config.columns.required()
    if config.passthrough is None:
        passthrough = [n for n in first.names if n not in required]
    else:
        passthrough = list(config.passthrough)
        absent = [n for n in passthrough if n not in first.names]
        if absent:
            raise InputError(f"--passthrough column(s) {absent} are not in {where}; columns found: {first.names}")
    # Outputs use canonical names, so an extra column called e.g. `query_id` next to a remapped id would collide.
    reserved = {*config.reserved_columns(), "rank", "reason", FINGERPRINT_COL} | (set(CANONICAL) - set(required))
    clash = sorted(set(passthrough) & reserved)
    if clash:
        raise InputError(f"pass-through column(s) {clash} would collide with an output column; "
                         "rename them in the input or list the ones to keep with --passthrough")
    return passthrough


def _check_types(columns: Columns, schema: pa.Schema, where: str) -> None:
    """Ids must be strings or integers (floats lose ids, lists cannot be ranked); texts must be strings.
    An all-null column is typed null: its rows are rejected one by one, so it is no reason to stop."""
    for role in ("query_id", "doc_id", "query", "document"):
        name = getattr(columns, role)
        t = schema.field(name).type
        ok = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)
        if role.endswith("_id"):
            ok = ok or pa.types.is_integer(t)
        if not ok:
            wanted = "a string or integer column" if role.endswith("_id") else "a string column"
            raise InputError(f"{role} column {name!r} in {where} is {t}; it must be {wanted}. Cast it in the input "
                             f"or remap another column with {COLUMN_FLAGS[role]} NAME.")
