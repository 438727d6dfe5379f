"""Per-query top-k without shuffling every candidate.

The top-k of a union is the top-k of the parts' top-ks, so each block keeps only its own
k best rows per query (`partial_topk`, no data movement), and only those rows are grouped
by query_id for the final cut (`final_topk`). A query spread over many files still gets
its exact top-k.

Order: score descending, then doc_id descending in byte order (integer ids compared as their
decimal text), which is how trec_eval / pytrec_eval rank a run. So topk/ holds exactly the
first k documents `ettin-batch eval` sees in scores/, and evaluating topk/ at a depth <= k
gives the same numbers as evaluating scores/, even when the k-th place is a tie.

A document listed twice for one query (the same query_id and doc_id in two input rows) is
scored twice and kept twice in scores/, but ranks once in topk/, with the higher of its
scores: top-k is of distinct documents. Each block keeps its distinct best, so the union
argument above still holds.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_TIE_KEY = "_doc_id_text"  # doc_id as trec_eval compares it (strcmp), only while sorting


def trec_sort_indices(table: pa.Table) -> pa.Array:
    """Row order: query_id ascending (to group), score descending, doc_id descending as text (trec_eval's tie-break)."""
    doc_id = table.column("doc_id")
    if not (pa.types.is_string(doc_id.type) or pa.types.is_large_string(doc_id.type)):
        # trec_eval sees ids as text: "10" sorts below "9", so an int64 doc_id is compared as its decimal text.
        table = table.append_column(_TIE_KEY, pc.cast(doc_id, pa.string()))
        tie = _TIE_KEY
    else:
        tie = "doc_id"
    return pc.sort_indices(table, sort_keys=[("query_id", "ascending"), ("score", "descending"), (tie, "descending")])


def distinct_pairs(table: pa.Table) -> tuple[pa.Table, int, tuple | None]:
    """`table` (query_id, doc_id, score) with one row per (query_id, doc_id), at its highest score;
    how many rows that dropped (0: `table` itself comes back); and one repeated pair, or None."""
    if table.num_rows < 2:
        return table, 0, None
    best = table.group_by(["query_id", "doc_id"], use_threads=False).aggregate([("score", "max"), ("score", "count")])
    if best.num_rows == table.num_rows:
        return table, 0, None
    repeated = best.filter(pc.greater(best.column("score_count"), 1))
    example = (repeated.column("query_id")[0].as_py(), repeated.column("doc_id")[0].as_py())
    best = pa.table({"query_id": best.column("query_id"), "doc_id": best.column("doc_id"),
                     "score": best.column("score_max")})
    return best.cast(table.schema), table.num_rows - best.num_rows, example


def best_k(table: pa.Table, k: int) -> tuple[pa.Table, np.ndarray]:
    """The rows of `table` (query_id, doc_id, score) in the k best distinct documents per query,
    sorted by query_id then rank; and their ranks (int32, 1 = best)."""
    rows, rank = _cut(table, k)
    # A document's first row in score order is its best: if no document repeats within the cut, the
    # cut is already the top-k of distinct documents. Only when one does is the whole table grouped.
    if distinct_pairs(rows)[1]:
        rows, rank = _cut(distinct_pairs(table)[0], k)
    return rows, rank


def _cut(table: pa.Table, k: int) -> tuple[pa.Table, np.ndarray]:
    """The first k rows per query in trec_eval's order, and their ranks."""
    if table.num_rows == 0:
        return table, np.zeros(0, np.int32)
    table = table.take(trec_sort_indices(table))
    qid = table.column("query_id").combine_chunks()
    new_group = np.ones(table.num_rows, bool)
    if table.num_rows > 1:
        new_group[1:] = pc.not_equal(qid[1:], qid[:-1]).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(new_group)
    rank = np.arange(table.num_rows) - starts[np.cumsum(new_group) - 1] + 1
    keep = rank <= k
    return table.filter(pa.array(keep)), rank[keep].astype(np.int32)


def partial_topk(batch: pa.Table, *, k: int) -> pa.Table:
    """Per block: keep each query's k best rows (query_id, doc_id, score)."""
    rows, _ = best_k(batch.select(["query_id", "doc_id", "score"]), k)
    return rows


def final_topk(group: pa.Table, *, k: int) -> pa.Table:
    """Per query (all its partial rows): query_id, rank, doc_id, score of the k best."""
    rows, rank = best_k(group.select(["query_id", "doc_id", "score"]), k)
    return pa.table({
        "query_id": rows.column("query_id"),
        "rank": pa.array(rank, pa.int32()),
        "doc_id": rows.column("doc_id"),
        "score": rows.column("score"),
    })


def topk_schema(query_id_type: pa.DataType, doc_id_type: pa.DataType) -> pa.Schema:
    return pa.schema([("query_id", query_id_type), ("rank", pa.int32()), ("doc_id", doc_id_type),
                      ("score", pa.float32())])
