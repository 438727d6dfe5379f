"""Credentials never leave the environment: a job that reads and writes S3 with a distinctive secret
key leaves no trace of it in what `submit` prints, the job's logs, `_SUCCESS.json`, the written
objects or any file the cluster's nodes wrote, on success or on error."""

from __future__ import annotations

import json
import secrets
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import TINY

from .local_cluster import SECRET_KEY, submit


def _job_logs(cluster, submission_id: str) -> str:
    req = urllib.request.Request(f"{cluster.dashboard_url}/api/jobs/{submission_id}/logs",
                                 headers={"Authorization": f"Bearer {cluster.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["logs"]


def _files_holding(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


@pytest.fixture(scope="module")
def s3_job(ray_cluster, cluster_s3):
    _, s3 = cluster_s3
    s3.mkdir("eb-secure-in")
    s3.mkdir("eb-secure-out")
    rows = [{"query_id": q, "query": f"query {q}", "doc_id": d, "document": f"text {q} {d}"}
            for q in range(4) for d in range(5)]
    with s3.open("eb-secure-in/candidates/part-0.parquet", "wb") as f:
        pq.write_table(pa.Table.from_pylist(rows), f)
    proc = submit(ray_cluster, "--submission-id", "eb-secure-ok", "--", "rerank",
                  "--input", "s3://eb-secure-in/candidates/", "--output", "s3://eb-secure-out/run/",
                  "--model", TINY, "--top-k", "2", "--no-progress")
    return proc, s3


def test_the_job_reads_and_writes_s3_with_the_clusters_credentials(s3_job):
    proc, s3 = s3_job
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with s3.open("eb-secure-out/run/_SUCCESS.json") as f:
        assert json.load(f)["counts"]["scored"] == 20


def test_the_secret_is_in_no_output_manifest_log_or_cluster_file(s3_job, ray_cluster):
    proc, s3 = s3_job
    assert SECRET_KEY not in proc.stdout and SECRET_KEY not in proc.stderr
    assert SECRET_KEY not in _job_logs(ray_cluster, "eb-secure-ok")
    written = [p for p in s3.find("eb-secure-out/run/")]
    assert "eb-secure-out/run/_SUCCESS.json" in written
    for path in written:
        with s3.open(path, "rb") as f:
            assert SECRET_KEY.encode() not in f.read(), path
    # Every node's Ray logs (driver, workers, raylet, dashboard, job supervisor) and session files;
    # the job id is in them, so the search does look where the job left its traces.
    assert _files_holding(ray_cluster.temp_dir, "eb-secure-ok")
    assert _files_holding(ray_cluster.temp_dir, SECRET_KEY) == []


def test_a_wrong_bucket_fails_naming_the_bucket_without_echoing_the_secret(ray_cluster, s3_job):
    proc = submit(ray_cluster, "--submission-id", "eb-secure-bad", "--", "rerank",
                  "--input", "s3://eb-no-such-bucket/candidates/", "--output", "s3://eb-secure-out/bad/",
                  "--model", TINY, "--no-progress")
    # submit exits with the driver's own code: 2, the CLI's "bad config or input".
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "job eb-secure-bad FAILED" in proc.stderr
    assert "eb-no-such-bucket" in proc.stdout
    assert SECRET_KEY not in proc.stdout and SECRET_KEY not in proc.stderr
    assert SECRET_KEY not in _job_logs(ray_cluster, "eb-secure-bad")
    assert _files_holding(ray_cluster.temp_dir, SECRET_KEY) == []


def test_env_refuses_to_forward_a_credential_and_does_not_print_its_value(ray_cluster):
    """Ray keeps runtime_env values in plain text (jobs API, runtime_env_agent.log), so a secret must
    reach the job from the cluster's own environment, never through --env."""
    forwarded = "ebfwd" + secrets.token_hex(16)
    proc = submit(ray_cluster, "--env", "AWS_SECRET_ACCESS_KEY", "--", "python", "-c", "print(1)",
                  env={"AWS_SECRET_ACCESS_KEY": forwarded})
    assert proc.returncode == 2
    assert "--env AWS_SECRET_ACCESS_KEY: looks like a credential" in proc.stderr and "Secret" in proc.stderr
    assert forwarded not in proc.stdout and forwarded not in proc.stderr


def test_forwarded_variables_reach_the_job_and_their_values_are_not_printed(ray_cluster):
    value = "ebvalue" + secrets.token_hex(8)
    proc = submit(ray_cluster, "--env", "EB_REGION_HINT", "--env", f"EB_EXTRA={value}x", "--",
                  "python", "-c", "import os; print('hint', len(os.environ['EB_REGION_HINT']), os.environ['EB_EXTRA'][-1])",
                  env={"EB_REGION_HINT": value})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"hint {len(value)} x" in proc.stdout
    assert '"EB_REGION_HINT": "<redacted>"' in proc.stderr and '"EB_EXTRA": "<redacted>"' in proc.stderr
    assert value not in proc.stderr
