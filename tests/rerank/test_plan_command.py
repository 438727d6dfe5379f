"""`ettin-batch plan` end to end, without Ray: real Parquet files (local and on the S3 test server), real
models in the Ettin format, the real tokenize stage and engine, sentence-transformers as the reference."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from builders import build_ettin

from ettin_batch.cli import main
from ettin_batch.config import PlanConfig, RerankConfig
from ettin_batch.engine.faults import FaultHooks
from ettin_batch.errors import EttinError, InputError, ModelLoadError
from ettin_batch.pipeline.reuse import fingerprint_header, fingerprints
from ettin_batch.pipeline.rerank import rerank
from ettin_batch.plan import plan
from runs import write_rerank_run

from helpers import TINY, upload_parquet
from .test_plan_sample import write_sorted_shards

SAMPLE = 160  # pairs: enough for 10 queries' rankings, quick on 2 cores


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan-cmd") / "in"
    write_sorted_shards(folder, files=3)
    return folder


@pytest.fixture(scope="module")
def ettin(models_dir):
    """A small Ettin-format model with a real score spread (scaled head), so rank agreement means something."""
    return str(build_ettin(models_dir / "plan-ettin", layers=3))


def test_the_engine_passes_the_fidelity_check_on_its_real_path(shards, ettin):
    report = plan(PlanConfig.of(input=[str(shards)], model=ettin, gpus=0, sample=SAMPLE))
    (check,) = report.fidelity
    assert check.dtype == "float32" and check.passed and check.max_abs_diff <= 1e-4
    assert check.ranks["queries_compared"] >= 8
    assert check.ranks["candidate_pairs_swapped"] == 0
    assert check.reference_std > 1e-3  # the comparison is not between constants


def test_the_fidelity_check_fails_when_the_fast_path_is_wrong(shards, ettin):
    report = plan(PlanConfig.of(input=[str(shards)], model=ettin, gpus=0, sample=SAMPLE),
                  faults=FaultHooks(shift_encoder_output=0.05))
    (check,) = report.fidelity
    assert not check.passed and check.max_abs_diff > 1e-3
    assert check.as_dict()["result"] == "FAIL" and "FAIL" in report.table()


def test_a_run_in_bfloat16_is_checked_in_float32_and_in_bfloat16_against_the_suites_bars(shards, ettin):
    # What a GPU run (auto: bfloat16) gets; on this CPU by asking for bfloat16.
    report = plan(PlanConfig.of(input=[str(shards)], model=ettin, gpus=0, dtype="bfloat16", sample=SAMPLE))
    exact, half = report.fidelity
    assert exact.dtype == "float32" and exact.passed
    assert half.dtype == "bfloat16" and half.passed
    assert 0 < half.rms_diff <= 1.2 * half.half_reference_rms
    assert report.as_dict()["measured"]["model"]["dtype"] == "bfloat16"


def test_the_plan_reports_input_rates_and_a_forecast_for_this_machine(shards):
    report = plan(PlanConfig.of(input=[str(shards)], model=TINY, gpus=0, sample=SAMPLE, fidelity=False))
    out = report.as_dict()
    assert out["input"]["rows"] == 3000 and out["input"]["files"] == 3
    assert out["input"]["queries"] == 150 and not out["input"]["queries_estimated"]
    tokens = out["input"]["tokens_per_pair"]
    assert 5 < tokens["median"] <= tokens["p95"] <= tokens["max"] <= 512 and tokens["truncated_share"] == 0
    assert out["measured"]["model"]["device"].startswith("cpu") and out["measured"]["model"]["pairs_per_s"] > 0
    assert out["measured"]["cpu_stage"]["device"].endswith("1 thread")
    f = out["forecast"]
    assert f["trusted"] and f["wall_s"] > 0 and f["startup_s"] > 0 and f["gpu_hours"] is None
    assert out["fidelity"] == [] and any("RANDOM" in w for w in out["warnings"])


def test_a_gpu_forecast_measured_on_a_cpu_says_it_cannot_be_trusted(shards, capsys):
    code = main(["plan", "--input", str(shards), "--model", TINY, "--sample", "40", "--gpus", "8",
                 "--cpus-per-gpu", "12", "--gpu-hour-price", "2.5", "--no-fidelity", "--json"])
    assert code == 0
    f = json.loads(capsys.readouterr().out)["forecast"]
    assert f["cluster"]["gpus"] == 8 and f["cost"] == pytest.approx(f["gpu_hours"] * 2.5, abs=1e-3)  # both rounded to 4 places
    assert not f["trusted"] and "CPU" in f["why_untrusted"]
    main(["plan", "--input", str(shards), "--model", TINY, "--sample", "40", "--no-fidelity"])
    assert "NOT TRUSTED" in capsys.readouterr().out


def test_a_rerank_config_file_plans_its_own_run(shards, tmp_path, capsys):
    config = tmp_path / "nightly.yaml"
    config.write_text(f"rerank:\n  model: {TINY}\n  output: s3://idx/reranked/{{date}}/\n  max_length: 128\n"
                      "  top_k: 5\n  batch_size: 64\n")
    assert main(["plan", "--config", str(config), "--input", str(shards), "--gpus", "0", "--sample", "40",
                 "--no-fidelity", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["max_length"] == 128 and out["input"]["tokens_per_pair"]["max_length"] == 128


GOOD = {"query_id": ["q1"], "query": ["a query"], "doc_id": ["d1"], "document": ["a document"]}


def _bad_inputs(tmp_path) -> dict:
    """Inputs `rerank` refuses before any work, each as (input paths, extra settings)."""
    pq.write_table(pa.table({**GOOD, "passage": ["b"]}).drop_columns(["document"]), tmp_path / "no-doc.parquet")
    (tmp_path / "not-parquet.parquet").write_bytes(b"this is not parquet at all")
    (tmp_path / "mixed").mkdir()
    pq.write_table(pa.table(GOOD), tmp_path / "mixed" / "a.parquet")
    pq.write_table(pa.table({**GOOD, "query_id": pa.array([1], pa.int64())}), tmp_path / "mixed" / "b.parquet")
    pq.write_table(pa.table({**GOOD, "document": pa.array([1.5])}), tmp_path / "float-doc.parquet")
    return {"missing column": [str(tmp_path / "no-doc.parquet")], "not parquet": [str(tmp_path / "not-parquet.parquet")],
            "nowhere": [str(tmp_path / "nowhere")], "types differ": [str(tmp_path / "mixed")],
            "float text": [str(tmp_path / "float-doc.parquet")]}


@pytest.mark.parametrize("case", ["missing column", "not parquet", "nowhere", "types differ", "float text"])
def test_bad_input_gets_the_same_error_as_rerank(tmp_path, case):
    paths = _bad_inputs(tmp_path)[case]
    with pytest.raises(EttinError) as from_rerank:
        rerank(RerankConfig.of(input=paths, output=str(tmp_path / "out"), model=TINY))
    with pytest.raises(EttinError) as from_plan:
        plan(PlanConfig.of(input=paths, model=TINY, sample=10))
    assert type(from_plan.value) is type(from_rerank.value) and isinstance(from_plan.value, InputError)
    assert str(from_plan.value) == str(from_rerank.value)


def test_exit_codes_are_the_other_commands(shards, tmp_path, capsys):
    assert main(["plan", "--input", str(tmp_path / "nowhere"), "--model", TINY]) == 2
    assert main(["plan", "--input", str(shards), "--model", str(tmp_path / "no-model")]) == 3
    assert main(["plan", "--input", str(shards), "--model", TINY, "--sample", "0"]) == 2
    assert "sample=0 must be a positive integer" in capsys.readouterr().err
    with pytest.raises(ModelLoadError):
        plan(PlanConfig.of(input=[str(shards)], model="random:ettin-nonesuch"))
    pq.write_table(pa.table(GOOD).slice(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(InputError, match="no rows"):
        plan(PlanConfig.of(input=[str(tmp_path / "empty.parquet")], model=TINY))


def test_plan_reads_its_input_from_s3(s3):
    s3.mkdir("ettin-plan")
    for i in range(3):
        rows = pa.table({"query_id": [f"q{i}-{j // 10}" for j in range(60)], "query": [f"query {i}"] * 60,
                         "doc_id": [f"d{j}" for j in range(60)], "document": [f"doc {j} of shard {i}" for j in range(60)]})
        upload_parquet(s3, rows, f"ettin-plan/in/part-{i}.parquet")
    out = plan(PlanConfig.of(input=["s3://ettin-plan/in/"], model=TINY, gpus=0, sample=50, fidelity=False)).as_dict()
    assert out["input"]["rows"] == 180 and out["input"]["queries"] == 18
    assert out["input"]["sample"]["pairs"] == 50 and out["input"]["sample"]["files_read"] >= 2


def _previous_run(folder, shards, header: bytes, every: int) -> str:
    """A finished rerank run that scored every `every`-th pair of `shards` with fingerprints from `header`."""
    table = pq.read_table(shards)
    table = table.take(list(range(0, table.num_rows, every)))
    scores = pa.table({"query_id": table["query_id"], "doc_id": table["doc_id"],
                       "pair_fingerprint": fingerprints(table["query"], table["document"], header),
                       "score": pa.array([0.0] * table.num_rows, pa.float32())})
    return write_rerank_run(folder, scores, model={"model_id": TINY, "revision": None}, max_length=512,
                            dtype="float32")


def test_reuse_reports_the_share_already_scored_and_the_incremental_run(shards, tmp_path):
    header = fingerprint_header(TINY, None, 512, "float32")  # gpus=0: the run scores in float32
    previous = _previous_run(tmp_path / "night1", shards, header, every=2)
    report = plan(PlanConfig.of(input=[str(shards)], model=TINY, gpus=0, sample=SAMPLE, fidelity=False,
                                reuse=previous)).as_dict()
    reuse = report["reuse"]
    assert reuse["usable"] and reuse["share"] == pytest.approx(0.5, abs=0.15)
    assert reuse["incremental"]["pairs_to_score"] == round(3000 * (1 - reuse["share"]))
    assert reuse["incremental"]["wall_s"] < report["forecast"]["wall_s"]
    assert reuse["incremental"]["actor_starts"] == report["forecast"]["actor_starts"] == 1  # one join round


def test_reuse_of_a_run_with_other_settings_shares_nothing_and_says_why(shards, tmp_path):
    previous = _previous_run(tmp_path / "night1", shards, fingerprint_header(TINY, None, 512, "float32"), every=1)
    reuse = plan(PlanConfig.of(input=[str(shards)], model=TINY, gpus=0, sample=40, fidelity=False, max_length=256,
                               reuse=previous)).as_dict()["reuse"]
    assert not reuse["usable"] and reuse["share"] == 0 and "max_length" in reuse["why_not"]
    with pytest.raises(InputError, match="--reuse"):
        plan(PlanConfig.of(input=[str(shards)], model=TINY, reuse=str(shards)))
