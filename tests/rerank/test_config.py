"""One typed config, filled from a YAML/TOML file and CLI flags, validated once."""

from __future__ import annotations

import pytest

from ettin_batch.cli import build_parser, rerank_config
from ettin_batch.config import DEFAULT_MODEL, ConfigError, RerankConfig


def _config_from_cli(*argv):
    return rerank_config(build_parser().parse_args(["rerank", *argv]))


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
    assert config.input == ["a/", "b/"] and config.max_length == 256 and config.model == DEFAULT_MODEL


def test_flags_override_the_file_and_absent_flags_do_not(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: in/\noutput: out/\ntop_k: 5\nmax_length: 256\ncolumns: {query: q}\n")
    config = _config_from_cli("--config", str(path), "--top-k", "20", "--doc-id-col", "pid")
    assert config.top_k == 20 and config.max_length == 256
    assert config.columns.query == "q" and config.columns.doc_id == "pid"


def test_unknown_config_key_is_an_error_that_lists_known_keys(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: in/\noutput: out/\ntopk: 5\n")
    with pytest.raises(ConfigError, match="topk.*top_k"):
        RerankConfig.from_file(path)


@pytest.mark.parametrize("change, flag", [({"top_k": 0}, "--top-k"), ({"output": ""}, "--output"),
                                          ({"max_tokens_per_batch": 100}, "max_length")])
def test_invalid_values_are_rejected_naming_the_setting(change, flag):
    with pytest.raises(ConfigError, match=flag):
        RerankConfig(input=["in/"], output="out/").replace(**change).validate()
