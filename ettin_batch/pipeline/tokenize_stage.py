"""The CPU stage: set aside rows that cannot be scored, tokenize the rest. Plain Ray tasks on Arrow batches.

    canonical    input names -> canonical names (query_id, query, doc_id, document), plus each
                 pair's fingerprint (reuse.py) when the job writes one
    [--reuse: the join attaches `score` to the pairs the previous run scored]
    Tokenize     rows with a null id or text, or text the tokenizer refuses -> rejects/ with a reason;
                 the rest get token columns; rows that already have a score skip the tokenizer.
                 The texts stop here unless the job carries them on (the teacher job does).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ettin_batch.config import ScoringConfig
from ettin_batch.pipeline.rejects import RejectsDir
from ettin_batch.pipeline.reuse import FINGERPRINT_COL, fingerprints, reused_mask

TEXTS = ("query", "document")
# Checked in this order; a row with several problems lists them all, joined by "; ".
_NULL_CHECKS = ("query_id", "doc_id", "query", "document")


def canonical(batch: pa.Table, *, rename: dict[str, str], header: bytes | None) -> pa.Table:
    """Ray map step: canonical column names and, with a fingerprint `header`, the pair fingerprint."""
    batch = batch.rename_columns([rename.get(n, n) for n in batch.column_names])
    if header is None:
        return batch
    return batch.append_column(FINGERPRINT_COL, fingerprints(batch.column("query"), batch.column("document"), header))


@functools.lru_cache(maxsize=4)
def _tokenizer(scoring: ScoringConfig):
    # Ray reuses worker processes across tasks, so each worker loads the tokenizer once (and keeps the fast
    # path's word cache). A task is sized at its CPU share: the Rust fallback must not start a thread per core
    # in each of the node's concurrent tasks.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ettin_batch.engine import PairTokenizer, resolve_model

    model = resolve_model(scoring.model, scoring.revision, warn_random=False)
    return PairTokenizer.from_pretrained(model.path, scoring.max_length)


@dataclass(frozen=True)
class Tokenize:
    """Ray map step: canonical batch in, the scorable rows with token columns out (see the module docstring).

    schema:    column types to restore after a --reuse join (which turns string into large_string),
               so the output equals a full run's.
    keep_text: carry `query` and `document` on (the teacher job writes them).
    stats:     the run's RunStats actor, told how many scored pairs have an empty or blank text.
    """

    scoring: ScoringConfig
    rejects: RejectsDir
    schema: pa.Schema | None = None
    keep_text: bool = False
    stats: object = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.schema is not None:
            batch = batch.cast(pa.schema([self.schema.field(n) if n in self.schema.names else batch.schema.field(n)
                                          for n in batch.column_names]))
        bad, reasons = null_reasons(batch)
        self.rejects.write(batch.filter(pa.array(bad)), reasons)
        batch = batch.filter(pa.array(~bad))
        reused = reused_mask(batch)
        kept = None
        if reused is not None:
            kept, batch = batch.filter(reused), batch.filter(pc.invert(reused))
        tokenizer = _tokenizer(self.scoring)
        try:
            pairs = _tokenize(batch, tokenizer)
        except Exception:  # noqa: BLE001 - find the rows at fault; the others are scored
            problems = [_row_problem(batch, i, tokenizer) for i in range(batch.num_rows)]
            poisoned = np.array([p is not None for p in problems], bool)
            self.rejects.write(batch.filter(pa.array(poisoned)), [p for p in problems if p is not None])
            batch = batch.filter(pa.array(~poisoned))
            pairs = _tokenize(batch, tokenizer)
        if self.stats is not None and (blank := _blank_texts(batch) + _blank_texts(kept)):
            self.stats.add.remote({"blank_texts": blank})
        out = batch if self.keep_text else batch.drop_columns(list(TEXTS))
        for name, column in pairs.to_arrow().items():
            out = out.append_column(name, column)
        if kept is not None and kept.num_rows:  # reused rows: null token columns, their score kept
            kept = kept if self.keep_text else kept.drop_columns(list(TEXTS))
            for f in out.schema:
                if f.name not in kept.column_names:
                    kept = kept.append_column(f, pa.nulls(kept.num_rows, f.type))
            out = pa.concat_tables([out, kept.select(out.column_names)])
        return out


def null_reasons(batch: pa.Table) -> tuple[np.ndarray, list[str]]:
    """Which rows cannot be scored (bool [n]) and, for those rows only, why."""
    nulls = {name: pc.is_null(batch.column(name)).to_numpy(zero_copy_only=False) for name in _NULL_CHECKS}
    bad = np.logical_or.reduce(list(nulls.values()))
    reasons = ["; ".join(f"null {name}" for name in _NULL_CHECKS if nulls[name][i]) for i in np.flatnonzero(bad)]
    return bad, reasons


def _blank_texts(batch: pa.Table | None) -> int:
    """Rows whose query or document is empty or whitespace only (all texts valid UTF-8 by now)."""
    if batch is None or batch.num_rows == 0:
        return 0
    blank = [pc.equal(pc.utf8_trim_whitespace(batch.column(name)), "") for name in TEXTS]
    return pc.sum(pc.or_(*blank)).as_py() or 0


def _tokenize(batch: pa.Table, tokenizer):
    return tokenizer(batch.column("query").to_pylist(), batch.column("document").to_pylist())


def _row_problem(batch: pa.Table, i: int, tokenizer) -> str | None:
    """Why row `i` cannot be tokenized on its own, or None if it can."""
    texts = []
    for name in TEXTS:
        try:
            texts.append(batch.column(name)[i].as_py())
        except UnicodeDecodeError as e:
            return f"{name} is not valid UTF-8 ({e.reason} at byte {e.start})"
    try:
        tokenizer([texts[0]], [texts[1]])
    except Exception as e:  # noqa: BLE001 - whatever the tokenizer raises is this row's reason
        return f"tokenization failed: {type(e).__name__}: {e}"[:500]
    return None
