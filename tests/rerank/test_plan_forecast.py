"""`plan`'s forecast is arithmetic on measured rates: checked here on fixed ones, by hand."""

from __future__ import annotations

import dataclasses

import pytest

from ettin_batch.plan.forecast import ACTOR_START_S, RAY_START_S, Cluster, Rates, forecast, regroup_advice

# A GPU that scores 40,000 pairs/s; 0.1 ms of fingerprinting and 0.4 ms of tokenizing per pair on one core
# (2,000 pairs/s per core through the CPU stage).
GPU = Rates(model_pairs_per_s=40_000, model_device="cuda", fingerprint_s_per_pair=1e-4, tokenize_s_per_pair=4e-4,
            model_load_s=2.0)


def test_a_well_fed_gpu_run_is_decided_by_the_model():
    f = forecast(36_000_000, GPU, Cluster(gpus=4, cpus_per_gpu=32))
    assert f.model_s == pytest.approx(36e6 / (4 * 40_000))  # 225 s
    assert f.cpu_s == pytest.approx(36e6 * 5e-4 / (4 * 31))  # 31 tokenizing CPUs per GPU: 145 s
    assert f.wall_s == f.model_s and f.bottleneck == "model"
    assert f.cpus_per_gpu_to_keep_model_busy == 20 + 1  # 40,000 x 0.5 ms = 20 cores, + the actor's own
    assert f.trusted and f.why_untrusted is None


def test_a_gpu_run_short_of_cpus_is_decided_by_tokenization():
    f = forecast(36_000_000, GPU, Cluster(gpus=8, cpus_per_gpu=12))
    assert f.cpu_s == pytest.approx(36e6 * 5e-4 / (8 * 11))
    assert f.wall_s == f.cpu_s and f.bottleneck == "tokenization"


def test_start_up_is_apart_from_the_wall_time_and_counts_each_start_of_the_actors():
    once = forecast(1_000_000, GPU, Cluster(gpus=1, cpus_per_gpu=32))  # every group in one stream: one start
    assert once.startup_s == pytest.approx(RAY_START_S + ACTOR_START_S + 2.0) and once.actor_starts == 1
    f = forecast(1_000_000, GPU, Cluster(gpus=1, cpus_per_gpu=32), actor_starts=3)  # a `path` column: a start a group
    assert f.startup_s == pytest.approx(RAY_START_S + 3 * (ACTOR_START_S + 2.0))
    assert f.wall_s == pytest.approx(1e6 / 40_000)


def test_when_restarts_a_group_cost_a_quarter_of_the_run_the_advice_names_the_column_and_fewer_groups():
    # 16M pairs on 8 GPUs at 40,000 pairs/s: 50 s of scoring; an input with a `path` column scored in 16 groups of
    # 1M (the job's default floor), each an actor start and a model load of 10 s in all: 160 s of restarts.
    gpu = dataclasses.replace(GPU, model_load_s=10.0 - ACTOR_START_S)
    f = forecast(16_000_000, gpu, Cluster(gpus=8, cpus_per_gpu=64), actor_starts=16).as_dict()
    assert f["wall_s"] == pytest.approx(50) and f["actor_start_s"] == pytest.approx(10)
    advice = regroup_advice(f)
    # A tenth of the wall time buys floor(5 s / 10 s) = 0 restarts, so one group of every row.
    assert "column named `path`" in advice and "scores it in 16 groups of files one after another" in advice
    assert "Renaming the column makes that one start" in advice
    assert "160 s in all against 50 s of scoring" in advice
    assert "--group-rows 16000000 (1 group) would cut it to ~10 s" in advice
    assert "a resumed run redoes up to 16,000,000 rows" in advice
    slower = forecast(16_000_000, gpu, Cluster(gpus=1, cpus_per_gpu=64), actor_starts=16)  # 400 s of scoring
    assert "--group-rows 4000000 (4 groups) would cut it to ~40 s" in regroup_advice(slower.as_dict())


def test_no_regroup_advice_for_one_start_or_restarts_under_a_quarter_of_the_run():
    gpu = dataclasses.replace(GPU, model_load_s=10.0 - ACTOR_START_S)  # 10 s a start
    assert regroup_advice(forecast(16_000_000, gpu, Cluster(gpus=8, cpus_per_gpu=64)).as_dict()) is None
    eight = forecast(16_000_000, gpu, Cluster(gpus=1, cpus_per_gpu=64), actor_starts=8)  # 80 of 400 s
    assert regroup_advice(eight.as_dict()) is None


def test_gpu_hours_book_every_gpu_from_the_start_and_cost_is_their_price():
    f = forecast(36_000_000, GPU, Cluster(gpus=4, cpus_per_gpu=32, gpu_hour_price=2.5))
    assert f.gpu_hours == pytest.approx(4 * (225 + f.startup_s) / 3600)
    assert f.cost == pytest.approx(f.gpu_hours * 2.5)
    assert forecast(1000, GPU, Cluster(gpus=1)).cost is None


def test_on_cpus_the_model_and_the_tokenizer_share_the_cores_so_their_times_add():
    cpu = Rates(model_pairs_per_s=100, model_device="cpu", fingerprint_s_per_pair=1e-4, tokenize_s_per_pair=4e-4)
    f = forecast(20_000, cpu, Cluster(gpus=0, cores=2))
    assert f.model_s == pytest.approx(200.0)
    assert f.cpu_s == pytest.approx(20_000 * 5e-4 / 2)
    assert f.wall_s == pytest.approx(205.0) and f.bottleneck == "model"
    assert f.gpu_hours is None and f.cpus_per_gpu_to_keep_model_busy is None and f.trusted


def test_on_cpus_an_actor_with_fewer_threads_than_cores_leaves_the_rest_to_the_tokenizer():
    cpu = Rates(model_pairs_per_s=100, model_device="cpu", fingerprint_s_per_pair=0, tokenize_s_per_pair=5e-4)
    one_thread = Cluster(gpus=0, cores=2, threads=1)
    assert forecast(20_000, cpu, one_thread).wall_s == pytest.approx(200.0)  # 10 core-s of tokenizing beside it
    heavy = Rates(model_pairs_per_s=100, model_device="cpu", fingerprint_s_per_pair=0, tokenize_s_per_pair=0.015)
    f = forecast(20_000, heavy, one_thread)  # 300 core-s of tokenizing: both cores busy for (200 + 300) / 2
    assert f.wall_s == pytest.approx(250.0) and f.bottleneck == "tokenization"
    assert forecast(20_000, cpu, Cluster(gpus=0, cores=2, actors=2, threads=1)).model_s == pytest.approx(100.0)


def test_reuse_leaves_fingerprinting_every_pair_but_tokenizing_and_scoring_only_the_new_ones():
    full = forecast(1_000_000, GPU, Cluster(gpus=1, cpus_per_gpu=12))
    incremental = forecast(1_000_000, GPU, Cluster(gpus=1, cpus_per_gpu=12), pairs_to_score=100_000)
    assert incremental.model_s == pytest.approx(full.model_s / 10)
    assert incremental.cpu_s == pytest.approx((1e6 * 1e-4 + 1e5 * 4e-4) / 11)


def test_a_cpu_measured_rate_for_a_gpu_run_says_it_cannot_be_trusted_and_why():
    cpu = Rates(model_pairs_per_s=80, model_device="cpu", fingerprint_s_per_pair=1e-4, tokenize_s_per_pair=4e-4)
    f = forecast(1_000_000, cpu, Cluster(gpus=8))
    assert not f.trusted
    assert "measured on this machine's CPU" in f.why_untrusted and "far too high" in f.why_untrusted
    gpu_for_cpu = forecast(1_000_000, GPU, Cluster(gpus=0, cores=16))
    assert not gpu_for_cpu.trusted and "--gpus 0" in gpu_for_cpu.why_untrusted
