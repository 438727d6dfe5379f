"""A BEIR dataset plus a first-stage run, reranked and evaluated in one command.

    ettin-batch beir --beir datasets/scifact --run bm25.trec --output out/scifact \\
        --model cross-encoder/ettin-reranker-17m-v1 --depth 100 --metrics ndcg@10,recall@100

The steps, each a function here, write under OUT, an ettin-batch run folder of kind "beir":

    read_run, read_beir_qrels   the run (TREC file or Parquet) and qrels/<split>.tsv
    cut_run                     the run's queries judged in the split, top `depth` each (trec_eval's order)
    read_queries, read_corpus   the texts of those queries and documents only: one pass over each file
    write_candidates            OUT/candidates/*.parquet and OUT/qrels.parquet
    rerank                      OUT/rerank/ (the rerank job's own run folder: scores/, topk/, rejects/, _SUCCESS.json)
    evaluate                    OUT/rerank/scores/ against the qrels, `retrieval_score` as the baseline
                                -> OUT/eval.json, then OUT/_SUCCESS.json, last

A finished OUT is refused unless overwrite (before the corpus is read); an OUT whose run stopped
part-way is taken up again with the same settings, and the rerank inside it resumes.

BEIR's conventions, followed so the numbers compare with published ones:
- a document's text is `(title + " " + text).strip()`, as BEIR's `Rerank` (beir.reranking)
  builds it for a cross-encoder; a missing or null title or text counts as "";
- the queries are those judged in qrels/<split>.tsv (BEIR's `GenericDataLoader.load(split)`);
  run queries without judgments in that split are not reranked (pytrec_eval would skip
  them anyway) and their count is reported as a warning;
- each query's candidates are the first `depth` documents of the run in trec_eval's order
  (score descending, ties by doc_id descending; the run's rank column is ignored, as
  trec_eval ignores it), so the baseline is exactly trec_eval's number on the run cut at
  `depth`. A query with fewer documents keeps them all.

Errors, never a silent skew (each names the file and line, or the Parquet file and row):
- a run document missing from corpus.jsonl, or a run query (judged in the split) missing
  from queries.jsonl: the run and the dataset do not belong together, and dropping the pair
  or query would change what the metrics average over;
- a (query, document) pair twice in the run, a NaN or null score, a malformed line in any file;
- an id defined twice in corpus.jsonl or queries.jsonl, when it is one the run needs.
Only the corpus lines the run needs are parsed in full: a malformed line elsewhere in a
multi-million-document corpus is not looked at, so it cannot stop a run it does not affect.

Cost: linear in the run and the corpus. The run is held in memory as Arrow; the corpus is
streamed once, and only the documents of the cut run are kept (queries x depth at most).
A 1M-line run over a 1M-document corpus.jsonl (262 MB) gives its 200k candidates in 4.3 s
on 2 CPU cores; the rerank job after it costs far more.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ettin_batch import __version__, evaluation, ranking, storage, trec
from ettin_batch.config import Columns, RerankConfig
from ettin_batch.errors import ConfigError, InputError, OutputError
from ettin_batch.run_folder import CANDIDATES, EVAL, QRELS_PARQUET, RECORD, RERANK, SCORES, SUCCESS, RunFolder

DEFAULT_DEPTH = 100
DEFAULT_SPLIT = "test"
BASELINE_COL = "retrieval_score"
DEFAULT_ROWS_PER_FILE = 100_000

CANDIDATE_SCHEMA = pa.schema([
    ("query_id", pa.string()), ("query", pa.string()), ("doc_id", pa.string()), ("document", pa.string()),
    (BASELINE_COL, pa.float64()), ("retrieval_rank", pa.int32()),
])


class BeirWarning(UserWarning):
    """Something that changes which queries are reranked; the message gives counts."""


@dataclass
class BeirConfig:
    """One `ettin-batch beir` run.

    beir:    the BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv (local or any fsspec URL).
    run:     the first-stage run: a TREC run file (`qid Q0 docid rank score tag`) or Parquet
             with query_id, doc_id, score.
    output:  OUT: candidates/, qrels.parquet, rerank/, eval.json are written under it.
    split:   which qrels/<split>.tsv judges the run.
    depth:   candidates reranked per query (the run's best `depth`).
    metrics: names as `ettin-batch eval` takes them.
    rerank:  model and compute settings of the rerank job; its input and output are set here
             (OUT/candidates, OUT/rerank), its columns are the canonical ones and every
             candidate column passes through (retrieval_score is the baseline).
    rows_per_file: rows in each candidates/ file but the last.
    """

    beir: str = ""
    run: str = ""
    output: str = ""
    split: str = DEFAULT_SPLIT
    depth: int = DEFAULT_DEPTH
    metrics: list[str] = field(default_factory=lambda: list(evaluation.DEFAULT_METRICS))
    rerank: RerankConfig = field(default_factory=RerankConfig)
    rows_per_file: int = DEFAULT_ROWS_PER_FILE

    def validate(self) -> BeirConfig:
        """Check every field once and fill in the rerank job's input and output; returns self."""
        for name, flag in (("beir", "--beir DIR"), ("run", "--run FILE"), ("output", "--output DIR")):
            if not getattr(self, name):
                raise ConfigError(f"no {name}: pass {flag}")
        if not self.split or "/" in self.split:
            raise ConfigError(f"split={self.split!r}: name a file of qrels/ without .tsv, e.g. test")
        for name, flag in (("depth", "--depth"), ("rows_per_file", "rows_per_file")):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer ({flag})")
        if not self.metrics:
            raise ConfigError("no metrics: pass --metrics, e.g. ndcg@10,recall@100")
        for metric in self.metrics:
            evaluation.parse_metric(metric)  # ConfigError for a name eval does not know
        if self.rerank.columns != Columns() or self.rerank.passthrough is not None:
            raise ConfigError("the beir command writes the candidates itself: leave `columns` and `passthrough` "
                              "out of the rerank settings (every candidate column is kept in scores/)")
        out = storage.resolve(self.output)
        self.rerank = self.rerank.replace(input=[out.url(out.join(CANDIDATES))],
                                          output=out.url(out.join(RERANK))).validate()
        return self


# ---------------------------------------------------------------- reading


def _open(path: str, what: str, s3_max_attempts: int | None = None):
    loc = storage.resolve(path, s3_max_attempts=s3_max_attempts)
    if not loc.fs.isfile(loc.path):
        raise InputError(f"{path}: no such file ({what})")
    return loc.fs.open(loc.path, "rb")


def read_run(path: str) -> pa.Table:
    """Read a first-stage run: a TREC run file or Parquet (file or folder) with query_id, doc_id, score.

    Returns query_id, doc_id (strings) and score (float64). A malformed line, a null or NaN
    score, or a (query_id, doc_id) pair listed twice is an error naming the file and line.
    """
    if trec.is_parquet(path):
        table = trec.read_parquet_columns(path, ["query_id", "doc_id", "score"], "a run")
        for col in table.column_names:
            if table[col].null_count:
                raise InputError(f"{_locate(path, pc.is_null(table[col]))}: null {col} in the run")
        if not pa.types.is_floating(table["score"].type) and not pa.types.is_integer(table["score"].type):
            raise InputError(f"{path}: the run's score column must be numeric, got {table['score'].type}")
        table = pa.table({"query_id": trec.ids_as_strings(table["query_id"]),
                          "doc_id": trec.ids_as_strings(table["doc_id"]),
                          "score": pc.cast(table["score"], pa.float64())})
    else:
        table = trec.read_trec_run(path)
    nan = pc.is_nan(table["score"])
    if pc.any(nan).as_py():
        raise InputError(f"{_locate(path, nan)}: the run's score is NaN")
    extra, first = ranking.repeated_pairs(table)
    if extra:
        qid, doc = first
        twice = pc.and_(pc.equal(table["query_id"], qid), pc.equal(table["doc_id"], doc))
        raise InputError(
            f"{_locate(path, twice, nth=2)}: query {qid!r} lists document {doc!r} again; {extra} line(s) repeat "
            "a pair listed before them. A run scores each pair once (pytrec_eval would keep one of the scores silently)")
    return table


def _locate(path: str, mask, nth: int = 1) -> str:
    """`path:line` (TREC file) or `file (row n)` (Parquet) of the nth row where `mask` holds; errors only.

    read_run keeps neither line numbers nor files (the happy path does not need them), so an
    error maps the row back: TREC lines are the table's rows minus blank and comment lines; Parquet rows
    are counted file by file, in the order the dataset read them.
    """
    rows = np.flatnonzero(np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False)))
    row = int(rows[min(nth, len(rows)) - 1])
    if trec.is_parquet(path):
        for fragment in trec.parquet_dataset(path).get_fragments():
            n = fragment.count_rows()
            if row < n:
                return f"{fragment.path} (row {row + 1})"
            row -= n
        return path
    for lineno, _ in trec.run_lines(path):  # the lines read_trec_run read, comments and blanks skipped
        if row == 0:
            return f"{path}:{lineno}"
        row -= 1
    return path


def read_beir_qrels(path: str, s3_max_attempts: int | None = None) -> pa.Table:
    """Read BEIR qrels (`query-id <TAB> corpus-id <TAB> score`, a header line first).

    Returns query_id, doc_id (strings) and relevance (int64). The first line is skipped when
    it is the header (its score is not an integer), as BEIR's loader skips it; any later line
    without three fields or an integer grade, or that is not UTF-8 text, is an error naming the line.
    """
    qids, docs, grades = [], [], []
    with _open(path, "qrels", s3_max_attempts) as f:
        for lineno, raw in enumerate(f, start=1):
            line = _text(raw, path, lineno)
            if not line.strip():
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) != 3:
                raise InputError(f"{path}:{lineno}: a qrels line has 3 tab-separated fields "
                                     f"(query-id corpus-id score), got {len(fields)}: {line!r}")
            try:
                grade = int(fields[2])
            except ValueError:
                if lineno == 1:
                    continue  # the header
                raise InputError(f"{path}:{lineno}: score must be an integer grade, got {fields[2]!r}") from None
            qids.append(fields[0])
            docs.append(fields[1])
            grades.append(grade)
    if not qids:
        raise InputError(f"{path}: no judgments")
    return pa.table({"query_id": pa.array(qids, pa.string()), "doc_id": pa.array(docs, pa.string()),
                     "relevance": pa.array(grades, pa.int64())})


def _text(raw: bytes, path: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line is {raw[e.start:e.start + 1]!r}); "
                         "is it a binary or compressed file? BEIR qrels are tab-separated text") from None


# A BEIR line starts with its id: `{"_id": "MED-10", "title": ...}`. Matching that prefix lets
# the scan skip a document the run does not need without parsing its JSON; any other spelling
# (or an id with escapes) is parsed in full, so the shortcut never changes what is read.
_ID_PREFIX = re.compile(rb'\{\s*"_id"\s*:\s*"([^"\\]*)"')


def _jsonl_records(path: str, what: str, noun: str, needed: set[str], s3_max_attempts: int | None = None):
    """Yield (line number, id, record) for the lines of a BEIR .jsonl file whose `_id` is in `needed`;
    such an id defined twice is an error naming the `noun` and both lines."""
    wanted = {i.encode("utf-8") for i in needed}
    first: dict[str, int] = {}
    with _open(path, what, s3_max_attempts) as f:
        for lineno, raw in enumerate(f, start=1):
            m = _ID_PREFIX.match(raw)
            if m is not None and m.group(1) not in wanted:
                continue
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError as e:
                raise InputError(f"{path}:{lineno}: not a JSON line ({e})") from None
            if not isinstance(record, dict) or record.get("_id") is None:
                raise InputError(f"{path}:{lineno}: a {what} line is a JSON object with an \"_id\"")
            doc_id = str(record["_id"])
            if doc_id not in needed:
                continue
            if doc_id in first:
                raise InputError(f"{path}:{lineno}: {noun} {doc_id!r} is defined again (first at line {first[doc_id]})")
            first[doc_id] = lineno
            yield lineno, doc_id, record


def _text_field(record: dict, key: str, path: str, lineno: int) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{path}:{lineno}: \"{key}\" must be a string, got {type(value).__name__}")
    return value


def read_queries(path: str, needed: set[str], s3_max_attempts: int | None = None) -> dict[str, str]:
    """Query id -> text for the ids in `needed`, from queries.jsonl (`_id`, `text`)."""
    found: dict[str, str] = {}
    for lineno, qid, record in _jsonl_records(path, "query", "query", needed, s3_max_attempts):
        if not isinstance(record.get("text"), str):
            raise InputError(f"{path}:{lineno}: query {qid!r} has no \"text\" string")
        found[qid] = record["text"]
    return found


def read_corpus(path: str, needed: set[str], s3_max_attempts: int | None = None) -> dict[str, str]:
    """Document id -> `(title + " " + text).strip()` for the ids in `needed`, in one pass over corpus.jsonl."""
    found: dict[str, str] = {}
    for lineno, doc_id, record in _jsonl_records(path, "corpus", "document", needed, s3_max_attempts):
        title, text = _text_field(record, "title", path, lineno), _text_field(record, "text", path, lineno)
        found[doc_id] = (title + " " + text).strip()
    return found


# ---------------------------------------------------------------- candidates


def cut_run(run: pa.Table, judged_qids: pa.Array, depth: int) -> tuple[pa.Table, int]:
    """The run's rows of judged queries, the first `depth` of each in trec_eval's order.

    Returns query_id, doc_id, retrieval_score (float64), retrieval_rank (int32, 1 = best),
    sorted by query then rank, and the number of run queries dropped for having no judgments.
    """
    judged = pc.is_in(run["query_id"], value_set=judged_qids)
    run_queries = len(pc.unique(run["query_id"]))
    run = run.filter(judged)
    dropped = run_queries - len(pc.unique(run["query_id"]))
    ordered, ranks = ranking.ranked(run)
    keep = ranks < depth
    ordered = ordered.filter(pa.array(keep))
    return pa.table({"query_id": ordered["query_id"], "doc_id": ordered["doc_id"],
                     BASELINE_COL: ordered["score"], "retrieval_rank": pa.array(ranks[keep] + 1, pa.int32())}), dropped


def _texts(ids: pa.ChunkedArray, found: dict[str, str]) -> pa.Array:
    keys = pa.array(list(found), pa.string())
    return pa.array(list(found.values()), pa.string()).take(pc.index_in(ids, value_set=keys))


def _missing_error(run_path: str, run: pa.Table, col: str, found: dict[str, str], needed: pa.Table,
                   file: str, what: str) -> InputError:
    """The error for ids of the cut run (`needed`) not found in `file`, located in the run as read."""
    absent = pc.invert(pc.is_in(needed[col], value_set=pa.array(list(found), pa.string())))
    ids = pc.unique(pc.filter(needed[col], absent))
    first = ids[0].as_py()
    return InputError(
        f"{_locate(run_path, pc.equal(run[col], first))}: {what} {first!r} is not in {file} "
        f"({len(ids)} {what} id(s) of the run are missing from it). Use the run made for this dataset, "
        "or remove those lines from the run.")


def build_candidates(config: BeirConfig) -> dict:
    """Write OUT/candidates/ (query_id, query, doc_id, document, retrieval_score, retrieval_rank) and
    OUT/qrels.parquet from the BEIR folder and the run of `config` (validated); returns the counts.

    candidates/ holds `rows_per_file` rows per file, by query then rank. The files are replaced
    on every call, with the same names and contents for the same inputs, so an interrupted
    rerank of them resumes.
    """
    candidates, qrels, counts = collect_candidates(config)
    write_candidates(config, candidates, qrels)
    return counts


def collect_candidates(config: BeirConfig) -> tuple[pa.Table, pa.Table, dict]:
    """The candidates, the split's qrels and the counts `build_candidates` returns; writes nothing, and
    raises every error about the inputs (InputError naming the file and line)."""
    s3 = config.rerank.s3_max_attempts
    qrels_path, qrels = _split_qrels(config)
    run = read_run(config.run)
    if run.num_rows == 0:
        raise InputError(f"{config.run}: the run is empty")
    notes: list[str] = []
    cut, dropped = cut_run(run, pc.unique(qrels["query_id"]), config.depth)
    run_queries = dropped + len(pc.unique(cut["query_id"]))
    if cut.num_rows == 0:
        raise InputError(f"{config.run}: none of its {run_queries} queries is judged in {qrels_path}; "
                         f"run ids look like {pc.unique(run['query_id'])[:3].to_pylist()}, "
                         f"qrels ids like {pc.unique(qrels['query_id'])[:3].to_pylist()}")
    if dropped:
        message = (f"{dropped} of {run_queries} run queries have no judgments in {qrels_path} "
                   "and are not reranked (BEIR evaluates the split's judged queries only)")
        notes.append(message)
        warnings.warn(message, BeirWarning, stacklevel=3)

    query_ids = set(pc.unique(cut["query_id"]).to_pylist())
    queries_path = posixpath.join(config.beir.rstrip("/"), "queries.jsonl")
    queries = read_queries(queries_path, query_ids, s3)
    if len(queries) < len(query_ids):
        raise _missing_error(config.run, run, "query_id", queries, cut, queries_path, "query")
    doc_ids = set(pc.unique(cut["doc_id"]).to_pylist())
    corpus_path = posixpath.join(config.beir.rstrip("/"), "corpus.jsonl")
    documents = read_corpus(corpus_path, doc_ids, s3)
    if len(documents) < len(doc_ids):
        raise _missing_error(config.run, run, "doc_id", documents, cut, corpus_path, "document")

    candidates = pa.table([cut["query_id"], _texts(cut["query_id"], queries), cut["doc_id"],
                           _texts(cut["doc_id"], documents), cut[BASELINE_COL], cut["retrieval_rank"]],
                          schema=CANDIDATE_SCHEMA)
    per_query = np.diff(ranking.group_starts(cut["query_id"]))
    return candidates, qrels, {
        "run_queries": run_queries, "queries": len(query_ids), "pairs": candidates.num_rows,
        "documents": len(doc_ids), "files": max(1, math.ceil(candidates.num_rows / config.rows_per_file)),
        "queries_without_judgments": dropped, "queries_below_depth": int((per_query < config.depth).sum()),
        "warnings": notes}


def _split_qrels(config: BeirConfig) -> tuple[str, pa.Table]:
    """qrels/<split>.tsv of the BEIR folder, its path as the user spells it, and its judgments."""
    s3 = config.rerank.s3_max_attempts
    beir = storage.resolve(config.beir, s3_max_attempts=s3)
    if not beir.fs.isdir(beir.path):
        raise InputError(f"{config.beir}: no such folder (the BEIR dataset: corpus.jsonl, queries.jsonl, qrels/)")
    qrels_path = posixpath.join(config.beir.rstrip("/"), "qrels", f"{config.split}.tsv")
    if not beir.fs.isfile(beir.join("qrels", f"{config.split}.tsv")):
        tsvs = beir.fs.glob(beir.join("qrels", "*.tsv"))
        splits = sorted(posixpath.basename(p).removesuffix(".tsv") for p in tsvs)
        raise InputError(f"{qrels_path}: no such file; splits in {config.beir}/qrels: {splits or 'none'}")
    return qrels_path, read_beir_qrels(qrels_path, s3)


def write_candidates(config: BeirConfig, candidates: pa.Table, qrels: pa.Table) -> None:
    """OUT/candidates/part-NNNNN.parquet, `rows_per_file` rows each (replacing what was there), and OUT/qrels.parquet."""
    out = storage.resolve(config.output, s3_max_attempts=config.rerank.s3_max_attempts)
    folder = out.join(CANDIDATES)
    storage.remove_tree(out, folder)
    out.pa_fs.create_dir(folder, recursive=True)
    for i in range(max(1, math.ceil(candidates.num_rows / config.rows_per_file))):
        part = candidates.slice(i * config.rows_per_file, config.rows_per_file)
        pq.write_table(part, out.join(CANDIDATES, f"part-{i:05d}.parquet"), filesystem=out.pa_fs)
    pq.write_table(qrels, out.join(QRELS_PARQUET), filesystem=out.pa_fs)


# ---------------------------------------------------------------- the whole command


@dataclass
class BeirResult:
    """What `beir_rerank` returns; `evaluation` is what OUT/eval.json holds."""

    output: str
    candidates: dict
    rerank: object  # the rerank job's RunResult
    evaluation: dict

    def summary(self) -> str:
        c = self.candidates
        return "\n".join([
            self.rerank.summary(),
            f"ettin-batch beir: {c['pairs']:,} candidates of {c['queries']:,} queries "
            f"(depth {self.evaluation['depth']}) "
            f"from {c['documents']:,} documents",
            evaluation.format_table(self.evaluation),
            f"  written: {self.output}  ({CANDIDATES}/, {QRELS_PARQUET}, {RERANK}/, {EVAL}, {SUCCESS})",
        ])


def beir_rerank(config: BeirConfig) -> BeirResult:
    """Candidates from the BEIR folder and run, the rerank job on them, and pytrec_eval's numbers for
    the reranked order and the first-stage order (baseline) of the same candidates.

    Writes OUT/candidates/, OUT/qrels.parquet, OUT/rerank/, OUT/eval.json and, last, OUT/_SUCCESS.json
    (OUT is a RunFolder of kind "beir"). A finished OUT is refused unless config.rerank.overwrite,
    before the corpus is read; an OUT left part-way by the same settings is taken up again, and the
    rerank in it resumes. Raises ConfigError, InputError or OutputError before anything is written or
    Ray starts; the rerank job's own errors as `rerank` raises them.
    """
    from ettin_batch.engine.loading import check_model
    from ettin_batch.pipeline.rerank import rerank

    config.validate()
    folder = RunFolder.open(config.output, "beir", s3_max_attempts=config.rerank.s3_max_attempts)
    fingerprint = _fingerprint(config)
    # Before the corpus scan (minutes on a large corpus), not after it.
    folder.check(overwrite=config.rerank.overwrite, inputs=[config.run], fingerprint=fingerprint)
    _refuse_finished_rerank(folder, config, fingerprint)
    candidates, qrels, counts = collect_candidates(config)
    scoring = config.rerank.scoring
    check_model(scoring.model, scoring.revision, scoring.max_length)  # a wrong model fails before OUT is replaced
    folder.begin()
    write_candidates(config, candidates, qrels)
    result = rerank(config.rerank)
    report = _evaluate(config, folder, result, counts)
    folder.finish({"status": "success", "beir": config.beir, "split": config.split, "run": config.run,
                   "depth": config.depth, "rerank": result.output, "eval": folder.url(EVAL),
                   "metrics": report["metrics"], "num_queries": report["num_queries"], "package_version": __version__})
    return BeirResult(output=folder.url(), candidates=counts, rerank=result, evaluation=report)


def _fingerprint(config: BeirConfig) -> dict:
    """What an unfinished OUT must have been started with to be taken up again rather than replaced."""
    s3 = config.rerank.s3_max_attempts
    return {"beir": storage.resolve(config.beir, s3_max_attempts=s3).url(),
            "run": storage.resolve(config.run, s3_max_attempts=s3).url(),
            "split": config.split, "depth": config.depth, "rows_per_file": config.rows_per_file}


def _refuse_finished_rerank(folder: RunFolder, config: BeirConfig, fingerprint: dict) -> None:
    """An OUT that is taken up again (no _SUCCESS.json, the same settings) whose rerank finished: refused
    unless overwrite, here rather than after the corpus scan, where the rerank job would refuse it."""
    record = folder.read_json(RECORD) or {}
    if config.rerank.overwrite or record.get("fingerprint") != fingerprint or not folder.exists(RERANK, SUCCESS):
        return
    raise OutputError(f"{folder.url(RERANK, SUCCESS)} exists: that rerank finished. Pass --overwrite to redo it, "
                      f"or `ettin-batch eval --run {folder.url(RERANK)} --qrels ...` to evaluate it again.")


def _evaluate(config: BeirConfig, folder: RunFolder, result, counts: dict) -> dict:
    """OUT/rerank/scores/ against OUT/qrels.parquet, the first-stage order as the baseline: OUT/eval.json."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", evaluation.EvaluationWarning)  # listed in the result's warnings
        numbers = evaluation.evaluate(result.output, folder.url(QRELS_PARQUET), config.metrics,
                                      baseline_col=BASELINE_COL, s3_max_attempts=config.rerank.s3_max_attempts)
    model = result.manifest["model"]
    report = {
        "metrics": numbers["metrics"], "baseline": numbers["baseline"], "delta": numbers["delta"],
        "num_queries": numbers["num_queries"], "warnings": counts["warnings"] + numbers["warnings"],
        "beir": config.beir, "split": config.split, "run": config.run, "depth": config.depth,
        "model": {k: model.get(k) for k in ("model_id", "revision", "is_random", "dtype")},
        "max_length": config.rerank.scoring.max_length,
        "candidates": {k: v for k, v in counts.items() if k != "warnings"},
        SCORES: f"{result.output.rstrip('/')}/{SCORES}",
    }
    storage.write_json(folder.loc, folder.path(EVAL), report)
    return report


__all__ = ["BeirConfig", "BeirResult", "BeirWarning", "beir_rerank", "build_candidates", "collect_candidates",
           "write_candidates", "read_run", "read_beir_qrels", "read_queries", "read_corpus", "cut_run"]
