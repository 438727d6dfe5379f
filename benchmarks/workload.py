"""The benchmark workload: (query, document) pairs shaped like Natural Questions.

Short queries (about 9 words), documents log-normal in length with a median near
160 words, so pairs come to about 170 tokens at the median with a tail past 512.
Words come from the random models' tokenizer corpus, so one word is about one token.
Deterministic for a seed.
"""

from __future__ import annotations

import numpy as np

from ettin_batch.engine.random_models import _WORDS


def nq_like_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    words = np.array(_WORDS)
    q_len = np.clip(rng.normal(9, 3, n).round().astype(int), 3, 30)
    d_len = np.clip(rng.lognormal(np.log(160), 0.6, n).round().astype(int), 10, 2000)
    queries = [" ".join(rng.choice(words, k)) for k in q_len]
    documents = [" ".join(rng.choice(words, k)) for k in d_len]
    return queries, documents
