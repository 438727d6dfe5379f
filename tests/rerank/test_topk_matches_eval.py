"""topk/ holds the first k documents that `ettin-batch eval` ranks in scores/, ties at the k-th place included.

The job's own top-k stage (partial top-k per block, groupby, final top-k) runs on a real Ray over a
scores/ folder written here, with few distinct scores so that many queries tie across the k-th place.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ettin_batch.evaluation import EvaluationWarning, evaluate
from ettin_batch.pipeline.topk import write_topk
from ettin_batch.run_folder import RunFolder

K = 5
AT_K = [f"ndcg@{K}", f"p@{K}", f"recall@{K}", f"mrr@{K}", f"map@{K}"]


def _tied_scores(id_type: pa.DataType, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """30 queries of 12 candidates with 3 distinct scores, and qrels judging a few of each query's documents."""
    rng = np.random.default_rng(seed)
    rows = {"query_id": [], "doc_id": [], "score": []}
    qrels = {"query_id": [], "doc_id": [], "relevance": []}
    for q in range(30):
        # Ids from 1 to 120: integer ids whose text order ("100" < "9") differs from their numeric order.
        docs = rng.choice(np.arange(1, 121), 12, replace=False)
        rows["query_id"] += [f"q{q}"] * 12
        rows["doc_id"] += docs.tolist()
        rows["score"] += rng.choice([0.0, 1.0, 2.0], 12, p=[0.3, 0.5, 0.2]).tolist()
        judged = rng.choice(docs, 4, replace=False)
        qrels["query_id"] += [f"q{q}"] * 4
        qrels["doc_id"] += [str(d) for d in judged]
        qrels["relevance"] += rng.integers(0, 3, 4).tolist()
    doc_ids = pa.array(rows["doc_id"], pa.int64())
    scores = pa.table({"query_id": rows["query_id"],
                       "doc_id": doc_ids if pa.types.is_integer(id_type) else pa.compute.cast(doc_ids, pa.string()),
                       "score": pa.array(rows["score"], pa.float32())})
    return scores, pa.table(qrels)


def _quiet(run, qrels) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        return evaluate(run, qrels, AT_K)["metrics"]


def _ascending_tie_topk(scores: pa.Table) -> pa.Table:
    """The old topk/ order (ties by doc_id ascending): what this test must tell apart."""
    rows = sorted(scores.to_pylist(), key=lambda r: (r["query_id"], -r["score"], r["doc_id"]))
    kept, seen = [], {}
    for r in rows:
        seen[r["query_id"]] = seen.get(r["query_id"], 0) + 1
        if seen[r["query_id"]] <= K:
            kept.append(r)
    return pa.Table.from_pylist(kept, schema=scores.schema)


@pytest.mark.parametrize("id_type", [pa.string(), pa.int64()], ids=["string-ids", "int64-ids"])
def test_eval_of_topk_equals_eval_of_scores_with_ties_at_the_kth_place(tmp_path, id_type):
    scores, qrels = _tied_scores(id_type)
    (tmp_path / "out" / "scores").mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.random.default_rng(1).permutation(scores.num_rows), 3)):
        # Each query's candidates spread over three files, so the partial top-k per file matters.
        pq.write_table(scores.take(pa.array(part)), tmp_path / "out" / "scores" / f"part-{i}.parquet")
    write_topk(RunFolder.open(str(tmp_path / "out"), "rerank"), K, scores.num_rows)

    topk = pq.read_table(tmp_path / "out" / "topk")
    assert topk.num_rows == 30 * K and topk.schema.field("doc_id").type == id_type
    from_topk = _quiet(str(tmp_path / "out" / "topk"), qrels)
    from_scores = _quiet(str(tmp_path / "out" / "scores"), qrels)
    assert from_topk == pytest.approx(from_scores, abs=1e-12)
    # The data has ties across the k-th place that decide a metric: the old tie-break gives other numbers.
    assert _quiet(_ascending_tie_topk(scores), qrels) != pytest.approx(from_scores, abs=1e-12)
