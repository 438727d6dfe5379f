"""The run's record: counts read back from the written files, the manifest (`_SUCCESS.json`), the summary.

The manifest is written last, and only when in = scored + rejected holds; a folder without it is an
incomplete run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform
import time
from dataclasses import dataclass, field

from ettin_batch import __version__
from ettin_batch.run_folder import REJECTS, SUCCESS

# What pairs_per_s and tokens_per_s measure, written into every manifest beside them.
RATE_BASIS = ("this run only: pairs_per_s = pairs_scored_this_run / wall_time_s, tokens_per_s = tokens the model "
              "ran on in this run (retries included) / wall_time_s; groups a resumed run skipped are in neither; "
              "pairs that kept a --reuse score are in pairs_scored_this_run (this run wrote them), not in tokens")


class Phases:
    """Wall seconds of a run's consecutive phases, each from the previous mark to its own."""

    def __init__(self, start: float):
        self._last = self._start = start
        self.seconds: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now

    def total(self) -> float:
        return self._last - self._start


def model_busy(model_seconds: float | None, scoring_s: float | None, actors: int) -> float | None:
    """The share of the scoring phase the actors spent in the model, all actors together.

    Near 1: the model is the bottleneck, as it should be. Well below: the actors waited for
    input (too few tokenizer CPUs, a slow object store) or for their models to load.
    """
    if not model_seconds or not scoring_s or actors <= 0:
        return None
    return round(model_seconds / (scoring_s * actors), 3)


def build_manifest(run, counts: dict, **extra) -> dict:
    """The manifest of a finished `run` (a pipeline.run.Run) with these row counts; `extra` holds the
    job's own keys (top_k, resume, reuse, dataset, ...)."""
    import ray

    totals, config = run.totals, run.config
    model = dict(totals.get("info") or {"dtype": config.scoring.dtype})
    model.update(model_id=run.model.model_id, revision=run.model.revision, is_random=run.model.is_random)
    wall = run.phases.total()
    # A resumed run's rate is its own work over its own wall time: pairs in groups that an earlier run
    # finished (resume.pairs_scored_earlier) are in counts.scored but not in pairs_scored_this_run.
    scored_now = counts["scored"] - ((extra.get("resume") or {}).get("pairs_scored_earlier") or 0)
    return {
        "status": "success",
        "model": model,
        "dtype": model.get("dtype"),
        "max_length": config.scoring.max_length,
        **{k: extra.pop(k) for k in ("top_k", "repeated_pairs") if k in extra},
        "counts": counts,
        "tokens": totals["tokens"],
        # Pairs the model ran on, retries included: above counts.scored means work was redone
        # (a batch whose actor died after scoring it, or a retried task).
        "model_pairs": totals["pairs"],
        # Forward passes halved because the device ran out of memory (the halves are retried):
        # many of them mean max_tokens_per_batch is too big for this device.
        "oom_splits": totals["oom_splits"],
        # Scoring actors that ended themselves after a device (CUDA) error, started again by Ray, their
        # batches retried: a few in a long run are a flaky GPU; many, a broken one or a kernel fault.
        "device_errors": totals["device_errors"],
        **extra,
        "wall_time_s": round(wall, 3),
        "pairs_scored_this_run": scored_now,
        "pairs_per_s": round(scored_now / wall, 1) if wall > 0 else None,
        "tokens_per_s": round(totals["tokens"] / wall, 1) if wall > 0 else None,
        "rate_basis": RATE_BASIS,
        # Where the wall time went: setup (inputs, model, output folder), ray_start, scoring
        # (read, tokenize, score, write), topk, finish (counts, shutdown).
        "phases_s": run.phases.seconds,
        # Seconds the actors spent in the model (retries included), and that over scoring x actors.
        "model_seconds": round(totals["model_seconds"], 3),
        "model_busy": model_busy(totals["model_seconds"], run.phases.seconds.get("scoring"), run.resources.actors),
        "input": {"paths": list(config.input), "files": len(run.plan.files),
                  "columns": dict(zip(("query_id", "query", "doc_id", "document"), config.columns.required())),
                  "passthrough": run.plan.passthrough},
        "actors": dataclasses.asdict(run.resources),
        "started_at": run.started_at.isoformat(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "versions": {"ettin_batch": __version__, "ray": ray.__version__, "python": platform.python_version()},
        "package_version": __version__,
    }


@dataclass
class RunResult:
    """What a job returns: the manifest written to _SUCCESS.json, and where."""

    output: str
    manifest: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict:
        return self.manifest["counts"]

    def summary(self) -> str:
        m, c = self.manifest, self.manifest["counts"]
        earlier = (m.get("resume") or {}).get("pairs_scored_earlier")
        model, random = m["model"], m["model"].get("is_random")
        lines = [
            f"ettin-batch {m['kind']}: done in {m['wall_time_s']:.1f} s",
            f"  pairs in {c['in']:,}  scored {c['scored']:,}  rejected {c['rejected']:,}"
            f"  (truncated at {m['max_length']} tokens: {c['truncated']:,}; empty or blank texts: {c['blank_texts']:,})",
            f"  {m['pairs_per_s']:,.0f} pairs/s  {m['tokens_per_s']:,.0f} tokens/s"
            + (f"  (this run scored {m['pairs_scored_this_run']:,}; {earlier:,} were scored by the run it resumed)"
               if earlier else ""),
            *_busy_lines(m),
            f"  {'teacher' if m['kind'] == 'teacher' else 'model'} {model['model_id']}"
            + (f" revision {model.get('revision')}" if m["kind"] == "teacher" else "")
            + f" ({model.get('dtype')}, {model.get('device')})"
            + (("  RANDOM WEIGHTS: labels are meaningless" if m["kind"] == "teacher"
                else "  RANDOM WEIGHTS: scores are meaningless") if random else ""),
            f"  output {self.output}  ({', '.join(self._written())})",
        ]
        return "\n".join(lines + [f"  warning: {w}" for w in warnings_of(m)])

    def _written(self) -> list[str]:
        m = self.manifest
        if m["kind"] == "teacher":
            d = m["dataset"]
            written = [f"{d['path']} {d['files']} file(s) of at most {d['rows_per_file']:,} rows"]
        else:
            written = ["scores/", f"topk/ top-{m['top_k']}"]
        return written + ([f"{REJECTS}/"] if m["counts"]["rejected"] else []) + [SUCCESS]


def _busy_lines(manifest: dict) -> list[str]:
    busy, phases = manifest.get("model_busy"), manifest.get("phases_s") or {}
    if busy is None:
        return []
    return [f"  model busy {busy:.0%} of the {phases['scoring']:.1f} s scoring phase"
            f" (phases: {', '.join(f'{k} {v:.1f} s' for k, v in phases.items())})"]


def warnings_of(manifest: dict) -> list[str]:
    """What a finished run's user should know: nothing scored, texts that were empty, device errors survived."""
    c = manifest["counts"]
    found = []
    if c["in"] == 0:
        found.append("the input has no rows: nothing was scored")
    elif c["scored"] == 0:
        found.append(f"no pair was scored: all {c['in']:,} rows were rejected (see {REJECTS}/ for why)")
    if c.get("blank_texts"):
        found.append(f"{c['blank_texts']:,} pair(s) have an empty or whitespace-only query or document; they were "
                     "scored as given")
    if manifest.get("device_errors"):
        found.append(f"{manifest['device_errors']} scoring actor(s) hit a device (CUDA) error and were started again, "
                     "their batches retried (the actors' log lines name the error): once is a flaky GPU; if it recurs, "
                     "check the node (nvidia-smi, dmesg for Xid errors)")
    return found
