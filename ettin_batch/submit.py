"""`ettin-batch submit`: run a job on a Ray cluster through Ray's Job Submission API.

    ettin-batch submit --address http://HEAD:8265 --working-dir . -- rerank --config jobs/configs/nightly.yaml
    ettin-batch submit --address http://HEAD:8265 --working-dir . -- python jobs/rerank.py --config ...

Everything after `--` is the job. An ettin-batch subcommand (`rerank ...`) runs as
`python -m ettin_batch.cli rerank ...` on the cluster, which works whether the cluster image has
ettin-batch installed or the package arrives with `--working-dir`; anything else runs as written.
The command follows the job's logs and exits with its status: 0 when it SUCCEEDED, the driver's
own exit code when it failed with one (2 bad config or input, 3 model not loadable), else 1.

Credentials: a Ray 2.60 cluster started with `ray start --head` wants a token; RAY_AUTH_TOKEN,
when set, goes to the dashboard as a bearer header. AWS credentials belong to the cluster itself
(an instance role, a Kubernetes Secret, the nodes' environment): Ray keeps a job's runtime_env in
plain text (the jobs API, runtime_env_agent.log), so `--env` refuses names that look like
credentials, and every runtime_env value is redacted in what this command prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
import time

from ettin_batch.errors import ConfigError
from ettin_batch.pipeline.run import WORKER_ENV

EXIT_FAILED = 1  # the job failed or was stopped, and its driver left no exit code of its own
EXIT_INTERRUPTED = 130  # Ctrl-C while following: the job keeps running on the cluster

# What `ray job submit --working-dir .` would otherwise upload from a checkout (Ray also skips .gitignore'd paths).
DEFAULT_EXCLUDES = [".git", ".venv", "**/__pycache__", ".pytest_cache", "sample", "benchmarks/_work"]
REDACTED = "<redacted>"
# Names `--env` will not forward: Ray would store and log their values (see the module docstring).
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY|API_KEY|ACCESS_KEY", re.IGNORECASE)
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def entrypoint(job: list[str], commands=()) -> str:
    """The shell command the cluster runs for the words after `--`; `commands` are ettin-batch's subcommands."""
    if job and job[0] == "ettin-batch":
        job = job[1:]
    if job and job[0] in commands:
        # `python -m` finds the package in the uploaded working dir as well as in site-packages.
        return shlex.join(["python", "-m", "ettin_batch.cli", *job])
    return shlex.join(job)


def build_runtime_env(working_dir: str | None, runtime_env_json: str | None, env: list[str],
                      environ: dict[str, str] | None = None) -> dict:
    """The job's runtime_env: the JSON given, the working dir (with default excludes), the --env variables
    and the workers' own settings (pipeline.run.WORKER_ENV).

    Raises ConfigError naming the flag at fault.
    """
    environ = os.environ if environ is None else environ
    runtime_env: dict = {}
    if runtime_env_json:
        try:
            runtime_env = json.loads(runtime_env_json)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--runtime-env-json is not valid JSON: {e}") from None
        if not isinstance(runtime_env, dict):
            raise ConfigError("--runtime-env-json must be a JSON object, e.g. '{\"pip\": [\"flash-attn\"]}'")
    if working_dir:
        if not os.path.isdir(working_dir):
            raise ConfigError(f"--working-dir {working_dir} is not a folder")
        runtime_env["working_dir"] = working_dir
        runtime_env["excludes"] = [*runtime_env.get("excludes", []), *DEFAULT_EXCLUDES]
    env_vars = dict(runtime_env.get("env_vars") or {})
    for item in env:
        name, sep, value = item.partition("=")
        if not name or name.startswith("-"):
            raise ConfigError(f"--env {name or '=...'}: expected NAME or NAME=VALUE")
        if SECRET_NAME.search(name):
            raise ConfigError(f"--env {name}: looks like a credential, and Ray stores a job's runtime_env in plain "
                             "text (jobs API, runtime_env_agent.log). Give the cluster its credentials instead: an "
                             "instance role, a Kubernetes Secret (cluster/rayjob.yaml) or the nodes' environment.")
        if not sep:
            if name not in environ:
                raise ConfigError(f"--env {name}: {name} is not set here, so there is nothing to copy")
            value = environ[name]
        env_vars[name] = value
    for name, value in WORKER_ENV.items():  # what the job's workers need (pipeline.run), unless given here
        env_vars.setdefault(name, value)
    runtime_env["env_vars"] = env_vars
    return runtime_env


def redacted(runtime_env: dict) -> dict:
    """runtime_env as safe to print: every env_vars value hidden (secrets cannot be told apart reliably)."""
    shown = dict(runtime_env)
    if "env_vars" in shown:
        shown["env_vars"] = {name: REDACTED for name in shown["env_vars"]}
    return shown


def scrub(text: str, runtime_env: dict) -> str:
    """`text` with every runtime_env env_vars value (and the auth token) replaced by <redacted>."""
    values = [*(runtime_env.get("env_vars") or {}).values(), os.environ.get("RAY_AUTH_TOKEN", "")]
    for value in sorted((v for v in values if isinstance(v, str) and len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def _auth_headers(environ: dict[str, str]) -> dict[str, str]:
    """A bearer header for Ray 2.60 token auth when RAY_AUTH_TOKEN is set (Ray itself sends one only
    when RAY_AUTH_MODE=token is set here too)."""
    token = environ.get("RAY_AUTH_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _follow(client, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def _final_status(client, job_id: str, timeout_s: float = 30.0):
    """The job's details once it is terminal (the log stream can close a moment before the status flips)."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(job_id)
        if _status(info) in _TERMINAL or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def _status(info) -> str:
    return getattr(info.status, "value", str(info.status))


def _exit_code(info) -> int:
    if _status(info) == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and 0 < code < 256 else EXIT_FAILED


def submit(job: list[str], *, address: str | None, working_dir: str | None = None,
           runtime_env_json: str | None = None, env: list[str] = (), submission_id: str | None = None,
           no_wait: bool = False, commands=()) -> int:
    """Submit `job` (the words after `--`), follow its logs and return its exit code (see the module
    docstring). Raises ConfigError for bad flags or a cluster that cannot be reached."""
    if job and job[0] == "--":
        job = job[1:]
    if not job:
        raise ConfigError("nothing to submit: put the job after --, e.g. `ettin-batch submit --address "
                          "http://HEAD:8265 -- rerank --config jobs/configs/nightly.yaml`")
    runtime_env = build_runtime_env(working_dir, runtime_env_json, list(env))
    from ray.job_submission import JobSubmissionClient

    command = entrypoint(job, commands)
    try:
        client = JobSubmissionClient(address, headers=_auth_headers(os.environ))
        job_id = client.submit_job(entrypoint=command, runtime_env=runtime_env or None, submission_id=submission_id)
    except (ConnectionError, RuntimeError, ValueError) as e:
        # Ray's message names the address and, on 401/403, how to pass a token; a rejected runtime_env may be
        # echoed back in it, so the values we sent are scrubbed.
        where = address or os.environ.get("RAY_ADDRESS") or "RAY_ADDRESS (unset)"
        raise ConfigError(f"could not submit to {where}: {scrub(str(e), runtime_env)}") from None
    print(f"submitted job {job_id}: {command}", file=sys.stderr)
    if runtime_env:
        print(f"  runtime_env {json.dumps(redacted(runtime_env))}", file=sys.stderr)
    if no_wait:
        print(job_id)
        return 0
    try:
        asyncio.run(_follow(client, job_id))
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running (ray job stop {job_id} to end it)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RuntimeError as e:  # the log stream broke; the status below still tells how the job ended
        print(f"warning: log stream for {job_id} ended early: {e}", file=sys.stderr)
    info = _final_status(client, job_id)
    code = _exit_code(info)
    # Ray's message repeats the log tail on failure; its first line says why.
    reason = f": {info.message.splitlines()[0][:300]}" if code and info.message else ""
    print(f"job {job_id} {_status(info)}{reason}", file=sys.stderr)
    return code
