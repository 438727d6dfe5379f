"""Resume groups: the rerank job's inputs cut into groups of whole files, each finished on its own.

A group's rows go to scores/<group>/ and rejects/<group>/, and _done/<group>.json is written once
they are all there. A rerun with the same fingerprint skips the finished groups and redoes the others,
so it repeats at most the groups that were in flight.

The groups still to score run as one Ray Data execution, so the scoring actors start once a run, not
once a group (a start, the model loaded in a new process, costs ~10 s: RESULTS.md, "The fixed cost of a
resume group"). Three things keep the groups apart in the one stream:

    TagGroups      each row gets its group's index (GROUP_COL), from the file Ray Data read it from
    preserve_order Ray Data hands the blocks back in input order, so the groups come one after another
    write_groups   the driver writes each block to scores/<group>/ (a Ray task per block), and marks a
                   group done once a later group's block is written and its files add up: rows scored
                   plus rows rejected equal the group's input rows. A group that does not add up is
                   never marked (the run fails instead, and its resume redoes the group).

A --reuse run joins the rows to the previous run's scores. The join holds all it joins, so it takes the groups
a round at a time (join_rounds, REUSE_JOIN_ROWS), and it mixes a round's groups in every block: there
write_groups takes the blocks unordered, a few hundred thousand rows a write task, and checks a group once its
written rows reach its input rows (the same adds-up check marks it).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ettin_batch import storage
from ettin_batch.errors import RunFailed
from ettin_batch.run_folder import REJECTS

GROUP_ROWS_ENV = "ETTIN_BATCH_GROUP_ROWS"
DEFAULT_GROUP_ROWS = 1_000_000  # a resume redoes at most one group's rows
MAX_GROUPS = 16  # a bigger input gets bigger groups: a resume redoes at most ~1/16 of the work
GROUP_COL = "_ettin_group"  # int32: the row's group, an index into the run's groups; only between stages
PATH_COL = "path"  # the column Ray Data's read_parquet(include_paths=True) adds
# Rows a write task takes when the groups come mixed (a --reuse run): with G groups in every block, a
# block's file per group would hold 1/G of it (~256 rows of a 4,096-pair block in 16 groups).
UNORDERED_WRITE_ROWS, UNORDERED_WRITE_BYTES = 262_144, 64 * 2**20
# --reuse's hash join takes in every pair of its execution, texts and all, before it hands any on: it is held in
# the object store at once. So a --reuse run joins its groups this many input rows at a time (or one bigger group),
# each such round an execution that starts the scoring actors anew (~15-17 s on the 2-core VM, RESULTS.md).
REUSE_JOIN_ROWS = 4_000_000


@dataclass
class Group:
    key: str
    files: list[str]
    rows: int


def group_rows(configured: int | None = None) -> int:
    """The smallest group, in rows: `configured` (config.group_rows) if given, else $ETTIN_BATCH_GROUP_ROWS, else 1M."""
    return storage.setting(configured, GROUP_ROWS_ENV, DEFAULT_GROUP_ROWS, "rows")


def shard_groups(plan, floor: int | None = None) -> list[Group]:
    """Consecutive whole files of an InputPlan, about max(group_rows(floor), rows / 16) rows each."""
    target = max(1, group_rows(floor), math.ceil(plan.num_rows / MAX_GROUPS))
    groups: list[Group] = []
    files: list[str] = []
    rows = 0
    for path, n in zip(plan.files, plan.file_rows):
        files.append(path)
        rows += n
        if rows >= target:
            groups.append(Group("", files, rows))
            files, rows = [], 0
    if files or not groups:
        groups.append(Group("", files, rows))
    for i, g in enumerate(groups):
        g.key = f"g{i:04d}-" + hashlib.sha1("\n".join(g.files).encode()).hexdigest()[:12]
    return groups


@dataclass(frozen=True)
class TagGroups:
    """Ray map step: replace Ray Data's `path` column by GROUP_COL, the index of the group of the row's file."""

    files: tuple[str, ...]
    group_of_file: tuple[int, ...]

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths = batch.column(PATH_COL)
        found = pc.index_in(paths, value_set=pa.array(self.files, paths.type))
        if found.null_count:
            stray = paths.filter(pc.is_null(found))[0].as_py()
            raise RuntimeError(f"Ray Data read a row from {stray}, which is not one of the run's input files")
        index = np.asarray(self.group_of_file, np.int32)[found.to_numpy(zero_copy_only=False)]
        return batch.drop_columns([PATH_COL]).append_column(GROUP_COL, pa.array(index, pa.int32()))


def in_group(batch: pa.Table, index: int) -> pa.Table:
    """Ray map step for an execution of one group: GROUP_COL = `index` on every row (no need for each row's file)."""
    return batch.append_column(GROUP_COL, pa.array(np.full(batch.num_rows, index, np.int32)))


def join_rounds(groups: list[Group], rows: int | None = None) -> list[list[Group]]:
    """Consecutive groups of at most `rows` (REUSE_JOIN_ROWS) rows in all, or one bigger group: the executions
    of a --reuse run."""
    rows = REUSE_JOIN_ROWS if rows is None else rows
    rounds: list[list[Group]] = []
    for group in groups:
        if rounds and sum(g.rows for g in rounds[-1]) + group.rows <= rows:
            rounds[-1].append(group)
        else:
            rounds.append([group])
    return rounds


def executions(groups: list[Group], columns, *, reuse: bool) -> list[list[Group]]:
    """The groups each Ray Data execution of a run scores (`columns`: the input's). All in one, so the scoring
    actors start once, except: an input column named `path` hides each row's file from Ray Data, so a group at
    a time; --reuse's join takes in every pair of its execution before it hands any on, so rounds (join_rounds)."""
    if PATH_COL in columns:
        return [[g] for g in groups]
    return join_rounds(groups) if reuse else [groups]


@contextlib.contextmanager
def in_input_order():
    """Ray Data keeps the input order in the datasets built (and run) inside: groups come one after another."""
    from ray.data import DataContext

    options = DataContext.get_current().execution_options
    saved, options.preserve_order = options.preserve_order, True
    try:
        yield
    finally:
        options.preserve_order = saved


def split_by_group(rows: pa.Table) -> list[tuple[int, pa.Table]]:
    """(group index, its rows without GROUP_COL) for each group in `rows`, in order."""
    index = rows.column(GROUP_COL).to_numpy(zero_copy_only=False)
    rows = rows.drop_columns([GROUP_COL])
    groups = np.unique(index)
    if len(groups) == 1:
        return [(int(groups[0]), rows)]
    return [(int(g), rows.filter(pa.array(index == g))) for g in groups]


def write_groups(ds, folder, entry: str, groups: list[Group], *, num_cpus: float, window: int, done,
                 ordered: bool = True) -> None:
    """Run `ds` (GROUP_COL on every row) into folder/entry/<group>/, calling `done(group)` for each group whose
    files add up, and raising RunFailed for one that does not.

    ordered:  the blocks come in input order (in_input_order): a group is checked once a later group's rows are
              written, and each block is written as it comes. Otherwise (after --reuse's join, which mixes the
              groups in every block) a group is checked once its written rows reach its input rows (one with
              rejected rows, at the end), and blocks are written UNORDERED_WRITE_ROWS at a time, so a group's
              files are not cut into pieces by the number of groups.
    """
    import ray

    write = ray.remote(num_cpus=num_cpus)(_write_blocks)
    fs, root, keys = folder.loc.pa_fs, folder.path(entry), [g.key for g in groups]
    in_flight: deque = deque()
    unchecked = list(range(len(groups)))  # in input order
    unsure: list[int] = []
    written = [0] * len(groups)
    last_seen = -1

    def settle() -> None:
        nonlocal last_seen
        for i, rows in ray.get(in_flight.popleft()).items():
            written[i] += rows
            last_seen = max(last_seen, i)
        # Ordered: a later group's rows came, so this one has no more. Unordered: all its rows are written.
        for i in [i for i in unchecked if (i < last_seen if ordered else written[i] == groups[i].rows)]:
            unchecked.remove(i)
            if adds_up(folder, entry, groups[i]):
                done(groups[i])
            else:  # rows still to come (rejects, or a stream out of order): checked again at the end
                unsure.append(i)

    for sequence, unit in enumerate(_write_units(ds, ordered)):
        in_flight.append(write.remote([span for _, span in unit], fs, root, keys, sequence, *[b for b, _ in unit]))
        while len(in_flight) > window:
            settle()
    while in_flight:
        settle()
    for i in [*unsure, *unchecked]:
        if not adds_up(folder, entry, groups[i]):
            raise RunFailed(f"resume group {groups[i].key} does not add up: {groups[i].rows} rows in, "
                            f"{folder.count_rows(entry, groups[i].key)} written to {entry}/ and "
                            f"{folder.count_rows(REJECTS, groups[i].key)} to {REJECTS}/; it is not marked done, "
                            "and the same command scores it again")
        done(groups[i])


def _write_units(ds, ordered: bool):
    """Run `ds` and yield its (block ref, span or None) a write task at a time: each bundle as it comes, or
    (unordered) bundles of UNORDERED_WRITE_ROWS rows or UNORDERED_WRITE_BYTES bytes."""
    unit, rows, size = [], 0, 0
    for bundle in ds.iter_internal_ref_bundles():
        unit += [(b, None if p is None else (p.start_offset, p.end_offset))
                 for b, p in zip(bundle.block_refs, bundle.slices)]
        rows, size = rows + (bundle.num_rows() or 0), size + bundle.size_bytes()
        if ordered or rows >= UNORDERED_WRITE_ROWS or size >= UNORDERED_WRITE_BYTES:
            yield unit
            unit, rows, size = [], 0, 0
    if unit:
        yield unit


def adds_up(folder, entry: str, group: Group) -> bool:
    """Whether a group's written rows and rejected rows are its input rows."""
    return folder.count_rows(entry, group.key) + folder.count_rows(REJECTS, group.key) == group.rows


def _write_blocks(spans: list[tuple[int, int] | None], fs, root: str, keys: list[str], sequence: int,
                  *blocks: pa.Table) -> dict[int, int]:
    """Write the blocks (each its `span` of rows, or whole) to root/<group>/part-<sequence>.parquet, a file per
    group in them; a retried task writes the same files again. Returns the rows written for each group."""
    parts = [b if s is None else b.slice(s[0], s[1] - s[0]) for b, s in zip(blocks, spans)]
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return {}
    written = {}
    for i, rows in split_by_group(pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]):
        fs.create_dir(f"{root}/{keys[i]}", recursive=True)
        pq.write_table(rows, f"{root}/{keys[i]}/part-{sequence:08d}.parquet", filesystem=fs)
        written[i] = rows.num_rows
    return written
