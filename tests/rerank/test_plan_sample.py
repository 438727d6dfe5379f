"""`plan`'s sample: seeded, spread over the input's files and row groups, whole queries' candidates."""

from __future__ import annotations

import collections

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ettin_batch.config import PlanConfig
from ettin_batch.pipeline.inputs import inspect_inputs
from ettin_batch.plan import sample as sampling
from ettin_batch.plan.sample import count_queries, draw_sample

FILES, GROUPS_PER_FILE, ROWS_PER_GROUP, CANDIDATES = 8, 4, 250, 20


def write_sorted_shards(folder, files=FILES) -> int:
    """Shards sorted by query, as inputs often are: the first file's head holds the first queries only."""
    folder.mkdir(exist_ok=True)
    rows = GROUPS_PER_FILE * ROWS_PER_GROUP
    for f in range(files):
        ids = list(range(f * rows, (f + 1) * rows))
        pq.write_table(pa.table({"query_id": [f"q{i // CANDIDATES:05d}" for i in ids],
                                 "query": [f"query number {i // CANDIDATES}" for i in ids],
                                 "doc_id": [f"d{i:06d}" for i in ids],
                                 "document": [f"document {i} about rivers" for i in ids]}),
                       folder / f"part-{f}.parquet", row_group_size=ROWS_PER_GROUP)
    return files * rows


def inputs_of(folder):
    config = PlanConfig.of(input=[str(folder)], model="unused")
    return inspect_inputs(config), config.columns


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan-sample") / "in"
    write_sorted_shards(folder)
    return folder


def test_the_sample_comes_from_row_groups_across_the_files_not_the_first_files_head(shards):
    plan, columns = inputs_of(shards)
    sample = draw_sample(plan, columns, 400, seed=0)
    assert sample.table.num_rows == 400
    assert sample.files >= 4 and len(sample.row_groups) >= 4
    files_of_rows = {int(d[1:]) // (GROUPS_PER_FILE * ROWS_PER_GROUP) for d in sample.table["doc_id"].to_pylist()}
    assert len(files_of_rows) >= 4
    assert len(set(sample.table["doc_id"].to_pylist())) == 400  # no pair twice
    assert sample.rows_read == len(sample.row_groups) * ROWS_PER_GROUP  # whole row groups, not whole files
    assert not sample.whole_input


def test_the_same_seed_draws_the_same_pairs_and_another_seed_others(shards):
    plan, columns = inputs_of(shards)
    first = draw_sample(plan, columns, 300, seed=7).table
    again = draw_sample(inputs_of(shards)[0], columns, 300, seed=7).table
    other = draw_sample(plan, columns, 300, seed=8).table
    assert first.equals(again)
    assert set(first["doc_id"].to_pylist()) != set(other["doc_id"].to_pylist())


def test_the_sample_holds_several_candidates_of_each_query_it_picks(shards):
    plan, columns = inputs_of(shards)
    counts = collections.Counter(draw_sample(plan, columns, 400, seed=0).table["query_id"].to_pylist())
    assert max(counts.values()) <= sampling.PER_QUERY
    assert sum(n for n in counts.values() if n >= 2) >= 0.9 * 400  # rankings within a query can be compared


def test_an_input_no_larger_than_the_sample_is_the_sample_and_its_queries_are_counted(tmp_path):
    rows = write_sorted_shards(tmp_path / "in", files=2)
    plan, columns = inputs_of(tmp_path / "in")
    sample = draw_sample(plan, columns, rows + 10, seed=0)
    assert sample.whole_input and sample.table.num_rows == rows
    assert count_queries(plan, columns, sample) == (rows // CANDIDATES, None)


def test_queries_are_counted_exactly_in_a_small_input_and_estimated_in_a_large_one(shards, monkeypatch):
    plan, columns = inputs_of(shards)
    sample = draw_sample(plan, columns, 300, seed=0)
    assert count_queries(plan, columns, sample) == (FILES * GROUPS_PER_FILE * ROWS_PER_GROUP // CANDIDATES, None)
    monkeypatch.setattr(sampling, "EXACT_QUERY_ROWS", 100)
    estimate, basis = count_queries(plan, columns, sample)
    assert estimate == pytest.approx(FILES * GROUPS_PER_FILE * ROWS_PER_GROUP / CANDIDATES, rel=0.1)
    assert "estimated" in basis and "row groups" in basis


def test_the_read_budget_stops_at_one_row_group_when_row_groups_are_huge(shards, monkeypatch):
    monkeypatch.setattr(sampling, "READ_BUDGET", 1)
    plan, columns = inputs_of(shards)
    sample = draw_sample(plan, columns, 200, seed=0)
    assert len(sample.row_groups) == 1 and sample.table.num_rows == 200
