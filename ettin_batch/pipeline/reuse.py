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
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ettin_batch.errors import InputError
from ettin_batch.run_folder import RECORD, SCORES, SUCCESS, RunFolder

FINGERPRINT_COL = "pair_fingerprint"
FINGERPRINT_TYPE = pa.binary(16)
_VERSION = b"ettin-batch pair fingerprint v1"


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


@dataclass(frozen=True)
class Previous:
    """A finished earlier run whose scores this run may keep."""

    folder: RunFolder
    manifest: dict

    def why_unusable(self, settings: dict) -> str | None:
        """Why no fingerprint of this run can match one made with `settings` (model_id, revision,
        max_length, dtype: they are part of it), or None when its scores can be reused."""
        model = self.manifest.get("model") or {}
        found = {"model_id": model.get("model_id"), "revision": model.get("revision"),
                 "max_length": self.manifest.get("max_length"), "dtype": self.manifest.get("dtype")}
        differ = [f"{k} {found[k]!r} there, {v!r} now" for k, v in settings.items() if found[k] != v]
        if differ:
            return "made with other settings: " + ", ".join(differ)
        if not (self.manifest.get("counts") or {}).get("scored"):
            return "it scored no pairs"
        return None


def open_previous(reuse: str, output: RunFolder | None, *, s3_max_attempts: int | None = None) -> Previous:
    """Check the --reuse folder before any work: a finished rerank run, not the output itself (None: a
    command that writes none, such as `plan`), with fingerprints in scores/. Raises InputError naming
    the folder and what to do."""
    folder, entry = RunFolder.containing(reuse, s3_max_attempts=s3_max_attempts)
    if folder is None or entry is not None or folder.kind != "rerank":
        raise InputError(f"--reuse {reuse}: not the output folder of an `ettin-batch rerank` run "
                         f"(no {RECORD} or {SUCCESS} there). Point --reuse at the previous run's --output.")
    if output is not None and folder.loc.scheme == output.loc.scheme and folder.path().rstrip("/") == output.path().rstrip("/"):
        raise InputError(f"--reuse {folder.url()} is also the --output: the run would delete what it reuses. "
                         "Write to a new folder (e.g. one per night) and reuse the previous one.")
    manifest = folder.require_finished("--reuse")
    files = folder.parquet_files(SCORES)
    if files:
        names = pq.read_schema(files[0], filesystem=folder.loc.pa_fs).names
        if FINGERPRINT_COL not in names:
            raise InputError(f"--reuse {folder.url()}: {folder.loc.url(files[0])} has no {FINGERPRINT_COL} column "
                             f"(columns: {names}); it was written before incremental runs existed. "
                             "Run once without --reuse; later runs can reuse that one.")
    return Previous(folder, manifest)


def scored_before(prev: Previous, wanted: pa.Array) -> np.ndarray:
    """Which of the fingerprints `wanted` (binary(16) [n]) the previous run scored: bool [n]. Streams the
    fingerprint column of its scores/ (16 bytes a pair), keeping only the rows that match."""
    import pyarrow.dataset as pads

    files = prev.folder.parquet_files(SCORES)
    keys = pc.unique(wanted.drop_null()).cast(FINGERPRINT_TYPE)
    found = [pa.array([], FINGERPRINT_TYPE)]
    if files and len(keys):
        data = pads.dataset(files, format="parquet", filesystem=prev.folder.loc.pa_fs)
        for batch in data.to_batches(columns=[FINGERPRINT_COL], filter=pc.field(FINGERPRINT_COL).isin(keys)):
            found.append(batch.column(0).cast(FINGERPRINT_TYPE))
    return pc.is_in(wanted, value_set=pa.concat_arrays(found)).to_numpy(zero_copy_only=False).astype(bool)


def previous_scores(prev: Previous, *, shared: bool):
    """The previous run's (fingerprint, score), one row per fingerprint.

    `shared`: several groups will join against it, so it is computed once and kept in the object
    store (20 bytes a pair); for one group it stays lazy and runs inside that group's plan, which
    saves starting a separate execution.
    """
    import ray
    from ray.data.aggregate import Max

    rows = prev.manifest["counts"]["scored"]
    ds = ray.data.read_parquet(prev.folder.path(SCORES), filesystem=prev.folder.loc.pa_fs,
                               columns=[FINGERPRINT_COL, "score"])
    # Equal fingerprints mean equal texts and model, so their scores agree; max() just picks one.
    ds = ds.groupby(FINGERPRINT_COL, num_partitions=max(1, min(64, math.ceil(rows / 2_000_000)))).aggregate(
        Max("score", alias_name="score"))
    return ds.materialize() if shared else ds


def fingerprint_schema(plan) -> pa.Schema:
    """Types of the columns the join hands on (canonical names), so the tokenize stage can restore them."""
    fields = [pa.field(plan.rename.get(f.name, f.name), f.type) for f in plan.schema]
    return pa.schema([*fields, pa.field(FINGERPRINT_COL, FINGERPRINT_TYPE)])


def attach_previous(ds, previous, partitions: int):
    """Left-join `ds` (with fingerprints) to the previous scores: `score` is set where a pair is reused."""
    # Aggregator actors hold little (a partition of the join); a small CPU share keeps them from
    # starving the scoring actors of a small cluster.
    return ds.join(previous, join_type="left_outer", num_partitions=partitions, on=(FINGERPRINT_COL,),
                   aggregator_ray_remote_args={"num_cpus": 0.1})


def reused_mask(batch: pa.Table):
    """Rows of a joined batch whose score came from the previous run (None outside reuse runs). A NaN or
    infinite previous score (runs before 2026-12-07 could write one) is not kept: the pair is scored again."""
    if "score" not in batch.column_names:
        return None
    return pc.is_finite(batch.column("score")).fill_null(False)  # null (not scored before), NaN, inf: False
