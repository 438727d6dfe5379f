"""Scale: the rerank job on N pairs and on 10N pairs: wall time and peak memory of the whole job.

    python benchmarks/bench_rerank_scale.py --pairs 200000 2000000 [--model random:ettin-tiny]

Each size runs `ettin-batch rerank` in a fresh process (it starts its own local Ray). Peak memory is
the largest sum, sampled every 0.5 s, of the proportional set size (PSS, so pages shared between
processes such as Ray's object store are counted once) of that process and all its descendants:
the driver, the raylet, GCS, every worker and actor. Input generation is not timed.

Targets (issue 3): 10x the pairs -> wall time at most 11x, peak memory at most 1.5x (the job
streams rather than materialising the dataset). Prints one JSON line per size, then the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _name(pid: int) -> str:
    """What a process of the job is: Ray names its workers in their title (ray::ScorePairs, ray::IDLE, ...)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "?"
    first = words[0].decode(errors="replace")
    if first.startswith("ray::"):
        return first.split("(")[0].split()[0]
    if "ettin_batch.cli" in b" ".join(words).decode(errors="replace"):
        return "driver"
    return os.path.basename(first) or "?"


def tree_pss(root: int) -> dict[int, tuple[str, int, int]]:
    """PSS of `root` and all its descendants, in bytes, by pid, with each process's name and the part of its
    PSS in shared memory (Ray's object store lives in /dev/shm), from Linux /proc."""
    found, stack = {}, [root]
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                fields = dict(line.split()[:2] for line in f if line.startswith(("Pss:", "Pss_Shmem:")))
            pss, shmem = int(fields["Pss:"]) * 1024, int(fields.get("Pss_Shmem:", 0)) * 1024
        except (OSError, KeyError):
            continue
        found[pid] = (_name(pid), pss, shmem)
        stack += _children(pid)
    return found


def by_name(processes: dict[int, tuple[str, int, int]], part: int = 1) -> dict[str, int]:
    """MiB per kind of process, largest first (part 2: the shared-memory part)."""
    total: dict[str, int] = {}
    for entry in processes.values():
        total[entry[0]] = total.get(entry[0], 0) + entry[part]
    return {k: round(v / 2**20) for k, v in sorted(total.items(), key=lambda kv: -kv[1])}


def run_job(data: str, out: str, model: str, batch_size: int, extra: list[str] = (), trace: str | None = None) -> dict:
    # A fresh folder: an unfinished one (an interrupted earlier run) would be resumed, not rerun.
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "ettin_batch.cli", "rerank", "--input", data, "--output", out, "--model", model,
           "--batch-size", str(batch_size), "--overwrite", "--no-progress", "--gpus-per-actor", "0", *extra]
    start = time.perf_counter()
    # Workers at niceness 0 like the driver (Ray starts them at 15): see bench_rerank_overhead.py.
    proc = subprocess.Popen(cmd, stdout=sys.stderr, env={**os.environ, "RAY_worker_niceness": "0"})
    peak, at_peak = [0], [{}]

    log = open(trace, "a") if trace else None

    def sample():
        while proc.poll() is None:
            processes = tree_pss(proc.pid)
            total = sum(pss for _, pss, _ in processes.values())
            if total > peak[0]:
                peak[0], at_peak[0] = total, processes
            if log:  # where the memory sits over time: MiB and process count per kind
                count = {}
                for name, *_ in processes.values():
                    count[name] = count.get(name, 0) + 1
                log.write(json.dumps({"t": round(time.perf_counter() - start, 1), "total_mib": round(total / 2**20),
                                      "mib": by_name(processes), "shmem_mib": by_name(processes, part=2),
                                      "processes": count}) + "\n")
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if proc.wait() != 0:
        raise SystemExit(f"job failed with exit code {proc.returncode}")
    wall = time.perf_counter() - start
    sampler.join()
    with open(os.path.join(out, "_SUCCESS.json")) as f:
        manifest = json.load(f)
    return {"wall_s": round(wall, 1), "peak_pss_mib": round(peak[0] / 2**20), "job_pairs_per_s": manifest["pairs_per_s"],
            "scored": manifest["counts"]["scored"], "phases_s": manifest["phases_s"],
            "at_peak_mib": by_name(at_peak[0])}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, nargs="+", default=[200_000, 2_000_000])
    p.add_argument("--model", default="random:ettin-tiny")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--pairs-per-shard", type=int, default=50_000)
    p.add_argument("--doc-words", type=int, nargs=2, default=(5, 30))
    p.add_argument("--work", default=os.path.join(HERE, "_work", "scale"))
    p.add_argument("--trace", help="append each memory sample (MiB and processes per kind) to this JSON-lines file")
    args = p.parse_args()

    from ettin_batch.sample_data import write_sample

    results = []
    for n in args.pairs:
        data, out = os.path.join(args.work, f"in-{n}"), os.path.join(args.work, f"out-{n}")
        if not os.path.exists(os.path.join(data, "_DONE")):
            write_sample(data, queries=n // 20, candidates=20, shards=max(1, n // args.pairs_per_shard),
                         doc_words=tuple(args.doc_words))
            open(os.path.join(data, "_DONE"), "w").close()
        r = {"benchmark": "rerank_scale", "pairs": n, "model": args.model, **run_job(data, out, args.model,
                                                                                      args.batch_size, trace=args.trace)}
        print(json.dumps(r), flush=True)
        results.append(r)
    for small, big in zip(results, results[1:]):
        print(json.dumps({"pairs": [small["pairs"], big["pairs"]],
                          "wall_ratio": round(big["wall_s"] / small["wall_s"], 2),
                          "peak_memory_ratio": round(big["peak_pss_mib"] / small["peak_pss_mib"], 2)}))


if __name__ == "__main__":
    main()
