"""Resume groups in one stream (pipeline/groups.py): each row knows its group, its rejects and scores go to that
group's folders, and a group is marked done only once its files hold every one of its rows."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ettin_batch.errors import RunFailed
from ettin_batch.pipeline.groups import (GROUP_COL, PATH_COL, Group, TagGroups, in_input_order, join_rounds,
                                         write_groups)
from ettin_batch.pipeline.rejects import RejectsDir
from ettin_batch.run_folder import REJECTS, SCORES, RunFolder


def test_each_row_gets_the_group_of_its_file_and_an_unknown_file_is_an_error():
    tag = TagGroups(files=("in/a.parquet", "in/b.parquet", "in/c.parquet"), group_of_file=(0, 0, 1))
    out = tag(pa.table({"query_id": [1, 2, 3], PATH_COL: ["in/c.parquet", "in/a.parquet", "in/b.parquet"]}))
    assert out.column_names == ["query_id", GROUP_COL] and out[GROUP_COL].to_pylist() == [1, 0, 0]
    with pytest.raises(RuntimeError, match="in/d.parquet, which is not one of the run's input files"):
        tag(pa.table({"query_id": [1], PATH_COL: ["in/d.parquet"]}))


def test_a_reuse_run_joins_consecutive_groups_up_to_a_number_of_rows_and_a_bigger_group_alone():
    groups = [Group(f"g{i}", [f"f{i}"], rows) for i, rows in enumerate([3, 4, 9, 2, 2, 1])]
    assert [[g.key for g in r] for r in join_rounds(groups, 8)] == [["g0", "g1"], ["g2"], ["g3", "g4", "g5"]]
    assert [len(r) for r in join_rounds(groups, 100)] == [6]


def test_rejected_rows_go_to_their_groups_folder_with_their_own_reasons(tmp_path):
    rejects = RejectsDir(str(tmp_path / "rejects"), pafs.LocalFileSystem(), groups=("g0000-a", "g0001-b"))
    rows = pa.table({"query_id": ["q1", "q2", "q3"], "doc_id": ["d1", "d2", "d3"], GROUP_COL: pa.array([1, 0, 1], pa.int32())})
    rejects.write(rows, ["one", "two", "three"])
    first, second = pq.read_table(tmp_path / "rejects" / "g0000-a"), pq.read_table(tmp_path / "rejects" / "g0001-b")
    assert first.column_names == ["query_id", "doc_id", "reason"]  # the group is in the folder, not a column
    assert first.to_pylist() == [{"query_id": "q2", "doc_id": "d2", "reason": "two"}]
    assert second.sort_by("query_id")["reason"].to_pylist() == ["one", "three"]


def _rows(group: int, *ids: str) -> pa.Table:
    return pa.table({"query_id": list(ids), "doc_id": list(ids), "score": pa.array([0.5] * len(ids), pa.float32()),
                     GROUP_COL: pa.array([group] * len(ids), pa.int32())})


def _stream(*blocks: pa.Table):
    import ray

    with in_input_order():
        return ray.data.from_arrow(list(blocks))


def test_a_group_is_marked_only_once_its_files_hold_all_its_rows_even_when_its_rows_come_late(tmp_path, ray_session):
    folder = RunFolder.open(str(tmp_path / "out"), "rerank")
    groups = [Group("g0000-a", ["a"], 4), Group("g0001-b", ["b"], 3)]
    # Group 0's last row after group 1's first block (a stream out of input order), and one of group 0's rows
    # rejected by an earlier stage: 3 scored + 1 rejected is its 4 rows.
    RejectsDir(folder.path(REJECTS), folder.loc.pa_fs, ("g0000-a", "g0001-b")).write(_rows(0, "r"), ["refused"])
    ds = _stream(_rows(0, "a1", "a2"), _rows(1, "b1"), pa.concat_tables([_rows(0, "a3"), _rows(1, "b2")]),
                 _rows(1, "b3"))
    marked = []

    def done(group):
        marked.append((group.key, folder.count_rows(SCORES, group.key) + folder.count_rows(REJECTS, group.key)))

    with in_input_order():
        write_groups(ds, folder, SCORES, groups, num_cpus=0.25, window=0, done=done)
    assert sorted(marked) == [("g0000-a", 4), ("g0001-b", 3)]  # each marked once, with every row there
    scores = pq.read_table(folder.path(SCORES, "g0000-a"))
    assert sorted(scores["query_id"].to_pylist()) == ["a1", "a2", "a3"] and GROUP_COL not in scores.column_names
    assert sorted(pq.read_table(folder.path(SCORES, "g0001-b"))["query_id"].to_pylist()) == ["b1", "b2", "b3"]


def test_mixed_groups_are_written_a_few_blocks_a_file_and_each_marked_once_all_its_rows_are_there(tmp_path, ray_session,
                                                                                               monkeypatch):
    """After --reuse's join every block holds rows of every group: the blocks are written several at a time, and a
    group is marked as soon as its rows are all written, before the stream ends (group 0 here, with group 1's
    rows still to come), or at the end when some of its rows were rejected (group 1)."""
    import ettin_batch.pipeline.groups as groups_module

    monkeypatch.setattr(groups_module, "UNORDERED_WRITE_ROWS", 4)
    folder = RunFolder.open(str(tmp_path / "out"), "rerank")
    groups = [Group("g0000-a", ["a"], 3), Group("g0001-b", ["b"], 5)]
    RejectsDir(folder.path(REJECTS), folder.loc.pa_fs, ("g0000-a", "g0001-b")).write(_rows(1, "r"), ["refused"])
    mixed = [pa.concat_tables([_rows(1, "b1"), _rows(0, "a1")]), _rows(0, "a2", "a3"), _rows(1, "b2"), _rows(1, "b3"),
             _rows(1, "b4")]
    marked = []

    def done(group):
        marked.append((group.key, folder.count_rows(SCORES, group.key) + folder.count_rows(REJECTS, group.key),
                       sorted(f.rsplit("/", 1)[1] for f in folder.parquet_files(SCORES, group.key)),
                       folder.count_rows(SCORES)))

    import ray
    write_groups(ray.data.from_arrow(mixed), folder, SCORES, groups, num_cpus=0.25, window=0, done=done,
                 ordered=False)
    # Blocks of 2, 2, 1, 1, 1 rows, written at least 4 rows a task: the first two blocks are one task (a file for
    # each group), the last three another. Group 0 is marked after the first, while group 1 has one row written.
    assert marked[0] == ("g0000-a", 3, ["part-00000000.parquet"], 4)
    assert marked[1] == ("g0001-b", 5, ["part-00000000.parquet", "part-00000001.parquet"], 7) and len(marked) == 2
    assert sorted(pq.read_table(folder.path(SCORES, "g0001-b"))["query_id"].to_pylist()) == ["b1", "b2", "b3", "b4"]


def test_a_group_whose_files_do_not_add_up_is_not_marked_and_the_run_fails(tmp_path, ray_session):
    folder = RunFolder.open(str(tmp_path / "out"), "rerank")
    groups = [Group("g0000-a", ["a"], 2), Group("g0001-b", ["b"], 5)]  # group 1 has two rows in the stream, not 5
    marked = []
    with pytest.raises(RunFailed, match="resume group g0001-b does not add up: 5 rows in, 2 written"):
        write_groups(_stream(_rows(0, "a1", "a2"), _rows(1, "b1", "b2")), folder, SCORES, groups, num_cpus=0.25,
                     window=2, done=lambda group: marked.append(group.key))
    assert marked == ["g0000-a"]
