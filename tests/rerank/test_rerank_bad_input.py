"""Bad input fails early and says what to do; nothing here needs Ray to start."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ettin_batch.config import RerankConfig
from ettin_batch import rerank
from ettin_batch.errors import InputError
from ettin_batch.errors import OutputError

from .conftest import TINY, upload_parquet

GOOD = pa.table({"query_id": ["q1"], "query": ["a query"], "doc_id": ["d1"], "document": ["a document"]})


def test_missing_column_fails_before_any_work_listing_columns_found_and_the_remap_flag(tmp_path):
    pq.write_table(pa.table({"query_id": ["q1"], "query": ["a"], "doc_id": ["d1"], "passage": ["b"]}),
                   tmp_path / "part-0.parquet")
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        rerank(RerankConfig.of(input=[str(tmp_path / "part-0.parquet")], output=str(out), model=TINY))
    message = str(err.value)
    assert "['document']" in message and "passage" in message and "--document-col" in message
    assert not out.exists()


def test_unreadable_file_on_s3_is_named_in_the_error(s3, tmp_path):
    s3.mkdir("ettin-bad")
    upload_parquet(s3, GOOD, "ettin-bad/in/part-0.parquet")
    with s3.open("ettin-bad/in/part-1.parquet", "wb") as f:
        f.write(b"this is not parquet at all")
    with pytest.raises(InputError, match="s3://ettin-bad/in/part-1.parquet"):
        rerank(RerankConfig.of(input=["s3://ettin-bad/in/"], output="s3://ettin-bad/out/", model=TINY))


def test_input_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(InputError, match="nowhere"):
        rerank(RerankConfig.of(input=[str(tmp_path / "nowhere")], output=str(tmp_path / "out"), model=TINY))


def test_a_finished_run_is_not_overwritten_without_the_flag(tmp_path):
    pq.write_table(GOOD, tmp_path / "part-0.parquet")
    out = tmp_path / "out"
    out.mkdir()
    (out / "_SUCCESS.json").write_text(json.dumps({"status": "success"}))
    with pytest.raises(OutputError, match="--overwrite"):
        rerank(RerankConfig.of(input=[str(tmp_path / "part-0.parquet")], output=str(out), model=TINY))


def test_shards_that_disagree_on_a_column_type_are_named(tmp_path):
    pq.write_table(GOOD, tmp_path / "a.parquet")
    pq.write_table(GOOD.set_column(0, "query_id", pa.array([1], pa.int64())), tmp_path / "b.parquet")
    with pytest.raises(InputError, match="b.parquet"):
        rerank(RerankConfig.of(input=[str(tmp_path)], output=str(tmp_path / "out"), model=TINY))


def test_a_failed_run_names_the_exception_the_stage_raised(ray_session, tmp_path):
    # Ray Data wraps a UDF's exception in UserCodeException, whose own message is only a retry hint.
    import ray

    from ettin_batch.pipeline.run import stage_error
    from ettin_batch.run_folder import RunFolder

    def broken(batch):
        raise ValueError("row 7 has no document bytes")

    with pytest.raises(Exception) as caught:
        ray.data.range(4).map_batches(broken, batch_format="pyarrow").materialize()
    message = str(stage_error(caught.value, RunFolder.open(str(tmp_path), "rerank"), RerankConfig()))
    assert "ValueError: row 7 has no document bytes" in message
    assert "_SUCCESS.json was not written" in message
