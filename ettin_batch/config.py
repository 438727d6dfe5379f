"""The rerank job's configuration: one typed object, filled from CLI flags or a YAML/TOML file.

Validation happens once, in `RerankConfig.validate()`, at the edge (CLI, Python API, job
entry point); everything downstream receives a validated config and trusts it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "cross-encoder/ettin-reranker-17m-v1"
DTYPES = ("auto", "bfloat16", "float16", "float32")


def dtype_name(dtype: str, device_type: str) -> str:
    """The dtype a model runs in on `device_type` ("cuda", "cpu", ...): auto is bfloat16 on GPU,
    float32 elsewhere. The engine and the job's driver share this rule (the driver without torch)."""
    if dtype == "auto":
        return "bfloat16" if device_type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return dtype


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message says which and how to fix it."""


@dataclass
class Columns:
    """Input column names. Outputs always use the canonical names (query_id, doc_id)."""

    query_id: str = "query_id"
    query: str = "query"
    doc_id: str = "doc_id"
    document: str = "document"

    def required(self) -> list[str]:
        return [self.query_id, self.query, self.doc_id, self.document]


# The CLI flag that remaps each column; error messages name it.
COLUMN_FLAGS = {"query_id": "--query-id-col", "query": "--query-col", "doc_id": "--doc-id-col",
                "document": "--document-col"}


@dataclass
class RerankConfig:
    """Everything one rerank run needs.

    input:   Parquet files: a folder, a glob, a file, or a list of those; local or any fsspec URL.
    output:  the output folder (scores/, topk/, rejects/, _SUCCESS.json are written under it).
    model:   a Hub id, a local folder, or `random:<shape>` (random weights, real shapes).
    top_k:   candidates kept per query in topk/.
    max_length: tokens per pair after truncation (longest_first).
    actors:  scoring actors; default one per GPU (by gpus_per_actor), or 1 on a CPU-only cluster.
    gpus_per_actor: GPUs each actor reserves when the cluster has GPUs; 0 forces CPU scoring.
    max_tokens_per_batch: token budget of one forward pass inside the engine (None: engine default).
    batch_size: pairs per Ray batch handed to the tokenizer tasks and the scoring actors.
    passthrough: extra input columns copied to scores/; None keeps every other column, [] none.
    address: Ray cluster address; None uses RAY_ADDRESS or starts a local Ray.
    overwrite: replace a finished run's output (a folder with _SUCCESS.json); unfinished runs are always replaced.
    reuse:   a previous run's output folder: pairs whose fingerprint (texts, model, revision, max_length,
             dtype) it scored keep that score; only new or changed pairs are scored.
    group_rows: at least this many input rows (whole files) per resume group; a resumed run redoes at most
             the groups that were in flight. None: $ETTIN_BATCH_GROUP_ROWS, else 1,000,000.
    s3_max_attempts: attempts per object-store call, with backoff (1 = no retry); the filesystem the
             workers receive carries it. None: $ETTIN_BATCH_S3_MAX_ATTEMPTS, else 12.
    """

    input: list[str] = field(default_factory=list)
    output: str = ""
    model: str = DEFAULT_MODEL
    revision: str | None = None
    top_k: int = 10
    max_length: int = 512
    dtype: str = "auto"
    attention: str = "auto"
    actors: int | None = None
    gpus_per_actor: float = 1.0
    cpus_per_actor: float | None = None
    max_tokens_per_batch: int | None = None
    batch_size: int = 1024
    columns: Columns = field(default_factory=Columns)
    passthrough: list[str] | None = None
    address: str | None = None
    overwrite: bool = False
    reuse: str | None = None
    progress: bool = True
    group_rows: int | None = None
    s3_max_attempts: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RerankConfig:
        """Build from a plain mapping (a parsed YAML/TOML file); unknown keys are an error."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        if "columns" in data:
            cols = data["columns"] or {}
            if not isinstance(cols, dict):
                raise ConfigError("config key 'columns' must be a mapping, e.g. {query_id: qid, document: text}")
            bad = sorted(set(cols) - set(COLUMN_FLAGS))
            if bad:
                raise ConfigError(f"unknown column role(s) under 'columns': {', '.join(bad)}; "
                                  f"roles are {', '.join(COLUMN_FLAGS)}")
            data["columns"] = Columns(**cols)
        if isinstance(data.get("input"), str):
            data["input"] = [data["input"]]
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> RerankConfig:
        """Read a .yaml/.yml or .toml file. A top-level `rerank:` table is accepted too."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(text)
        else:
            raise ConfigError(f"config file {path}: use a .yaml, .yml or .toml file")
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: expected a mapping of keys, got {type(data).__name__}")
        if set(data) == {"rerank"}:
            data = data["rerank"]
        try:
            return cls.from_dict(data)
        except TypeError as e:
            raise ConfigError(f"config file {path}: {e}") from None

    def replace(self, **changes: Any) -> RerankConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> RerankConfig:
        """Check every field once; returns self so calls chain. Raises ConfigError."""
        if not self.input:
            raise ConfigError("no input: pass --input PATH (a folder, glob or file of Parquet; local or s3://)")
        if not self.output:
            raise ConfigError("no output: pass --output PATH (a local folder or s3://bucket/prefix/)")
        if not self.model:
            raise ConfigError("no model: pass --model (a Hub id, a local folder, or random:ettin-17m)")
        _positive_int("top_k", self.top_k, "--top-k")
        _positive_int("max_length", self.max_length, "--max-length")
        _positive_int("batch_size", self.batch_size, "--batch-size")
        if self.max_length < 4:
            raise ConfigError(f"max_length={self.max_length} leaves no room for a pair; use at least 4 tokens")
        if self.max_tokens_per_batch is not None:
            _positive_int("max_tokens_per_batch", self.max_tokens_per_batch, "--max-tokens-per-batch")
            if self.max_tokens_per_batch < self.max_length:
                raise ConfigError(f"max_tokens_per_batch={self.max_tokens_per_batch} is below max_length="
                                  f"{self.max_length}: one full-length pair must fit in a batch")
        if self.actors is not None:
            _positive_int("actors", self.actors, "--actors")
        if self.group_rows is not None:
            _positive_int("group_rows", self.group_rows, "--group-rows")
        if self.s3_max_attempts is not None:
            _positive_int("s3_max_attempts", self.s3_max_attempts, "--s3-max-attempts")
        if self.gpus_per_actor < 0:
            raise ConfigError(f"gpus_per_actor={self.gpus_per_actor} must be >= 0 (0 scores on CPU)")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise ConfigError(f"cpus_per_actor={self.cpus_per_actor} must be > 0")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r}: choose one of {', '.join(DTYPES)}")
        names = self.columns.required()
        if len(set(names)) != len(names):
            raise ConfigError(f"columns map two roles to the same input column: {self.columns}")
        if self.passthrough is not None:
            clash = sorted(set(self.passthrough) & (set(names) | {"score", "query_id", "doc_id"}))
            if clash:
                raise ConfigError(f"passthrough column(s) {clash} clash with the id, text or score columns")
        return self


def _positive_int(name: str, value: Any, flag: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer ({flag})")
