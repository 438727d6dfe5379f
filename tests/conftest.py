import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import free_port  # noqa: E402

# Random models built by the library go to a per-run cache, never the user's.
os.environ.setdefault("ETTIN_BATCH_CACHE", str(Path(__file__).parent.parent / ".pytest_cache" / "ettin-batch"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def s3_endpoint():
    """The suite's one S3 server: moto's, over HTTP on a free loopback port, with the standard AWS variables
    pointing at it for the rest of the session, as users point them at MinIO. Yields its URL.

    Every test that touches S3 uses it, each in buckets of its own. A test that needs a broken store puts a
    proxy in front of it (rerank/flaky_s3.py) rather than starting another server."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*AWS, "AWS_ENDPOINT_URL"]}
    os.environ.update(AWS, AWS_ENDPOINT_URL=endpoint)
    yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(scope="session")
def s3(s3_endpoint):
    """An s3fs client talking HTTP to the suite's S3 server: how tests upload inputs and read outputs."""
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=s3_endpoint, key=AWS["AWS_ACCESS_KEY_ID"],
                             secret=AWS["AWS_SECRET_ACCESS_KEY"])
