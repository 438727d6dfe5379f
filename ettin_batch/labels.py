"""Relevance-label backfill: reranker scores -> graded labels, as TREC qrels and Parquet, with a histogram to check the cuts.

    ettin-batch labels --scores OUT/scores --output LABELS --thresholds 0.0,4.0,8.0
    ettin-batch labels --scores OUT/scores --output LABELS --top-n-relevant 10

Writes into LABELS, an ettin-batch run folder of kind "labels" (ettin_batch.run_folder):
    _run.json            written first: this folder holds a labels run
    qrels.txt            TREC qrels (`query_id 0 doc_id grade`)
    labels.parquet       query_id, doc_id (their input types), relevance (int32), score (float32)
    score_histogram.png  scores, with the thresholds (or the relevant / not split) drawn on
    _SUCCESS.json        written last: mode, cuts, rows, grade counts, score range
A folder holding another command's run, or a finished labels run (unless overwrite), is refused
before anything is written. Scores from a run that did not finish are refused unless allow_unfinished.

Where it runs:
- thresholds: one process, bounded memory (two streaming passes over the score column:
  range, then grade and write, batch by batch).
- --top-n-relevant, up to TOP_N_IN_PROCESS_ROWS pairs: one process, which holds the id
  and score columns (Arrow) and sorts them; qrels and Parquet list each query best first.
- --top-n-relevant, more pairs: Ray Data (ettin_batch.pipeline.top_n_labels): per-block
  candidates, one cutoff row per query, then every pair compared with its query's cutoff;
  the driver holds the cutoffs (one row per query) and streams the labelled rows into the
  same files, in the input's order.
Both top-N paths write the same labels, counts, histogram and _SUCCESS.json.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ettin_batch import __version__, ranking, storage, trec
from ettin_batch.errors import ConfigError, InputError
from ettin_batch.pipeline.top_n_labels import NEEDS_UNIQUE_PAIRS
from ettin_batch.run_folder import HISTOGRAM, LABELS_PARQUET, LAYOUT, QRELS_TXT, SCORES, RunFolder

HISTOGRAM_BINS = 100

# Up to this many pairs, --top-n-relevant sorts them in this process: about 1 s and 220 bytes
# a pair (1.1 GB at 4M, 4x faster than Ray there on the 2-core VM, see the README). Above, it
# runs on Ray Data, whose driver holds one row per query and a few blocks instead of every pair.
TOP_N_IN_PROCESS_ROWS = 4_000_000


def parse_thresholds(text: str | Sequence[float]) -> list[float]:
    """"0.0,4.0,8.0" (or a sequence) -> [0.0, 4.0, 8.0]; they must be finite and strictly increasing."""
    try:
        values = [float(t) for t in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ConfigError(f"thresholds must be numbers separated by commas, got {text!r}") from None
    if not values:
        raise ConfigError("give at least one threshold")
    if not all(np.isfinite(values)):
        raise ConfigError(f"thresholds must be finite, got {values}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ConfigError(f"thresholds must be strictly increasing (grade 0 below the first), got {values}")
    return values


def grade_by_thresholds(scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Grade = how many thresholds are <= the score (int32).

    With thresholds t_1 < ... < t_n: score < t_1 -> 0, t_i <= score < t_(i+1) -> i,
    score >= t_n -> n. A score equal to a threshold gets the higher grade. The
    comparison is in float64 on the stored value (a float32 3.9999998 stays below 4.0).
    """
    return np.searchsorted(np.asarray(thresholds, np.float64), scores.astype(np.float64), side="right").astype(np.int32)


def backfill_labels(
    scores_path: str,
    output: str,
    thresholds: Sequence[float] | str | None = None,
    top_n_relevant: int | None = None,
    score_col: str = "score",
    address: str | None = None,
    *,
    overwrite: bool = False,
    allow_unfinished: bool = False,
    s3_max_attempts: int | None = None,
) -> dict:
    """Turn a scores/ output (or any Parquet with query_id, doc_id, score) into graded relevance labels.

    Give exactly one rule:
    thresholds:     grades 0..len(thresholds), see `grade_by_thresholds` for the
                    boundaries (score == threshold takes the higher grade).
    top_n_relevant: the N best-scored documents of each query get 1, the rest 0.
                    Ties are ordered the way trec_eval orders them (doc_id
                    descending, byte order), so evaluating the same scores against
                    these labels puts exactly those N on top.

    scores_path and output are local paths or fsspec URLs; a job output folder
    (holding scores/) is read from its scores/. Null or NaN scores are an error, and
    so is a (query_id, doc_id) pair seen twice in a top-N run (on Ray: see
    ettin_batch.pipeline.top_n_labels for which repeats it sees).
    address: the Ray cluster for a top-N run over more than TOP_N_IN_PROCESS_ROWS pairs
    (default: RAY_ADDRESS, else a local Ray; a Ray already started in this process is used).
    overwrite: replace a finished labels run in `output` (another command's run there is replaced
    too, as `RunFolder` does for every command); without it, both are refused (OutputError).
    allow_unfinished: label scores of a run without _SUCCESS.json, with a loud warning.
    s3_max_attempts: attempts per object-store call (None: $ETTIN_BATCH_S3_MAX_ATTEMPTS, else 12).
    Returns the summary that is also written to output/_SUCCESS.json. Raises ConfigError for
    a bad rule, InputError for scores that cannot be labelled.
    """
    cuts = _rule(thresholds, top_n_relevant)
    source = trec.run_parquet(scores_path, "--scores", allow_unfinished=allow_unfinished,
                              s3_max_attempts=s3_max_attempts)
    dataset = _scores_dataset(source, score_col, s3_max_attempts)
    with trec.reading_parquet(source):
        rows = dataset.count_rows()  # every file's footer: a file that is not Parquet fails here, before any write
    folder = RunFolder.open(output, "labels", s3_max_attempts=s3_max_attempts)
    folder.check(overwrite=overwrite, inputs=[source])
    folder.begin()
    with trec.reading_parquet(source):
        if cuts is not None:
            summary = _label_by_thresholds(dataset, score_col, cuts, folder)
        elif rows <= TOP_N_IN_PROCESS_ROWS:
            summary = _label_top_n(dataset, source, score_col, int(top_n_relevant), folder)
        else:
            summary = _label_top_n_on_ray(dataset, rows, source, score_col, int(top_n_relevant), folder, address,
                                          s3_max_attempts)
    folder.finish({SCORES: scores_path, "mode": "thresholds" if cuts is not None else "top_n_relevant",
                   "thresholds": cuts, "top_n_relevant": top_n_relevant, **summary,
                   # as the user spelled them, s3:// included
                   "files": {name: f"{output.rstrip('/')}/{name}" for name in LAYOUT["labels"]},
                   "version": __version__})
    return folder.manifest()


def _rule(thresholds, top_n_relevant) -> list[float] | None:
    """The parsed thresholds (None for a top-N rule); ConfigError unless exactly one valid rule is given."""
    if (thresholds is None) == (top_n_relevant is None):
        raise ConfigError("give exactly one of thresholds or top_n_relevant")
    if top_n_relevant is not None and (isinstance(top_n_relevant, bool) or int(top_n_relevant) != top_n_relevant
                                       or top_n_relevant < 1):
        raise ConfigError(f"top_n_relevant must be a positive integer, got {top_n_relevant!r}")
    return parse_thresholds(thresholds) if thresholds is not None else None


def _scores_dataset(source: str, score_col: str, s3_max_attempts: int | None):
    dataset = trec.parquet_dataset(source, s3_max_attempts=s3_max_attempts)
    missing = [c for c in ("query_id", "doc_id", score_col) if c not in dataset.schema.names]
    if missing:
        raise InputError(f"{source}: labels need column(s) {missing}; found {dataset.schema.names}")
    kind = dataset.schema.field(score_col).type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise InputError(f"{source}: column {score_col!r} must be numeric to grade, got type {kind}")
    return dataset


def _check_scores(scores: np.ndarray, where: str) -> None:
    """`scores` as numpy, where Arrow nulls have become NaN."""
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise InputError(f"{where}: {bad} row(s) have a null, NaN or infinite score; drop them before labelling")


def _label_by_thresholds(dataset, score_col: str, cuts: list[float], folder: RunFolder) -> dict:
    # Pass 1: the score range, so the histogram's bins are fixed before pass 2 streams.
    lo, hi, rows = np.inf, -np.inf, 0
    for batch in dataset.to_batches(columns=[score_col]):
        scores = batch.column(0).to_numpy(zero_copy_only=False).astype(np.float64)
        _check_scores(scores, f"scores column {score_col!r}")
        if len(scores):
            lo, hi, rows = min(lo, float(scores.min())), max(hi, float(scores.max())), rows + len(scores)
    if rows == 0:
        raise InputError("no scores to label: the input has no rows")
    edges = _bin_edges(lo, hi, cuts)
    counts = np.zeros(len(edges) - 1, np.int64)
    grade_counts = np.zeros(len(cuts) + 1, np.int64)

    # Pass 2: grade, write both formats and fill the histogram, one batch at a time.
    with _LabelFiles(folder) as files:
        for batch in dataset.to_batches(columns=["query_id", "doc_id", score_col]):
            scores = batch.column(2).to_numpy(zero_copy_only=False)
            grades = grade_by_thresholds(scores, cuts)
            files.write(_labels_table(batch.column(0), batch.column(1), grades, scores))
            counts += np.histogram(scores, bins=edges)[0]
            grade_counts += np.bincount(grades, minlength=len(cuts) + 1)
    summary = _summary(rows, grade_counts, lo, hi)
    _write_histogram(folder, edges, {"all scores": counts}, cuts, summary)
    return summary


def _label_top_n(dataset, where: str, score_col: str, n: int, folder: RunFolder) -> dict:
    table = dataset.to_table(columns=["query_id", "doc_id", score_col])
    if table.num_rows == 0:
        raise InputError("no scores to label: the input has no rows")
    scores_col = table[score_col]
    _check_scores(pc.cast(scores_col, pa.float64()).to_numpy(), f"scores column {score_col!r}")
    # Ids as TREC text: qrels list each query best first, queries in the order of their text.
    keys = pa.table({"query_id": trec.ids_as_strings(table["query_id"]), "doc_id": trec.ids_as_strings(table["doc_id"]),
                     "score": pc.cast(scores_col, pa.float64())})
    ranking.refuse_repeated_pairs(keys, where, NEEDS_UNIQUE_PAIRS)
    order = ranking.order(keys)
    table = table.take(order)
    scores = table[score_col].to_numpy()
    grades = (ranking.ranks(keys["query_id"].take(order)) < n).astype(np.int32)
    labelled = _labels_table(table["query_id"], table["doc_id"], grades, scores)
    with _LabelFiles(folder) as files:
        files.write(labelled)
    lo, hi = float(scores.min()), float(scores.max())
    edges = _bin_edges(lo, hi, [])
    queries = len(pc.unique(keys["query_id"]))
    summary = _summary(table.num_rows, np.bincount(grades, minlength=2), lo, hi, queries=queries)
    # Binned as stored (float32), like the Ray path, which sees only the labelled rows.
    hists = _top_n_histograms(n, edges, labelled["score"].to_numpy(), grades)
    _write_histogram(folder, edges, hists, [], summary)
    return summary


def _top_n_histograms(n: int, edges: np.ndarray, scores: np.ndarray, grades: np.ndarray) -> dict[str, np.ndarray]:
    return {f"top {n} per query (1)": np.histogram(scores[grades == 1], bins=edges)[0],
            "rest (0)": np.histogram(scores[grades == 0], bins=edges)[0]}


def _label_top_n_on_ray(dataset, rows: int, scores_url: str, score_col: str, n: int, folder: RunFolder,
                        address: str | None, s3_max_attempts: int | None) -> dict:
    """The same labels as `_label_top_n`, for inputs too large for one process (see the module docstring)."""
    from ettin_batch.pipeline import top_n_labels as plan
    from ettin_batch.pipeline.run import ray_session

    files = list(dataset.files)
    # s3:// through s3fs, with its endpoint and retry policy, for every worker.
    filesystem = storage.resolve(scores_url, s3_max_attempts=s3_max_attempts).pa_fs
    try:
        with ray_session(address):
            cutoffs = plan.collect_cutoffs(files, filesystem, n, score_col, rows)
            lo, hi = pc.min(cutoffs["min_score"]).as_py(), pc.max(cutoffs["max_score"]).as_py()
            edges = _bin_edges(lo, hi, [])
            hists: dict[str, np.ndarray] = {}
            grade_counts, labelled_rows = np.zeros(2, np.int64), 0
            with _LabelFiles(folder) as out:
                for labelled in plan.labelled_batches(files, filesystem, cutoffs, score_col):
                    out.write(labelled)
                    grades = labelled["relevance"].to_numpy()
                    for name, counts in _top_n_histograms(n, edges, labelled["score"].to_numpy(), grades).items():
                        hists[name] = hists.get(name, 0) + counts
                    grade_counts += np.bincount(grades, minlength=2)
                    labelled_rows += labelled.num_rows
    except Exception as e:  # noqa: BLE001 - a check inside a Ray task comes back as Ray's wrapper
        reason = _task_input_error(e)
        if reason is None:
            raise
        raise InputError(f"{scores_url}: {reason}") from e
    expected = pc.sum(cutoffs["kept"]).as_py()
    if grade_counts[1] != expected:
        raise InputError(f"{scores_url}: {int(grade_counts[1]) - expected} more row(s) rank in their query's top {n} "
                         f"than it has places: some (query_id, doc_id) pair(s) appear more than once in the scores; "
                         f"{NEEDS_UNIQUE_PAIRS}")
    summary = _summary(labelled_rows, grade_counts, lo, hi, queries=cutoffs.num_rows)
    _write_histogram(folder, edges, hists, [], summary)
    return summary


def _summary(rows: int, grade_counts: np.ndarray, lo: float, hi: float, queries: int | None = None) -> dict:
    """What _SUCCESS.json tells of the labels; `queries` for a top-N rule only."""
    per_query = {"queries": queries} if queries is not None else {}
    return {"rows": rows, **per_query, "grade_counts": {str(g): int(n) for g, n in enumerate(grade_counts)},
            "score_min": lo, "score_max": hi}


def _task_input_error(error: BaseException) -> str | None:
    """The message of an InputError raised in a Ray task, which Ray Data hands back only as traceback
    text; None for any other error (one raised here in the driver keeps its own type and message)."""
    found = re.findall(r"(?:^|\.)InputError: (.+)$", str(error), re.MULTILINE)
    return found[-1] if found else None


class _LabelFiles:
    """labels.parquet and qrels.txt, written batch by batch from labelled tables (see `_labels_table`)."""

    def __init__(self, folder: RunFolder):
        self._folder, self._writer = folder, None

    def __enter__(self) -> _LabelFiles:
        self._qrels = self._folder.loc.fs.open(self._folder.path(QRELS_TXT), "wt")
        self._parquet = self._folder.loc.fs.open(self._folder.path(LABELS_PARQUET), "wb")
        return self

    def write(self, labelled: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._parquet, labelled.schema)
        self._writer.write_table(labelled)
        trec.write_qrels_lines(self._qrels, labelled["query_id"], labelled["doc_id"], labelled["relevance"])

    def __exit__(self, *exc) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            self._parquet.close()
            self._qrels.close()


def _labels_table(query_id, doc_id, grades: np.ndarray, scores: np.ndarray) -> pa.Table:
    return pa.table({"query_id": query_id, "doc_id": doc_id, "relevance": pa.array(grades, pa.int32()),
                     "score": pa.array(scores.astype(np.float32), pa.float32())})


def _bin_edges(lo: float, hi: float, cuts: Sequence[float]) -> np.ndarray:
    # The range covers the thresholds too, so a cut outside the data still shows where it falls.
    lo, hi = min([lo, *cuts]), max([hi, *cuts])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, HISTOGRAM_BINS + 1)


def _write_histogram(folder: RunFolder, edges: np.ndarray, hists: dict[str, np.ndarray], cuts: Sequence[float],
                     summary: dict) -> None:
    # Lazy: matplotlib costs ~0.5 s to import and only this step needs it. Figure without
    # pyplot keeps the caller's backend and global state untouched.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5), dpi=100)
    ax = fig.add_subplot()
    bottom = np.zeros(len(edges) - 1)
    for label, counts in hists.items():
        ax.bar(edges[:-1], counts, width=np.diff(edges), bottom=bottom, align="edge", label=label, alpha=0.8)
        bottom = bottom + counts
    for i, cut in enumerate(cuts):
        ax.axvline(cut, color="crimson", linestyle="--", linewidth=1.2)
        ax.annotate(f"{cut:g}: grade {i + 1}", (cut, 1), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize=8, color="crimson")
    grades = ", ".join(f"{g}: {n}" for g, n in summary["grade_counts"].items())
    ax.set_title(f"{summary['rows']} scores; pairs per grade: {grades}", fontsize=9)
    ax.set_xlabel("score (raw logit)")
    ax.set_ylabel("pairs")
    if len(hists) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    with folder.loc.fs.open(folder.path(HISTOGRAM), "wb") as f:
        f.write(buf.getvalue())
