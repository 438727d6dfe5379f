"""Synthetic candidate shards in the input format, for the quickstart and the benchmarks.

    python -m ettin_batch.sample_data OUTPUT_DIR [--queries 100] [--candidates 20] [--shards 4]

Deterministic (seeded), written shard by shard so millions of pairs never sit in memory.
Queries are spread over shards so that some of them span two files, as real exports do.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Common English words, and some of this domain's; random:ettin-tiny's tokenizer is trained on them too.
WORDS = (
    "the of and to in is was for on that with as by at from his her are were this which be or an has have "
    "had not but what all when can there one their who more also been two would into first time its other "
    "after only new most some could these than may over such where year people city state world used made "
    "water river music film school war game team season series history system data model search query "
    "document rank score index night cluster batch token vector light energy cell protein market health"
).split()

SCHEMA = pa.schema([("query_id", pa.int64()), ("query", pa.string()), ("doc_id", pa.string()),
                    ("document", pa.string()), ("source", pa.string())])


def _texts(rng: np.random.Generator, n: int, min_words: int, max_words: int) -> list[str]:
    lengths = rng.integers(min_words, max_words + 1, n)
    words = rng.choice(np.array(WORDS), int(lengths.sum()))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [" ".join(words[bounds[i]:bounds[i + 1]]) for i in range(n)]


def write_sample(output: str, *, queries: int = 100, candidates: int = 20, shards: int = 4,
                 doc_words: tuple[int, int] = (20, 120), seed: int = 0) -> int:
    """Write `queries * candidates` pairs as `shards` Parquet files under `output`; returns the pair count."""
    os.makedirs(output, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = queries * candidates
    bounds = np.linspace(0, total, shards + 1).astype(np.int64)
    query_texts = _texts(rng, queries, 2, 10)
    for shard in range(shards):
        rows = np.arange(bounds[shard], bounds[shard + 1])
        qid = rows // candidates
        table = pa.table({
            "query_id": qid,
            "query": pa.array([query_texts[q] for q in qid], pa.string()),
            "doc_id": pa.array([f"doc-{r % candidates:04d}-{r:09d}" for r in rows], pa.string()),
            "document": _texts(rng, len(rows), *doc_words),
            "source": pa.array(["synthetic"] * len(rows), pa.string()),
        }, schema=SCHEMA)
        pq.write_table(table, os.path.join(output, f"part-{shard:05d}.parquet"))
    return total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--candidates", type=int, default=20, help="candidates per query")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--doc-words", type=int, nargs=2, default=(20, 120), metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    n = write_sample(args.output, queries=args.queries, candidates=args.candidates, shards=args.shards,
                     doc_words=tuple(args.doc_words), seed=args.seed)
    print(f"wrote {n:,} pairs ({args.queries:,} queries x {args.candidates} candidates) in {args.shards} shards "
          f"to {args.output}")


if __name__ == "__main__":
    main()
