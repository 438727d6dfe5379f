"""Per-query top-k, streaming over the written scores: each file's k best rows per query, then a merge.

The top-k of a union is the top-k of its parts' top-ks, so each scores/ file is read (three
columns, a few files at a time) and cut to its own k best rows per query; only those rows are
kept, and whenever they outgrow the last merge they are cut again. Memory stays near k rows per
query (the size of topk/ itself) plus the files being read, whatever the number of pairs, and
nothing is shuffled. A query spread over many files still gets its exact top-k.

Order and ties are trec_eval's (ettin_batch.ranking), so topk/ holds exactly the first k documents
`ettin-batch eval` sees in scores/. A document listed twice for one query (the same query_id and
doc_id in two input rows) is scored twice and kept twice in scores/, but ranks once in topk/, with
the higher of its scores.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from ettin_batch import ranking
from ettin_batch.run_folder import SCORES, TOPK, TOPK_FILE, RunFolder

COLUMNS = ["query_id", "doc_id", "score"]
# Up to this many scored pairs, every (query_id, doc_id) is kept to count exact repeats (~20 bytes a row).
COUNT_REPEATS_UP_TO = 1_000_000
_READERS = 4  # files read at once: object stores answer several requests faster than one at a time
MERGE_ROWS = 1_000_000  # kept rows are cut again once they exceed twice the last cut plus this many


def write_topk(folder: RunFolder, k: int, scored: int) -> tuple[int | None, tuple | None]:
    """Write topk/ from the run's scores/ (at least one row); return how many scored rows repeat another's
    (query_id, doc_id) and one such pair, counted up to COUNT_REPEATS_UP_TO scored pairs ((None, None) above)."""
    fs = folder.loc.pa_fs
    files = sorted(folder.parquet_files(SCORES))
    counting = scored <= COUNT_REPEATS_UP_TO
    kept, kept_rows, merged_rows, keys = [], 0, 0, []

    def file_topk(path: str) -> tuple[pa.Table, pa.Table | None]:
        table = pq.read_table(path, filesystem=fs, columns=COLUMNS)
        return ranking.top_k(table, k)[0], table.select(COLUMNS[:2]) if counting else None

    with ThreadPoolExecutor(_READERS) as pool:
        for part, ids in pool.map(file_topk, files):
            kept.append(part)
            kept_rows += part.num_rows
            if ids is not None:
                keys.append(ids)
            if kept_rows > 2 * merged_rows + MERGE_ROWS:  # amortised: each row is re-cut a few times at most
                kept = [ranking.top_k(pa.concat_tables(kept), k)[0]]
                kept_rows = merged_rows = kept[0].num_rows
    rows, rank = ranking.top_k(pa.concat_tables(kept), k)
    fs.create_dir(folder.path(TOPK), recursive=True)
    pq.write_table(pa.table({"query_id": rows.column("query_id"), "rank": pa.array(rank, pa.int32()),
                             "doc_id": rows.column("doc_id"), "score": rows.column("score")}),
                   folder.path(TOPK, TOPK_FILE), filesystem=fs)
    return ranking.repeated_pairs(pa.concat_tables(keys)) if counting else (None, None)


def topk_schema(query_id_type: pa.DataType, doc_id_type: pa.DataType) -> pa.Schema:
    return pa.schema([("query_id", query_id_type), ("rank", pa.int32()), ("doc_id", doc_id_type),
                      ("score", pa.float32())])
