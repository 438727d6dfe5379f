"""The rerank job: every pair's score and each query's top-k. Its stages, handed to the shared Run:

    the groups of input files that no earlier run of the same settings finished (groups.py), in one stream:
      read_parquet (projected columns, each row's file)
        -> TagGroups      each row's resume group, from its file
        -> canonical      canonical names, the pair fingerprint
        -> Tokenize       CPU tasks; null and untokenizable rows -> rejects/<group>/
        -> ScorePairs     the actor pool, one model per GPU; a pair the model raises on -> rejects/<group>/
        -> write_groups   scores/<group>/, in input order; -> _done/<group>.json once a group adds up
    (--reuse: a join after canonical gives an unchanged pair the previous run's score (reuse.py); it holds its
     whole input, so the groups go in rounds (groups.join_rounds), and it mixes them, so write_groups writes them
     unordered and checks each group once its rows are written. An input column named `path` hides each row's
     file: a stream per group.)
    write_topk: each scores/ file's k best per query, merged -> topk/   (topk.py)
    counts from the written files -> _SUCCESS.json (last)

Top-k reads back what was written rather than branching the scoring stream, so the model runs
once per pair and the dataset is never materialised.
"""

from __future__ import annotations

import contextlib
import logging
import math

import pyarrow as pa

from ettin_batch.config import RerankConfig
from ettin_batch.pipeline import reuse
from ettin_batch.pipeline.groups import (GROUP_COL, PATH_COL, Group, TagGroups, executions, group_rows, in_group,
                                         in_input_order, shard_groups, write_groups)
from ettin_batch.pipeline.inputs import InputPlan
from ettin_batch.pipeline.manifest import RunResult
from ettin_batch.pipeline.run import Run
from ettin_batch.pipeline.topk import topk_schema, write_topk
from ettin_batch.run_folder import REJECTS, SCORES, TOPK

log = logging.getLogger("ettin_batch.pipeline")

def run_fingerprint(config: RerankConfig, plan: InputPlan, model) -> dict:
    """What must match for an unfinished output to be resumed rather than replaced."""
    s = config.scoring
    return {"model": model.model_id, "revision": model.revision, "dtype": s.dtype, "max_length": s.max_length,
            "attention": s.attention, "columns": config.columns.required(), "passthrough": plan.passthrough,
            # Another grouping names other groups: their finished markers would not match, and
            # their files in scores/ would stay beside the new groups' (duplicates).
            "group_rows": group_rows(config.group_rows),
            "files": [[plan.location.url(p), n] for p, n in zip(plan.files, plan.file_rows)]}


def rerank(config: RerankConfig) -> RunResult:
    """Run one rerank job end to end and return its manifest (also written to _SUCCESS.json).

    Errors about the config, the inputs, the output folder or the model are raised before Ray starts.
    """
    run = Run(config)
    previous = reuse.open_previous(config.reuse, run.folder, s3_max_attempts=config.s3_max_attempts) \
        if config.reuse else None
    groups = shard_groups(run.plan, config.group_rows)
    run.check_output(run_fingerprint(config, run.plan, run.model), inputs=[config.reuse] if config.reuse else [])
    with run.session() as done:
        settings = {"model_id": run.model.model_id, "revision": run.model.revision,
                    "max_length": config.scoring.max_length, "dtype": run.dtype()}
        why_not = previous.why_unusable(settings) if previous else None
        if why_not:
            log.warning("--reuse %s: %s; every pair will be scored", previous.folder.url(), why_not)
        to_score = [g for g in groups if g.key not in done]
        rounds = executions(to_score, run.plan.schema.names, reuse=bool(previous and not why_not))
        if len(rounds) > 1 and PATH_COL in run.plan.schema.names:
            log.warning("the input has a column named %r, the name Ray Data gives each row's file: the %d groups "
                        "of input files are scored one after another, each starting the scoring actors anew "
                        "(rename the column to save that time)", PATH_COL, len(rounds))
        old_scores = reuse.previous_scores(previous, shared=len(rounds) > 1) if previous and not why_not else None
        for group in to_score:
            for entry in (SCORES, REJECTS):  # an unfinished group's partial files
                run.folder.remove(entry, group.key)

        def mark_done(group: Group) -> None:
            run.folder.mark_done(group.key, {"files": [run.plan.location.url(f) for f in group.files],
                                             "rows": group.rows})

        header = reuse.fingerprint_header(**settings)
        for part in rounds:
            _score_groups(run, part, header, mark_done, old_scores)
        run.phases.mark("scoring")
    with run.reporting():  # after Ray: its workers' memory is released before the driver reads scores/ back
        scored = run.folder.count_rows(SCORES)
        repeated, example = write_topk(run.folder, config.top_k, scored) if scored else _write_empty(run)
    if repeated:
        log.warning("%d scored row(s) repeat the (query_id, doc_id) of another row, e.g. %r: each row was "
                    "scored and is in scores/; topk/ ranks each document once, with its higher score. "
                    "`ettin-batch eval` refuses duplicate pairs: remove them from the input.", repeated, example)
    run.phases.mark(TOPK)  # the phase that writes topk/
    return run.finish(
        SCORES, top_k=config.top_k, repeated_pairs=repeated,
        # Groups of input files (see shard_groups) found finished by an earlier, interrupted run.
        resume={"groups": len(groups), "groups_skipped": len(groups) - len(to_score),
                "pairs_skipped": sum(g.rows for g in groups if g.key in done),
                "pairs_scored_earlier": sum(run.folder.count_rows(SCORES, g.key) for g in groups if g.key in done)},
        # --reuse: the previous run, whether its scores could be used, and how many pairs kept theirs.
        reuse=previous and {"from": previous.folder.url(), "usable": not why_not,
                            **({"why_not": why_not} if why_not else {}), "pairs_reused": run.totals["reused"]})


def _score_groups(run: Run, groups: list[Group], header: bytes, mark_done, previous) -> None:
    """One Ray Data execution for `groups` (groups.py). With --reuse (`previous`: the earlier run's scores), the join
    mixes the groups in every block: write_groups takes them unordered."""
    files = [f for g in groups for f in g.files]
    if not files:
        for group in groups:
            mark_done(group)
        return
    run.after_last_actors()  # the run's last execution's
    with in_input_order() if previous is None else contextlib.nullcontext():
        if len(groups) > 1:
            tag = TagGroups(tuple(files), tuple(i for i, g in enumerate(groups) for _ in g.files))
            ds = run.map(run.read(files, include_paths=True), tag)
        else:
            ds = run.map(run.read(files), in_group, index=0)
        ds = run.canonical(ds, header)
        schema = None
        if previous is not None:
            ds = reuse.attach_previous(ds, previous, partitions=_join_partitions(sum(g.rows for g in groups)))
            schema = reuse.fingerprint_schema(run.plan).append(pa.field(GROUP_COL, pa.int32()))
        rejects = run.rejects(groups=tuple(g.key for g in groups))
        ds = run.score(run.tokenize(ds, rejects, schema=schema), rejects)
        write_groups(ds, run.folder, SCORES, groups, num_cpus=run.resources.cpus_per_task,
                     # One group's blocks are in group order whatever their order: written as they come.
                     window=max(4, 2 * run.resources.actors), done=mark_done, ordered=previous is None or len(groups) == 1)


def _join_partitions(rows: int) -> int:
    """The --reuse join's partitions: one per 500k pairs, 1 to 64."""
    return max(1, min(64, math.ceil(rows / 500_000)))


def _write_empty(run: Run) -> tuple[int, None]:
    """Nothing was scored (every row rejected, or no rows): empty files keep the layout the same for readers."""
    plan = run.plan
    types = {plan.rename[n]: plan.schema.field(n).type for n in plan.read_columns[:4]}
    scores = pa.schema([("query_id", types["query_id"]), ("doc_id", types["doc_id"]),
                        *[plan.schema.field(n) for n in plan.passthrough],
                        (reuse.FINGERPRINT_COL, reuse.FINGERPRINT_TYPE), ("score", pa.float32())])
    run.folder.write_empty(SCORES, scores)
    run.folder.write_empty(TOPK, topk_schema(types["query_id"], types["doc_id"]))
    return 0, None
