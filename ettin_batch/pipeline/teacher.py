"""The teacher job: a distillation dataset scored by a teacher model, in the schema the Ettin
rerankers were trained on (query, document, label = raw logit), plus the ids. Its stages, handed to
the shared Run:

    read_parquet -> canonical -> Tokenize (texts carried on) -> ScorePairs -> training_rows
      -> repartition(rows_per_file, strict) -> write_parquet   data/ (rows_per_file rows a file)
    counts from the written files -> _SUCCESS.json (last)

The texts travel beside the token ids to the actors and on to the writer, so each label is written
with the very row it was scored from: a (query_id, doc_id) listed twice is simply two rows, as in
the rerank job. A teacher dataset is written in one pass, without resume groups: an unfinished
output is replaced by the next run.
"""

from __future__ import annotations

import pyarrow as pa

from ettin_batch.config import TeacherConfig
from ettin_batch.pipeline.inputs import InputPlan
from ettin_batch.pipeline.manifest import RunResult
from ettin_batch.pipeline.run import Run
from ettin_batch.run_folder import DATA

LABEL = "label"
# The columns of the dataset the Ettin rerankers were trained on, then the ids; pass-through columns follow.
TRAINING_COLUMNS = ("query", "document", LABEL, "query_id", "doc_id")


def training_rows(batch: pa.Table, *, passthrough: list[str]) -> pa.Table:
    """Scored rows (ids, texts, `score`) -> query, document, label, query_id, doc_id, pass-through."""
    return pa.table([batch.column(n) for n in ("query", "document", "score", "query_id", "doc_id", *passthrough)],
                    names=[*TRAINING_COLUMNS, *passthrough])


def output_schema(plan: InputPlan) -> pa.Schema:
    """The schema of every data/ file (used for the empty file when nothing was scored)."""
    field = {plan.rename[n]: plan.schema.field(n) for n in plan.read_columns[:4]}

    def text(name: str) -> pa.DataType:  # an all-null text column is typed null: nothing from it is scored
        t = field[name].type
        return pa.string() if pa.types.is_null(t) else t

    return pa.schema([("query", text("query")), ("document", text("document")), (LABEL, pa.float32()),
                      ("query_id", field["query_id"].type), ("doc_id", field["doc_id"].type),
                      *[plan.schema.field(n) for n in plan.passthrough]])


def teacher_dataset(config: TeacherConfig) -> RunResult:
    """Write a teacher-score dataset end to end; returns its manifest (also written to _SUCCESS.json).

    Errors about the config, the inputs, the output folder or the model are raised before Ray starts.
    """
    run = Run(config)
    run.check_output()
    with run.session():
        # A row the tokenizer or the model refuses goes to rejects/, with its texts.
        ds = run.tokenize(run.canonical(run.read(run.plan.files)), run.rejects(), keep_text=True)
        ds = run.score(ds, run.rejects())
        ds = run.map(ds, training_rows, passthrough=run.plan.passthrough)
        # strict: every block but the last holds exactly rows_per_file rows, so every file but the last does too.
        ds = ds.repartition(target_num_rows_per_block=config.rows_per_file, strict=True)
        run.write(ds, DATA, min_rows_per_file=config.rows_per_file, max_rows_per_file=config.rows_per_file)
        run.phases.mark("scoring")
    if run.folder.count_rows(DATA) == 0:  # every row rejected (or no rows): the dataset stays loadable
        run.folder.write_empty(DATA, output_schema(run.plan))
    return run.finish(DATA, dataset={
        "path": f"{DATA}/", "format": "parquet", "columns": [*TRAINING_COLUMNS, *run.plan.passthrough],
        "label": "the teacher's raw logit (float32), not rescaled", "rows_per_file": config.rows_per_file,
        "files": len(run.folder.parquet_files(DATA))})
