"""The cluster definitions and example job configs parse, and say what the job needs: the entry point, GPU
workers, the matching Ray version, token auth, and credentials from a Secret or an instance role, never inline."""

from __future__ import annotations

import shlex
from pathlib import Path

import ray
import yaml

from ettin_batch.cli import build_parser
from ettin_batch.cli.jobs import job_config
from ettin_batch.config import RerankConfig, TeacherConfig

REPO = Path(__file__).resolve().parents[2]
CREDENTIAL_NAMES = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / "cluster" / name).read_text())


def _containers(rayjob: dict) -> list[dict]:
    spec = rayjob["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_rayjob_runs_the_rerank_command_with_a_config_from_jobs():
    job = _load("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["ettin-batch", "rerank"]
    args = build_parser().parse_args(words[1:])
    args.config = str(REPO / Path(args.config).relative_to("/app"))  # the image copies the repo to /app
    assert job_config(RerankConfig, args).scoring.model.startswith("cross-encoder/ettin-reranker-")


def test_rayjob_has_a_gpu_worker_group_the_installed_ray_version_and_token_auth():
    cluster = _load("rayjob.yaml")["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token"
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1 and int(limits["cpu"]) >= 2
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_rayjob_takes_aws_credentials_from_a_secret_on_every_pod_never_inline():
    for container in _containers(_load("rayjob.yaml")):
        assert {"secretRef": {"name": "ettin-batch-s3"}} in container["envFrom"], container["name"]
        for var in container.get("env", []):
            assert var["name"] not in CREDENTIAL_NAMES or "value" not in var, var["name"]
    assert "env_vars" in _load("rayjob.yaml")["spec"]["runtimeEnvYAML"]
    assert not any(n in _load("rayjob.yaml")["spec"]["runtimeEnvYAML"] for n in CREDENTIAL_NAMES)


def test_launcher_has_gpu_worker_types_installs_the_checkout_and_starts_ray_with_token_auth():
    config = _load("aws-gpu.yaml")
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    gpu = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert {t["node_config"]["InstanceType"].split(".")[0] for t in gpu.values()} == {"g6", "p5"}
    assert all("IamInstanceProfile" in t["node_config"] and t["max_workers"] >= 1 for t in gpu.values())
    assert config["file_mounts"]["~/ettin-batch"] == "."
    assert any("pip install" in c and "~/ettin-batch" in c for c in config["setup_commands"])
    assert any(f"ray[data,default]=={ray.__version__}" in c for c in config["setup_commands"])
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert any("RAY_AUTH_MODE=token ray start" in c for c in commands)
    text = (REPO / "cluster" / "aws-gpu.yaml").read_text()
    assert not any(name in text for name in CREDENTIAL_NAMES)


def test_every_example_job_config_loads_and_validates():
    configs = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
    assert {p.stem for p in configs} >= {"nightly", "backfill", "teacher"}
    for path in configs:
        command = "teacher" if path.stem == "teacher" else "rerank"
        args = build_parser().parse_args([command, "--config", str(path)])
        config = job_config(TeacherConfig if command == "teacher" else RerankConfig, args)
        assert config.input and config.output and "{date}" not in config.output, path.name


def test_the_teacher_config_loads_as_a_teacher_config():
    config = TeacherConfig.from_file(REPO / "jobs" / "configs" / "teacher.yaml")
    assert config.rows_per_file == 100000 and config.scoring.model.endswith("ettin-reranker-1b-v1")
