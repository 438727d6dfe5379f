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
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ettin_batch import storage
from ettin_batch.errors import InputError
from ettin_batch.run_folder import SCORES, RunFolder


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


def _read_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of every line of a TREC text file, ended where trec_eval ends one: at a newline only.

    Bytes, not text: trec_eval splits fields with C's isspace (space, tab, newline, vertical
    tab, form feed, carriage return), and `bytes.split()` splits on exactly that set, while
    `str.split()` also splits on Unicode spaces (no-break space, the ASCII separators 0x1c-0x1f,
    ...) and would turn one id into two. A binary file is an InputError naming it.
    """
    loc = storage.resolve(path)
    if not loc.fs.exists(loc.path):
        raise InputError(f"{path}: no such file")
    with loc.fs.open(loc.path, "rb") as f:
        data = f.read()
    what = _binary_kind(data)
    if what:
        raise InputError(f"{path} is not a TREC run or qrels file (plain text, one record per line): it is {what}")
    yield from enumerate(data.split(b"\n"), start=1)


def run_lines(path: str) -> Iterator[tuple[int, list[bytes]]]:
    """(line number, fields) of each line of a TREC run that trec_eval reads as a result.

    trec_eval (get_trec_results.c) skips blank lines and, since version 10, comment lines:
    lines whose first non-blank character is '#'. `read_trec_run` reads exactly these
    lines; an error that maps a row back to its line counts them the same way.
    """
    for lineno, line in _read_lines(path):
        fields = line.split()
        if fields and fields[0][:1] != b"#":
            yield lineno, fields


def _qrels_lines(path: str) -> Iterator[tuple[int, list[bytes]]]:
    """(line number, fields) of each judgment line of a TREC qrels file.

    trec_eval (get_qrels.c, version 10) takes a line that starts with '#' as a comment: at
    its very first character only, unlike in a run. It refuses blank lines; we skip them.
    """
    for lineno, line in _read_lines(path):
        fields = line.split()
        if fields and line[:1] != b"#":
            yield lineno, fields


def _strings(values: list[bytes], path: str, lines: Callable[[str], Iterator]) -> pa.Array:
    """Id fields as one Arrow string array, decoded at once (UTF-8 checked by Arrow, not per field).

    Invalid UTF-8 is an error naming its line, found again by reading `lines` of the file.
    """
    try:
        return pa.array(values, pa.binary()).cast(pa.string())
    except pa.ArrowInvalid:
        for value, (lineno, _) in zip(values, lines(path)):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{path}:{lineno}: not UTF-8 text: {value[:40]!r}") from None
        raise


def _shown(fields: list[bytes]) -> str:
    return b" ".join(fields).decode("utf-8", "replace")


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
    Exactly 4 fields, as trec_eval requires (it refuses a fifth as a malformed line);
    '#' comment lines are skipped (`_qrels_lines`).
    """
    qids, docs, rels = [], [], []
    for lineno, fields in _qrels_lines(path):
        if len(fields) != 4:
            raise InputError(f"{path}:{lineno}: a qrels line has 4 fields (query_id iteration doc_id relevance), "
                             f"got {len(fields)}: {_shown(fields)!r}")
        try:
            rel = int(fields[3])
        except ValueError:
            raise InputError(f"{path}:{lineno}: relevance must be an integer grade, got {_shown(fields[3:])!r}") from None
        qids.append(fields[0])
        docs.append(fields[2])
        rels.append(rel)
    return pa.table({"query_id": _strings(qids, path, _qrels_lines), "doc_id": _strings(docs, path, _qrels_lines),
                     "relevance": pa.array(rels, pa.int64())})


def read_trec_run(path: str) -> pa.Table:
    """Read a TREC run file (`query_id Q0 doc_id rank score tag`).

    Returns query_id, doc_id (strings) and score (float64); the rank field is
    dropped, because trec_eval orders by score and ignores it. Read as trec_eval reads
    it (get_trec_results.c): at least 6 fields and anything after the tag ignored (its own
    test run `results.trunc` has such lines); blank and '#' comment lines skipped
    (`run_lines`). A line with fewer fields or a score that is not a number is an
    error naming the line.
    """
    qids, docs, scores = [], [], []
    for lineno, fields in run_lines(path):
        if len(fields) < 6:
            raise InputError(f"{path}:{lineno}: a run line has at least 6 fields (query_id Q0 doc_id rank score tag), "
                             f"got {len(fields)}: {_shown(fields)!r}")
        try:
            score = float(fields[4])
        except ValueError:
            raise InputError(f"{path}:{lineno}: score must be a number, got {_shown(fields[4:5])!r}") from None
        qids.append(fields[0])
        docs.append(fields[2])
        scores.append(score)
    return pa.table({"query_id": _strings(qids, path, run_lines), "doc_id": _strings(docs, path, run_lines),
                     "score": pa.array(scores, pa.float64())})


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
        end = start + step
        lines = pc.binary_join_element_wise(qids[start:end], "0", docs[start:end], grades[start:end], " ")
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
