"""`ettin-batch submit` before anything reaches a cluster: what runs there, what it carries, what it prints."""

from __future__ import annotations

import json

import pytest

from ettin_batch.cli import SUBCOMMANDS, main
from ettin_batch.pipeline.run import WORKER_ENV
from ettin_batch.submit import REDACTED, build_runtime_env, entrypoint, redacted

from helpers import free_port


def test_an_ettin_batch_subcommand_runs_as_a_module_so_an_uploaded_working_dir_is_enough():
    assert entrypoint(["rerank", "--config", "jobs/configs/nightly.yaml"], SUBCOMMANDS) == \
        "python -m ettin_batch.cli rerank --config jobs/configs/nightly.yaml"
    assert entrypoint(["ettin-batch", "eval", "--run", "out"], SUBCOMMANDS) == "python -m ettin_batch.cli eval --run out"


def test_any_other_command_runs_as_written_and_is_quoted_for_the_shell():
    assert entrypoint(["python", "jobs/rerank.py", "--config", "my job.yaml"], SUBCOMMANDS) == \
        "python jobs/rerank.py --config 'my job.yaml'"


def test_runtime_env_joins_the_json_the_working_dir_and_env_variables(tmp_path):
    env = build_runtime_env(str(tmp_path), '{"pip": ["flash-attn"], "env_vars": {"A": "1"}}',
                            ["B=2", "C"], environ={"C": "3"})
    assert env["pip"] == ["flash-attn"] and env["working_dir"] == str(tmp_path)
    assert ".venv" in env["excludes"] and env["env_vars"] == {"A": "1", "B": "2", "C": "3", **WORKER_ENV}


def test_the_workers_settings_go_with_the_job_unless_the_user_gave_their_own():
    assert build_runtime_env(None, None, [])["env_vars"] == WORKER_ENV == {"MIMALLOC_PURGE_DELAY": "0"}
    assert build_runtime_env(None, None, ["MIMALLOC_PURGE_DELAY=250"])["env_vars"]["MIMALLOC_PURGE_DELAY"] == "250"


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "DB_PASSWORD",
                                  "HF_TOKEN", "OPENAI_API_KEY"])
def test_env_refuses_names_that_look_like_credentials(name):
    with pytest.raises(ValueError, match=f"--env {name}: looks like a credential"):
        build_runtime_env(None, None, [name], environ={name: "value"})


def test_env_without_a_value_must_be_set_here():
    with pytest.raises(ValueError, match="EB_UNSET is not set here"):
        build_runtime_env(None, None, ["EB_UNSET"], environ={})


def test_printed_runtime_env_hides_every_variable_value():
    shown = redacted({"working_dir": ".", "env_vars": {"AWS_REGION": "eu-west-1", "X": "y"}})
    assert shown == {"working_dir": ".", "env_vars": {"AWS_REGION": REDACTED, "X": REDACTED}}


def test_bad_runtime_env_json_is_a_usage_error(capsys):
    assert main(["submit", "--address", "http://127.0.0.1:1", "--runtime-env-json", "{pip", "--", "rerank"]) == 2
    assert "--runtime-env-json is not valid JSON" in capsys.readouterr().err


def test_nothing_after_the_separator_is_a_usage_error(capsys):
    assert main(["submit", "--address", "http://127.0.0.1:1"]) == 2
    assert "nothing to submit" in capsys.readouterr().err


def test_an_unreachable_cluster_is_a_usage_error_naming_the_address(capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "eb-token-never-printed")
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code = main(["submit", "--address", address, "--env", f"EB_X={json.dumps('v' * 8)}", "--", "rerank"])
    err = capsys.readouterr().err
    assert code == 2 and f"could not submit to {address}" in err
    assert "eb-token-never-printed" not in err
