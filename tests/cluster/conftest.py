"""One real two-node Ray cluster (token auth on, as Ray 2.60's `ray start --head` sets it) for this folder's
tests, its jobs reading and writing the suite's S3 server. The nodes get the AWS variables in their
environment, as a Kubernetes pod gets them from a Secret, with a secret key no other test uses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from .local_cluster import ACCESS_KEY, SECRET_KEY, remove, start_cluster


@pytest.fixture(scope="package")
def cluster_s3(s3_endpoint):
    """The suite's S3 server as the cluster's jobs reach it; yields (endpoint, s3fs client with their keys)."""
    import s3fs

    return s3_endpoint, s3fs.S3FileSystem(endpoint_url=s3_endpoint, key=ACCESS_KEY, secret=SECRET_KEY)


@pytest.fixture(scope="package")
def ray_cluster(cluster_s3):
    """A head and one worker node, one CPU each, torn down by PID (never `ray stop`) once this folder's
    tests are done, so it does not sit beside the rest of the suite's local Ray."""
    endpoint, _ = cluster_s3
    node_env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "ETTIN_BATCH_CACHE": os.environ["ETTIN_BATCH_CACHE"],
    }
    cluster = start_cluster(workers=1, cpus_per_node=1, node_env=node_env)
    yield cluster
    remove(cluster)
