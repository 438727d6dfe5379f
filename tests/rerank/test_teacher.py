"""Teacher-score datasets end to end: shards on a real S3 server, a real local Ray, the tiny random model.

One run (module fixture), read back over HTTP like a trainer would, and loaded with `datasets`.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ettin_batch.cli import main
from ettin_batch.config import ConfigError, TeacherConfig
from ettin_batch.errors import InputError
from ettin_batch.pipeline.teacher import teacher_dataset

from helpers import TINY, read_parquet_folder, upload_parquet

ROWS_PER_FILE = 4
WORDS = "river water music film school data model search query document rank score index night".split()
SCHEMA = pa.schema([("query_id", pa.string()), ("query", pa.string()), ("doc_id", pa.string()),
                    ("document", pa.string()), ("retrieval_score", pa.float64())])


def _rows(rng, query_id, n):
    query = f"what about {' '.join(rng.choice(WORDS, 3))} {query_id}"
    return [{"query_id": query_id, "query": query, "doc_id": f"{query_id}-d{i}",
             "document": " ".join(rng.choice(WORDS, rng.integers(3, 40))), "retrieval_score": float(i)}
            for i in range(n)]


@pytest.fixture(scope="module")
def shards():
    """Three shards (one empty); 19 scorable pairs, one row with a null query and one with a null document."""
    rng = np.random.default_rng(11)
    shard0 = _rows(rng, "q1", 7) + _rows(rng, "q2", 5)
    bad = _rows(rng, "q-bad", 3)
    bad[0]["query"] = None
    bad[1]["document"] = None
    shard1 = _rows(rng, "q3", 6) + bad
    return [pa.Table.from_pylist(rows, schema=SCHEMA) for rows in (shard0, shard1, [])]


@pytest.fixture(scope="module")
def run(s3, ray_session, shards, tmp_path_factory):
    s3.mkdir("teacher-in")
    s3.mkdir("teacher-out")
    for i, table in enumerate(shards):
        upload_parquet(s3, table, f"teacher-in/candidates/part-{i}.parquet")
    config = TeacherConfig.of(input=["s3://teacher-in/candidates/"], output="s3://teacher-out/distill/run-1/",
                           model=TINY, rows_per_file=ROWS_PER_FILE, batch_size=5, progress=False)
    result = teacher_dataset(config)
    out = "teacher-out/distill/run-1"
    local = tmp_path_factory.mktemp("teacher-data")
    files = sorted(p for p in s3.find(f"{out}/data") if p.endswith(".parquet"))
    for p in files:
        s3.get(p, str(local / p.rsplit("/", 1)[-1]))
    with s3.open(f"{out}/_SUCCESS.json") as f:
        manifest = json.load(f)
    inp = pa.concat_tables(shards)
    return {"result": result, "manifest": manifest, "input": inp, "files": sorted(local.glob("*.parquet")),
            "data": read_parquet_folder(s3, f"{out}/data"), "rejects": read_parquet_folder(s3, f"{out}/rejects"),
            "valid": inp.filter(pc.and_(inp["query"].is_valid(), inp["document"].is_valid()))}


def _keys(table):
    return sorted(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist()))


def test_the_dataset_has_the_training_schema_exactly(run):
    assert run["data"].schema == pa.schema([("query", pa.string()), ("document", pa.string()),
                                            ("label", pa.float32()), ("query_id", pa.string()),
                                            ("doc_id", pa.string())])


def test_every_scorable_pair_is_written_exactly_once_with_its_own_texts(run):
    assert _keys(run["data"]) == _keys(run["valid"])
    texts = {(r["query_id"], r["doc_id"]): (r["query"], r["document"]) for r in run["valid"].to_pylist()}
    for r in run["data"].to_pylist():
        assert (r["query"], r["document"]) == texts[r["query_id"], r["doc_id"]]


def test_each_label_is_the_teachers_raw_logit_for_that_pair_alone(run, reference_reranker):
    for r in run["data"].to_pylist():
        expected = float(reference_reranker.score([r["query"]], [r["document"]])[0])
        assert r["label"] == pytest.approx(expected, abs=1e-5), (r["query_id"], r["doc_id"])


def test_every_file_but_one_holds_exactly_rows_per_file_rows(run):
    sizes = sorted(pq.read_metadata(p).num_rows for p in run["files"])
    assert sum(sizes) == run["valid"].num_rows == 19
    assert sizes == [3] + [ROWS_PER_FILE] * 4
    assert run["manifest"]["dataset"]["files"] == len(sizes)


FEATURES = {"query": "string", "document": "string", "label": "float32", "query_id": "string", "doc_id": "string"}


def test_datasets_load_dataset_reads_it_with_the_right_features(run, tmp_path):
    import datasets

    ds = datasets.load_dataset("parquet", data_files=[str(p) for p in run["files"]], split="train",
                               cache_dir=str(tmp_path))
    assert ds.num_rows == run["valid"].num_rows
    assert ds.features == datasets.Features({k: datasets.Value(v) for k, v in FEATURES.items()})


def test_datasets_load_dataset_reads_it_straight_from_s3(run, s3_endpoint, tmp_path, monkeypatch):
    import datasets

    # The suite runs with HF_HUB_OFFLINE=1 (no Hub here), which datasets also applies to s3:// URLs.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    ds = datasets.load_dataset("parquet", data_files="s3://teacher-out/distill/run-1/data/*.parquet", split="train",
                               cache_dir=str(tmp_path), storage_options={
                                   "key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}})
    assert ds.num_rows == run["valid"].num_rows
    assert sorted(ds["label"]) == pytest.approx(sorted(run["data"]["label"].to_pylist()))


def test_a_student_trains_on_it_with_the_real_trainer_as_the_readme_says(run, tmp_path):
    # The README's recipe, line for line but for the model and the steps: CrossEncoderTrainer with MSELoss.
    import datasets
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import MSELoss

    from builders import build_ettin

    loaded = datasets.load_dataset("parquet", data_files=[str(p) for p in run["files"]], split="train",
                                   cache_dir=str(tmp_path / "cache"))
    train = loaded.select_columns(["query", "document", "label"])
    student = CrossEncoder(str(build_ettin(tmp_path / "student", seed=1)), num_labels=1, device="cpu")  # not the teacher
    args = CrossEncoderTrainingArguments(output_dir=str(tmp_path / "student"), max_steps=3, per_device_train_batch_size=4,
                                         report_to=[], use_cpu=True, save_strategy="no")
    before = [p.detach().clone() for p in student.parameters()]
    result = CrossEncoderTrainer(model=student, args=args, train_dataset=train, loss=MSELoss(student)).train()
    assert result.global_step == 3 and result.training_loss > 0
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, student.parameters()))  # it learnt something
    with pytest.raises(ValueError, match="MSELoss expects a dataset with two non-label columns"):
        CrossEncoderTrainer(model=student, args=args, train_dataset=loaded, loss=MSELoss(student)).train()


def test_success_json_names_the_teacher_model_and_revision_and_counts_add_up(run):
    m = run["manifest"]
    assert m["kind"] == "teacher" and m == run["result"].manifest
    assert m["model"]["model_id"] == TINY and "revision" in m["model"] and m["model"]["is_random"] is True
    assert m["counts"]["in"] == run["input"].num_rows == 21
    assert m["counts"]["scored"] == 19 and m["counts"]["rejected"] == 2
    assert m["dataset"]["rows_per_file"] == ROWS_PER_FILE and m["dataset"]["path"] == "data/"
    assert "top_k" not in m


def test_null_texts_go_to_rejects_with_their_reason(run):
    rejects = run["rejects"]
    got = sorted(zip(rejects["doc_id"].to_pylist(), rejects["reason"].to_pylist()))
    assert got == [("q-bad-d0", "null query"), ("q-bad-d1", "null document")]
    assert not set(_keys(rejects)) & set(_keys(run["data"]))


def test_the_summary_says_the_labels_of_a_random_teacher_are_meaningless(run):
    assert "RANDOM WEIGHTS" in run["result"].summary() and "teacher random:ettin-tiny" in run["result"].summary()


def test_the_manifest_says_where_the_wall_time_went(run):
    m = run["manifest"]
    assert list(m["phases_s"]) == ["setup", "ray_start", "scoring", "finish"]
    assert sum(m["phases_s"].values()) == pytest.approx(m["wall_time_s"], abs=0.01)
    assert 0 < m["model_busy"] <= 1 and "model busy" in run["result"].summary()


# --- the command line -------------------------------------------------------------------------------

def test_teacher_command_reads_rows_per_file_from_the_config_keeps_int_ids_and_prints_a_summary(
        tmp_path, ray_session, capsys):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"qid": [7, 7, 7, 8, 8], "text": ["rivers"] * 3 + ["music"] * 2, "pid": [1, 2, 3, 1, 2],
                             "passage": ["water", "a river at night", "film", "music", "a school"]}),
                   tmp_path / "in" / "part-0.parquet")
    (tmp_path / "teacher.yaml").write_text(f"model: {TINY}\nrows_per_file: 2\ncolumns: {{query_id: qid, query: text}}\n")
    out = tmp_path / "out"
    code = main(["teacher", "--config", str(tmp_path / "teacher.yaml"), "--input", str(tmp_path / "in"),
                 "--output", str(out), "--doc-id-col", "pid", "--document-col", "passage", "--no-progress"])
    assert code == 0
    assert "pairs in 5" in capsys.readouterr().out
    files = sorted((out / "data").glob("*.parquet"))
    assert sorted(pq.read_metadata(p).num_rows for p in files) == [1, 2, 2]
    data = pq.read_table(out / "data")
    assert data.column_names == ["query", "document", "label", "query_id", "doc_id"]
    assert data.schema.field("query_id").type == pa.int64() and data.schema.field("doc_id").type == pa.int64()
    assert sorted(zip(data["query_id"].to_pylist(), data["doc_id"].to_pylist())) == [(7, 1), (7, 2), (7, 3), (8, 1), (8, 2)]


# --- checks that fail before Ray starts -----------------------------------------------------------

def test_rows_per_file_must_be_a_positive_integer():
    with pytest.raises(ConfigError, match="--rows-per-file"):
        TeacherConfig.of(input=["x"], output="y", model=TINY, rows_per_file=0).validate()


def test_teacher_command_refuses_top_k_reuse_and_bad_rows_per_file(tmp_path, capsys):
    pq.write_table(SCHEMA.empty_table(), tmp_path / "part-0.parquet")
    base = ["teacher", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--model", TINY]
    assert main([*base, "--top-k", "3"]) == 2
    assert "--top-k" in capsys.readouterr().err
    assert main([*base, "--reuse", str(tmp_path / "previous")]) == 2
    assert "--reuse" in capsys.readouterr().err
    assert main([*base, "--rows-per-file", "-1"]) == 2
    assert "rows_per_file=-1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_input_label_column_kept_as_pass_through_is_refused_before_any_work(tmp_path):
    pq.write_table(pa.table({"query_id": ["q"], "query": ["a"], "doc_id": ["d"], "document": ["b"], "label": [1]}),
                   tmp_path / "part-0.parquet")
    with pytest.raises(InputError, match="label"):
        teacher_dataset(TeacherConfig.of(input=[str(tmp_path)], output=str(tmp_path / "out"), model=TINY,
                                      passthrough=None))
    assert not (tmp_path / "out").exists()


# --- texts travel with their rows ------------------------------------------------------------------

def test_a_pair_listed_twice_beside_a_row_the_tokenizer_refuses_keeps_each_rows_own_texts(tmp_path, ray_session):
    from .faults import invalid_utf8_strings

    docs = [b"water", b"caf\xe9 au lait", b"a river at night", b"a river at dawn"]  # [1] is Latin-1, not UTF-8
    pq.write_table(pa.table({"query_id": ["q"] * 4, "query": ["rivers"] * 4, "doc_id": ["a", "b", "c", "c"],
                             "document": invalid_utf8_strings(docs)}), tmp_path / "part-0.parquet")
    result = teacher_dataset(TeacherConfig.of(input=[str(tmp_path / "part-0.parquet")], output=str(tmp_path / "out"),
                                              model=TINY, progress=False))
    data = pq.read_table(tmp_path / "out" / "data").sort_by([("doc_id", "ascending"), ("document", "ascending")])
    assert list(zip(data["doc_id"].to_pylist(), data["document"].to_pylist())) == [
        ("a", "water"), ("c", "a river at dawn"), ("c", "a river at night")]
    rejects = pq.read_table(tmp_path / "out" / "rejects")
    assert rejects["doc_id"].to_pylist() == ["b"] and "not valid UTF-8" in rejects["reason"][0].as_py()
    assert rejects["document"].to_pylist() == ["caf\ufffd au lait"]  # readable, its bad byte replaced
    assert result.counts == {**result.counts, "in": 4, "scored": 3, "rejected": 1}
