"""Tokenization on one core: `tokenizers`' encode_batch vs PairTokenizer vs the job's tokenize stage.

Same pairs (benchmarks/workload.py: real BoolQ/NQ text, 20 candidates per query), same tokenizer
(random:ettin-17m's, the real-vocabulary ModernBERT one), same max_length (512), same batches of
the job's default size (1,024 pairs), one thread each, run interleaved (a, b, c, a, b, c, ...):

- encode_batch: `tokenizers.Tokenizer.encode_batch` of the (query, document) tuples, configured as
  CrossEncoder calls it (longest_first, no padding), ids read out of each Encoding.
- PairTokenizer: the engine's `PairTokenizer(queries, documents)` -> TokenizedPairs (flat int32 ids).
- tokenize stage: `ettin_batch.pipeline.tokenize_stage`'s `canonical` (with the pair fingerprint) then
  `Tokenize`, an Arrow batch in (ids, texts), token columns out, as the job's Ray tasks run them.

PairTokenizer and the stage are timed warm (their pre-token cache filled by earlier passes, as
in a running job), and PairTokenizer also cold (a fresh tokenizer's first pass over the pairs,
every distinct pre-token a cache miss once). Best of --repeats for each. Pin it to one core:

    taskset -c 0 python benchmarks/bench_tokenize.py [--pairs 20000] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before tokenizers loads: encode_batch on one thread
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout, installed or not

from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from ettin_batch.engine import PairTokenizer, resolve_model  # noqa: E402
from ettin_batch.config import ScoringConfig  # noqa: E402
from ettin_batch.pipeline.rejects import RejectsDir  # noqa: E402
from ettin_batch.pipeline.reuse import fingerprint_header  # noqa: E402
from ettin_batch.pipeline.tokenize_stage import Tokenize, canonical  # noqa: E402
from workload import nq_like_pairs  # noqa: E402


def batches(queries, documents, size):
    return [(queries[i:i + size], documents[i:i + size]) for i in range(0, len(queries), size)]


def library_runner(path: str, max_length: int):
    backend = Tokenizer.from_str(AutoTokenizer.from_pretrained(path)._tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(max_length, strategy="longest_first")

    def run(qs, ds):
        return sum(len(e.ids) for e in backend.encode_batch(list(zip(qs, ds))))
    return run


def engine_runner(tokenizer: PairTokenizer):
    def run(qs, ds):
        return len(tokenizer(qs, ds).input_ids)
    return run


def stage_runner(model: str, max_length: int, rejects: str):
    step = Tokenize(ScoringConfig(model=model, max_length=max_length), RejectsDir(rejects, pafs.LocalFileSystem()))
    header = fingerprint_header(model, None, max_length, "bfloat16")

    def run(qs, ds):
        n = len(qs)
        batch = pa.table({"query_id": pa.array(range(n), pa.int64()), "query": qs,
                          "doc_id": pa.array(range(n), pa.int64()), "document": ds})
        out = step(canonical(batch, rename={}, header=header))
        return len(out.column("_input_ids").combine_chunks().values)
    return run


def timed(run, work) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = sum(run(qs, ds) for qs, ds in work)
    return time.perf_counter() - start, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--model", default="random:ettin-17m")
    ap.add_argument("--out", help="append the result as one JSON line to this file")
    args = ap.parse_args()
    cpus = len(os.sched_getaffinity(0))
    if cpus != 1:
        print(f"warning: this process may run on {cpus} CPUs; pin it with taskset -c 0 for a per-core figure")
    load_before = os.getloadavg()
    path = resolve_model(args.model).path
    queries, documents = nq_like_pairs(args.pairs)
    work = batches(queries, documents, args.batch_size)
    engine = PairTokenizer.from_pretrained(path, args.max_length)
    stage = stage_runner(args.model, args.max_length, tempfile.mkdtemp(prefix="rejects-"))
    library = library_runner(path, args.max_length)
    # name -> a function that returns the runner for one timed pass (built outside the timing)
    passes = {"encode_batch": lambda: library, "PairTokenizer": lambda: engine_runner(engine),
              "tokenize stage": lambda: stage,
              "PairTokenizer (cold)": lambda: engine_runner(PairTokenizer.from_pretrained(path, args.max_length))}
    for run in (library, engine_runner(engine), stage):  # warm-up: caches filled, imports done
        timed(run, work[:2])
    best = {name: (float("inf"), 0) for name in passes}
    for _ in range(args.repeats):
        for name, make in passes.items():
            seconds, tokens = timed(make(), work)
            best[name] = min(best[name], (seconds, tokens))
    report(args, best, engine, cpus, load_before)


def report(args, results, engine: PairTokenizer, cpus: int, load_before) -> None:
    base = args.pairs / results["encode_batch"][0]
    print(f"{args.pairs} pairs, max_length {args.max_length}, batches of {args.batch_size}, {cpus} CPU(s), "
          f"fast path: {engine.fast_path or 'on'}; load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"{'':22} {'pairs/s':>9} {'tokens/s':>11} {'vs encode_batch':>16}")
    rows = {}
    for name, (seconds, tokens) in results.items():
        rows[name] = {"seconds": round(seconds, 3), "pairs_per_s": round(args.pairs / seconds),
                      "tokens_per_s": round(tokens / seconds), "tokens": tokens,
                      "ratio": round(args.pairs / seconds / base, 2)}
        print(f"{name:22} {rows[name]['pairs_per_s']:>9,} {rows[name]['tokens_per_s']:>11,} {rows[name]['ratio']:>15}x")
    if args.out:
        line = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "pairs": args.pairs,
                "max_length": args.max_length, "batch_size": args.batch_size, "cpus": cpus,
                "load_before": load_before[0], "load_after": os.getloadavg()[0], "results": rows}
        with open(args.out, "a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
