"""TREC conventions shared by `eval`, `labels` and `beir`: the file formats, and reading them.

Everything here is Arrow in, Arrow out. Ids are normalised to strings, because
TREC files carry them as text and pytrec_eval keys on `str`; an int64 query_id
of 7 becomes "7". Ranking in trec_eval's order is ettin_batch.ranking's job.

Files are found through ettin_batch.storage, like every other input (s3:// with its
endpoint and retry policy). A file that cannot be read as what it claims to be (a
binary file given as TREC text, a Parquet file cut short) is an InputError naming it.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ettin_batch import storage
from ettin_batch.errors import InputError
from ettin_batch.run_folder import SCORES, RunFolder

# read_trec_qrels and read_trec_run raise this name; it is InputError (issue 13 item 10 is changing them).
TrecInputError = InputError


def is_parquet(path: str, *, s3_max_attempts: int | None = None) -> bool:
    """True for a Parquet file or a folder (of Parquet files); False for a text file."""
    loc = storage.resolve(path, s3_max_attempts=s3_max_attempts)
    if loc.fs.isdir(loc.path):
        return True
    return loc.path.endswith((".parquet", ".pq"))


@contextlib.contextmanager
def reading_parquet(path: str):
    """Arrow's error for a file that is not Parquet, or is cut short, as an InputError naming `path`."""
    try:
        yield
    except pa.ArrowInvalid as e:
        raise InputError(f"{path}: cannot be read as Parquet ({e}). Check that it is a Parquet file (or a folder "
                         "of them) and that it was written completely.") from None


def parquet_dataset(path: str, *, s3_max_attempts: int | None = None) -> ds.Dataset:
    """A pyarrow dataset over a Parquet file or folder, local or on any filesystem storage resolves."""
    loc = storage.resolve(path, s3_max_attempts=s3_max_attempts)
    if not loc.fs.exists(loc.path):
        raise InputError(f"{path}: no such file or folder")
    with reading_parquet(path):
        return ds.dataset(loc.path, format="parquet", filesystem=loc.pa_fs)


def read_parquet_columns(path: str, columns: list[str], what: str, *, s3_max_attempts: int | None = None) -> pa.Table:
    """Read only `columns` from a Parquet file or folder; a missing column is an error that lists what is there."""
    dataset = parquet_dataset(path, s3_max_attempts=s3_max_attempts)
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise InputError(f"{path}: {what} needs column(s) {missing}; found {dataset.schema.names}")
    with reading_parquet(path):
        return dataset.to_table(columns=columns)


def run_parquet(path: str, flag: str, *, allow_unfinished: bool = False, s3_max_attempts: int | None = None) -> str:
    """The Parquet to read for `path`: a job output folder's scores/ (the full depth, not topk/), else `path`.

    A path that is, or lies in, an ettin-batch run without _SUCCESS.json holds part of its pairs at
    most: an InputError naming `flag`, or with `allow_unfinished` a loud warning. Parquet that belongs
    to no run is read as it is.
    """
    run, _ = RunFolder.containing(path, s3_max_attempts=s3_max_attempts)
    if run is not None:
        run.require_finished(flag, allow_unfinished)
    loc = storage.resolve(path, s3_max_attempts=s3_max_attempts)
    if loc.fs.isdir(loc.path) and loc.fs.isdir(loc.join(SCORES)):
        return f"{path.rstrip('/')}/{SCORES}"
    return path


def ids_as_strings(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Cast an id column (string, large_string or integer) to string, as TREC files spell ids."""
    return pc.cast(col, pa.string())


def _read_lines(path: str) -> list[str]:
    loc = storage.resolve(path)
    if not loc.fs.exists(loc.path):
        raise InputError(f"{path}: no such file")
    with loc.fs.open(loc.path, "rb") as f:
        return _text_lines(path, f.read())


def _text_lines(path: str, data: bytes) -> list[str]:
    """The lines of a TREC text file's bytes; a binary or non-UTF-8 file is an InputError naming it."""
    what = _binary_kind(data)
    if what:
        raise InputError(f"{path} is not a TREC run or qrels file (plain text, one record per line): it is {what}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte {e.start} is {data[e.start:e.start + 1]!r}); a TREC "
                         "run or qrels file is plain UTF-8 text, one record per line") from None
    return text.splitlines()


def _binary_kind(data: bytes) -> str | None:
    """What a file handed over where TREC text is expected is instead, judged by its bytes; None for text."""
    if data[:4] == b"PAR1" and data[-4:] == b"PAR1":
        return "a Parquet file: name it *.parquet (or pass its folder) to read it as Parquet"
    if data[:2] == b"\x1f\x8b":
        return "gzip-compressed: decompress it first (gunzip)"
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd-compressed: decompress it first (unzstd)"
    if b"\0" in data[:65536]:
        return "a binary file (it holds NUL bytes)"
    return None


def read_trec_qrels(path: str) -> pa.Table:
    """Read a TREC qrels file (`query_id iteration doc_id relevance`, whitespace separated).

    Returns query_id (string), doc_id (string), relevance (int64). A line with the
    wrong number of fields or a non-integer grade is an error naming the line.
    """
    qids, docs, rels = [], [], []
    for lineno, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4:
            raise TrecInputError(
                f"{path}:{lineno}: a qrels line has 4 fields (query_id iteration doc_id relevance), got {len(fields)}: {line!r}"
            )
        try:
            rel = int(fields[3])
        except ValueError:
            raise TrecInputError(
                f"{path}:{lineno}: relevance must be an integer grade, got {fields[3]!r}"
            ) from None
        qids.append(fields[0])
        docs.append(fields[2])
        rels.append(rel)
    return pa.table(
        {
            "query_id": pa.array(qids, pa.string()),
            "doc_id": pa.array(docs, pa.string()),
            "relevance": pa.array(rels, pa.int64()),
        }
    )


def read_trec_run(path: str) -> pa.Table:
    """Read a TREC run file (`query_id Q0 doc_id rank score tag`).

    Returns query_id, doc_id (strings) and score (float64); the rank field is
    dropped, because trec_eval orders by score and ignores it.
    """
    qids, docs, scores = [], [], []
    for lineno, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise TrecInputError(
                f"{path}:{lineno}: a run line has 6 fields (query_id Q0 doc_id rank score tag), got {len(fields)}: {line!r}"
            )
        try:
            score = float(fields[4])
        except ValueError:
            raise TrecInputError(f"{path}:{lineno}: score must be a number, got {fields[4]!r}") from None
        qids.append(fields[0])
        docs.append(fields[2])
        scores.append(score)
    return pa.table(
        {
            "query_id": pa.array(qids, pa.string()),
            "doc_id": pa.array(docs, pa.string()),
            "score": pa.array(scores, pa.float64()),
        }
    )


def write_qrels_lines(f, query_id, doc_id, relevance) -> None:
    """Append TREC qrels lines (`query_id 0 doc_id grade`) for three equal-length columns to an open text file.

    TREC files split on whitespace, so an id that is empty or holds whitespace
    cannot be written faithfully: that is an error, not a silently shifted column.
    """
    qids, docs = ids_as_strings(query_id), ids_as_strings(doc_id)
    for name, ids in (("query_id", qids), ("doc_id", docs)):
        if ids.null_count:
            raise InputError(f"{ids.null_count} {name}(s) are null, which TREC qrels cannot hold")
        bad = pc.sum(pc.match_substring_regex(ids, r"^$|\s")).as_py() or 0
        if bad:
            raise InputError(f"{bad} {name}(s) are empty or contain whitespace, which TREC qrels cannot hold")
    grades = pc.cast(relevance, pa.string())
    if grades.null_count:
        raise InputError(f"{grades.null_count} relevance grade(s) are null, which TREC qrels cannot hold")
    step = 1 << 20  # lines per write: one string of ~20-40 MB, not one call per line
    for start in range(0, len(qids), step):
        lines = pc.binary_join_element_wise(
            qids[start : start + step], "0", docs[start : start + step], grades[start : start + step], " "
        )
        f.write(_joined_text(pc.binary_join_element_wise(lines, "", "\n")))


def _joined_text(lines: pa.ChunkedArray | pa.Array) -> str:
    """All strings of a null-free string array back to back, read straight from its data buffer.

    Six times faster than joining Python strings (0.2 s against 1.2 s per million qrels
    lines), which matters when one process writes the qrels of a whole run.
    """
    chunks = lines.chunks if isinstance(lines, pa.ChunkedArray) else [lines]
    parts = []
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
        parts.append(chunk.buffers()[2][offsets[0] : offsets[-1]].to_pybytes().decode())
    return "".join(parts)
