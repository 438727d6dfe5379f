"""Shared, real parts for the rerank job's tests: one moto S3 server and one local Ray per session."""

from __future__ import annotations

import os
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

TINY = "random:ettin-tiny"
_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on loopback, with the standard AWS variables pointing at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*_AWS, "AWS_ENDPOINT_URL"]}
    os.environ.update(_AWS, AWS_ENDPOINT_URL=endpoint)
    yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(scope="session")
def s3(s3_endpoint):
    """An s3fs client talking HTTP to the test server: how tests upload inputs and read outputs."""
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=s3_endpoint, key="testing", secret="testing")


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One local Ray for the whole session (started after the AWS variables are set, so workers see them)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def reference_reranker():
    """The engine on its own, fp32 CPU: the scores every pipeline output must match."""
    from ettin_batch.engine import Reranker

    return Reranker.from_pretrained(TINY, device="cpu", dtype="float32", max_length=512)


def upload_parquet(s3, table: pa.Table, path: str) -> None:
    with s3.open(path, "wb") as f:
        pq.write_table(table, f)


def read_parquet_folder(fs, path: str) -> pa.Table:
    """Every Parquet file under `path`, concatenated (an empty table if there are none)."""
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    tables = []
    for p in files:
        with fs.open(p, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
