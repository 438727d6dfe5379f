"""Incremental re-scoring (`--reuse`): the night after, only new or changed pairs reach the model,
and the output equals a full run's. Real Ray (session fixture), real Parquet, the tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ettin_batch.config import RerankConfig
from ettin_batch import rerank
from ettin_batch.errors import InputError
from ettin_batch.pipeline import groups as groups_module
from ettin_batch.pipeline.reuse import FINGERPRINT_COL, open_previous
from ettin_batch.run_folder import RunFolder

from helpers import TINY
from .faults import accounting, make_shards, write_local


def _read(folder) -> pa.Table:
    files = sorted(folder.rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({})


def _by_key(table: pa.Table) -> dict:
    return dict(zip(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist()), table["score"].to_pylist()))


def _next_night(night1: list[pa.Table]) -> tuple[list[pa.Table], dict]:
    """Night 2: some documents edited, some pairs gone, a new query, a copy of an old pair under new
    ids (same texts: reusable), a pair with a null document (rejected), and one file unchanged."""
    edited, changes = [], {"edited": 0, "dropped": 0, "new": 0}
    for f, table in enumerate(night1):
        rows = table.to_pylist()
        if f == 0:
            edited.append(table)  # unchanged file
            continue
        out = []
        for i, row in enumerate(rows):
            if i % 17 == 3:
                changes["dropped"] += 1
                continue
            if i % 13 == 5:
                row = {**row, "document": row["document"] + " updated"}
                changes["edited"] += 1
            out.append(row)
        if f == 1:
            out += [{"query_id": "new-q", "query": "a query nobody asked yesterday", "doc_id": f"n{j}",
                     "document": f"fresh document {j} about rivers", "position": j} for j in range(7)]
            out.append({**rows[0], "query_id": "copy-q", "doc_id": "copy-d"})
            out.append({**rows[1], "doc_id": "null-doc", "document": None})
            changes["new"] += 7
        edited.append(pa.Table.from_pylist(out, schema=table.schema))
    return edited, changes


@pytest.fixture(scope="module")
def nights(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("reuse")
    night1 = make_shards(files=3, pairs_per_file=120, seed=7)
    night2, changes = _next_night(night1)
    write_local(night1, root / "in1")
    write_local(night2, root / "in2")
    base = dict(model=TINY, dtype="float32", top_k=3, batch_size=64, progress=False)
    first = rerank(RerankConfig.of(input=[str(root / "in1")], output=str(root / "night1"), **base))
    full = rerank(RerankConfig.of(input=[str(root / "in2")], output=str(root / "full"), **base))
    # A resume group per file, joined in two rounds: files 1 and 2 together (the join mixes their rows, and each
    # group must still be whole and marked), then file 3 on its own.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(groups_module, "REUSE_JOIN_ROWS", 250)
        incremental = rerank(RerankConfig.of(input=[str(root / "in2")], output=str(root / "incremental"),
                                          reuse=str(root / "night1"), group_rows=110, **base))
    return {"root": root, "night2": pa.concat_tables(night2), "changes": changes, "first": first, "full": full,
            "incremental": incremental, "base": base}


def test_only_new_and_changed_pairs_are_scored(nights):
    m = nights["incremental"].manifest
    changed = nights["changes"]["edited"] + nights["changes"]["new"]
    scored = nights["night2"].num_rows - 1  # the null document is rejected
    assert m["reuse"]["usable"] is True
    assert m["resume"]["groups"] == 3 and len(list((nights["root"] / "incremental" / "_done").glob("*.json"))) == 3
    assert m["model_pairs"] == changed
    assert m["reuse"]["pairs_reused"] == scored - changed
    assert nights["full"].manifest["model_pairs"] == scored


def test_incremental_output_equals_a_full_run(nights):
    root = nights["root"]
    full, inc = _read(root / "full" / "scores"), _read(root / "incremental" / "scores")
    assert inc.schema == full.schema
    assert accounting(nights["night2"], inc, _read(root / "incremental" / "rejects")) == \
        accounting(nights["night2"], full, _read(root / "full" / "rejects"))
    a, b = _by_key(full), _by_key(inc)
    assert a.keys() == b.keys()
    keys = sorted(a)
    np.testing.assert_allclose([b[k] for k in keys], [a[k] for k in keys], rtol=0, atol=1e-5)
    fp = dict(zip(zip(full["query_id"].to_pylist(), full["doc_id"].to_pylist()), full[FINGERPRINT_COL].to_pylist()))
    assert fp == dict(zip(zip(inc["query_id"].to_pylist(), inc["doc_id"].to_pylist()), inc[FINGERPRINT_COL].to_pylist()))
    rejects_full, rejects_inc = _read(root / "full" / "rejects"), _read(root / "incremental" / "rejects")
    assert rejects_inc.schema == rejects_full.schema and rejects_inc.num_rows == rejects_full.num_rows == 1
    topk_full = _read(root / "full" / "topk").sort_by([("query_id", "ascending"), ("rank", "ascending")])
    topk_inc = _read(root / "incremental" / "topk").sort_by([("query_id", "ascending"), ("rank", "ascending")])
    assert topk_inc.select(["query_id", "rank", "doc_id"]).equals(topk_full.select(["query_id", "rank", "doc_id"]))


def test_reused_scores_are_the_previous_runs_and_changed_ones_are_new(nights):
    root = nights["root"]
    before = _read(root / "night1" / "scores")
    after = _read(root / "incremental" / "scores")
    old = dict(zip(before[FINGERPRINT_COL].to_pylist(), before["score"].to_pylist()))
    kept = [fp for fp in after[FINGERPRINT_COL].to_pylist() if fp in old]
    assert len(kept) == nights["incremental"].manifest["reuse"]["pairs_reused"]
    # The copy under new ids has old texts, so its score is the old pair's, bit for bit.
    copy = after.filter(pc.equal(after["query_id"], "copy-q"))
    assert copy.num_rows == 1 and copy["score"][0].as_py() == old[copy[FINGERPRINT_COL][0].as_py()]


def test_a_previous_nan_score_is_scored_again_not_kept(nights, tmp_path):
    """Runs before 2026-12-07 could write a NaN score (float16 overflow); --reuse must not carry it forward."""
    import shutil

    root, base = nights["root"], nights["base"]
    previous = tmp_path / "night1-with-a-nan"
    shutil.copytree(root / "night1", previous)
    first = sorted((previous / "scores").rglob("*.parquet"))[0]
    table = pq.read_table(first)
    scores = table["score"].to_numpy().copy()
    scores[0] = np.nan
    pq.write_table(table.set_column(table.column_names.index("score"), "score", pa.array(scores, pa.float32())), first)
    result = rerank(RerankConfig.of(input=[str(root / "in1")], output=str(tmp_path / "out"), reuse=str(previous),
                                    **base))
    assert result.manifest["model_pairs"] == 1 and result.manifest["reuse"]["pairs_reused"] == result.counts["scored"] - 1
    out = _read(tmp_path / "out" / "scores")
    assert np.isfinite(out["score"].to_numpy()).all()
    key = (table["query_id"][0].as_py(), table["doc_id"][0].as_py())
    assert _by_key(out)[key] == pytest.approx(_by_key(_read(root / "night1" / "scores"))[key], abs=1e-5)


def test_other_settings_share_no_fingerprint_so_everything_is_scored(nights, tmp_path):
    root, base = nights["root"], nights["base"]
    result = rerank(RerankConfig.of(input=[str(root / "in2")], output=str(tmp_path / "out"), reuse=str(root / "night1"),
                                 **{**base, "max_length": 64}))
    assert result.manifest["reuse"]["usable"] is False
    assert "max_length 512 there, 64 now" in result.manifest["reuse"]["why_not"]
    assert result.manifest["model_pairs"] == result.counts["scored"]


def test_reuse_refuses_unfinished_or_same_folder(nights, tmp_path):
    root = nights["root"]
    out = RunFolder.open(str(tmp_path / "out"), "rerank")
    with pytest.raises(InputError, match="also the --output"):
        open_previous(str(root / "night1"), RunFolder.open(str(root / "night1") + "/", "rerank"))
    partial = tmp_path / "partial"
    (partial / "scores").mkdir(parents=True)
    with pytest.raises(InputError, match="not the output folder of an `ettin-batch rerank` run"):
        open_previous(str(partial), out)
    (partial / "_run.json").write_text(json.dumps({"kind": "rerank"}))
    with pytest.raises(InputError, match="the run did not finish"):
        open_previous(str(partial), out)
    old = tmp_path / "old"
    (old / "scores").mkdir(parents=True)
    pq.write_table(pa.table({"query_id": ["q"], "doc_id": ["d"], "score": pa.array([1.0], pa.float32())}),
                   old / "scores" / "part.parquet")
    (old / "_SUCCESS.json").write_text(json.dumps({"counts": {"scored": 1}}))
    with pytest.raises(InputError, match="no pair_fingerprint column"):
        open_previous(str(old), out)
