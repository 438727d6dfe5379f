"""A row the tokenizer cannot take (a document that is not valid UTF-8) goes to rejects/ with its
reason; the rest of its batch and the job go on."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ettin_batch.config import RerankConfig
from ettin_batch import rerank
from ettin_batch.config import ScoringConfig
from ettin_batch.pipeline.rejects import RejectsDir
from ettin_batch.pipeline.tokenize_stage import Tokenize

from helpers import TINY
from .faults import accounting, invalid_utf8_strings, make_shards, record

POISON = b"caf\xe9 au lait"  # Latin-1 bytes in a UTF-8 column
REASON = ("document is not valid UTF-8 (invalid continuation byte at byte 3); "
          "document shown with its invalid bytes replaced by U+FFFD")


def _poisoned_shard(n: int = 40, poisoned_at=(3, 17)) -> pa.Table:
    table = make_shards(files=1, pairs_per_file=n)[0]
    docs = [POISON if i in poisoned_at else d.encode() for i, d in enumerate(table["document"].to_pylist())]
    return table.set_column(table.column_names.index("document"), "document", invalid_utf8_strings(docs))


def test_the_tokenize_step_rejects_only_the_poisoned_rows_of_a_batch(tmp_path):
    batch = _poisoned_shard()
    out = Tokenize(ScoringConfig(model=TINY, max_length=64), RejectsDir(str(tmp_path), pafs.LocalFileSystem()))(batch)
    assert out.num_rows == 38 and "d3" not in out.filter(pc.equal(out["query_id"], "q0-0"))["doc_id"].to_pylist()
    rejects = pq.read_table(tmp_path).sort_by("query_id").to_pylist()  # every column readable: no invalid UTF-8
    assert [(r["query_id"], r["doc_id"], r["reason"], r["document"]) for r in rejects] == [
        ("q0-0", "d3", REASON, "caf\ufffd au lait"), ("q0-1", "d7", REASON, "caf\ufffd au lait")]


def test_a_job_with_poisoned_rows_scores_the_rest_and_rejects_them_with_their_reason(tmp_path, ray_session):
    clean = make_shards(files=1, pairs_per_file=30, seed=1)[0]
    clean = clean.set_column(0, "query_id", pa.array([f"clean-{q}" for q in clean["query_id"].to_pylist()]))
    shards = [_poisoned_shard(), clean]
    (tmp_path / "in").mkdir()
    for i, table in enumerate(shards):
        pq.write_table(table, tmp_path / "in" / f"part-{i}.parquet")
    result = rerank(RerankConfig.of(input=[str(tmp_path / "in")], output=str(tmp_path / "out"), model=TINY,
                                 batch_size=16, progress=False))
    assert result.counts == {**result.counts, "in": 70, "scored": 68, "rejected": 2}
    rejects = pq.read_table(tmp_path / "out" / "rejects", columns=["query_id", "doc_id", "reason"])
    assert sorted(rejects["doc_id"].to_pylist()) == ["d3", "d7"]
    assert set(rejects["reason"].to_pylist()) == {REASON}
    scores = pq.read_table(tmp_path / "out" / "scores")
    figures = accounting(pa.concat_tables([shards[0].drop_columns(["query", "document"]),
                                           shards[1].drop_columns(["query", "document"])]), scores, rejects)
    record("test_a_job_with_poisoned_rows_scores_the_rest_and_rejects_them_with_their_reason",
           {"fault": "2 rows with invalid UTF-8 text", **figures, "model_pairs": result.manifest["model_pairs"]})
    assert figures["duplicates"] == figures["lost"] == 0 and figures["out"] == 70
