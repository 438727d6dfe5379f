"""Evaluate a run against relevance judgments, with the numbers pytrec_eval gives.

    ettin-batch eval --run OUT/scores --qrels qrels.txt --metrics ndcg@10,mrr@10,recall@100,map

Why wrap pytrec_eval instead of computing the metrics here: the contract is
"equal to pytrec_eval (what BEIR and MTEB report) to 1e-6", and the only way to
keep that true for every metric, tie and empty query, now and after the next
trec_eval fix, is to let the reference compute it. Its cost is building
{query: {doc: score}} dicts, which we bound by reading only the id and score
columns, keeping only judged queries, and handing pytrec_eval a chunk of whole
queries at a time (EVAL_CHUNK_PAIRS run pairs), so the dicts of one chunk are
alive, not the run's. It runs in one process: 1 to 2 s per million run pairs, and
80 bytes a pair with N judged per query, 240 when every pair is judged (2-core VM,
see the README), so 100M pairs need 8 to 25 GB of memory, not a cluster.
Everything around the metric (reading, validation, the mrr@k cut, averaging, the
baseline) is Arrow and numpy.

Semantics, all inherited from pytrec_eval / trec_eval and reported as warnings:
- documents are ranked by score descending, ties by doc_id descending (byte order);
  a rank column in the run (topk/, TREC files) is ignored, as trec_eval ignores it;
- a run query with no judgments is skipped; a judged query absent from the run is
  skipped too (trec_eval's default, not `-c`), so the mean is over the queries in both;
- a judged query with no relevant document (all grades <= 0) is kept and scores 0
  on every metric, so it lowers the mean;
- a document is relevant at grade >= 1; nDCG uses the grade as gain, negatives count 0;
- a (query, doc) pair scored twice is an error (pytrec_eval would keep one score
  silently); it is checked on the judged queries, the only ones that count.
A run that an ettin-batch job has not finished (its folder, scores/ or topk/ without
_SUCCESS.json) holds part of its pairs at most: it is refused unless allow_unfinished.
Metric names: ndcg, ndcg@k, map, map@k, recall@k, p@k, mrr, mrr@k. pytrec_eval
has no cut recip_rank, so mrr@k is recip_rank where the first relevant document
is within rank k and 0 otherwise, which is recip_rank on the run cut at k.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ettin_batch import ranking, trec
from ettin_batch.errors import ConfigError, InputError

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "map")


class EvaluationWarning(UserWarning):
    """Input pytrec_eval accepts but that changes what the mean covers; the message gives counts."""


@dataclass(frozen=True)
class Metric:
    """A user-facing metric name mapped onto a pytrec_eval measure.

    measure: what RelevanceEvaluator is asked for ("ndcg_cut.10").
    key:     the key in its per-query output ("ndcg_cut_10").
    cut:     for mrr@k, the rank k beyond which recip_rank counts 0; None otherwise.
    """

    name: str
    measure: str
    key: str
    cut: int | None = None


_CUT_MEASURES = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall", "p": "P"}


def parse_metric(name: str) -> Metric:
    """Parse "ndcg@10", "mrr@10", "recall@100", "map", "p@5", ... into a `Metric`."""
    text = name.strip().lower()
    m = re.fullmatch(r"(ndcg|map|recall|p|mrr)(?:@(\d+))?", text)
    if m is None or (m.group(2) is not None and int(m.group(2)) < 1):
        raise ConfigError(f"unknown metric {name!r}; use ndcg, ndcg@k, map, map@k, recall@k, p@k, mrr or mrr@k (k >= 1)")
    base, k = m.group(1), m.group(2)
    if base == "mrr":
        return Metric(text, "recip_rank", "recip_rank", int(k) if k else None)
    if k is None:
        if base in ("recall", "p"):
            raise ConfigError(f"metric {name!r} needs a cutoff, e.g. {base}@100")
        return Metric(text, base, base)
    measure = _CUT_MEASURES[base]
    return Metric(text, f"{measure}.{k}", f"{measure}_{k}")


# ---------------------------------------------------------------- reading


def read_qrels(qrels: str | pa.Table, *, s3_max_attempts: int | None = None) -> pa.Table:
    """Read judgments from a TREC qrels file, a Parquet file/folder (query_id, doc_id, relevance) or a Table.

    Returns query_id, doc_id (strings) and relevance (int64). Grades must be
    integers (pytrec_eval's rule): a non-numeric or fractional grade is an error
    with the count and an example; a null id or grade too. A file that is not what its
    name says (binary, compressed, a cut-short Parquet file) is an InputError naming it.
    """
    columns = ["query_id", "doc_id", "relevance"]
    if isinstance(qrels, pa.Table):
        where, table = "qrels table", _select(qrels, columns, "qrels table")
    elif trec.is_parquet(qrels, s3_max_attempts=s3_max_attempts):
        where, table = qrels, trec.read_parquet_columns(qrels, columns, "qrels", s3_max_attempts=s3_max_attempts)
    else:
        return trec.read_trec_qrels(qrels)
    for col in columns:
        nulls = table[col].null_count
        if nulls:
            raise InputError(f"{where}: {nulls} row(s) have a null {col}")
    return pa.table({"query_id": trec.ids_as_strings(table["query_id"]), "doc_id": trec.ids_as_strings(table["doc_id"]),
                     "relevance": _integer_grades(table["relevance"], where)})


def _select(table: pa.Table, columns: list[str], what: str) -> pa.Table:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{what} needs column(s) {missing}; found {table.column_names}")
    return table.select(columns)


def _integer_grades(col: pa.ChunkedArray, where: str) -> pa.ChunkedArray:
    if pa.types.is_integer(col.type):
        return pc.cast(col, pa.int64())
    if pa.types.is_floating(col.type):
        values = col.to_numpy()
        bad = ~np.isfinite(values) | (values != np.round(values))
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        values = np.array(col.to_pylist(), dtype=object)
        bad = np.array([not _is_int_text(v) for v in values], dtype=bool)
    else:
        raise InputError(f"{where}: relevance must hold integer grades, got type {col.type}")
    if bad.any():
        raise InputError(f"{where}: {int(bad.sum())} relevance value(s) are not integer grades "
                         f"(first: {values[bad][0]!r}); pytrec_eval accepts integers only")
    return pa.chunked_array([pa.array([int(float(v)) for v in values], pa.int64())])


def _is_int_text(value: str) -> bool:
    try:
        int(value.strip())
        return True
    except ValueError:
        return False


def read_run(run: str | pa.Table, score_col: str = "score", baseline_col: str | None = None, *,
             allow_unfinished: bool = False, s3_max_attempts: int | None = None) -> pa.Table:
    """Read a run: a job output folder (its scores/), a scores/ or topk/ Parquet folder, a Parquet file, a TREC run file, or a Table.

    Returns query_id, doc_id (strings), score (float64) and, if asked, the
    baseline column (float64). Only these columns are read from Parquet. A run
    folder without _SUCCESS.json is refused unless allow_unfinished (see trec.run_parquet).
    """
    columns = ["query_id", "doc_id", score_col] + ([baseline_col] if baseline_col else [])
    if isinstance(run, pa.Table):
        table = _select(run, columns, "run table")
    elif trec.is_parquet(run, s3_max_attempts=s3_max_attempts):
        run = trec.run_parquet(run, "--run", allow_unfinished=allow_unfinished, s3_max_attempts=s3_max_attempts)
        table = trec.read_parquet_columns(run, columns, "the run", s3_max_attempts=s3_max_attempts)
    else:
        if baseline_col:
            raise InputError(f"{run}: a TREC run file has one score per line, so there is no {baseline_col!r} column; "
                             "point --run at the job's scores/ folder, which keeps pass-through columns")
        table = trec.read_trec_run(run)
        score_col = "score"
    for col in [score_col] + ([baseline_col] if baseline_col else []):
        kind = table[col].type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
            raise InputError(f"run column {col!r} must be numeric to rank by, got type {kind}")
    out = {"query_id": trec.ids_as_strings(table["query_id"]), "doc_id": trec.ids_as_strings(table["doc_id"]),
           "score": pc.cast(table[score_col], pa.float64())}
    if baseline_col:
        out[baseline_col] = pc.cast(table[baseline_col], pa.float64())
    return pa.table(out)


# ---------------------------------------------------------------- validation


def _warn(messages: list[str], text: str) -> None:
    messages.append(text)
    warnings.warn(text, EvaluationWarning, stacklevel=3)


def _dedupe_qrels(qrels: pa.Table, notes: list[str]) -> pa.Table:
    """Identical duplicate judgments are dropped with a warning; conflicting grades are an error."""
    counts = qrels.group_by(["query_id", "doc_id"]).aggregate([("relevance", "min"), ("relevance", "max")])
    if counts.num_rows == qrels.num_rows:
        return qrels
    conflicts = counts.filter(pc.not_equal(counts["relevance_min"], counts["relevance_max"]))
    if conflicts.num_rows:
        first = conflicts.slice(0, 1).to_pylist()[0]
        raise InputError(f"qrels: {conflicts.num_rows} (query_id, doc_id) pair(s) are judged more than once with "
                         f"different grades (first: query {first['query_id']!r}, doc {first['doc_id']!r}, grades "
                         f"{first['relevance_min']}..{first['relevance_max']}); keep one grade per pair")
    _warn(notes, f"qrels: {qrels.num_rows - counts.num_rows} duplicate judgment(s) with the same grade were dropped")
    return counts.select(["query_id", "doc_id", "relevance_min"]).rename_columns(["query_id", "doc_id", "relevance"])


def _check_run(run: pa.Table, cols: list[str], notes: list[str]) -> pa.Table:
    """Null ids are an error; rows with a null or NaN score are dropped with a warning.

    Duplicate (query, doc) rows are caught later, in `_metric_means`, on the judged queries only.
    """
    for col in ("query_id", "doc_id"):
        if run[col].null_count:
            raise InputError(f"run: {run[col].null_count} row(s) have a null {col}")
    for col in cols:
        bad = pc.or_kleene(pc.is_null(run[col]), pc.is_nan(run[col])).fill_null(True)
        n_bad = pc.sum(bad).as_py() or 0
        if n_bad:
            _warn(notes, f"run: {n_bad} row(s) with a null or NaN {col!r} were dropped")
            run = run.filter(pc.invert(bad))
    return run


# ---------------------------------------------------------------- scoring


def _by_query(table: pa.Table, value_col: str) -> dict[str, dict]:
    """{query: {doc: value}}, as pytrec_eval takes qrels and runs; a doc_id seen twice in a query collapses
    to one entry (see `_metric_means`)."""
    table = table.take(pc.sort_indices(table, sort_keys=[("query_id", "ascending")]))
    starts = ranking.group_starts(table["query_id"]).tolist()
    qids, docs, values = (table[col].to_pylist() for col in ("query_id", "doc_id", value_col))
    return {qids[s]: dict(zip(docs[s:e], values[s:e])) for s, e in zip(starts[:-1], starts[1:])}


# pytrec_eval takes Python dicts, which cost about 300 bytes a run pair and as much again a
# judgment (README: 570 bytes a pair with every pair judged, all dicts alive at once). Queries
# are scored independently, so they go to pytrec_eval in chunks of whole queries, about this
# many run pairs each, and only one chunk's dicts are alive: memory is then the Arrow columns
# (about 100 bytes a pair) plus one chunk.
EVAL_CHUNK_PAIRS = 1_000_000


def _query_chunks(judged: pa.Table, run: pa.Table, chunk_pairs: int):
    """(qrels, run) of consecutive groups of whole queries, about `chunk_pairs` run rows each.

    Every query of `judged` must be in `run` (evaluate keeps only the queries in both).
    """
    qids = pc.unique(run["query_id"])
    run_code = pc.index_in(run["query_id"], value_set=qids).to_numpy(zero_copy_only=False)
    qrels_code = pc.index_in(judged["query_id"], value_set=qids).to_numpy(zero_copy_only=False)
    run_order, qrels_order = np.argsort(run_code, kind="stable"), np.argsort(qrels_code, kind="stable")
    run_code, qrels_code = run_code[run_order], qrels_code[qrels_order]
    rows_through = np.cumsum(np.bincount(run_code, minlength=len(qids)))
    # a chunk ends after the query whose rows cross the next multiple of chunk_pairs
    cuts = np.searchsorted(rows_through, np.arange(chunk_pairs, rows_through[-1], chunk_pairs)) + 1
    bounds = np.unique(np.concatenate([[0], cuts, [len(qids)]]))
    for first, end in zip(bounds[:-1], bounds[1:]):
        r0, r1 = np.searchsorted(run_code, [first, end])
        q0, q1 = np.searchsorted(qrels_code, [first, end])
        yield judged.take(qrels_order[q0:q1]), run.take(run_order[r0:r1])


def _metric_means(judged: pa.Table, run: pa.Table, score_col: str, metrics: list[Metric]) -> tuple[dict[str, float], int]:
    """Mean of each metric over the queries pytrec_eval evaluates, and their count."""
    import pytrec_eval

    measures = {m.measure for m in metrics}
    values: dict[str, list[np.ndarray]] = {m.name: [] for m in metrics}
    for qrels_part, run_part in _query_chunks(judged, run, EVAL_CHUNK_PAIRS):
        run_dict = _by_query(run_part, score_col)
        # A doc_id seen twice in a query collapses to one dict entry (the last score wins in
        # pytrec_eval), so fewer entries than rows means duplicates: cheaper than a group_by up front.
        if sum(map(len, run_dict.values())) != run_part.num_rows:
            ranking.refuse_repeated_pairs(run, "run", "a run must score each pair once")
        per_query = pytrec_eval.RelevanceEvaluator(_by_query(qrels_part, "relevance"), measures).evaluate(run_dict)
        del run_dict
        for m in metrics:
            values[m.name].append(np.array([v[m.key] for v in per_query.values()], dtype=np.float64))
    means, count = {}, 0
    for m in metrics:
        per_query_values = np.concatenate(values[m.name])
        if m.cut is not None:
            # trec_eval's recip_rank is exactly 1.0 / rank, so "first relevant doc within k"
            # is rr >= 1.0 / k: mrr@k without a second pass over a cut run.
            per_query_values = np.where(per_query_values >= 1.0 / m.cut, per_query_values, 0.0)
        means[m.name] = float(per_query_values.mean())
        count = len(per_query_values)
    return means, count


def evaluate(
    run: str | pa.Table,
    qrels: str | pa.Table,
    metrics: Sequence[str] = DEFAULT_METRICS,
    baseline_col: str | None = None,
    score_col: str = "score",
    *,
    allow_unfinished: bool = False,
    s3_max_attempts: int | None = None,
) -> dict:
    """Score a run against qrels; each metric is the mean over queries present in both, as pytrec_eval computes it.

    run:          scores/ or topk/ Parquet (file, folder, or a job output folder),
                  a TREC run file, or a Table with query_id, doc_id and `score_col`.
    qrels:        TREC qrels file, Parquet with query_id, doc_id, relevance, or a Table.
    metrics:      names such as "ndcg@10", "mrr@10", "recall@100", "map" (see the module docstring).
    baseline_col: a pass-through column of the run (e.g. "retrieval_score") whose
                  order is scored too, on the same candidates, so the gain from
                  reranking shows.
    allow_unfinished: read a job's run that has no _SUCCESS.json (with a loud warning)
                  instead of refusing it.
    s3_max_attempts: attempts per object-store call (None: $ETTIN_BATCH_S3_MAX_ATTEMPTS, else 12).

    Returns {"metrics": {name: mean}, "num_queries": int, "warnings": [str, ...]},
    plus "baseline" and "delta" (run minus baseline) when baseline_col is given.
    Raises ConfigError for bad metric names, InputError on input that would skew a
    metric silently; emits an EvaluationWarning (also listed under "warnings") for
    skipped queries, dropped duplicate judgments and dropped null scores.
    """
    parsed = [parse_metric(m) for m in metrics]
    if not parsed:
        raise ConfigError("no metrics asked for")
    names = [m.name for m in parsed]
    if len(set(names)) != len(names):
        raise ConfigError(f"metric listed twice: {names}")
    notes: list[str] = []
    judged = _dedupe_qrels(read_qrels(qrels, s3_max_attempts=s3_max_attempts), notes)
    table = read_run(run, score_col=score_col, baseline_col=baseline_col, allow_unfinished=allow_unfinished,
                     s3_max_attempts=s3_max_attempts)
    table = _check_run(table, ["score"] + ([baseline_col] if baseline_col else []), notes)
    judged, table = _common_queries(judged, table, notes)

    scores, n = _metric_means(judged, table, "score", parsed)
    result: dict = {"metrics": scores, "num_queries": n, "warnings": notes}
    if baseline_col:
        base, _ = _metric_means(judged, table, baseline_col, parsed)
        result["baseline"] = base
        result["delta"] = {k: scores[k] - base[k] for k in scores}
    return result


def _common_queries(judged: pa.Table, run: pa.Table, notes: list[str]) -> tuple[pa.Table, pa.Table]:
    """The judgments and run rows of the queries in both, as pytrec_eval evaluates them; what is
    skipped, and judged queries without a relevant document, are counted in `notes`."""
    run_qids = pc.unique(run["query_id"])
    judged_qids = pc.unique(judged["query_id"])
    common = pc.filter(run_qids, pc.is_in(run_qids, value_set=judged_qids))
    if len(common) == 0:
        raise InputError(f"the run ({len(run_qids)} queries) and the qrels ({len(judged_qids)} queries) share no "
                         f"query_id; run ids look like {run_qids[:3].to_pylist()}, qrels ids like "
                         f"{judged_qids[:3].to_pylist()}")
    if len(common) < len(run_qids):
        _warn(notes, f"{len(run_qids) - len(common)} of {len(run_qids)} run queries have no judgments and are skipped")
    if len(common) < len(judged_qids):
        _warn(notes, f"{len(judged_qids) - len(common)} of {len(judged_qids)} judged queries are not in the run and "
                     "are skipped (pytrec_eval's default; they are not counted as 0)")
    judged = judged.filter(pc.is_in(judged["query_id"], value_set=common))
    run = run.filter(pc.is_in(run["query_id"], value_set=common))
    relevant = pc.unique(judged.filter(pc.greater(judged["relevance"], 0))["query_id"])
    if len(relevant) < len(common):
        _warn(notes, f"{len(common) - len(relevant)} of {len(common)} evaluated queries have no relevant document; "
                     "they score 0 on every metric and count in the mean, as in pytrec_eval")
    return judged, run


def format_table(result: dict) -> str:
    """The human-readable table: one row per metric, with baseline and delta columns when present."""
    base = result.get("baseline")
    header = ["metric", "run"] + (["baseline", "delta"] if base else [])
    rows = []
    for name, value in result["metrics"].items():
        row = [name, f"{value:.4f}"]
        if base:
            row += [f"{base[name]:.4f}", f"{result['delta'][name]:+.4f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *rows]]
    lines.append(f"queries evaluated: {result['num_queries']}")
    return "\n".join(lines)
