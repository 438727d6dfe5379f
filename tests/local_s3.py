"""A real S3 endpoint for one test: moto's server on a free local port, reached through AWS_ENDPOINT_URL as users reach MinIO."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
import pytest
import s3fs
from moto.server import ThreadedMotoServer


@contextmanager
def local_s3(monkeypatch: pytest.MonkeyPatch, bucket: str) -> Iterator[str]:
    """Start the server, point the standard AWS variables at it, create `bucket`; yields "s3://bucket"."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for name, value in {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        boto3.client("s3").create_bucket(Bucket=bucket)
        s3fs.S3FileSystem.clear_instance_cache()  # a cached client would still hold the previous endpoint
        yield f"s3://{bucket}"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
