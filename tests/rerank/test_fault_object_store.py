"""The object store answers 503 for a while (S3 and MinIO do under load), or its endpoint goes down
(connections cut and refused) and comes back: reads and writes retry with backoff and the run
completes exactly once; when it stays down past the retry limit the run fails with a clear error
and writes no _SUCCESS.json."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pytest
import s3fs

from ettin_batch.config import RerankConfig
from ettin_batch import rerank
from ettin_batch.errors import RunFailed

from helpers import TINY, read_parquet_folder, upload_parquet
from .faults import accounting, make_shards, record
from .flaky_s3 import FlakyS3Proxy, StoppingS3Proxy

SCORES_WRITE = ("PUT", r"/scores/")
INPUT_READ = ("GET", r"/in/")
SCORES_READ = ("GET", r"/scores/")


@pytest.fixture
def store(s3, s3_endpoint):
    """The session's moto server holds the data; each test puts its own flaky proxy in front."""
    bucket = f"ettin-flaky-{uuid.uuid4().hex[:8]}"
    s3.mkdir(bucket)
    shards = make_shards(files=4, pairs_per_file=150, seed=3)
    for i, table in enumerate(shards):
        upload_parquet(s3, table, f"{bucket}/in/part-{i}.parquet")
    return {"bucket": bucket, "inputs": pa.concat_tables(shards), "upstream": s3_endpoint}


def _run(store, proxy, monkeypatch, run: str, **settings):
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    return rerank(RerankConfig.of(input=[f"s3://{store['bucket']}/in/"], output=f"s3://{store['bucket']}/{run}/",
                               model=TINY, batch_size=50, progress=False, **settings))


def test_a_store_that_answers_503_for_eight_seconds_mid_write_costs_nothing(store, s3, monkeypatch, ray_session):
    with FlakyS3Proxy(store["upstream"], trigger=SCORES_WRITE, seconds=8) as proxy:
        result = _run(store, proxy, monkeypatch, "run-flaky")
    assert proxy.refused["PUT"] > 0  # the outage hit the writes of scores/
    assert s3.exists(f"{store['bucket']}/run-flaky/_SUCCESS.json")
    scores = read_parquet_folder(s3, f"{store['bucket']}/run-flaky/scores")
    figures = accounting(store["inputs"], scores)
    record("test_a_store_that_answers_503_for_eight_seconds_mid_write_costs_nothing",
           {"fault": "S3 answers 503 for 8 s from the first scores/ write", **figures,
            "requests_refused": dict(proxy.refused), "model_pairs": result.manifest["model_pairs"]})
    assert figures == {"in": 600, "out": 600, "duplicates": 0, "lost": 0, "unknown": 0}


def test_a_store_down_past_the_retry_limit_fails_clearly_without_success(store, s3, monkeypatch, ray_session):
    with FlakyS3Proxy(store["upstream"], trigger=SCORES_WRITE, seconds=None) as proxy:
        with pytest.raises(RunFailed) as err:
            _run(store, proxy, monkeypatch, "run-down", s3_max_attempts=2)
    message = str(err.value)
    assert "_SUCCESS.json was not written" in message and "after 2 attempts per call" in message
    assert "--s3-max-attempts" in message and "ETTIN_BATCH_S3_MAX_ATTEMPTS" in message
    assert proxy.refused["PUT"] >= 2
    assert not s3.exists(f"{store['bucket']}/run-down/_SUCCESS.json")


def test_an_endpoint_that_goes_down_mid_write_and_mid_read_and_comes_back_costs_nothing(
        store, s3, monkeypatch, ray_session):
    # Two groups of two files, scored in one stream: the store goes down at the first read of an input, again
    # at the first scores/ write once it is back, and again at the first read of scores/ after that (the
    # driver counting a group's rows before it marks the group done, or top-k), 5 s each.
    outages = [(INPUT_READ, 5), (SCORES_WRITE, 5), (SCORES_READ, 5)]
    with StoppingS3Proxy(store["upstream"], outages) as proxy:
        result = _run(store, proxy, monkeypatch, "run-down-up", group_rows=300)
    assert len(proxy.down_seconds) == 3 and min(proxy.down_seconds) >= 5
    triggers = {n: (method, path) for method, path, n in reversed(proxy.cut)}  # the first request cut by each
    assert triggers[1][0] == "GET" and "/in/" in triggers[1][1]
    assert triggers[2][0] == "PUT" and "/scores/" in triggers[2][1]
    assert triggers[3][0] == "GET" and "/scores/" in triggers[3][1]
    # Each came back once the store did: the reads and the write were retried, not lost.
    assert all(proxy.served[trigger] >= 1 for trigger in triggers.values())
    assert s3.exists(f"{store['bucket']}/run-down-up/_SUCCESS.json")
    scores = read_parquet_folder(s3, f"{store['bucket']}/run-down-up/scores")
    figures = accounting(store["inputs"], scores)
    record("test_an_endpoint_that_goes_down_mid_write_and_mid_read_and_comes_back_costs_nothing",
           {"fault": "S3 endpoint down 5 s from the first input read, then from the next scores/ write, then "
                     "from the next scores/ read (connections cut, port closed: refused)", **figures,
            "requests_cut": len(proxy.cut), "cut": sorted({f"{m} {p}" for m, p, _ in proxy.cut}),
            "down_seconds": proxy.down_seconds, "wall_time_s": result.manifest["wall_time_s"],
            "model_pairs": result.manifest["model_pairs"]})
    assert figures == {"in": 600, "out": 600, "duplicates": 0, "lost": 0, "unknown": 0}
    assert result.manifest["model_pairs"] == 600 and result.manifest["resume"]["groups"] == 2
