"""A BEIR dataset plus a first-stage run, reranked and evaluated in one command.

    ettin-batch beir --beir datasets/scifact --run bm25.trec --output out/scifact \\
        --model cross-encoder/ettin-reranker-17m-v1 --depth 100 --metrics ndcg@10,recall@100

The steps, each a function here, write under OUT:

    read_run, read_beir_qrels   the run (TREC file or Parquet) and qrels/<split>.tsv
    cut_run                     the run's queries judged in the split, top `depth` each (trec_eval's order)
    read_queries, read_corpus   the texts of those queries and documents only: one pass over each file
    write_candidates            OUT/candidates/*.parquet and OUT/qrels.parquet
    rerank                      OUT/rerank/ (the rerank job: scores/, topk/, rejects/, _SUCCESS.json)
    evaluate                    OUT/rerank/scores/ against the qrels, `retrieval_score` as the baseline
                                -> OUT/eval.json

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

import argparse
import json
import math
import posixpath
import re
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ettin_batch import evaluation, storage, trec
from ettin_batch.config import Columns, ConfigError, RerankConfig
from ettin_batch.trec import TrecInputError

DEFAULT_DEPTH = 100
DEFAULT_SPLIT = "test"
CANDIDATES = "candidates"
RERANK = "rerank"
QRELS = "qrels.parquet"
EVAL = "eval.json"
BASELINE_COL = "retrieval_score"
DEFAULT_ROWS_PER_FILE = 100_000

CANDIDATE_SCHEMA = pa.schema([
    ("query_id", pa.string()), ("query", pa.string()), ("doc_id", pa.string()), ("document", pa.string()),
    (BASELINE_COL, pa.float64()), ("retrieval_rank", pa.int32()),
])


class BeirInputError(TrecInputError):
    """A BEIR folder or run that cannot be used as given; the message names the file and line."""


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
        try:
            [evaluation.parse_metric(m) for m in self.metrics]
        except evaluation.EvaluationError as e:
            raise ConfigError(str(e)) from None
        if self.rerank.columns != Columns() or self.rerank.passthrough is not None:
            raise ConfigError("the beir command writes the candidates itself: leave `columns` and `passthrough` "
                              "out of the rerank settings (every candidate column is kept in scores/)")
        out = storage.resolve(self.output)
        self.rerank = self.rerank.replace(input=[out.url(out.join(CANDIDATES))],
                                          output=out.url(out.join(RERANK))).validate()
        return self


# ---------------------------------------------------------------- reading


def _open(path: str, what: str):
    fs, p = trec.url_to_fs(path)
    if not fs.isfile(p):
        raise BeirInputError(f"{path}: no such file ({what})")
    return fs.open(p, "rb")


def read_run(path: str) -> pa.Table:
    """Read a first-stage run: a TREC run file or Parquet (file or folder) with query_id, doc_id, score.

    Returns query_id, doc_id (strings) and score (float64). A malformed line, a null or NaN
    score, or a (query_id, doc_id) pair listed twice is an error naming the file and line.
    """
    if trec.is_parquet(path):
        table = trec.read_parquet_columns(path, ["query_id", "doc_id", "score"], "a run")
        for col in table.column_names:
            if table[col].null_count:
                raise BeirInputError(f"{_locate(path, pc.is_null(table[col]))}: null {col} in the run")
        if not pa.types.is_floating(table["score"].type) and not pa.types.is_integer(table["score"].type):
            raise BeirInputError(f"{path}: the run's score column must be numeric, got {table['score'].type}")
        table = pa.table({"query_id": trec.ids_as_strings(table["query_id"]),
                          "doc_id": trec.ids_as_strings(table["doc_id"]),
                          "score": pc.cast(table["score"], pa.float64())})
    else:
        table = trec.read_trec_run(path)
    nan = pc.is_nan(table["score"])
    if pc.any(nan).as_py():
        raise BeirInputError(f"{_locate(path, nan)}: the run's score is NaN")
    counts = table.group_by(["query_id", "doc_id"]).aggregate([("doc_id", "count")])
    dup = counts.filter(pc.greater(counts["doc_id_count"], 1))
    if dup.num_rows:
        first = dup.slice(0, 1).to_pylist()[0]
        twice = pc.and_(pc.equal(table["query_id"], first["query_id"]), pc.equal(table["doc_id"], first["doc_id"]))
        raise BeirInputError(
            f"{_locate(path, twice, nth=2)}: query {first['query_id']!r} lists document {first['doc_id']!r} again; "
            f"{dup.num_rows} pair(s) appear more than once in the run. A run scores each pair once "
            "(pytrec_eval would keep one of the scores silently)")
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


def read_beir_qrels(path: str) -> pa.Table:
    """Read BEIR qrels (`query-id <TAB> corpus-id <TAB> score`, a header line first).

    Returns query_id, doc_id (strings) and relevance (int64). The first line is skipped when
    it is the header (its score is not an integer), as BEIR's loader skips it; any later line
    without three fields or an integer grade is an error naming the line.
    """
    qids, docs, grades = [], [], []
    with _open(path, "qrels") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) != 3:
                raise BeirInputError(f"{path}:{lineno}: a qrels line has 3 tab-separated fields "
                                     f"(query-id corpus-id score), got {len(fields)}: {line!r}")
            try:
                grade = int(fields[2])
            except ValueError:
                if lineno == 1:
                    continue  # the header
                raise BeirInputError(f"{path}:{lineno}: score must be an integer grade, got {fields[2]!r}") from None
            qids.append(fields[0])
            docs.append(fields[1])
            grades.append(grade)
    if not qids:
        raise BeirInputError(f"{path}: no judgments")
    return pa.table({"query_id": pa.array(qids, pa.string()), "doc_id": pa.array(docs, pa.string()),
                     "relevance": pa.array(grades, pa.int64())})


# A BEIR line starts with its id: `{"_id": "MED-10", "title": ...}`. Matching that prefix lets
# the scan skip a document the run does not need without parsing its JSON; any other spelling
# (or an id with escapes) is parsed in full, so the shortcut never changes what is read.
_ID_PREFIX = re.compile(rb'\{\s*"_id"\s*:\s*"([^"\\]*)"')


def _jsonl_records(path: str, what: str, needed: set[str]):
    """Yield (line number, id, record) for the lines of a BEIR .jsonl file whose `_id` is in `needed`."""
    wanted = {i.encode("utf-8") for i in needed}
    with _open(path, what) as f:
        for lineno, raw in enumerate(f, start=1):
            m = _ID_PREFIX.match(raw)
            if m is not None and m.group(1) not in wanted:
                continue
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError as e:
                raise BeirInputError(f"{path}:{lineno}: not a JSON line ({e})") from None
            if not isinstance(record, dict) or record.get("_id") is None:
                raise BeirInputError(f"{path}:{lineno}: a {what} line is a JSON object with an \"_id\"")
            doc_id = str(record["_id"])
            if doc_id in needed:
                yield lineno, doc_id, record


def _text_field(record: dict, key: str, path: str, lineno: int) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BeirInputError(f"{path}:{lineno}: \"{key}\" must be a string, got {type(value).__name__}")
    return value


def read_queries(path: str, needed: set[str]) -> dict[str, str]:
    """Query id -> text for the ids in `needed`, from queries.jsonl (`_id`, `text`)."""
    found: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, qid, record in _jsonl_records(path, "query", needed):
        if qid in found:
            raise BeirInputError(f"{path}:{lineno}: query {qid!r} is defined again (first at line {lines[qid]})")
        if not isinstance(record.get("text"), str):
            raise BeirInputError(f"{path}:{lineno}: query {qid!r} has no \"text\" string")
        found[qid], lines[qid] = record["text"], lineno
    return found


def read_corpus(path: str, needed: set[str]) -> dict[str, str]:
    """Document id -> `(title + " " + text).strip()` for the ids in `needed`, in one pass over corpus.jsonl."""
    found: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, doc_id, record in _jsonl_records(path, "corpus", needed):
        if doc_id in found:
            raise BeirInputError(f"{path}:{lineno}: document {doc_id!r} is defined again "
                                 f"(first at line {lines[doc_id]})")
        title, text = _text_field(record, "title", path, lineno), _text_field(record, "text", path, lineno)
        found[doc_id], lines[doc_id] = (title + " " + text).strip(), lineno
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
    ordered, ranks = trec.trec_order(run)
    keep = ranks < depth
    ordered = ordered.filter(pa.array(keep))
    return pa.table({"query_id": ordered["query_id"], "doc_id": ordered["doc_id"],
                     BASELINE_COL: ordered["score"], "retrieval_rank": pa.array(ranks[keep] + 1, pa.int32())}), dropped


def _texts(ids: pa.ChunkedArray, found: dict[str, str]) -> pa.Array:
    keys = pa.array(list(found), pa.string())
    return pa.array(list(found.values()), pa.string()).take(pc.index_in(ids, value_set=keys))


def _missing_error(run_path: str, run: pa.Table, col: str, found: dict[str, str], needed: pa.Table,
                   file: str, what: str) -> BeirInputError:
    """The error for ids of the cut run (`needed`) not found in `file`, located in the run as read."""
    absent = pc.invert(pc.is_in(needed[col], value_set=pa.array(list(found), pa.string())))
    ids = pc.unique(pc.filter(needed[col], absent))
    first = ids[0].as_py()
    return BeirInputError(
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
    fs, root = trec.url_to_fs(config.beir)
    if not fs.isdir(root):
        raise BeirInputError(f"{config.beir}: no such folder (the BEIR dataset: corpus.jsonl, queries.jsonl, qrels/)")
    qrels_path = posixpath.join(config.beir.rstrip("/"), "qrels", f"{config.split}.tsv")
    if not fs.isfile(posixpath.join(root, "qrels", f"{config.split}.tsv")):
        tsvs = fs.glob(posixpath.join(root, "qrels", "*.tsv"))
        splits = sorted(posixpath.basename(p).removesuffix(".tsv") for p in tsvs)
        raise BeirInputError(f"{qrels_path}: no such file; splits in {config.beir}/qrels: {splits or 'none'}")
    qrels = read_beir_qrels(qrels_path)
    run = read_run(config.run)
    if run.num_rows == 0:
        raise BeirInputError(f"{config.run}: the run is empty")
    notes: list[str] = []
    cut, dropped = cut_run(run, pc.unique(qrels["query_id"]), config.depth)
    run_queries = dropped + len(pc.unique(cut["query_id"]))
    if cut.num_rows == 0:
        raise BeirInputError(f"{config.run}: none of its {run_queries} queries is judged in {qrels_path}; "
                             f"run ids look like {pc.unique(run['query_id'])[:3].to_pylist()}, "
                             f"qrels ids like {pc.unique(qrels['query_id'])[:3].to_pylist()}")
    if dropped:
        message = (f"{dropped} of {run_queries} run queries have no judgments in {qrels_path} "
                   "and are not reranked (BEIR evaluates the split's judged queries only)")
        notes.append(message)
        warnings.warn(message, BeirWarning, stacklevel=2)

    query_ids = set(pc.unique(cut["query_id"]).to_pylist())
    queries_path = posixpath.join(config.beir.rstrip("/"), "queries.jsonl")
    queries = read_queries(queries_path, query_ids)
    if len(queries) < len(query_ids):
        raise _missing_error(config.run, run, "query_id", queries, cut, queries_path, "query")
    doc_ids = set(pc.unique(cut["doc_id"]).to_pylist())
    corpus_path = posixpath.join(config.beir.rstrip("/"), "corpus.jsonl")
    documents = read_corpus(corpus_path, doc_ids)
    if len(documents) < len(doc_ids):
        raise _missing_error(config.run, run, "doc_id", documents, cut, corpus_path, "document")

    candidates = pa.table([cut["query_id"], _texts(cut["query_id"], queries), cut["doc_id"],
                           _texts(cut["doc_id"], documents), cut[BASELINE_COL], cut["retrieval_rank"]],
                          schema=CANDIDATE_SCHEMA)
    out = storage.resolve(config.output)
    folder = out.join(CANDIDATES)
    storage.remove_tree(out, folder)
    out.pa_fs.create_dir(folder, recursive=True)
    files = max(1, math.ceil(candidates.num_rows / config.rows_per_file))
    for i in range(files):
        part = candidates.slice(i * config.rows_per_file, config.rows_per_file)
        pq.write_table(part, out.join(CANDIDATES, f"part-{i:05d}.parquet"), filesystem=out.pa_fs)
    pq.write_table(qrels, out.join(QRELS), filesystem=out.pa_fs)

    per_query = np.diff(trec.group_starts(cut["query_id"]))
    return {"run_queries": run_queries, "queries": len(query_ids), "pairs": candidates.num_rows,
            "documents": len(doc_ids), "files": files, "queries_without_judgments": dropped,
            "queries_below_depth": int((per_query < config.depth).sum()), "warnings": notes}


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
            f"  written: {self.output}  ({CANDIDATES}/, {QRELS}, {RERANK}/, {EVAL})",
        ])


def _refuse_finished_rerank(config: BeirConfig) -> None:
    from ettin_batch.pipeline import manifest as mf
    from ettin_batch.pipeline.job import OutputError

    # Before the corpus scan (minutes on a large corpus), not after it, where the rerank job would refuse.
    out = storage.resolve(config.rerank.output)
    if out.fs.exists(out.join(mf.SUCCESS)) and not config.rerank.overwrite:
        raise OutputError(f"{out.url(out.join(mf.SUCCESS))} exists: that rerank finished. Pass --overwrite to "
                          f"redo it, or `ettin-batch eval --run {out.url()} --qrels ...` to evaluate it again.")


def beir_rerank(config: BeirConfig) -> BeirResult:
    """Candidates from the BEIR folder and run, the rerank job on them, and pytrec_eval's numbers for
    the reranked order and the first-stage order (baseline) of the same candidates.

    Writes OUT/candidates/, OUT/qrels.parquet, OUT/rerank/ and OUT/eval.json. Raises BeirInputError
    (a TrecInputError) on bad input, before Ray starts; the rerank job's own errors as `rerank` raises them.
    """
    from ettin_batch.pipeline import rerank

    config.validate()
    _refuse_finished_rerank(config)
    counts = build_candidates(config)
    result = rerank(config.rerank)
    out = storage.resolve(config.output)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", evaluation.EvaluationWarning)  # listed in the result's warnings
        numbers = evaluation.evaluate(result.output, out.url(out.join(QRELS)), config.metrics,
                                      baseline_col=BASELINE_COL)
    model = result.manifest["model"]
    report = {
        "metrics": numbers["metrics"], "baseline": numbers["baseline"], "delta": numbers["delta"],
        "num_queries": numbers["num_queries"], "warnings": counts["warnings"] + numbers["warnings"],
        "beir": config.beir, "split": config.split, "run": config.run, "depth": config.depth,
        "model": {k: model.get(k) for k in ("model_id", "revision", "is_random", "dtype")},
        "max_length": config.rerank.max_length,
        "candidates": {k: v for k, v in counts.items() if k != "warnings"},
        "scores": f"{result.output.rstrip('/')}/scores",
    }
    storage.write_json(out, out.join(EVAL), report)
    return BeirResult(output=out.url(), candidates=counts, rerank=result, evaluation=report)


# ---------------------------------------------------------------- the `ettin-batch beir` subcommand


BEIR_HELP = ("rerank a first-stage run over a BEIR dataset (corpus.jsonl, queries.jsonl, qrels/) and evaluate "
             "it against the first-stage order, in one command")

# Flags of the rerank job that the beir command sets itself.
_NOT_FOR_BEIR = ("input", "query_id_col", "query_col", "doc_id_col", "document_col", "passthrough")


def add_beir_arguments(p: argparse.ArgumentParser) -> None:
    """The rerank job's model and compute flags (same meaning), plus the BEIR inputs."""
    from ettin_batch.cli import _add_rerank_arguments

    p.add_argument("--beir", help="BEIR dataset folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    p.add_argument("--run", help="first-stage run: TREC run file (qid Q0 docid rank score tag) or Parquet "
                                 "with query_id, doc_id, score")
    p.add_argument("--split", help=f"qrels/<split>.tsv to evaluate against (default {DEFAULT_SPLIT})")
    p.add_argument("--depth", type=int, help=f"candidates reranked per query, the run's best (default {DEFAULT_DEPTH})")
    p.add_argument("--metrics", help=f"comma-separated (default {','.join(evaluation.DEFAULT_METRICS)})")
    p.add_argument("--json", action="store_true", help="print eval.json instead of a table")
    _add_rerank_arguments(p)
    for action in p._actions:
        if action.dest in _NOT_FOR_BEIR:
            action.help = argparse.SUPPRESS  # accepted by the parser, refused in beir_config
        elif action.dest == "output":
            action.help = f"output folder: {CANDIDATES}/, {QRELS}, {RERANK}/ (the rerank job's output), {EVAL}"
        elif action.dest == "config":
            action.help = "YAML or TOML file with the rerank job's settings (model, top_k, ...; flags win)"


def beir_config(args: argparse.Namespace) -> BeirConfig:
    """The flags (and the rerank settings file, if any) as one validated BeirConfig."""
    from ettin_batch.cli import rerank_config

    given = [f"--{name.replace('_', '-')}" for name in _NOT_FOR_BEIR if getattr(args, name)]
    if given:
        raise ConfigError(f"{', '.join(given)} do(es) not apply to `ettin-batch beir`: it writes the candidates "
                          "itself, with the canonical columns, and keeps every column in scores/")
    if not args.output:
        raise ConfigError("no output: pass --output DIR")
    out = storage.resolve(args.output)
    # The rerank job's own flag handling (config file, then flags), pointed at OUT's folders.
    job_args = argparse.Namespace(**{**vars(args), "input": [out.url(out.join(CANDIDATES))],
                                     "output": out.url(out.join(RERANK))})
    changes = {name: getattr(args, name) for name in ("beir", "run", "split", "depth")
               if getattr(args, name) is not None}
    if args.metrics is not None:
        changes["metrics"] = [m.strip() for m in args.metrics.split(",") if m.strip()]
    return BeirConfig(output=args.output, rerank=rerank_config(job_args), **changes).validate()


def run_beir(args: argparse.Namespace) -> int:
    """Run `ettin-batch beir`; the exit codes of `ettin-batch rerank` (2 bad input, 3 model, 4 run failed)."""
    from ettin_batch.cli import run_reporting_errors

    def run() -> BeirResult:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BeirWarning)  # printed once below, from the result
            return beir_rerank(beir_config(args))

    code, result = run_reporting_errors(run, TrecInputError)
    if result is None:
        return code
    for note in result.evaluation["warnings"]:
        print(f"warning: {note}", file=sys.stderr)
    print(json.dumps(result.evaluation, indent=2) if args.json else result.summary())
    return 0


__all__ = ["BeirConfig", "BeirResult", "BeirInputError", "BeirWarning", "beir_rerank", "build_candidates",
           "read_run", "read_beir_qrels", "read_queries", "read_corpus", "cut_run"]
