"""The rerank job's tests share one local Ray per session (and the suite's S3 server, tests/conftest.py)."""

from __future__ import annotations

import pytest

from helpers import TINY


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
