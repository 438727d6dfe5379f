"""A real multi-node Ray cluster on this machine, owned by one test session and torn down by PID.

Each node is a `ray start --block` process in its own process group, with its own temp dir and
ports, so it never touches another session's Ray (no `ray stop`, which kills every Ray on the host).
Ray 2.60 turns token auth on for `ray start --head`: every node and the submitting client get
RAY_AUTH_MODE=token and one freshly generated RAY_AUTH_TOKEN (never written to ~/.ray).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from helpers import free_port

REPO = Path(__file__).resolve().parents[2]
# Made per run, so the only copies are in the nodes' environment: the working dir uploaded with each
# job holds this source file, and a fixed secret written here would turn up in the cluster's files.
SECRET_KEY = "ebsecret" + secrets.token_hex(16)
ACCESS_KEY = "AKIAETTINBATCHTEST01"


@dataclass
class LocalCluster:
    """A head node and worker nodes; `env` is what a client needs (address, token)."""

    temp_dir: Path
    gcs_address: str
    dashboard_url: str
    env: dict[str, str]
    client_address: str = ""  # the head's Ray Client server, ray://...
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start_node(self, *, head: bool, num_cpus: int, node_env: dict[str, str], resources: str | None = None) -> None:
        n = len(self.procs)
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--block", f"--num-cpus={num_cpus}",
               "--num-gpus=0", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
               f"--temp-dir={self.temp_dir / f'n{n}'}", "--min-worker-port=0", "--max-worker-port=0",
               f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
               "--object-store-memory=200000000"]
        if resources:
            cmd.append(f"--resources={resources}")
        if head:
            port = int(self.gcs_address.rsplit(":", 1)[1])
            dash = int(self.dashboard_url.rsplit(":", 1)[1])
            self.client_address = f"ray://127.0.0.1:{free_port()}"
            cmd += ["--head", f"--port={port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
                    f"--ray-client-server-port={self.client_address.rsplit(':', 1)[1]}", "--include-dashboard=true"]
        else:
            cmd.append(f"--address={self.gcs_address}")
        log = self.temp_dir / f"ray-start-{n}.log"
        with open(log, "wb") as f:
            # Own process group: teardown signals this node's processes and nothing else.
            proc = subprocess.Popen(cmd, env={**os.environ, **node_env, **self.env}, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        self.logs.append(log)

    def wait_for_nodes(self, count: int, timeout_s: float = 120) -> None:
        """Block until the dashboard answers and `count` nodes are alive."""
        import json

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc, log in zip(self.procs, self.logs):
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                req = urllib.request.Request(f"{self.dashboard_url}/nodes?view=summary",
                                             headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    body = json.load(r)
                alive = [n for n in body["data"]["summary"] if n["raylet"]["state"] == "ALIVE"]
                if len(alive) >= count:
                    return
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"{count} Ray nodes not alive after {timeout_s} s; logs in {self.temp_dir}")

    def stop(self) -> None:
        """SIGTERM each node's process group, then SIGKILL what is left, including any Ray process
        whose command line names this cluster's temp dir (workers can leave their group)."""
        for proc in self.procs:
            _signal_group(proc.pid, signal.SIGTERM)
        # Ray's daemons stop on SIGTERM within a second or two; `ray start --block` itself does not, so it
        # and any straggler get SIGKILL after a short grace period.
        deadline = time.monotonic() + 3
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc.pid, signal.SIGKILL)
        # Workers and detached actors call setsid, so they are in no node's group; they carry this
        # cluster's temp dir or its token (in their environment), which no other Ray on the host has.
        for pid in _pids_mentioning([str(self.temp_dir), self.env["RAY_AUTH_TOKEN"]]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pids_mentioning(markers: list[str]) -> list[int]:
    """Processes (not this one) whose command line or environment contains one of `markers`."""
    needles = [m.encode() for m in markers]
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:  # gone already, or not ours to read
            continue
        if any(n in blob for n in needles):
            pids.append(int(entry.name))
    return pids


def start_cluster(workers: int = 1, cpus_per_node: int = 1, node_env: dict[str, str] | None = None) -> LocalCluster:
    """Start a head and `workers` worker nodes, each with `cpus_per_node` CPUs and `node_env` in its
    environment (what a pod gets from a Kubernetes Secret). Each node also carries a custom resource
    `node<i>` so tests can tell them apart."""
    temp_dir = Path(tempfile.mkdtemp(prefix="eb-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    token = secrets.token_hex(32)
    cluster = LocalCluster(temp_dir=temp_dir, gcs_address=f"127.0.0.1:{free_port()}",
                           dashboard_url=f"http://127.0.0.1:{free_port()}",
                           env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    try:
        cluster.start_node(head=True, num_cpus=cpus_per_node, node_env=node_env or {}, resources='{"node0": 1}')
        cluster.wait_for_nodes(1)
        for i in range(workers):
            cluster.start_node(head=False, num_cpus=cpus_per_node, node_env=node_env or {},
                               resources=f'{{"node{i + 1}": 1}}')
        cluster.wait_for_nodes(1 + workers)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def remove(cluster: LocalCluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def submit(cluster: LocalCluster, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`ettin-batch submit --address <dashboard> --working-dir <repo> ARGS` as a user runs it: a separate
    process that knows the token only through RAY_AUTH_TOKEN (no RAY_AUTH_MODE, no ~/.ray file)."""
    client_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    client_env.update(RAY_AUTH_TOKEN=cluster.env["RAY_AUTH_TOKEN"], **(env or {}))
    return subprocess.run([sys.executable, "-m", "ettin_batch.cli", "submit", "--address", cluster.dashboard_url,
                           "--working-dir", str(REPO), *args], env=client_env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
