"""`ettin-batch plan`: before a run, from a sample, on this machine: what the input holds, how fast the
job's CPU stage and model go, what the run will take on N GPUs, and whether the engine's scores match
sentence-transformers' on this model.

    report = plan(PlanConfig.of(input=["s3://bucket/candidates/"], model="...", gpus=8, cpus_per_gpu=12))
    print(report.table())            # json.dumps(report.as_dict()) for schedulers

The steps, each in its own module:
    inputs     the job's own checks: inspect_inputs (footers) and check_model, so bad input fails as in `rerank`
    sample     a seeded sample of whole queries' pairs from a spread of row groups (sample.py)
    measure    the job's CPU stage and its model on the sample, timed (measure.py)
    forecast   wall time, start-up, GPU-hours, cost, CPUs per GPU; with --reuse the incremental run (forecast.py)
    fidelity   the engine against CrossEncoder.predict on the sample (fidelity.py)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ettin_batch.config import PlanConfig, dtype_name
from ettin_batch.errors import InputError
from ettin_batch.pipeline.inputs import inspect_inputs
from ettin_batch.pipeline.run import batch_size, plan_resources
from ettin_batch.pipeline.reuse import FINGERPRINT_COL, fingerprint_header, open_previous, scored_before
from ettin_batch.plan import fidelity as fid
from ettin_batch.plan.forecast import Cluster, Forecast, Rates, forecast, regroup_advice
from ettin_batch.plan.measure import load_engine, machine, measure_model, run_cpu_stage, tokenized_pairs
from ettin_batch.plan.report import format_table
from ettin_batch.plan.sample import count_queries, draw_sample

__all__ = ["PlanReport", "plan"]


@dataclass
class PlanReport:
    """What `plan` found; `as_dict()` is the --json output, `table()` the terminal's."""

    model: dict
    input: dict
    measured: dict
    forecast: Forecast
    reuse: dict | None
    fidelity: list[fid.Fidelity]
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"kind": "plan", "model": self.model, "input": self.input, "measured": self.measured,
                "forecast": self.forecast.as_dict(), "reuse": self.reuse,
                "fidelity": [f.as_dict() for f in self.fidelity], "warnings": self.warnings}

    def table(self) -> str:
        return format_table(self.as_dict())


def plan(config: PlanConfig, *, faults=None) -> PlanReport:
    """Sample, measure, forecast and check, as the module docstring says. Raises ConfigError or InputError
    (exit 2) and ModelLoadError (exit 3) before any measuring, as `rerank` does.

    faults: engine fault hooks (ettin_batch.engine.faults) for tests; None in real use.
    """
    from ettin_batch.engine.loading import check_model
    from ettin_batch.pipeline.groups import PATH_COL, executions, shard_groups

    config.validate()
    scoring = config.scoring
    inputs = inspect_inputs(config)
    if inputs.num_rows == 0:
        raise InputError(f"the input ({', '.join(config.input)}) has no rows: there is nothing to plan")
    model = check_model(scoring.model, scoring.revision, scoring.max_length)
    previous = open_previous(config.reuse, None, s3_max_attempts=config.s3_max_attempts) if config.reuse else None
    sample = draw_sample(inputs, config.columns, config.sample, config.seed)
    job_dtype = dtype_name(scoring.dtype, "cuda" if config.gpus else "cpu")
    header = fingerprint_header(model.model_id, model.revision, scoring.max_length, job_dtype)
    batch = batch_size(config, gpu=bool(config.gpus))  # the job's batches on the cluster planned for
    stage, out = run_cpu_stage(sample.table, inputs, scoring, header, batch)
    if out.num_rows == 0:
        raise InputError(f"none of the {sample.table.num_rows:,} sampled pairs can be scored (null ids or texts, or "
                         "text the tokenizer refuses): check the input's columns (`ettin-batch rerank` would reject "
                         "them all)")
    pairs = tokenized_pairs(out)
    cluster = _cluster(config)
    engine, load_s = load_engine(scoring, _local_device(), faults)
    run, scores = measure_model(engine, pairs, batch, load_s, cluster.threads)
    rates = Rates(run.pairs_per_s, engine.device.type, stage.fingerprint_s / stage.pairs_in,
                  stage.tokenize_s / stage.pairs_in, load_s)
    # One start of the scoring actors for each Ray Data execution the run would make (groups.executions).
    groups, columns = shard_groups(inputs, config.group_rows), inputs.schema.names
    by_file = PATH_COL not in columns
    settings = {"model_id": model.model_id, "revision": model.revision, "max_length": scoring.max_length,
                "dtype": job_dtype}
    queries, estimated = count_queries(inputs, config.columns, sample)
    report = PlanReport(
        model={"model_id": model.model_id, "revision": model.revision, "is_random": model.is_random,
               "max_length": scoring.max_length, "job_dtype": job_dtype},
        input=_input_summary(inputs, sample, queries, estimated, pairs, config),
        measured={"machine": machine(), "cpu_stage": stage.as_dict(), "model": run.as_dict()},
        forecast=forecast(inputs.num_rows, rates, cluster, actor_starts=len(executions(groups, columns, reuse=False))),
        reuse=previous and _reuse(previous, settings, out, inputs.num_rows, rates, cluster,
                                  len(executions(groups, columns, reuse=True))),
        fidelity=_fidelity(config, model.path, engine, scores, out, pairs, faults) if config.fidelity else [])
    report.warnings = _warnings(report, by_file)
    return report


def _cluster(config: PlanConfig) -> Cluster:
    """The run's layout. For CPU scoring, the job's own rule (plan_resources) on this machine's cores
    picks the actors and their threads, and the model is measured with those threads."""
    cores = os.cpu_count() or 1
    res = plan_resources(config.replace(gpus_per_actor=0.0), {"CPU": cores})
    return Cluster(config.gpus, config.cpus_per_gpu, config.cpus_per_actor or 1.0, cores, config.gpu_hour_price,
                   actors=res.actors if not config.gpus else 1, threads=res.threads if not config.gpus else None)


def _local_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _input_summary(inputs, sample, queries: int, estimated: str | None, pairs, config: PlanConfig) -> dict:
    lengths = pairs.lengths
    return {
        "files": len(inputs.files), "rows": inputs.num_rows, "queries": queries, "queries_estimated": estimated is not None,
        **({"queries_basis": estimated} if estimated else {}),
        "sample": {"pairs": sample.table.num_rows, "seed": config.seed, "row_groups_read": len(sample.row_groups),
                   "files_read": sample.files, "rows_read": sample.rows_read, "bytes_read": sample.bytes_read,
                   "whole_input": sample.whole_input},
        "tokens_per_pair": {"median": float(np.median(lengths)), "p95": float(np.percentile(lengths, 95)),
                            "mean": round(float(lengths.mean()), 1), "max": int(lengths.max()),
                            "truncated_share": round(float(pairs.truncated.mean()), 4),
                            "max_length": config.scoring.max_length},
    }


def _reuse(previous, settings: dict, out: pa.Table, rows: int, rates: Rates, cluster: Cluster, starts: int) -> dict:
    """The share of the sample's pairs the previous run already scored, and the run that scores the rest."""
    why = previous.why_unusable(settings)
    found = np.zeros(out.num_rows, bool) if why else scored_before(previous, out.column(FINGERPRINT_COL).combine_chunks())
    share = float(found.mean())
    result = {"from": previous.folder.url(), "usable": why is None, "sample_pairs_scored_before": int(found.sum()),
              "share": round(share, 4),
              "incremental": forecast(rows, rates, cluster, pairs_to_score=round(rows * (1 - share)),
                                      actor_starts=starts).as_dict()}
    return {**result, "why_not": why} if why else result


def _fidelity(config: PlanConfig, path: str, engine, scores: np.ndarray, out: pa.Table, pairs, faults) -> list:
    """float32 always; the job's own dtype as well when it is a half one (auto on a GPU)."""
    device, dtype = str(engine.device), str(engine.dtype).removeprefix("torch.")
    codes = pc.dictionary_encode(out.column("query_id").combine_chunks()).indices.to_numpy(zero_copy_only=False)
    texts = out.column("query").to_pylist(), out.column("document").to_pylist()
    ref32 = fid.reference_scores(path, *texts, max_length=config.scoring.max_length, device=device)
    ours32 = scores
    if dtype != "float32":
        # float32 on a GPU has no flash or torch kernel: the exact backend, unless the config named one.
        attention = config.scoring.attention if config.scoring.attention in ("reference", "padded") else "auto"
        exact = dataclasses.replace(config.scoring, dtype="float32", attention=attention)
        ours32 = load_engine(exact, device, faults)[0].score_tokens(pairs)
    checks = [fid.compare_float32(codes, ours32, ref32)]
    if dtype != "float32":
        ref_half = fid.reference_scores(path, *texts, max_length=config.scoring.max_length, device=device, dtype=dtype)
        checks.append(fid.compare_half(dtype, codes, scores, ref32, ref_half))
    return checks


def _warnings(report: PlanReport, by_file: bool) -> list[str]:
    found = []
    if report.model["is_random"]:
        found.append(f"{report.model['model_id']} has RANDOM weights: its speed is real, its scores mean nothing")
    m, stage = report.measured["machine"], report.measured["cpu_stage"]
    if m["load_average_1m"] is not None and m["load_average_1m"] > 0.5 * (m["cores"] or 1):
        found.append(f"this machine was busy while measuring (load average {m['load_average_1m']:.1f} on "
                     f"{m['cores']} cores): the rates may be low, and the forecast's times high")
        if report.measured["model"]["device"].startswith("cpu") and not report.measured["model"]["device"].endswith(
                " 1 thread"):
            # Measured on the 2-core development VM (benchmarks/RESULTS.md, plan section).
            found.append("torch's CPU threads wait for one another at every step, so on a busy machine a model on "
                         "several threads slows far more than its share of the load (17M shape, 2-core VM at load "
                         "4-9: 2.3-17 pairs/s on 2 threads, 11-36 on 1): plan on an idle machine, or plan and "
                         "run with --cpus-per-actor 1")
    if stage["rejected"]:
        found.append(f"{stage['rejected']:,} of the {stage['pairs']:,} sampled pairs cannot be scored (null ids or "
                     "texts, or text the tokenizer refuses): the run would reject such rows to rejects/")
    if not by_file and (advice := regroup_advice(report.reuse["incremental"] if report.reuse else
                                                 report.forecast.as_dict())):
        found.append(advice)
    for check in report.fidelity:
        if check.reference_std <= 10 * fid.FP32_TOL:
            found.append(f"the reference scores barely differ from pair to pair (std {check.reference_std:.1e}): "
                         "the fidelity check compares near-constants (random weights?)")
            break
    return found
