"""Ranking within a query, the way trec_eval does it; one copy, used by top-k, labels, eval and BEIR.

trec_eval ignores a run's rank column: it orders each query's documents by score, descending, and
breaks ties by doc_id, descending, in byte order (`strcmp`); an integer id is compared as its
decimal text ("10" < "9"). `order` reproduces that, so a cut at k (topk/, mrr@10, a top-N label)
agrees with what pytrec_eval itself sees. The check that each (query_id, doc_id) pair is listed
once, which eval, labels and BEIR need, lives here too. Everything here is Arrow in, numpy or Arrow out.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ettin_batch.errors import InputError

_TIE = "_doc_id_text"  # doc_id as trec_eval compares it, only while sorting


def order(table: pa.Table, score_col: str = "score") -> pa.Array:
    """Row indices: query_id ascending (to group), `score_col` descending, doc_id descending as text."""
    doc_id = table.column("doc_id")
    if not (pa.types.is_string(doc_id.type) or pa.types.is_large_string(doc_id.type)):
        table = table.append_column(_TIE, pc.cast(doc_id, pa.string()))
    tie = _TIE if _TIE in table.column_names else "doc_id"
    return pc.sort_indices(table, sort_keys=[("query_id", "ascending"), (score_col, "descending"), (tie, "descending")])


def group_starts(qids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Start offsets of runs of equal values in a sorted id column, plus the total length at the end."""
    n = len(qids)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    if isinstance(qids, pa.ChunkedArray):
        qids = qids.combine_chunks()
    changed = pc.not_equal(qids.slice(1), qids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.flatnonzero(changed) + 1, [n]]).astype(np.int64)


def ranks(qids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """0-based position of each row within its run of equal ids (the column must be sorted by id)."""
    starts = group_starts(qids)
    return np.arange(len(qids), dtype=np.int64) - np.repeat(starts[:-1], np.diff(starts))


def ranked(table: pa.Table, score_col: str = "score") -> tuple[pa.Table, np.ndarray]:
    """`table` in trec_eval's order and each row's 0-based rank within its query."""
    table = table.take(order(table, score_col))
    return table, ranks(table.column("query_id"))


def repeated_pairs(table: pa.Table) -> tuple[int, tuple | None]:
    """How many rows repeat another row's (query_id, doc_id), and one such pair (None if none)."""
    extra, repeated = _repeats(table)
    if not extra:
        return 0, None
    return extra, (repeated.column("query_id")[0].as_py(), repeated.column("doc_id")[0].as_py())


def refuse_repeated_pairs(table: pa.Table, where: str, why: str) -> None:
    """Raise InputError if a (query_id, doc_id) pair is in `table` more than once: `where` names the
    input, `why` says why each pair must be there once. Every command that needs unique pairs checks here."""
    extra, repeated = _repeats(table)
    if extra:
        first = repeated.slice(0, 1).to_pylist()[0]
        raise InputError(f"{where}: {repeated.num_rows} (query_id, doc_id) pair(s) appear more than once (first: "
                         f"query {first['query_id']!r}, doc {first['doc_id']!r}, {first['count_all']} times); {why}")


def _repeats(table: pa.Table) -> tuple[int, pa.Table | None]:
    """Rows beyond the first of their (query_id, doc_id), and each repeated pair with its count_all."""
    if table.num_rows < 2:
        return 0, None
    counts = table.select(["query_id", "doc_id"]).group_by(["query_id", "doc_id"], use_threads=False).aggregate(
        [([], "count_all")])
    if counts.num_rows == table.num_rows:
        return 0, None
    return table.num_rows - counts.num_rows, counts.filter(pc.greater(counts.column("count_all"), 1))


def best_per_pair(table: pa.Table) -> pa.Table:
    """`table` (query_id, doc_id, score) with one row per (query_id, doc_id), at its highest score."""
    best = table.group_by(["query_id", "doc_id"], use_threads=False).aggregate([("score", "max")])
    return pa.table({"query_id": best.column("query_id"), "doc_id": best.column("doc_id"),
                     "score": best.column("score_max")}).cast(table.schema)


def top_k(table: pa.Table, k: int) -> tuple[pa.Table, np.ndarray]:
    """The k best distinct documents of each query of `table` (query_id, doc_id, score), sorted by
    query_id then rank, and their ranks (int32, 1 = best). A document listed twice ranks once, at its
    higher score."""
    rows, rank = _cut(table, k)
    # A document's first row in score order is its best: if no document repeats within the cut, the
    # cut is already the top-k of distinct documents. Only when one does is the whole table grouped.
    if repeated_pairs(rows)[0]:
        rows, rank = _cut(best_per_pair(table), k)
    return rows, rank


def _cut(table: pa.Table, k: int) -> tuple[pa.Table, np.ndarray]:
    if table.num_rows == 0:
        return table, np.zeros(0, np.int32)
    table, rank = ranked(table)
    keep = rank < k
    return table.filter(pa.array(keep)), (rank[keep] + 1).astype(np.int32)
