"""Configuration: typed objects, filled from a YAML/TOML file and CLI flags, validated once at the edge.

    ScoringConfig   how pairs become scores (model, revision, dtype, max_length, attention, token budget):
                    passed whole to the tokenize stage, the scoring actors and the Reranker
    JobConfig       what every Ray job shares: inputs, output, columns, cluster layout, and a ScoringConfig
    RerankConfig    + top_k, reuse, group_rows          (`ettin-batch rerank`)
    TeacherConfig   + rows_per_file                     (`ettin-batch teacher`)
    PlanConfig      a RerankConfig to forecast, + the cluster to forecast it on and the sample
                    (`ettin-batch plan`; needs no output)

Config files and flags are flat (`model: ...`, `--max-length`); `from_dict` routes each key to the
object that owns it. Everything downstream receives a validated config and trusts it.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ettin_batch.errors import ConfigError

DEFAULT_MODEL = "cross-encoder/ettin-reranker-17m-v1"
DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTENTION_BACKENDS = ("auto", "flash", "torch", "matmul", "reference", "padded")

__all__ = ["ATTENTION_BACKENDS", "COLUMN_FLAGS", "Columns", "ConfigError", "DEFAULT_MODEL", "DTYPES", "JobConfig",
           "PlanConfig", "RerankConfig", "ScoringConfig", "TeacherConfig", "dtype_name"]


def dtype_name(dtype: str, device_type: str) -> str:
    """The dtype a model runs in on `device_type` ("cuda", "cpu", ...): auto is bfloat16 on GPU,
    float32 elsewhere. The engine and the job's driver share this rule (the driver without torch)."""
    if dtype == "auto":
        return "bfloat16" if device_type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return dtype


def flag(name: str) -> str:
    """The CLI flag of a config key: max_length -> --max-length."""
    return {"progress": "--no-progress", **COLUMN_FLAGS}.get(name, "--" + name.replace("_", "-"))


class _Checked:
    """Type checks from the dataclass's annotations, so a file's `gpus_per_actor: lots` or
    `overwrite: "no"` is an error naming the key, not a surprise later."""

    def check_types(self) -> None:
        for name, hint in typing.get_type_hints(type(self)).items():
            if name.isupper() or typing.get_origin(hint) is ClassVar:
                continue
            value = getattr(self, name)
            if not _matches(value, hint):
                raise ConfigError(f"{name}={value!r} must be {_describe(hint)} ({flag(name)})")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and typing.get_origin(hint) is not list:
        return " or ".join(_describe(a) for a in args) + (" or null" if len(args) < len(typing.get_args(hint)) else "")
    if typing.get_origin(hint) is list:
        return "a list of strings"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


@dataclass
class Columns(_Checked):
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


@dataclass(frozen=True)
class ScoringConfig(_Checked):
    """How pairs become scores; one object from the driver to the tokenize tasks, the actors and the engine.

    model:      a Hub id, a local folder, or `random:<shape>` (random weights, real shapes).
    revision:   Hub branch, tag or commit of `model`.
    dtype:      auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16 or float16.
    max_length: tokens per pair after `longest_first` truncation.
    attention:  auto, flash, torch, reference or padded.
    max_tokens_per_batch: tokens in one forward pass (None: the engine's default for the device).
    """

    model: str = DEFAULT_MODEL
    revision: str | None = None
    dtype: str = "auto"
    max_length: int = 512
    attention: str = "auto"
    max_tokens_per_batch: int | None = None

    def validate(self) -> ScoringConfig:
        self.check_types()
        if not self.model:
            raise ConfigError("no model: pass --model (a Hub id, a local folder, or random:ettin-17m)")
        _positive("max_length", self.max_length)
        if self.max_length < 4:
            raise ConfigError(f"max_length={self.max_length} leaves no room for a pair; use at least 4 tokens")
        if self.max_tokens_per_batch is not None:
            _positive("max_tokens_per_batch", self.max_tokens_per_batch)
            if self.max_tokens_per_batch < self.max_length:
                raise ConfigError(f"max_tokens_per_batch={self.max_tokens_per_batch} is below max_length="
                                  f"{self.max_length}: one full-length pair must fit in a batch")
        for name, choices in (("dtype", DTYPES), ("attention", ATTENTION_BACKENDS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(choices)} ({flag(name)})")
        return self


SCORING_KEYS = tuple(f.name for f in dataclasses.fields(ScoringConfig))


@dataclass
class JobConfig(_Checked):
    """What every Ray job over (query, document) shards shares.

    input:   Parquet files: a folder, a glob, a file, or a list of those; local or any fsspec URL.
    output:  the output folder; `{date}` becomes today's UTC date on the command line.
    scoring: the model and the settings that change its scores (ScoringConfig).
    actors:  scoring actors; default one per GPU (by gpus_per_actor), or 1 on a CPU-only cluster.
    gpus_per_actor: GPUs each actor reserves when the cluster has GPUs; 0 forces CPU scoring.
    cpus_per_actor: CPUs each actor reserves (default 1 on GPU, the CPUs left on CPU).
    batch_size: pairs per Ray batch handed to the tokenize tasks and the scoring actors; default 4096 when the
             actors score on GPUs, 1024 on CPUs (pipeline.run.batch_size).
    columns: input column names of the four roles.
    passthrough: extra input columns copied to the output; None keeps every other column, [] none.
    address: Ray cluster address; None uses RAY_ADDRESS or starts a local Ray.
    overwrite: replace a finished run (or write into a folder that holds other files).
    progress: Ray Data's progress bars.
    s3_max_attempts: attempts per object-store call, with backoff (1 = no retry). None:
             $ETTIN_BATCH_S3_MAX_ATTEMPTS, else 12.
    """

    KIND: ClassVar[str] = "job"
    # Top-level tables a config file may wrap its keys in (see from_file); KIND unless a subclass says more.
    TABLES: ClassVar[tuple[str, ...]] = ()
    # Whether the command writes an output folder (`plan` only reads).
    WRITES_OUTPUT: ClassVar[bool] = True

    input: list[str] = field(default_factory=list)
    output: str = ""
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    actors: int | None = None
    gpus_per_actor: float = 1.0
    cpus_per_actor: float | None = None
    batch_size: int | None = None
    columns: Columns = field(default_factory=Columns)
    passthrough: list[str] | None = None
    address: str | None = None
    overwrite: bool = False
    progress: bool = True
    s3_max_attempts: int | None = None

    @classmethod
    def keys(cls) -> list[str]:
        """Every key a config file (or a flag) may set, flat."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "scoring"] + list(SCORING_KEYS)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobConfig:
        """Build from flat settings (a parsed YAML/TOML file, or keyword arguments); unknown keys are an error."""
        data = dict(data)
        unknown = sorted(set(data) - set(cls.keys()))
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(cls.keys()))}")
        scoring = ScoringConfig(**{k: data.pop(k) for k in SCORING_KEYS if k in data})
        if "columns" in data:
            data["columns"] = _columns(data["columns"])
        for name in ("input", "passthrough"):  # one path or column given as a string is a list of one
            if isinstance(data.get(name), str):
                data[name] = [data[name]]
        return cls(scoring=scoring, **data)

    @classmethod
    def of(cls, **settings: Any) -> JobConfig:
        """`from_dict` with keyword arguments: RerankConfig.of(input=[...], output=..., model=...)."""
        return cls.from_dict(settings)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> JobConfig:
        """Read a .yaml/.yml or .toml file. A top-level table named after the command is accepted too."""
        data = _read_mapping(Path(path))
        if len(data) == 1 and next(iter(data)) in (cls.KIND, *cls.TABLES):
            data = next(iter(data.values()))
        try:
            config = cls.from_dict(data)
            config.check_types()
        except (TypeError, ConfigError) as e:
            raise ConfigError(f"config file {path}: {e}") from None
        return config

    def replace(self, **changes: Any) -> JobConfig:
        """A copy with some keys changed; scoring keys (model, max_length, ...) may be given flat."""
        scoring = {k: changes.pop(k) for k in SCORING_KEYS if k in changes}
        if scoring:
            changes["scoring"] = dataclasses.replace(changes.get("scoring", self.scoring), **scoring)
        return dataclasses.replace(self, **changes)

    def check_types(self) -> None:
        super().check_types()
        self.columns.check_types()
        self.scoring.check_types()

    def validate(self) -> JobConfig:
        """Check every field once; returns self so calls chain. Raises ConfigError."""
        self.check_types()
        if not self.input:
            raise ConfigError("no input: pass --input PATH (a folder, glob or file of Parquet; local or s3://)")
        if self.WRITES_OUTPUT and not self.output:
            raise ConfigError("no output: pass --output PATH (a local folder or s3://bucket/prefix/)")
        self.scoring.validate()
        for name in ("actors", "batch_size", "s3_max_attempts"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.gpus_per_actor < 0:
            raise ConfigError(f"gpus_per_actor={self.gpus_per_actor} must be >= 0 (0 scores on CPU)")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise ConfigError(f"cpus_per_actor={self.cpus_per_actor} must be > 0")
        names = self.columns.required()
        if len(set(names)) != len(names):
            raise ConfigError(f"columns map two roles to the same input column: {self.columns}")
        if self.passthrough is not None:
            clash = sorted(set(self.passthrough) & (set(names) | set(self.reserved_columns())))
            if clash:
                raise ConfigError(f"passthrough column(s) {clash} clash with the output's own columns "
                                  f"{sorted(self.reserved_columns())} or the input's id and text columns")
        return self

    def reserved_columns(self) -> tuple[str, ...]:
        """Output columns a pass-through column may not be called."""
        return ("query_id", "doc_id", "score")


@dataclass
class RerankConfig(JobConfig):
    """A rerank run: every pair's score, and each query's top_k.

    top_k:  candidates kept per query in topk/.
    reuse:  a previous run's output folder: pairs whose fingerprint (texts, model, revision, max_length,
            dtype) it scored keep that score; only new or changed pairs are scored.
    group_rows: at least this many input rows (whole files) per resume group; a resumed run redoes at most
            the groups that were in flight. None: $ETTIN_BATCH_GROUP_ROWS, else 1,000,000.
    """

    KIND: ClassVar[str] = "rerank"

    top_k: int = 10
    reuse: str | None = None
    group_rows: int | None = None

    def validate(self) -> RerankConfig:
        super().validate()
        _positive("top_k", self.top_k)
        if self.group_rows is not None:
            _positive("group_rows", self.group_rows)
        return self


@dataclass
class TeacherConfig(JobConfig):
    """A teacher-score dataset for distillation: query, document, label (raw logit), ids.

    rows_per_file: rows in every data/ file but the last.
    passthrough:   extra input columns copied next to the training columns; default none, so the
                   dataset has exactly the training schema (None keeps every other column).
    """

    KIND: ClassVar[str] = "teacher"

    passthrough: list[str] | None = field(default_factory=list)
    rows_per_file: int = 100_000

    def validate(self) -> TeacherConfig:
        super().validate()
        _positive("rows_per_file", self.rows_per_file)
        return self

    def reserved_columns(self) -> tuple[str, ...]:
        return ("query_id", "doc_id", "query", "document", "label")


@dataclass
class PlanConfig(RerankConfig):
    """`ettin-batch plan`: the rerank run it forecasts (every rerank key, so a nightly run's config file
    serves both; output is not needed), plus the cluster to forecast it on and the sample to measure.

    gpus:          GPUs of the run; 0 forecasts CPU scoring on a machine like this one (its cores).
    cpus_per_gpu:  CPUs each GPU comes with (the scoring actor takes cpus_per_actor of them, default 1;
                   the rest read and tokenize).
    gpu_hour_price: price of one GPU-hour, for the cost line (any currency); None: no cost.
    sample:        pairs to sample, tokenize, time and check (pairs).
    seed:          seed of the sample; the same seed draws the same pairs from the same files.
    fidelity:      score the sample with sentence-transformers too, and compare (the slowest part on a CPU).
    """

    KIND: ClassVar[str] = "plan"
    TABLES: ClassVar[tuple[str, ...]] = ("rerank",)
    WRITES_OUTPUT: ClassVar[bool] = False

    gpus: int = 1
    cpus_per_gpu: float = 12.0
    gpu_hour_price: float | None = None
    sample: int = 2000
    seed: int = 0
    fidelity: bool = True

    def validate(self) -> PlanConfig:
        super().validate()
        if self.gpus < 0 or isinstance(self.gpus, bool):
            raise ConfigError(f"gpus={self.gpus!r} must be 0 (CPU scoring) or more ({flag('gpus')})")
        if self.cpus_per_gpu <= (self.cpus_per_actor or 1.0) and self.gpus:
            raise ConfigError(f"cpus_per_gpu={self.cpus_per_gpu} leaves no CPU to tokenize on: the scoring actor "
                              f"takes {self.cpus_per_actor or 1.0} of each GPU's CPUs ({flag('cpus_per_gpu')})")
        if self.gpu_hour_price is not None and self.gpu_hour_price < 0:
            raise ConfigError(f"gpu_hour_price={self.gpu_hour_price} must be >= 0 ({flag('gpu_hour_price')})")
        _positive("sample", self.sample)
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed} must be >= 0 ({flag('seed')})")
        return self


def _columns(value: Any) -> Columns:
    if not isinstance(value, dict):
        raise ConfigError("config key 'columns' must be a mapping, e.g. {query_id: qid, document: text}")
    bad = sorted(set(value) - set(COLUMN_FLAGS))
    if bad:
        raise ConfigError(f"unknown column role(s) under 'columns': {', '.join(bad)}; roles are {', '.join(COLUMN_FLAGS)}")
    return Columns(**value)


def _read_mapping(path: Path) -> dict:
    """A config file's top-level mapping; a syntax error names the file and line."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"config file {where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    elif path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: not valid TOML ({e})") from None
    else:
        raise ConfigError(f"config file {path}: use a .yaml, .yml or .toml file")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer ({flag(name)})")
