"""The fixed cost of one resume group: the same pairs scored as one group and as `--shards` groups.

    python benchmarks/bench_group_cost.py [--pairs 800] [--shards 4] [--model random:ettin-tiny] [--repeats 2] [--reuse]

Until the groups shared one stream (pipeline/groups.py), each group was a Ray Data execution of its own, with
its own scoring actors: a new process that imports torch and sentence-transformers and loads the model,
after the last group's actors have exited, ~10 s whatever the group's size (RESULTS.md). Now the groups of a
run share one execution and its actors, so a group should cost next to nothing. `--reuse`: every timed run
reuses an earlier run of the same pairs (scored once, untimed), so each pair goes through --reuse's join and
keeps its score; until the join moved into the one stream, such a run still scored each group on its own. The pairs are few and the model tiny, so the time is nearly all fixed cost:
(wall of N groups - wall of 1 group) / (N - 1) is the cost of a group.
One local Ray for every run (`ray.init` once), runs alternating; the best of each counts. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=800)
    p.add_argument("--shards", type=int, default=4, help="input files, one group each in the grouped runs")
    p.add_argument("--model", default="random:ettin-tiny")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--reuse", action="store_true", help="time --reuse runs of an earlier run of the same pairs")
    args = p.parse_args()
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    from ettin_batch import rerank
    from ettin_batch.config import RerankConfig
    from ettin_batch.sample_data import write_sample

    root = tempfile.mkdtemp(prefix="eb-groups-")
    candidates = 20
    write_sample(f"{root}/in", queries=args.pairs // candidates, candidates=candidates, shards=args.shards)
    pairs = (args.pairs // candidates) * candidates
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    walls: dict[int, list[float]] = {1: [], args.shards: []}
    try:
        previous = None
        if args.reuse:
            previous = f"{root}/previous"
            rerank(RerankConfig.of(input=[f"{root}/in"], output=previous, model=args.model, progress=False))
        for i in range(args.repeats):
            for groups in walls:
                out = f"{root}/out-{groups}-{i}"
                start = time.perf_counter()
                result = rerank(RerankConfig.of(input=[f"{root}/in"], output=out, model=args.model, progress=False,
                                                group_rows=max(1, pairs // groups), reuse=previous))
                walls[groups].append(time.perf_counter() - start)
                assert result.manifest["resume"]["groups"] == groups and result.counts["scored"] == pairs
                assert not args.reuse or result.manifest["reuse"]["pairs_reused"] == pairs
                shutil.rmtree(out)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    one, many = min(walls[1]), min(walls[args.shards])
    print(json.dumps({"pairs": pairs, "model": args.model, "groups": args.shards, "reuse": args.reuse,
                      "wall_1_group_s": round(one, 1), f"wall_{args.shards}_groups_s": round(many, 1),
                      "per_group_s": round((many - one) / (args.shards - 1), 2),
                      "walls": {k: [round(w, 1) for w in v] for k, v in walls.items()},
                      "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                      "time_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}))


if __name__ == "__main__":
    main()
