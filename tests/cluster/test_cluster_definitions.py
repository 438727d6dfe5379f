"""The cluster definitions and example job configs parse, and say what the job needs: the entry point, GPU
workers, the matching Ray version, token auth, and credentials from a Secret or an instance role, never inline.

Every file in cluster/ is checked against its tool's own schema: Ray's ray-schema.json and validate_config
and botocore's RunInstances request shape for the launcher, KubeRay's RayJob CRD for the RayJob."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import botocore.session
import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from botocore.validate import ParamValidator
from ray.autoscaler._private.util import prepare_config, validate_config

from ettin_batch.cli import build_parser, rerank_config
from ettin_batch.pipeline.teacher import TeacherConfig, teacher_config

REPO = Path(__file__).resolve().parents[2]
CREDENTIAL_NAMES = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")
# Which tool reads each file in cluster/; a file not listed fails test_every_file_in_cluster_is_checked.
RAY_LAUNCHER_FILES = ["aws-gpu.yaml"]
KUBERAY_FILES = ["rayjob.yaml"]
DOC_FILES = ["README.md"]
# KubeRay v1.5.1's RayJob schema, cut small (source, licence and how: tests/data/kuberay/README.md).
RAYJOB_SCHEMA = REPO / "tests" / "data" / "kuberay" / "rayjob-v1.schema.json"


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
    assert rerank_config(args).model.startswith("cross-encoder/ettin-reranker-")


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
        config = teacher_config(args) if command == "teacher" else rerank_config(args)
        assert config.input and config.output and "{date}" not in config.output, path.name


def test_the_teacher_config_loads_as_a_teacher_config():
    config = TeacherConfig.from_file(REPO / "jobs" / "configs" / "teacher.yaml")
    assert config.rows_per_file == 100000 and config.model.endswith("ettin-reranker-1b-v1")


# ---------------------------------------------------------------- every file, its tool's own schema


def test_every_file_in_cluster_is_checked():
    files = {str(p.relative_to(REPO / "cluster")) for p in (REPO / "cluster").rglob("*") if p.is_file()}
    assert files == {*RAY_LAUNCHER_FILES, *KUBERAY_FILES, *DOC_FILES}


def _strict(schema):
    """The CRD schema as `kubectl apply` enforces it: an unknown field is an error (server-side field
    validation, strict by default since Kubernetes 1.27), except where the schema preserves unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        schema["additionalProperties"] = False
    return schema


def _rayjob_errors(document: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(_strict(json.loads(RAYJOB_SCHEMA.read_text())))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_files_match_the_rayjob_crd(name):
    assert _rayjob_errors(_load(name)) == []


def test_the_crd_check_refuses_a_misspelt_field_and_a_wrong_auth_mode():
    job = _load("rayjob.yaml")
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplica"] = 4
    job["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "tokens"
    errors = _rayjob_errors(job)
    assert len(errors) == 2
    assert any("'minReplica' was unexpected" in e for e in errors) and any("'tokens' is not one of" in e for e in errors)


@pytest.mark.parametrize("name", RAY_LAUNCHER_FILES)
def test_launcher_files_pass_rays_schema_and_validate_config_as_ray_up_runs_them(name):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(_load(name), schema)
    validate_config(prepare_config(_load(name)))  # what `ray up` runs before it calls AWS


@pytest.mark.parametrize("name", RAY_LAUNCHER_FILES)
def test_launcher_node_configs_are_valid_run_instances_requests(name):
    """Ray hands each node_config to EC2's RunInstances, adding MinCount, MaxCount, tags, subnet and
    security groups: botocore's model of that request is the schema of node_config."""
    request = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for node_type, spec in _load(name)["available_node_types"].items():
        report = ParamValidator().validate({**spec["node_config"], "MinCount": 1, "MaxCount": 1}, request)
        assert not report.has_errors(), f"{node_type}: {report.generate_report()}"
