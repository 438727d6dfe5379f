"""The plan's sample: pairs drawn at random, with a seed, from a spread of row groups across the input.

Reading every row would be a full pass over the input; reading the first file's head would see one
shard's queries only (inputs are often sorted by query, date or source). So:

  1. draw row positions uniformly over all rows (seeded) and take the row groups holding them: a
     row group is chosen with probability proportional to its rows, from anywhere in the input;
  2. read those row groups (the four role columns only), in a random order, up to READ_BUDGET
     compressed bytes (at least one row group);
  3. in each, take whole queries at random (at most PER_QUERY candidates each, drawn at random)
     until its share of the sample is filled: the fidelity check compares rankings within a query.

Footers are read only for the files that hold a chosen row group. An input no larger than the
sample is read whole, and then the sample is the input.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ettin_batch.config import Columns
from ettin_batch.pipeline.inputs import InputPlan

PER_QUERY = 16  # candidates of one query in the sample, at most
ROWS_PER_DRAW = 100  # one row-group draw per this many sampled pairs ...
MIN_DRAWS, MAX_DRAWS = 4, 32  # ... within these bounds
READ_BUDGET = 1 << 30  # compressed bytes of row groups read, at most (one row group always)
EXACT_QUERY_ROWS = 2_000_000  # up to this many rows, queries are counted exactly (query_id column read)


@dataclass
class Sample:
    """Sampled rows (input column names, the four roles) and where they came from.

    row_groups: (file URL, row group index) of every row group read.
    rows_read:  rows in those row groups; queries_read: distinct query ids among them.
    bytes_read: compressed bytes of the columns read.
    whole_input: the input was no larger than the sample and was read whole.
    """

    table: pa.Table
    row_groups: list[tuple[str, int]]
    rows_read: int
    queries_read: int
    bytes_read: int
    whole_input: bool

    @property
    def files(self) -> int:
        return len({f for f, _ in self.row_groups})


def draw_sample(plan: InputPlan, columns: Columns, size: int, seed: int) -> Sample:
    """About `size` pairs (fewer only if the input is smaller), the same ones for the same seed and files."""
    source = _RowGroups(plan, columns.required())
    rng = np.random.default_rng(seed)
    if plan.num_rows <= size:
        every = [(path, g) for path, meta in source.footers(plan.files).items() for g in range(meta.num_row_groups)]
        groups = source.read(every)
        table = pa.concat_tables([t for _, t in groups]) if groups else source.empty()
        return source.sample(groups, table, whole_input=True)
    hits = source.draw(rng, min(MAX_DRAWS, max(MIN_DRAWS, math.ceil(size / ROWS_PER_DRAW))))
    order = [list(hits)[i] for i in rng.permutation(len(hits))]
    kept, spent = [], 0
    for key, nbytes in zip(order, source.sizes(order)):
        if kept and spent + nbytes > READ_BUDGET:
            break
        kept.append(key)
        spent += nbytes
    groups = source.read(kept)
    quotas = _apportion(size, [hits[k] for k in kept])
    picked = [t.take(pa.array(_pick(t.column(0), q, rng), pa.int64())) for (_, t), q in zip(groups, quotas)]
    return source.sample(groups, pa.concat_tables(picked), whole_input=False)


class _RowGroups:
    """The input's row groups, read by (file, index): footers once each, the role columns `names` only."""

    def __init__(self, plan: InputPlan, names: list[str]):
        self.plan, self.names = plan, names
        self._footers: dict[str, pq.FileMetaData] = {}

    def footers(self, files) -> dict[str, pq.FileMetaData]:
        todo = [f for f in dict.fromkeys(files) if f not in self._footers]
        if todo:
            with ThreadPoolExecutor(max_workers=min(16, len(todo))) as pool:
                metas = pool.map(lambda f: pq.read_metadata(f, filesystem=self.plan.location.pa_fs), todo)
                self._footers.update(zip(todo, metas))
        return {f: self._footers[f] for f in files}

    def draw(self, rng: np.random.Generator, draws: int) -> dict[tuple[str, int], int]:
        """Row groups holding `draws` uniformly drawn rows, with how many draws each holds, in input order."""
        plan = self.plan
        starts = np.concatenate([[0], np.cumsum(plan.file_rows)])
        positions = np.sort(rng.integers(0, plan.num_rows, draws))
        file_index = np.searchsorted(starts, positions, side="right") - 1
        metas = self.footers([plan.files[i] for i in np.unique(file_index)])
        hits: dict[tuple[str, int], int] = {}
        for i, offset in zip(file_index, positions - starts[file_index]):
            meta = metas[plan.files[i]]
            ends = np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
            key = (plan.files[i], int(np.searchsorted(ends, offset, side="right")))
            hits[key] = hits.get(key, 0) + 1
        return hits

    def sizes(self, keys: list[tuple[str, int]]) -> list[int]:
        """Compressed bytes of the role columns in each row group."""
        metas = self.footers([f for f, _ in keys])
        sizes = []
        for path, g in keys:
            group = metas[path].row_group(g)
            sizes.append(sum(group.column(i).total_compressed_size for i in range(group.num_columns)
                             if group.column(i).path_in_schema in self.names))
        return sizes

    def read(self, keys: list[tuple[str, int]]) -> list[tuple[tuple[str, int], pa.Table]]:
        def one(key):
            path, group = key
            with self.plan.location.pa_fs.open_input_file(path) as f:
                return key, pq.ParquetFile(f).read_row_group(group, columns=self.names)

        if not keys:
            return []
        with ThreadPoolExecutor(max_workers=min(8, len(keys))) as pool:
            return list(pool.map(one, keys))

    def empty(self) -> pa.Table:
        return pa.schema([self.plan.schema.field(n) for n in self.names]).empty_table()

    def sample(self, groups, table: pa.Table, whole_input: bool) -> Sample:
        ids = [c for _, t in groups for c in t.column(0).chunks]
        queries = len(pc.unique(pa.chunked_array(ids, self.plan.schema.field(self.names[0]).type))) if ids else 0
        keys = [k for k, _ in groups]
        urls = [(self.plan.location.url(path), g) for path, g in keys]
        return Sample(table, urls, sum(t.num_rows for _, t in groups), queries, sum(self.sizes(keys)), whole_input)


def _apportion(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights`, largest remainders first; sums to `total`."""
    exact = np.array(weights, float) * total / sum(weights)
    out = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - out), kind="stable")[: total - out.sum()]:
        out[i] += 1
    return out.tolist()


def _pick(query_ids: pa.ChunkedArray, quota: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices: whole queries in random order, at most PER_QUERY random candidates each, `quota` in all.
    Rows with a null query id count as one query (the tokenize stage rejects them, and the plan says how many)."""
    codes = pc.dictionary_encode(query_ids.combine_chunks()).indices
    members = groups_of(codes.fill_null(-1).to_numpy(zero_copy_only=False))
    picked: list[np.ndarray] = []
    left = quota
    for q in rng.permutation(len(members)):
        if left <= 0:
            break
        rows = members[q]
        take = rng.permutation(rows)[: min(PER_QUERY, left)]
        picked.append(np.sort(take))
        left -= len(take)
    return np.concatenate(picked) if picked else np.zeros(0, np.int64)


def groups_of(codes: np.ndarray) -> list[np.ndarray]:
    """Row indices of each distinct value of `codes` (int [n]), one array per value, ascending values."""
    if len(codes) == 0:
        return []
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    return np.split(order, starts[1:])


def count_queries(plan: InputPlan, columns: Columns, sample: Sample) -> tuple[int, str | None]:
    """Queries in the input and, when estimated, how: exact (the query_id column of every file read) up to
    EXACT_QUERY_ROWS rows, else distinct query ids per row in the row groups read, times the input's rows."""
    if sample.whole_input:
        return sample.queries_read, None
    if plan.num_rows <= EXACT_QUERY_ROWS:
        name = columns.query_id

        def ids(path):
            return pq.read_table(path, columns=[name], filesystem=plan.location.pa_fs).column(0)

        with ThreadPoolExecutor(max_workers=min(16, len(plan.files))) as pool:
            chunks = [c for column in pool.map(ids, plan.files) for c in column.chunks]
        return len(pc.unique(pa.chunked_array(chunks, plan.schema.field(name).type))), None
    estimate = round(sample.queries_read / max(1, sample.rows_read) * plan.num_rows)
    return estimate, (f"estimated: {sample.queries_read:,} distinct query ids in the {sample.rows_read:,} rows of "
                      f"the {len(sample.row_groups)} row groups read, scaled to {plan.num_rows:,} rows; a query "
                      "whose candidates span row groups is counted once per row group")
