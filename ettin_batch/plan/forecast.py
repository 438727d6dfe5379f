"""The forecast: a rerank run's wall time, GPU-hours and CPU needs, from rates measured on the sample.

Plain arithmetic on measured rates, so it can be checked by hand (and is tested on fixed rates):

  GPU run, G GPUs with C CPUs each; each GPU's scoring actor holds A of them, the rest read,
  fingerprint and tokenize (the job's layout: pipeline.run.plan_resources):
      model = pairs_to_score / (G x model pairs/s)
      cpu   = (pairs x fingerprint s/pair + pairs_to_score x tokenize s/pair) / (G x (C - A))
      wall  = max(model, cpu): the stages stream side by side, so the slower one decides
      CPUs per GPU that keep the model busy = ceil(model pairs/s x CPU s/pair) + A
  CPU run (--gpus 0), on a machine like this one with N cores, A scoring actors of T threads each
  (the job's layout; by default one actor with a thread per core, measured with those T threads):
      model = pairs_to_score / (A x model pairs/s)
      wall  = max(model, (A x T x model + CPU core-seconds) / N): the actors' threads and the CPU
              tasks share the N cores, so with T = N their times add, and with fewer threads the
              CPU tasks run beside the model on the cores left; whichever takes more of the cores'
              time decides
  start-up, reported apart: Ray's start, then the scoring actors' start and model load: once a run,
  or once an execution where the run takes its groups of input files (groups.shard_groups) in turn: a
  --reuse run joins them in rounds of up to 4M rows (groups.join_rounds), and an input with a column
  named `path` (which hides each row's file from Ray Data) a group at a time; where the latter's restarts
  cost over a quarter of the wall time, `regroup_advice` says to rename the column, or names a
  --group-rows that brings them near a tenth
  GPU-hours = G x (wall + start-up) / 3600: the GPUs are booked from the start

Not in the wall time: reading and writing Parquet, Ray's own processes, top-k (small next to the
model or the tokenizer in the job's benchmarks, benchmarks/RESULTS.md), and with --reuse the
join against the previous run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# Start-up of the job's parts that the plan does not run, measured on the 2-core development VM
# (benchmarks/RESULTS.md): `ray.init` of a local Ray 3.6-4.2 s ("Ray's overhead"); each start of the
# scoring actors 9.4 s (random:ettin-tiny) and 10.8 s (17M) in all, of which the model load (the plan's
# load_s, measured on its own) 0.2 and 0.8 s: the rest is the last actors exiting, the new actor's worker
# start and its torch / transformers / sentence-transformers imports ("The fixed cost of a resume group").
# A cluster whose nodes must first be provisioned takes longer; that is not counted.
RAY_START_S = 4.0
ACTOR_START_S = 9.5

# Said when a forecast for GPUs rests on a model rate measured on a CPU.
CPU_FOR_GPU = ("the model's rate was measured on this machine's CPU, not on a GPU, and a GPU scores these models "
               "hundreds of times faster (the 17M Ettin shape: ~80 pairs/s on the 2-core development VM, ~45,000 "
               "pairs/s on an H200; benchmarks/RESULTS.md). So the wall time, GPU-hours and cost here are far too "
               "high, and the bottleneck and CPUs per GPU are wrong. Run `ettin-batch plan` on a node with the "
               "run's GPU for a forecast to trust.")
GPU_FOR_CPU = ("the model's rate was measured on a GPU, but this forecast is for CPU scoring (--gpus 0); "
               "run `ettin-batch plan` on a machine like the run's CPU nodes.")


@dataclass(frozen=True)
class Rates:
    """What the plan measured. Seconds per pair are core-seconds (one CPU)."""

    model_pairs_per_s: float  # one device: a GPU, or this machine's CPU with a thread per core
    model_device: str  # "cuda" or "cpu"
    fingerprint_s_per_pair: float
    tokenize_s_per_pair: float
    model_load_s: float = 0.0


@dataclass(frozen=True)
class Cluster:
    """Where the run goes. gpus=0: CPU scoring on a machine with `cores` cores (this one), by `actors`
    scoring actors of `threads` threads each (pipeline.run.plan_resources decides both, as in the job)."""

    gpus: int
    cpus_per_gpu: float = 12.0
    cpus_per_actor: float = 1.0
    cores: int = 1
    gpu_hour_price: float | None = None
    actors: int = 1
    threads: int | None = None  # None: one per core


@dataclass
class Forecast:
    cluster: Cluster
    pairs: int  # pairs in the input
    pairs_to_score: int  # pairs the model and the tokenizer see (fewer with --reuse)
    model_s: float  # wall seconds the model needs
    cpu_s: float  # wall seconds the CPU stage needs on the CPUs it gets
    wall_s: float  # the run without start-up
    startup_s: float  # Ray's fixed start-up and the scoring actors' starts, reported apart
    actor_starts: int  # times the scoring actors start: once an execution of the run (see the module docstring)
    actor_start_s: float  # each start: worker, imports, model load (in startup_s)
    bottleneck: str  # "model" or "tokenization"
    gpu_hours: float | None
    cost: float | None
    cpus_per_gpu_to_keep_model_busy: int | None
    trusted: bool
    why_untrusted: str | None

    def as_dict(self) -> dict:
        out = asdict(self)
        for name in ("model_s", "cpu_s", "wall_s", "startup_s", "actor_start_s"):
            out[name] = round(out[name], 1)
        for name in ("gpu_hours", "cost"):
            out[name] = None if out[name] is None else round(out[name], 4)
        return out


def forecast(pairs: int, rates: Rates, cluster: Cluster, *, pairs_to_score: int | None = None,
             actor_starts: int = 1) -> Forecast:
    """The run over `pairs` input pairs, of which `pairs_to_score` (default all) need the tokenizer and
    the model; `actor_starts`: times the scoring actors start and load the model (once an execution)."""
    to_score = pairs if pairs_to_score is None else pairs_to_score
    cpu_core_s = pairs * rates.fingerprint_s_per_pair + to_score * rates.tokenize_s_per_pair
    actor_start = ACTOR_START_S + rates.model_load_s
    startup = RAY_START_S + actor_starts * actor_start
    if cluster.gpus == 0:
        model_s = to_score / (cluster.actors * rates.model_pairs_per_s)
        cpu_s = cpu_core_s / cluster.cores
        busy_cores = cluster.actors * (cluster.threads or cluster.cores)
        wall = max(model_s, (busy_cores * model_s + cpu_core_s) / cluster.cores)
        # Sharing the cores, the one that takes more of their time decides.
        slower = "model" if wall == model_s or busy_cores * model_s >= cpu_core_s else "tokenization"
        keep_busy, gpu_hours, cost = None, None, None
        why = GPU_FOR_CPU if rates.model_device != "cpu" else None
    else:
        model_s = to_score / (cluster.gpus * rates.model_pairs_per_s)
        cpu_s = cpu_core_s / (cluster.gpus * (cluster.cpus_per_gpu - cluster.cpus_per_actor))
        wall = max(model_s, cpu_s)
        slower = "model" if model_s >= cpu_s else "tokenization"
        per_pair = rates.fingerprint_s_per_pair + rates.tokenize_s_per_pair
        keep_busy = math.ceil(rates.model_pairs_per_s * per_pair) + math.ceil(cluster.cpus_per_actor)
        gpu_hours = cluster.gpus * (wall + startup) / 3600
        cost = None if cluster.gpu_hour_price is None else gpu_hours * cluster.gpu_hour_price
        why = CPU_FOR_GPU if rates.model_device != "cuda" else None
    return Forecast(cluster, pairs, to_score, model_s, cpu_s, wall, startup, actor_starts, actor_start, slower, gpu_hours,
                    cost, keep_busy, why is None, why)


def regroup_advice(f: dict) -> str | None:
    """Where the restarts of the scoring actors, one per group of input files (an input with a column named
    `path`), cost more than a quarter of the wall time (a fast GPU, many groups): rename the column, or the
    --group-rows that brings them near a tenth, and its price. `f`: a Forecast's as_dict()."""
    starts, each = f["actor_starts"], f["actor_start_s"]
    if starts < 2 or starts * each <= 0.25 * f["wall_s"]:
        return None
    fewer = max(1, int(0.1 * f["wall_s"] // each))
    rows = math.ceil(f["pairs"] / fewer)
    return (f"the input has a column named `path`, the name Ray Data gives each row's file, so the job scores it in "
            f"{starts} groups of files one after another, each starting its scoring actors anew (~{each:.0f} s: "
            f"worker start, imports, model load): {starts * each:,.0f} s in all against {f['wall_s']:,.0f} s of "
            f"scoring. Renaming the column makes that one start; else --group-rows {rows} ({fewer} group"
            f"{'s' if fewer > 1 else ''}) would cut it to ~{fewer * each:,.0f} s; the price: a resumed "
            f"run redoes up to {rows:,} rows (the groups in flight)")
