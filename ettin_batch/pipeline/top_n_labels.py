"""`labels --top-n-relevant N` on Ray Data, for scores too large for one process.

    read_parquet (query_id, doc_id, score)
      -> block_candidates   per block: each query's N best rows and its worst row (no data movement)
      -> repartition by query_id (hash) -> query_cutoffs: one row per query, its N-th best
    cutoffs -> the driver (one row per query) -> ray.put, shared by every task below
    read_parquet again
      -> label_rows         per block: relevant iff the row ranks at or above its query's cutoff
      -> the driver streams the labelled rows into labels.parquet, qrels.txt and the histogram

Why a cutoff and not a join. The N best of a union are the N best of the parts' N best, so
only candidates reach the shuffle. With each (query_id, doc_id) once, trec_eval's order
(score descending, then doc_id descending as text) is a strict order within a query, so
"among the N best" is one comparison against the query's N-th best row: the lookup table
has one row per query, N times smaller than the relevant (query_id, doc_id) set. Joining
every pair to it would hash-shuffle all N pairs (the whole input through the object store);
instead the table is broadcast and each block looks its queries up locally, so the second
read moves nothing between workers. Its cost: each block builds a hash of the table
(pc.index_in, about 1 s per million queries on the 2-core VM), and every node holds it in
its object store (about 40 bytes a query for short ids).

The worst row of each query in each block rides along with the candidates so that the
cutoffs also give the score range for the histogram's bins, without a third read.

Duplicate (query_id, doc_id) pairs are an error when they share a block, when both copies
are candidates (an extra copy that would take a top-N place always is), or when they make a
query's relevant count differ from min(N, its rows). A copy in another block and below that
block's N best is not seen, and gets its own label (0, even when the other copy's is 1):
finding it would take the full shuffle this plan avoids.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ettin_batch import ranking, trec
from ettin_batch.errors import InputError

CUTOFF_COLUMNS = ("query_id", "cut_score", "cut_doc")
NEEDS_UNIQUE_PAIRS = "a top-N cut per query needs each pair once"
# An InputError raised here inside a Ray task reaches the driver as Ray's traceback text; labels recovers its message.


def _canonical(batch: pa.Table, score_col: str) -> pa.Table:
    return pa.table({"query_id": batch.column("query_id"), "doc_id": batch.column("doc_id"),
                     "score": batch.column(score_col)})


def _check_block(table: pa.Table) -> None:
    for col in ("query_id", "doc_id"):  # a null key would be grouped and compared silently
        if table.column(col).null_count:
            raise InputError(f"{table.column(col).null_count} row(s) have a null {col} (counted in one block of "
                             "the input); TREC qrels cannot hold them, drop them before labelling")
    scores = pc.cast(table.column("score"), pa.float64()).to_numpy(zero_copy_only=False)  # null -> NaN
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise InputError(f"{bad} row(s) have a null, NaN or infinite score (counted in one block of the input; "
                         "there may be more); drop them before labelling")
    ranking.refuse_repeated_pairs(table, "one block of the scores", NEEDS_UNIQUE_PAIRS)


def block_candidates(batch: pa.Table, *, n: int, score_col: str = "score") -> pa.Table:
    """Ray map_batches step, one block: each query's n best rows and its worst row (query_id, doc_id, score).

    Raises InputError for a null id, a non-finite score or a pair seen twice in the block.
    """
    table = _canonical(batch, score_col)
    _check_block(table)
    if table.num_rows == 0:
        return table
    table, rank = ranking.ranked(table)
    keep = rank < n
    keep |= np.append(rank[1:] == 0, True)  # each query's worst row (the next starts a query): the score range's bottom
    return table.filter(pa.array(keep))


def query_cutoffs(block: pa.Table, *, n: int) -> pa.Table:
    """Ray map_batches step over a hash partition (whole queries): one row per query.

    cut_score, cut_doc: the query's min(n, rows)-th best row (score as float64, doc_id as
    text, as trec_eval compares them); kept: how many rows rank at or above it;
    min_score, max_score: the query's score range.
    """
    if block.num_rows == 0:  # an empty partition; it may not even carry the columns
        return cutoff_schema(block.schema.field("query_id").type if "query_id" in block.column_names
                             else pa.string()).empty_table()
    ranking.refuse_repeated_pairs(block, "the queries' best rows in the scores", NEEDS_UNIQUE_PAIRS)
    table = block.take(ranking.order(block))  # trec_eval's order within each query
    starts = ranking.group_starts(table.column("query_id"))
    sizes = np.diff(starts)
    kept = np.minimum(n, sizes)
    cut = pa.array(starts[:-1] + kept - 1)
    scores = pc.cast(table.column("score"), pa.float64())
    return pa.table({
        "query_id": table.column("query_id").take(pa.array(starts[:-1])),
        "cut_score": scores.take(cut),
        "cut_doc": trec.ids_as_strings(table.column("doc_id")).take(cut),
        "kept": pa.array(kept, pa.int64()),
        "min_score": scores.take(pa.array(starts[1:] - 1)),
        "max_score": scores.take(pa.array(starts[:-1])),
    })


def cutoff_schema(query_id_type: pa.DataType) -> pa.Schema:
    return pa.schema([("query_id", query_id_type), ("cut_score", pa.float64()), ("cut_doc", pa.string()),
                      ("kept", pa.int64()), ("min_score", pa.float64()), ("max_score", pa.float64())])


def relevant_mask(query_id, doc_id, scores, cutoffs: pa.Table) -> np.ndarray:
    """True where a row ranks at or above its query's cutoff in trec_eval's order.

    cutoffs: query_id, cut_score, cut_doc (every query of the rows must be there).
    """
    value_set = cutoffs.column("query_id")
    if value_set.type != query_id.type:
        value_set = value_set.cast(query_id.type)
    at = pc.index_in(query_id, value_set=value_set.combine_chunks() if isinstance(value_set, pa.ChunkedArray)
                     else value_set)
    if at.null_count:
        raise InputError(f"{at.null_count} row(s) belong to no query of the cutoff table; the scores changed while "
                         "they were being labelled? Run again on a finished scores/ folder")
    cut_score = cutoffs.column("cut_score").take(at).to_numpy(zero_copy_only=False)
    cut_doc = cutoffs.column("cut_doc").take(at)
    s = pc.cast(scores, pa.float64()).to_numpy(zero_copy_only=False)
    tie_wins = pc.greater_equal(trec.ids_as_strings(doc_id), cut_doc).to_numpy(zero_copy_only=False)
    return (s > cut_score) | ((s == cut_score) & tie_wins)


def label_rows(batch: pa.Table, *, cutoffs, score_col: str = "score") -> pa.Table:
    """Ray map_batches step, one block: query_id, doc_id (input types), relevance (int32: 1 = top N), score (float32).

    cutoffs: the table `collect_cutoffs` returns, or an ObjectRef to it (fetched once per
    task, zero-copy from the node's object store).
    """
    if not isinstance(cutoffs, pa.Table):
        import ray

        cutoffs = ray.get(cutoffs)
    scores = batch.column(score_col)
    relevant = relevant_mask(batch.column("query_id"), batch.column("doc_id"), scores, cutoffs)
    return pa.table({
        "query_id": batch.column("query_id"),
        "doc_id": batch.column("doc_id"),
        "relevance": pa.array(relevant.astype(np.int32), pa.int32()),
        # numpy's cast, as the in-process path does: Arrow's refuses an int64 score it cannot hold exactly.
        "score": pa.array(scores.to_numpy(zero_copy_only=False).astype(np.float32), pa.float32()),
    })


# ---------------------------------------------------------------- the plan


def _read(files: list[str], filesystem, score_col: str):
    import ray

    return ray.data.read_parquet(files, filesystem=filesystem, columns=["query_id", "doc_id", score_col])


def collect_cutoffs(files: list[str], filesystem, n: int, score_col: str, rows: int) -> pa.Table:
    """Pass 1: the cutoff table (see `query_cutoffs`), one row per query, collected in the driver."""
    import ray

    candidates = _read(files, filesystem, score_col).map_batches(
        block_candidates, batch_format="pyarrow", batch_size=None, fn_kwargs={"n": n, "score_col": score_col})
    # Only ~n+1 rows per query and block reach the shuffle: a few partitions are plenty.
    partitions = max(1, min(64, math.ceil(rows / 2_000_000), int(ray.cluster_resources().get("CPU", 1))))
    # A hash repartition never splits a partition's rows over blocks (Ray Data's groupby relies on
    # it too), so each whole block holds whole queries and is cut in one vectorised call.
    cutoffs = candidates.repartition(partitions, keys=["query_id"]).map_batches(
        query_cutoffs, batch_format="pyarrow", batch_size=None, fn_kwargs={"n": n})
    tables = [t for t in ray.get(cutoffs.to_arrow_refs()) if t.num_rows]
    table = pa.concat_tables(tables).combine_chunks()
    if len(pc.unique(table.column("query_id"))) != table.num_rows:
        raise RuntimeError("a query's candidates were split over two partitions; the cutoffs would be wrong")
    return table


def labelled_batches(files: list[str], filesystem, cutoffs: pa.Table, score_col: str):
    """Pass 2: every pair with its relevance, streamed to the driver block by block (Arrow tables)."""
    import ray

    ref = ray.put(cutoffs.select(list(CUTOFF_COLUMNS)))
    labelled = _read(files, filesystem, score_col).map_batches(
        label_rows, batch_format="pyarrow", batch_size=None, fn_kwargs={"cutoffs": ref, "score_col": score_col})
    yield from labelled.iter_batches(batch_format="pyarrow", batch_size=None)
