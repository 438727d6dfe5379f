"""The run's record: counts read back from the written files, `_SUCCESS.json`, the closing summary.

`_SUCCESS.json` is written last, and only when in = scored + rejected holds; a folder
without it is an incomplete run.
"""

from __future__ import annotations

import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from ettin_batch import __version__, storage

SUCCESS = "_SUCCESS.json"
# What pairs_per_s and tokens_per_s measure, written into every manifest beside them.
RATE_BASIS = ("this run only: pairs_per_s = pairs_scored_this_run / wall_time_s, tokens_per_s = tokens the model "
              "ran on in this run (retries included) / wall_time_s; groups a resumed run skipped are in neither; "
              "pairs that kept a --reuse score are in pairs_scored_this_run (this run wrote them), not in tokens")


def count_rows(loc: storage.Location, folder: str) -> int:
    """Rows in every Parquet file under `folder` (footers only); 0 when it does not exist."""
    if not loc.fs.exists(folder):
        return 0
    files = [p for p in loc.fs.find(folder) if p.endswith(".parquet")]
    if not files:
        return 0
    with ThreadPoolExecutor(max_workers=min(32, len(files))) as pool:
        return sum(pool.map(lambda p: pq.read_metadata(p, filesystem=loc.pa_fs).num_rows, files))


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


def busy_lines(manifest: dict) -> list[str]:
    """The summary's line on where the time went, if the manifest has the figures."""
    busy, phases = manifest.get("model_busy"), manifest.get("phases_s") or {}
    if busy is None:
        return []
    return [f"  model busy {busy:.0%} of the {phases['scoring']:.1f} s scoring phase"
            f" (phases: {', '.join(f'{k} {v:.1f} s' for k, v in phases.items())})"]


@dataclass
class RunResult:
    """What `rerank` returns: the manifest written to _SUCCESS.json, and where."""

    output: str
    manifest: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict:
        return self.manifest["counts"]

    def summary(self) -> str:
        m, c = self.manifest, self.manifest["counts"]
        lines = [
            f"ettin-batch rerank: done in {m['wall_time_s']:.1f} s",
            f"  pairs in {c['in']:,}  scored {c['scored']:,}  rejected {c['rejected']:,}"
            f"  (truncated at {m['max_length']} tokens: {c['truncated']:,})",
            f"  {m['pairs_per_s']:,.0f} pairs/s  {m['tokens_per_s']:,.0f} tokens/s"
            + (f"  (this run scored {m['pairs_scored_this_run']:,}; {m['resume']['pairs_scored_earlier']:,} "
               "were scored by the run it resumed)" if (m.get("resume") or {}).get("pairs_scored_earlier") else ""),
            *busy_lines(m),
            f"  model {m['model']['model_id']} ({m['model'].get('dtype')}, {m['model'].get('device')})"
            + ("  RANDOM WEIGHTS: scores are meaningless" if m["model"].get("is_random") else ""),
            f"  output {self.output}  (scores/, topk/ top-{m['top_k']}, rejects/, {SUCCESS})",
        ]
        return "\n".join(lines)


def build_manifest(*, config, plan, model: dict, counts: dict, tokens: int, wall_time_s: float,
                   actors: dict, started_at: str, finished_at: str, model_pairs: int | None = None,
                   resume: dict | None = None, reuse: dict | None = None, oom_splits: int | None = None,
                   phases: dict[str, float] | None = None, model_seconds: float | None = None,
                   repeated_pairs: int | None = None) -> dict:
    import ray

    # A resumed run's rate is its own work over its own wall time: pairs in groups that an earlier run
    # finished (resume.pairs_scored_earlier) are in counts.scored but not in pairs_scored_this_run.
    scored_now = counts["scored"] - ((resume or {}).get("pairs_scored_earlier") or 0)
    return {
        "status": "success",
        "model": model,
        "dtype": model.get("dtype"),
        "max_length": config.max_length,
        "top_k": config.top_k,
        "counts": counts,
        # Scored rows whose (query_id, doc_id) another row of the input also has: each is in scores/,
        # topk/ ranks the document once. Counted when top-k runs in the driver (<= 1M scored pairs), else null.
        "repeated_pairs": repeated_pairs,
        "tokens": tokens,
        # Pairs the model ran on, retries included: above counts.scored means work was redone
        # (a batch whose actor died after scoring it, or a retried task).
        "model_pairs": model_pairs,
        # Forward passes halved because the device ran out of memory (the halves are retried):
        # many of them mean max_tokens_per_batch is too big for this device.
        "oom_splits": oom_splits,
        # Groups of input files (see job.shard_groups) found finished by an earlier, interrupted run.
        "resume": resume,
        # --reuse: the previous run, whether its scores could be used, and how many pairs kept theirs.
        "reuse": reuse,
        "wall_time_s": round(wall_time_s, 3),
        "pairs_scored_this_run": scored_now,
        "pairs_per_s": round(scored_now / wall_time_s, 1) if wall_time_s > 0 else None,
        "tokens_per_s": round(tokens / wall_time_s, 1) if wall_time_s > 0 else None,
        "rate_basis": RATE_BASIS,
        # Where the wall time went: setup (inputs, model, output folder), ray_start, scoring
        # (read, tokenize, score, write), topk, finish (counts, shutdown).
        "phases_s": phases,
        # Seconds the actors spent in the model (retries included), and that over scoring x actors.
        "model_seconds": None if model_seconds is None else round(model_seconds, 3),
        "model_busy": model_busy(model_seconds, (phases or {}).get("scoring"), actors.get("actors", 0)),
        "input": {"paths": list(config.input), "files": len(plan.files),
                  "columns": dict(zip(("query_id", "query", "doc_id", "document"), config.columns.required())),
                  "passthrough": plan.passthrough},
        "actors": actors,
        "started_at": started_at,
        "finished_at": finished_at,
        "versions": {"ettin_batch": __version__, "ray": ray.__version__, "python": platform.python_version()},
        "package_version": __version__,
    }
