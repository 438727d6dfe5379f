"""Time and peak memory of `labels` (both top-N paths, thresholds) and `eval`, per million pairs.

    python benchmarks/bench_labels_eval.py [--pairs 1000000 4000000] [--candidates 100] [--top-n 10]

For each size: writes a scores/ folder like the job's (float32 scores, string ids such as
"q0001234" / "d000012345", files of 500k rows, each query's rows dealt over all files, so the
streaming steps' memory depends on the file size, not the total), then runs each step in a
fresh process and reads that process's peak RSS (VmHWM: unlike getrusage's maxrss it does not
carry over a parent's peak across exec), so one step's memory never hides in another's:
  labels-top-n-in-process   --top-n-relevant with the in-process path forced
  labels-top-n-ray          --top-n-relevant with the Ray path forced (local Ray, 2 CPUs; the
                            peak is the driver's: the workers are other processes)
  labels-thresholds         --thresholds (one process, streaming)
  eval-all-judged           eval of scores/ against the top-N labels.parquet: every pair judged,
                            the most pytrec_eval can be given (qrels as large as the run)
  eval-top-n-judged         eval against relevant.parquet, only the relevant pairs (N judged per
                            query): the usual shape, a run much larger than its qrels
Memory per pair is the slope between the sizes (peak at the larger minus peak at the smaller,
over the difference in pairs), which leaves out the fixed cost of imports. Prints one JSON line
per step and writes them all to benchmarks/results/labels_eval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = ("labels-top-n-in-process", "labels-top-n-ray", "labels-thresholds", "eval-all-judged", "eval-top-n-judged")


def write_scores(folder: str, pairs: int, candidates: int, rows_per_file: int = 500_000) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    queries = pairs // candidates
    qids = pa.array(np.char.add("q", np.char.zfill(np.repeat(np.arange(queries), candidates).astype(str), 7)))
    docs = pa.array(np.char.add("d", np.char.zfill(rng.permutation(queries * candidates).astype(str), 9)))
    scores = pa.array(rng.normal(0, 3, queries * candidates).astype(np.float32))
    table = pa.table({"query_id": qids, "doc_id": docs, "score": scores})
    os.makedirs(folder, exist_ok=True)
    files = max(1, -(-table.num_rows // rows_per_file))
    for i in range(files):
        pq.write_table(table.take(pa.array(np.arange(i, table.num_rows, files))), f"{folder}/part-{i}.parquet")


def _rss(field: str) -> int:
    """VmHWM (peak) or VmRSS (now) of this process, in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


class _PeakAnon:
    """Peak of RssAnon (this process's private memory), sampled every 20 ms.

    VmHWM also counts shared pages the process has mapped: in the Ray step, the blocks it
    reads zero-copy from the node's object store, which are Ray's memory, not the driver's.
    """

    def __init__(self):
        import threading

        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss("RssAnon"))
            self._stop.wait(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss("RssAnon"))


def child(step: str, work: str, top_n: int) -> dict:
    """One step in this (fresh) process; returns wall time and peak memory."""
    import warnings

    from ettin_batch import labels

    scores, out = f"{work}/scores", f"{work}/labels-{step}"
    base = _rss("VmRSS")
    anon = _PeakAnon()
    t0 = time.perf_counter()
    if step == "labels-top-n-in-process":
        labels.TOP_N_IN_PROCESS_ROWS = 10**12
        result = labels.backfill_labels(scores, out, top_n_relevant=top_n, overwrite=True)["grade_counts"]
    elif step == "labels-top-n-ray":
        import ray

        labels.TOP_N_IN_PROCESS_ROWS = 0
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        t0 = time.perf_counter()  # Ray's start is not the labels' cost
        result = labels.backfill_labels(scores, out, top_n_relevant=top_n, overwrite=True)["grade_counts"]
        ray.shutdown()
    elif step == "labels-thresholds":
        result = labels.backfill_labels(scores, out, thresholds="-2,0,2", overwrite=True)["grade_counts"]
    else:
        from ettin_batch.evaluation import evaluate

        labelled = f"{work}/labels-labels-top-n-in-process"
        qrels = f"{labelled}/labels.parquet" if step == "eval-all-judged" else f"{labelled}/relevant.parquet"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = evaluate(scores, qrels, ["ndcg@10", "mrr@10", "recall@100", "map"])["metrics"]
    wall = time.perf_counter() - t0
    return {"step": step, "wall_s": round(wall, 2), "peak_rss_bytes": _rss("VmHWM"),
            "peak_private_bytes": anon.stop(), "rss_before_bytes": base, "result": result}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, nargs="+", default=[1_000_000, 4_000_000])
    p.add_argument("--candidates", type=int, default=100, help="pairs per query")
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    p.add_argument("--work", default=os.path.join(HERE, "_work", "labels_eval"))
    p.add_argument("--child", nargs=2, metavar=("STEP", "WORK"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.top_n)))
        return

    rows = []
    env = {**os.environ, "PYTHONPATH": os.path.dirname(HERE)}
    for pairs in args.pairs:
        work = f"{args.work}/{pairs}"
        if not os.path.exists(f"{work}/scores"):  # in a child: this process stays small
            subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {HERE!r}); import bench_labels_eval as b; "
                            f"b.write_scores({work + '/scores'!r}, {pairs}, {args.candidates})"], env=env, check=True)
        for step in args.steps:
            labelled = f"{work}/labels-labels-top-n-in-process"
            if step.startswith("eval") and not os.path.exists(f"{labelled}/labels.parquet"):
                raise SystemExit("eval steps read the in-process labels: run labels-top-n-in-process first")
            if step == "eval-top-n-judged" and not os.path.exists(f"{labelled}/relevant.parquet"):
                subprocess.run([sys.executable, "-c", "import pyarrow.parquet as pq; pq.write_table(pq.read_table("
                                f"{labelled + '/labels.parquet'!r}, filters=[('relevance', '=', 1)]), "
                                f"{labelled + '/relevant.parquet'!r})"], check=True)
            done = subprocess.run([sys.executable, __file__, "--top-n", str(args.top_n), "--child", step, work],
                                  env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{step} at {pairs} pairs failed:\n{done.stderr[-3000:]}")
            row = {"pairs": pairs, "queries": pairs // args.candidates, **json.loads(done.stdout.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    for step in args.steps:  # memory per pair: the slope between the smallest and the largest size
        mine = sorted((r for r in rows if r["step"] == step), key=lambda r: r["pairs"])
        if len(mine) >= 2:
            lo, hi = mine[0], mine[-1]
            slope = (hi["peak_rss_bytes"] - lo["peak_rss_bytes"]) / (hi["pairs"] - lo["pairs"])
            private = (hi["peak_private_bytes"] - lo["peak_private_bytes"]) / (hi["pairs"] - lo["pairs"])
            print(json.dumps({"step": step, "bytes_per_pair": round(slope), "private_bytes_per_pair": round(private),
                              "seconds_per_million_pairs":
                              round(hi["wall_s"] / hi["pairs"] * 1e6, 2)}), flush=True)
    os.makedirs(f"{HERE}/results", exist_ok=True)
    with open(f"{HERE}/results/labels_eval.json", "w") as f:
        json.dump({"machine": platform.platform(), "cpus": os.cpu_count(), "load_before": os.getloadavg(),
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
