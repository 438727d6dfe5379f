"""The cluster definitions and example job configs parse, and say what the job needs: the entry point, GPU
workers, the matching Ray version, token auth, and credentials from a Secret or an instance role, never inline.

Every file in cluster/ is checked against its tool's own schema: Ray's ray-schema.json and validate_config
and botocore's RunInstances request shape for the launcher, KubeRay's RayJob CRD for the RayJob, moto's IAM
for the policies. Ray's own AWS bootstrap code then runs on the launcher file against moto, where it decides
the head's role and the images."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
from pathlib import Path
from unittest import mock

import boto3
import botocore.session
import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from botocore.validate import ParamValidator
from moto import mock_aws
from ray.autoscaler._private.aws import config as ray_aws_config
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.tags import TAG_RAY_CLUSTER_NAME

from ettin_batch.cli import build_parser
from ettin_batch.cli.jobs import job_config
from ettin_batch.config import RerankConfig, TeacherConfig

REPO = Path(__file__).resolve().parents[2]
CREDENTIAL_NAMES = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")
# Which tool reads each file in cluster/; a file not listed fails test_every_file_in_cluster_is_checked.
RAY_LAUNCHER_FILES = ["aws-gpu.yaml"]
KUBERAY_FILES = ["rayjob.yaml"]
IAM_POLICY_FILES = ["iam/head-launch-policy.json", "iam/s3-data-policy.json"]
IAM_TRUST_FILES = ["iam/ec2-trust-policy.json"]
DOC_FILES = ["README.md"]
# AWS's public parameter for the Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04: Python 3.10).
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
# KubeRay v1.5.1's RayJob schema, cut small (source, licence and how: tests/data/kuberay/README.md).
RAYJOB_SCHEMA = REPO / "tests" / "data" / "kuberay" / "rayjob-v1.schema.json"


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / "cluster" / name).read_text())


def _policy(name: str) -> dict:
    return json.loads((REPO / "cluster" / name).read_text())


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


def test_rayjob_gives_the_workers_the_settings_a_local_ray_gives_them():
    from ettin_batch.pipeline.run import WORKER_ENV

    env_vars = yaml.safe_load(_load("rayjob.yaml")["spec"]["runtimeEnvYAML"])["env_vars"]
    assert WORKER_ENV.items() <= env_vars.items()


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


# ---------------------------------------------------------------- every file, its tool's own schema


def test_every_file_in_cluster_is_checked():
    files = {str(p.relative_to(REPO / "cluster")) for p in (REPO / "cluster").rglob("*") if p.is_file()}
    assert files == {*RAY_LAUNCHER_FILES, *KUBERAY_FILES, *IAM_POLICY_FILES, *IAM_TRUST_FILES, *DOC_FILES}


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


@pytest.mark.parametrize("name", IAM_POLICY_FILES)
def test_iam_policy_files_are_valid_iam_policies(name):
    with mock_aws():
        boto3.client("iam", region_name="us-east-1").create_policy(
            PolicyName="check", PolicyDocument=(REPO / "cluster" / name).read_text())  # MalformedPolicyDocument if not


@pytest.mark.parametrize("name", IAM_TRUST_FILES)
def test_iam_trust_files_let_ec2_and_only_ec2_take_the_role(name):
    [statement] = _policy(name)["Statement"]
    assert statement == {**statement, "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                         "Action": "sts:AssumeRole"}
    with mock_aws():
        boto3.client("iam", region_name="us-east-1").create_role(
            RoleName="check", AssumeRolePolicyDocument=(REPO / "cluster" / name).read_text())


# ---------------------------------------------------------------- aws-gpu.yaml: the head's role, the images


def _profiles() -> tuple[str, set[str]]:
    """The head's instance profile ARN and the set of the workers' ones."""
    config = _load("aws-gpu.yaml")
    types = config["available_node_types"]
    arn = lambda t: t["node_config"].get("IamInstanceProfile", {}).get("Arn")  # noqa: E731
    head = types[config["head_node_type"]]
    return arn(head), {arn(t) for name, t in types.items() if name != config["head_node_type"]}


def test_ray_up_keeps_the_heads_own_role_and_makes_no_default_one(monkeypatch):
    """Ray's AWS bootstrap gives a head without IamInstanceProfile a role of its own making (ray-autoscaler-v1,
    EC2 and S3 full access, no iam:PassRole), so its autoscaler could not launch workers that carry a profile."""
    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")  # the AWS policies Ray's default role attaches
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    config = prepare_config(_load("aws-gpu.yaml"))
    config["head_node"] = {}  # as bootstrap_aws sets it up before this step
    with mock_aws(), mock.patch.object(ray_aws_config.time, "sleep"):  # Ray waits 15 s for IAM; moto needs none
        ray_aws_config._configure_iam_role(config)
        made = [r["RoleName"] for r in boto3.client("iam", region_name="us-east-1").list_roles()["Roles"]]
    assert made == [] and config["head_node"] == {}
    head, workers = _profiles()
    assert head and None not in workers and head not in workers  # the workers get no launch rights


def test_every_node_runs_one_current_deep_learning_ami_that_ray_leaves_as_written():
    """`latest_dlami` (or no ImageId) makes Ray 2.60 swap in its default, the Ubuntu 18.04 DLAMI V71 (CUDA
    11.2, Python older than Ray's floor). One image on all nodes: Ray wants the same Python everywhere."""
    config = prepare_config(_load("aws-gpu.yaml"))
    resolved = copy.deepcopy(config)
    ray_aws_config._check_ami(resolved)
    assert resolved["available_node_types"] == config["available_node_types"]
    images = {t["node_config"]["ImageId"] for t in config["available_node_types"].values()}
    assert len(images) == 1
    [image] = images
    assert image == f"resolve:ssm:{DLAMI_PARAMETER}" or re.fullmatch(r"ami-[0-9a-f]{17}", image), image


def test_the_role_setup_in_the_readme_makes_the_profiles_the_launcher_names(monkeypatch):
    """The README's commands, run against moto's IAM in the account the file names."""
    head, workers = _profiles()
    [worker] = workers
    account = head.split(":")[4]
    monkeypatch.setenv("MOTO_ACCOUNT_ID", account)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    readme = (REPO / "cluster" / "README.md").read_text()
    made = {}
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        for role in ("ettin-batch-worker", "ettin-batch-head"):
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=(REPO / "cluster/iam/ec2-trust-policy.json").read_text())
            iam.put_role_policy(RoleName=role, PolicyName="s3-data",
                                PolicyDocument=(REPO / "cluster/iam/s3-data-policy.json").read_text())
            made[role] = iam.create_instance_profile(InstanceProfileName=role)["InstanceProfile"]["Arn"]
            iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)
        iam.put_role_policy(RoleName="ettin-batch-head", PolicyName="launch-workers",
                            PolicyDocument=(REPO / "cluster/iam/head-launch-policy.json").read_text())
        worker_role = iam.get_role(RoleName="ettin-batch-worker")["Role"]["Arn"]
    assert (made["ettin-batch-head"], made["ettin-batch-worker"]) == (head, worker)
    [pass_role] = [s for s in _policy("iam/head-launch-policy.json")["Statement"] if s["Action"] == "iam:PassRole"]
    assert pass_role["Resource"] == worker_role
    for command in ("create-role", "put-role-policy", "create-instance-profile", "add-role-to-instance-profile"):
        assert f"aws iam {command} " in readme, command


def _allows(policy: dict, action: str, resource: str, context: dict[str, str] | None = None) -> bool:
    """Whether an Allow statement of `policy` grants `action` on `resource`. Enough IAM for these files, which
    have no Deny, no NotAction and no wildcard actions (asserted below): actions match case-insensitively,
    resources as globs, and a statement counts only if each of its StringEquals conditions holds in `context`."""
    for st in policy["Statement"]:
        actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
        conditions = st.get("Condition", {})
        assert st["Effect"] == "Allow" and set(conditions) <= {"StringEquals"}
        if (action.lower() in (a.lower() for a in actions)
                and any(fnmatch.fnmatchcase(resource, r) for r in resources)
                and all((context or {}).get(k) == v for k, v in conditions.get("StringEquals", {}).items())):
            return True
    return False


def test_the_head_may_launch_workers_pass_them_the_worker_role_and_nothing_wider():
    config = _load("aws-gpu.yaml")
    head = _policy("iam/head-launch-policy.json")
    head_arn, workers = _profiles()
    account = head_arn.split(":")[4]
    worker_role = f"arn:aws:iam::{account}:role/{next(iter(workers)).rsplit('/', 1)[1]}"  # profile = role name
    actions = [a for st in head["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])]
    assert not any("*" in a for a in actions), actions  # each right named, none by wildcard
    # What Ray's AWS node provider calls from the head: create_instances (with tags), instances.filter,
    # create_tags, terminate_instances.
    for action in ("ec2:RunInstances", "ec2:DescribeInstances", "ec2:CreateTags"):
        assert _allows(head, action, "*"), action
    # Ray tags every node it launches ray-cluster-name=<cluster_name>: the head ends its own cluster's nodes only.
    node = f"arn:aws:ec2:{config['provider']['region']}:{account}:instance/i-0123456789abcdef0"
    tag = f"ec2:ResourceTag/{TAG_RAY_CLUSTER_NAME}"
    assert _allows(head, "ec2:TerminateInstances", node, {tag: config["cluster_name"]})
    assert not _allows(head, "ec2:TerminateInstances", node, {tag: "someone-else"})
    assert not _allows(head, "ec2:TerminateInstances", node)
    to_ec2 = {"iam:PassedToService": "ec2.amazonaws.com"}
    assert _allows(head, "iam:PassRole", worker_role, to_ec2)
    assert not _allows(head, "iam:PassRole", worker_role, {"iam:PassedToService": "lambda.amazonaws.com"})
    assert not _allows(head, "iam:PassRole", f"arn:aws:iam::{account}:role/ettin-batch-head", to_ec2)
    assert not _allows(head, "iam:PassRole", f"arn:aws:iam::{account}:role/Admin", to_ec2)
    # EC2 resolves `resolve:ssm:` with the caller's rights (ssm:GetParameters on AWS's public parameter);
    # an image pinned to its ami- id needs none.
    image = config["available_node_types"][config["head_node_type"]]["node_config"]["ImageId"]
    if image.startswith("resolve:ssm:"):
        parameter = f"arn:aws:ssm:{config['provider']['region']}::parameter{image.removeprefix('resolve:ssm:')}"
        assert _allows(head, "ssm:GetParameters", parameter)


def test_the_data_policy_reads_every_example_input_and_writes_every_example_output():
    data = _policy("iam/s3-data-policy.json")
    assert not any(_allows(data, a, "*") for a in ("ec2:RunInstances", "iam:PassRole"))  # workers launch nothing
    for path in sorted((REPO / "jobs" / "configs").glob("*.yaml")):
        job = yaml.safe_load(path.read_text())
        inputs = [job["input"]] if isinstance(job["input"], str) else job["input"]
        outputs = [job["output"].replace("{date}", "2026-11-29")]
        for url in inputs + outputs:
            bucket, _, prefix = url.removeprefix("s3://").partition("/")
            assert _allows(data, "s3:ListBucket", f"arn:aws:s3:::{bucket}"), (path.name, url)
            assert _allows(data, "s3:GetObject", f"arn:aws:s3:::{bucket}/{prefix}part-0.parquet"), (path.name, url)
        for url in outputs:
            obj = f"arn:aws:s3:::{url.removeprefix('s3://')}scores/part-0.parquet"
            for action in ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
                assert _allows(data, action, obj), (path.name, action)
