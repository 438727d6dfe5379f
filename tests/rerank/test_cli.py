"""`ettin-batch rerank` from the command line: config file + flags, remapped columns, local paths."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from ettin_batch.cli import main

from helpers import TINY


def test_rerank_command_remaps_columns_and_prints_a_summary(tmp_path, ray_session, capsys):
    data = tmp_path / "in"
    data.mkdir()
    pq.write_table(pa.table({"qid": [7, 7, 7, 8], "q": ["rivers", "rivers", "rivers", "music"],
                             "pid": [1, 2, 3, 1], "passage": ["water", "a river in the night", "film", "music"]}),
                   data / "part-0.parquet")
    config = tmp_path / "job.yaml"
    config.write_text(f"model: {TINY}\ncolumns: {{query_id: qid, query: q}}\ntop_k: 2\n")
    out = tmp_path / "out"
    code = main(["rerank", "--config", str(config), "--input", str(data), "--output", str(out),
                 "--doc-id-col", "pid", "--document-col", "passage", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pairs in 4" in printed and str(out) in printed
    topk = pq.read_table(out / "topk").sort_by([("query_id", "ascending"), ("rank", "ascending")])
    assert topk.column_names == ["query_id", "rank", "doc_id", "score"]
    assert topk["query_id"].to_pylist() == [7, 7, 8] and topk["rank"].to_pylist() == [1, 2, 1]
    assert json.loads((out / "_SUCCESS.json").read_text())["counts"]["scored"] == 4


def test_unreachable_hub_model_tells_how_to_pass_a_local_folder_or_random_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pq.write_table(pa.table({"query_id": ["q"], "query": ["a"], "doc_id": ["d"], "document": ["b"]}),
                   tmp_path / "part-0.parquet")
    code = main(["rerank", "--input", str(tmp_path / "part-0.parquet"), "--output", str(tmp_path / "out"),
                 "--model", "cross-encoder/ettin-reranker-17m-v1"])
    assert code == 3
    err = capsys.readouterr().err
    assert "local folder" in err and "random:ettin-17m" in err
