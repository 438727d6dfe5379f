"""One real two-node Ray cluster (token auth on, as Ray 2.60's `ray start --head` sets it) and one
S3 server for this folder's tests. The nodes get the AWS variables in their environment, as a
Kubernetes pod gets them from a Secret, with a secret key no other test uses."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from .local_cluster import remove, start_cluster

REPO = Path(__file__).resolve().parents[2]
# Made per run, so the only copies are in the nodes' environment: the working dir uploaded with each
# job holds this source file, and a fixed secret written here would turn up in the cluster's files.
SECRET_KEY = "ebsecret" + secrets.token_hex(16)
ACCESS_KEY = "AKIAETTINBATCHTEST01"


@pytest.fixture(scope="package")
def cluster_s3():
    """A moto S3 server for the cluster's jobs; yields (endpoint, s3fs client)."""
    import s3fs
    from moto.server import ThreadedMotoServer

    from .local_cluster import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    yield endpoint, s3fs.S3FileSystem(endpoint_url=endpoint, key=ACCESS_KEY, secret=SECRET_KEY)
    server.stop()


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


def submit(cluster, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`ettin-batch submit --address <dashboard> --working-dir <repo> ARGS` as a user runs it: a separate
    process that knows the token only through RAY_AUTH_TOKEN (no RAY_AUTH_MODE, no ~/.ray file)."""
    client_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    client_env.update(RAY_AUTH_TOKEN=cluster.env["RAY_AUTH_TOKEN"], **(env or {}))
    return subprocess.run([sys.executable, "-m", "ettin_batch.cli", "submit", "--address", cluster.dashboard_url,
                           "--working-dir", str(REPO), *args], env=client_env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
