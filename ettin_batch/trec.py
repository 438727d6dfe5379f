"""TREC conventions shared by `eval` and `labels`: file formats and trec_eval's ranking order.

Everything here is Arrow in, Arrow out. Ids are normalised to strings, because
TREC files carry them as text and pytrec_eval keys on `str`; an int64 query_id
of 7 becomes "7".

trec_eval ignores the rank column of a run: it orders each query's documents by
score, descending, and breaks ties by doc_id, descending, in byte order
(`strcmp`). `trec_order` reproduces that order so that a cut at k (mrr@10) or a
top-N label agrees with what pytrec_eval itself would see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds


class TrecInputError(ValueError):
    """A run or qrels input that cannot be read without guessing; the message names the file and line or column."""


def url_to_fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Resolve a local path or URL (s3://, gs://, file://) to an fsspec filesystem and a path on it.

    s3fs honours AWS_ENDPOINT_URL (pyarrow's own S3FileSystem does not), so this is
    the door for object storage.
    """
    fs, fs_path = fsspec.core.url_to_fs(path)
    return fs, fs_path


def is_parquet(path: str) -> bool:
    """True for a Parquet file or a folder (of Parquet files); False for a text file."""
    fs, p = url_to_fs(path)
    if fs.isdir(p):
        return True
    return p.endswith((".parquet", ".pq"))


def parquet_dataset(path: str) -> ds.Dataset:
    """A pyarrow dataset over a Parquet file or folder on any fsspec filesystem."""
    fs, p = url_to_fs(path)
    if not fs.exists(p):
        raise TrecInputError(f"{path}: no such file or folder")
    return ds.dataset(p, format="parquet", filesystem=fs)


def read_parquet_columns(path: str, columns: list[str], what: str) -> pa.Table:
    """Read only `columns` from a Parquet file or folder; a missing column is an error that lists what is there."""
    dataset = parquet_dataset(path)
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise TrecInputError(
            f"{path}: {what} needs column(s) {missing}; found {dataset.schema.names}"
        )
    return dataset.to_table(columns=columns)


def ids_as_strings(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Cast an id column (string, large_string or integer) to string, as TREC files spell ids."""
    return pc.cast(col, pa.string())


def _read_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of every line of a TREC text file, ended where trec_eval ends one: at a newline only.

    Bytes, not text: trec_eval splits fields with C's isspace (space, tab, newline, vertical
    tab, form feed, carriage return), and `bytes.split()` splits on exactly that set, while
    `str.split()` also splits on Unicode spaces (no-break space, the ASCII separators 0x1c-0x1f,
    ...) and would turn one id into two.
    """
    fs, p = url_to_fs(path)
    if not fs.exists(p):
        raise TrecInputError(f"{path}: no such file")
    with fs.open(p, "rb") as f:
        data = f.read()
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
                raise TrecInputError(f"{path}:{lineno}: not UTF-8 text: {value[:40]!r}") from None
        raise


def _shown(fields: list[bytes]) -> str:
    return b" ".join(fields).decode("utf-8", "replace")


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
            raise TrecInputError(
                f"{path}:{lineno}: a qrels line has 4 fields (query_id iteration doc_id relevance), "
                f"got {len(fields)}: {_shown(fields)!r}"
            )
        try:
            rel = int(fields[3])
        except ValueError:
            raise TrecInputError(
                f"{path}:{lineno}: relevance must be an integer grade, got {_shown(fields[3:])!r}"
            ) from None
        qids.append(fields[0])
        docs.append(fields[2])
        rels.append(rel)
    return pa.table(
        {
            "query_id": _strings(qids, path, _qrels_lines),
            "doc_id": _strings(docs, path, _qrels_lines),
            "relevance": pa.array(rels, pa.int64()),
        }
    )


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
            raise TrecInputError(
                f"{path}:{lineno}: a run line has at least 6 fields (query_id Q0 doc_id rank score tag), "
                f"got {len(fields)}: {_shown(fields)!r}"
            )
        try:
            score = float(fields[4])
        except ValueError:
            raise TrecInputError(f"{path}:{lineno}: score must be a number, got {_shown(fields[4:5])!r}") from None
        qids.append(fields[0])
        docs.append(fields[2])
        scores.append(score)
    return pa.table(
        {
            "query_id": _strings(qids, path, run_lines),
            "doc_id": _strings(docs, path, run_lines),
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
            raise TrecInputError(f"{ids.null_count} {name}(s) are null, which TREC qrels cannot hold")
        bad = pc.sum(pc.match_substring_regex(ids, r"^$|\s")).as_py() or 0
        if bad:
            raise TrecInputError(f"{bad} {name}(s) are empty or contain whitespace, which TREC qrels cannot hold")
    grades = pc.cast(relevance, pa.string())
    if grades.null_count:
        raise TrecInputError(f"{grades.null_count} relevance grade(s) are null, which TREC qrels cannot hold")
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


def trec_order(table: pa.Table, score_col: str = "score") -> tuple[pa.Table, np.ndarray]:
    """Sort rows the way trec_eval ranks them and give each row its 0-based rank within its query.

    Order: query_id ascending (only to group), score descending, doc_id descending
    in byte order, which is trec_eval's tie-break. query_id and doc_id must be
    strings (see `ids_as_strings`); Arrow compares strings by bytes, like strcmp.
    Returns the sorted table and an int64 array of ranks (0 = best).
    """
    order = pc.sort_indices(
        table,
        sort_keys=[("query_id", "ascending"), (score_col, "descending"), ("doc_id", "descending")],
    )
    table = table.take(order)
    return table, ranks_within_groups(table["query_id"])


def group_starts(qids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Start offsets of runs of equal values in a sorted id column, plus the total length at the end."""
    n = len(qids)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    if isinstance(qids, pa.ChunkedArray):
        qids = qids.combine_chunks()
    changed = pc.not_equal(qids.slice(1), qids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.flatnonzero(changed) + 1, [n]]).astype(np.int64)


def ranks_within_groups(qids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """0-based position of each row within its run of equal ids (the column must be sorted by id)."""
    starts = group_starts(qids)
    sizes = np.diff(starts)
    return np.arange(len(qids), dtype=np.int64) - np.repeat(starts[:-1], sizes)
