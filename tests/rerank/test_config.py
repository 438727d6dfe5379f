"""One typed config, filled from a YAML/TOML file and CLI flags, validated once."""

from __future__ import annotations

import pytest

from ettin_batch.cli import build_parser
from ettin_batch.cli.jobs import job_config
from ettin_batch.config import DEFAULT_MODEL, ConfigError, RerankConfig, TeacherConfig


def _config_from_cli(*argv):
    return job_config(RerankConfig, build_parser().parse_args(["rerank", *argv]))


def test_yaml_file_fills_every_field(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: s3://b/in/\noutput: s3://b/out/\nmodel: random:ettin-17m\ntop_k: 5\n"
                    "columns: {query_id: qid, document: passage}\npassthrough: [lang]\n")
    config = RerankConfig.from_file(path).validate()
    assert config.input == ["s3://b/in/"] and config.top_k == 5 and config.passthrough == ["lang"]
    assert config.columns.query_id == "qid" and config.columns.document == "passage"
    assert config.columns.query == "query"


def test_toml_file_with_a_rerank_table(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[rerank]\ninput = ["a/", "b/"]\noutput = "out/"\nmax_length = 256\n')
    config = RerankConfig.from_file(path).validate()
    assert config.input == ["a/", "b/"] and config.scoring.max_length == 256 and config.scoring.model == DEFAULT_MODEL


def test_flags_override_the_file_and_absent_flags_do_not(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: in/\noutput: out/\ntop_k: 5\nmax_length: 256\ncolumns: {query: q}\n")
    config = _config_from_cli("--config", str(path), "--top-k", "20", "--doc-id-col", "pid")
    assert config.top_k == 20 and config.scoring.max_length == 256
    assert config.columns.query == "q" and config.columns.doc_id == "pid"


def test_unknown_config_key_is_an_error_that_lists_known_keys(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: in/\noutput: out/\ntopk: 5\n")
    with pytest.raises(ConfigError, match="topk.*top_k"):
        RerankConfig.from_file(path)


@pytest.mark.parametrize("change, flag", [({"top_k": 0}, "--top-k"), ({"output": ""}, "--output"),
                                          ({"max_tokens_per_batch": 100}, "max_length")],
                         ids=["top_k 0", "no output", "a token budget below max_length"])
def test_invalid_values_are_rejected_naming_the_setting(change, flag):
    with pytest.raises(ConfigError, match=flag):
        RerankConfig.of(input=["in/"], output="out/").replace(**change).validate()


@pytest.mark.parametrize("text, error", [
    ("gpus_per_actor: lots\n", "gpus_per_actor='lots' must be a number"),
    ("overwrite: 'no'\n", "overwrite='no' must be true or false"),
    ("max_length: 1.5\n", "max_length=1.5 must be a whole number"),
    ("columns: {query: 7}\n", "query=7 must be a string"),
    ("input: [a/, 7]\n", "must be a list of strings"),
    ("top_k: 5: 6\n", "job.yaml:3: not valid YAML"),
])
def test_a_config_file_with_a_wrong_type_or_bad_syntax_names_the_file_and_key(tmp_path, text, error):
    path = tmp_path / "job.yaml"
    path.write_text("input: in/\noutput: out/\n" + text)
    with pytest.raises(ConfigError, match=error) as caught:
        RerankConfig.from_file(path)
    assert str(path) in str(caught.value)


def test_a_string_where_a_list_is_expected_is_a_list_of_one(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: in/\noutput: out/\npassthrough: bm25\n")
    assert RerankConfig.from_file(path).passthrough == ["bm25"]


def test_group_rows_and_s3_attempts_come_from_the_file_or_flags(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: in/\noutput: out/\ngroup_rows: 5000\ns3_max_attempts: 4\n")
    config = _config_from_cli("--config", str(path), "--s3-max-attempts", "6")
    assert config.group_rows == 5000 and config.s3_max_attempts == 6


@pytest.mark.parametrize("flag", ["--group-rows", "--s3-max-attempts"])
def test_a_zero_group_rows_or_s3_attempts_flag_is_rejected_naming_it(flag):
    with pytest.raises(ConfigError, match=flag):
        _config_from_cli("--input", "in/", "--output", "out/", flag, "0")


def test_the_s3_attempts_setting_travels_with_the_filesystem_the_workers_receive(monkeypatch):
    import pickle

    from ettin_batch import storage

    monkeypatch.setenv("ETTIN_BATCH_S3_MAX_ATTEMPTS", "7")
    configured = pickle.loads(pickle.dumps(storage.resolve("s3://bucket/out/", s3_max_attempts=3).pa_fs))
    fallback = pickle.loads(pickle.dumps(storage.resolve("s3://bucket/other/").pa_fs))
    assert configured.handler.fs.config_kwargs["retries"] == {"max_attempts": 3, "mode": "standard"}
    assert fallback.handler.fs.config_kwargs["retries"]["max_attempts"] == 7  # no setting: the variable


def test_group_rows_sets_the_smallest_resume_group_and_the_variable_is_the_fallback(monkeypatch):
    from ettin_batch.pipeline.inputs import InputPlan
    from ettin_batch.pipeline.groups import shard_groups

    plan = InputPlan(location=None, files=[f"f{i}" for i in range(6)], read_columns=[], passthrough=[], rename={},
                     num_rows=600, file_rows=[100] * 6, schema=None)
    monkeypatch.setenv("ETTIN_BATCH_GROUP_ROWS", "300")
    assert [len(g.files) for g in shard_groups(plan)] == [3, 3]
    assert [len(g.files) for g in shard_groups(plan, 200)] == [2, 2, 2]


def test_a_teacher_config_has_no_top_k_reuse_or_group_rows(tmp_path):
    path = tmp_path / "teacher.yaml"
    path.write_text("input: in/\noutput: out/\ngroup_rows: 10\n")
    with pytest.raises(ConfigError, match="unknown config key.*group_rows"):
        TeacherConfig.from_file(path)


def test_batches_are_4096_pairs_on_gpus_and_1024_on_cpus_unless_set():
    from ettin_batch.pipeline.run import plan_resources

    config = RerankConfig.of(input=["in/"], output="out/")
    gpu, cpu = plan_resources(config, {"GPU": 8, "CPU": 96}), plan_resources(config, {"CPU": 16})
    assert (gpu.batch_size, gpu.calls_per_actor, gpu.actors) == (4096, 2, 8)
    assert (cpu.batch_size, cpu.calls_per_actor, cpu.actors) == (1024, 1, 1)
    assert {plan_resources(config.replace(batch_size=64), cluster).batch_size
            for cluster in ({"GPU": 8, "CPU": 96}, {"CPU": 16})} == {64}


@pytest.mark.parametrize("attention, device, refused", [
    ("flash", "cpu", "needs a GPU"), ("torch", "cpu", "needs a GPU"), ("matmul", "cuda", "runs on the CPU"),
    ("matmul", "cpu", None), ("flash", "cuda", None), ("reference", "cuda", None), ("auto", "cuda", None)])
def test_an_attention_backend_the_actors_device_cannot_run_is_refused(attention, device, refused):
    # The job checks this once Ray is up, before the output is touched (test_rerank_bad_input.py runs the
    # CPU case end to end); unchecked, the scoring actors would fail to start.
    from ettin_batch.pipeline.run import check_attention

    if refused is None:
        check_attention(attention, device)
    else:
        with pytest.raises(ConfigError, match=refused):
            check_attention(attention, device)
