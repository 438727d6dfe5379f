"""Incremental re-scoring: keep the scores of pairs that did not change since a previous run.

Every run writes a `pair_fingerprint` column to scores/: 16 bytes of BLAKE2b over what
decides a pair's score (model id and revision, max_length, dtype, query text, document
text). `--reuse PREVIOUS_OUTPUT` joins the new pairs to the previous run's
(fingerprint, score) on that column: a pair that finds its fingerprint keeps the old score
and skips the tokenizer and the model; the others are scored as usual.

The lookup is Ray Data's hash join, so it is spread over the cluster like the rest of the
job. The previous side is first reduced to one row per fingerprint (the same texts may
appear under several query or doc ids; a join against duplicate keys would multiply rows),
once per run, two narrow columns only.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ettin_batch import storage
from ettin_batch.pipeline import manifest as mf

log = logging.getLogger("ettin_batch.pipeline")

FINGERPRINT_COL = "pair_fingerprint"
FINGERPRINT_TYPE = pa.binary(16)
_VERSION = b"ettin-batch pair fingerprint v1"


class ReuseError(ValueError):
    """The previous output given to --reuse cannot be used; the message says why and what to do."""


def fingerprint_header(model_id: str, revision: str | None, max_length: int, dtype: str) -> bytes:
    """The part of every fingerprint that names the model and the settings that change scores."""
    fields = (_VERSION, model_id.encode(), (revision or "").encode(), str(max_length).encode(), dtype.encode())
    return b"\0".join(len(f).to_bytes(4, "little") + f for f in fields)


def fingerprints(queries: pa.Array | pa.ChunkedArray, documents: pa.Array | pa.ChunkedArray,
                 header: bytes) -> pa.Array:
    """One fingerprint per pair, over the texts' bytes as stored (so a row that is not valid UTF-8
    hashes too, and is rejected later by the tokenizer); null where a text is null."""
    out = []
    for q, d in zip(_as_bytes(queries), _as_bytes(documents)):
        if q is None or d is None:
            out.append(None)
            continue
        h = hashlib.blake2b(header, digest_size=16)
        h.update(len(q).to_bytes(8, "little"))
        h.update(q)
        h.update(d)
        out.append(h.digest())
    return pa.array(out, FINGERPRINT_TYPE)


def _as_bytes(texts: pa.Array | pa.ChunkedArray) -> list[bytes | None]:
    # string -> binary is a zero-copy cast that does not decode (nor validate) UTF-8.
    target = pa.large_binary() if pa.types.is_large_string(texts.type) else pa.binary()
    return texts.cast(target).to_pylist() if not pa.types.is_null(texts.type) else [None] * len(texts)


def add_fingerprints(batch: pa.Table, *, header: bytes, rename: dict[str, str] | None = None) -> pa.Table:
    """Ray map_batches step: canonical column names, plus the fingerprint column."""
    if rename:
        batch = batch.rename_columns([rename.get(n, n) for n in batch.column_names])
    return batch.append_column(FINGERPRINT_COL, fingerprints(batch.column("query"), batch.column("document"), header))


@dataclass
class Previous:
    """A finished earlier run whose scores this run may keep."""

    location: storage.Location
    manifest: dict
    usable: bool = False  # set by matches(): False when no fingerprint can match
    why_not: str = "not checked"

    def matches(self, settings: dict) -> bool:
        """Whether the previous run used these settings (model_id, revision, max_length, dtype).

        If not, no fingerprint can match (they are part of it), so the join is skipped and every
        pair is scored; the run says so in the log and in _SUCCESS.json.
        """
        model = self.manifest.get("model") or {}
        found = {"model_id": model.get("model_id"), "revision": model.get("revision"),
                 "max_length": self.manifest.get("max_length"), "dtype": self.manifest.get("dtype")}
        differ = [f"{k} {found[k]!r} there, {v!r} now" for k, v in settings.items() if found[k] != v]
        if differ:
            self.usable, self.why_not = False, "made with other settings: " + ", ".join(differ)
            log.warning("--reuse %s: %s; every pair will be scored", self.location.url(), self.why_not)
        elif not (self.manifest.get("counts") or {}).get("scored"):
            self.usable, self.why_not = False, "it scored no pairs"
        else:
            self.usable, self.why_not = True, ""
        return self.usable

    def summary(self) -> dict:
        return {"from": self.location.url(), "usable": self.usable, **({"why_not": self.why_not} if not self.usable else {})}


def open_previous(reuse: str, output: storage.Location, *, s3_max_attempts: int | None = None) -> Previous:
    """Check the --reuse folder before any work: a finished run, not the output itself, with
    fingerprints in scores/. Raises ReuseError naming the folder and what to do."""
    prev = storage.resolve(reuse, s3_max_attempts=s3_max_attempts)
    if prev.scheme == output.scheme and prev.path.rstrip("/") == output.path.rstrip("/"):
        raise ReuseError(f"--reuse {prev.url()} is also the --output: the run would delete what it reuses. "
                         "Write to a new folder (e.g. one per night) and reuse the previous one.")
    success = prev.join(mf.SUCCESS)
    if not prev.fs.exists(success):
        raise ReuseError(f"--reuse {prev.url()}: no {mf.SUCCESS} there, so it is not a finished run. "
                         "Point --reuse at the last run that finished, or drop --reuse to score everything.")
    files = [p for p in prev.fs.find(prev.join("scores")) if p.endswith(".parquet")]
    if files:
        names = pq.read_schema(files[0], filesystem=prev.pa_fs).names
        if FINGERPRINT_COL not in names:
            raise ReuseError(f"--reuse {prev.url()}: {prev.url(files[0])} has no {FINGERPRINT_COL} column "
                             f"(columns: {names}); it was written before incremental runs existed. "
                             "Run once without --reuse; later runs can reuse that one.")
    return Previous(prev, storage.read_json(prev, success))


def previous_scores(prev: Previous, *, shared: bool):
    """The previous run's (fingerprint, score), one row per fingerprint.

    `shared`: several groups will join against it, so it is computed once and kept in the object
    store (20 bytes a pair); for one group it stays lazy and runs inside that group's plan, which
    saves starting a separate execution.
    """
    import ray
    from ray.data.aggregate import Max

    rows = prev.manifest["counts"]["scored"]
    ds = ray.data.read_parquet(prev.location.join("scores"), filesystem=prev.location.pa_fs,
                               columns=[FINGERPRINT_COL, "score"])
    # Equal fingerprints mean equal texts and model, so their scores agree; max() just picks one.
    ds = ds.groupby(FINGERPRINT_COL, num_partitions=max(1, min(64, math.ceil(rows / 2_000_000)))).aggregate(
        Max("score", alias_name="score"))
    return ds.materialize() if shared else ds


def fingerprint_schema(plan) -> pa.Schema:
    """Types of the columns the join hands on (canonical names), so tokenize_batch can restore them."""
    fields = [pa.field(plan.rename.get(f.name, f.name), f.type) for f in plan.schema]
    return pa.schema([*fields, pa.field(FINGERPRINT_COL, FINGERPRINT_TYPE)])


def attach_previous(ds, previous, partitions: int):
    """Left-join `ds` (with fingerprints) to the previous scores: `score` is set where a pair is reused."""
    # Aggregator actors hold little (a partition of the join); a small CPU share keeps them from
    # starving the scoring actors of a small cluster.
    return ds.join(previous, join_type="left_outer", num_partitions=partitions, on=(FINGERPRINT_COL,),
                   aggregator_ray_remote_args={"num_cpus": 0.1})


def reused_mask(batch: pa.Table):
    """Rows of a joined batch whose score came from the previous run (None outside reuse runs)."""
    if "score" not in batch.column_names:
        return None
    return pc.is_valid(batch.column("score"))
