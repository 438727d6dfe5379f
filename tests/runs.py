"""Output folders as an ettin-batch command leaves them, written through the real RunFolder without Ray:
a finished run, or one that stopped part-way (no _SUCCESS.json), for the commands that read runs back."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from ettin_batch import ranking
from ettin_batch.run_folder import SCORES, TOPK, TOPK_FILE, RunFolder


def write_rerank_run(folder, scores: pa.Table, *, finished: bool = True, top_k: int = 10, **manifest) -> str:
    """A rerank run in `folder`: `scores` (query_id, doc_id, score, ...) in scores/<group>/, each query's
    top_k in topk/, and _SUCCESS.json only if `finished` (with `manifest`'s keys added, e.g. model, dtype).
    Returns the folder as a string."""
    run = RunFolder.open(str(folder), "rerank")
    run.check(overwrite=False)
    run.begin()
    run.loc.fs.makedirs(run.path(SCORES, "g0000-test"), exist_ok=True)
    pq.write_table(scores, run.path(SCORES, "g0000-test", "part-0.parquet"))
    best, rank = ranking.top_k(scores.select(["query_id", "doc_id", "score"]), top_k)
    run.loc.fs.makedirs(run.path(TOPK), exist_ok=True)
    pq.write_table(pa.table({"query_id": best["query_id"], "rank": rank, "doc_id": best["doc_id"], "score": best["score"]}),
                   run.path(TOPK, TOPK_FILE))
    if finished:
        run.finish({"counts": {"in": scores.num_rows, "scored": scores.num_rows, "rejected": 0}, "top_k": top_k,
                    **manifest})
    return str(folder)
