"""Model resolution and loading.

Resolution turns a name into a local folder: `random:ettin-*`, a local path, or a Hub
id (downloaded once; offline, a clear error says what to pass instead). Loading goes
through sentence-transformers' own CrossEncoder loader, so the saved module chain is
read rather than guessed, then `plan_model` decides how the engine runs it:

- unpadded: Transformer(ModernBertModel) -> Pooling(cls | mean) -> any head modules;
  the encoder runs on a packed stream (modernbert.py), the head modules as saved.
- padded:   anything else (BERT / XLM-R / ModernBERT *ForSequenceClassification,
  other encoders): the whole saved chain on length-bucketed padded batches.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ettin_batch.errors import ConfigError, ModelLoadError

from .random_models import RANDOM_PREFIX, SCORES_KEY, random_model_path  # noqa: F401 - SCORES_KEY for the engine

log = logging.getLogger("ettin_batch")


@dataclass(frozen=True)
class ResolvedModel:
    path: str
    model_id: str
    revision: str | None
    is_random: bool


def resolve_model(name: str, revision: str | None = None, *, warn_random: bool = True) -> ResolvedModel:
    """Local folder for `name` (a local path, a Hub id or `random:<shape>`); a random one is warned of unless
    `warn_random` is False (a job's tokenize workers: the driver has said it, and they are many)."""
    if name.startswith(RANDOM_PREFIX):
        try:
            path = random_model_path(name)
        except ValueError as e:
            raise ModelLoadError(str(e)) from None
        if warn_random:
            log.warning("%s has RANDOM weights: its scores mean nothing; use it for smoke runs and speed only", name)
        return ResolvedModel(str(path), name, None, True)
    path = Path(name).expanduser()
    if path.is_dir():
        return ResolvedModel(str(path), name, revision, False)
    # Hub ids are "org/name"; anything else that is not a folder here is a missing local path.
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(f"model folder {name!r} does not exist (or is not a folder)")
    return _download(name, revision)


def _download(model_id: str, revision: str | None) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(model_id, revision=revision, allow_patterns=[
            "*.json", "*.safetensors", "*.txt", "*.model", "*/*.json", "*/*.safetensors"])
    except Exception as exc:  # offline, unknown id, gated: all end the same way for the user
        raise ModelLoadError(f"could not fetch {model_id!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
                             "Where the Hub is unreachable, download the model elsewhere and pass its local folder "
                             "(--model /path/to/ettin-reranker-17m-v1), or pass --model random:ettin-17m for a "
                             "random-weight model of the same shape (speed checks only).") from exc
    return ResolvedModel(folder, model_id, Path(folder).name, False)


def check_model_folder(path: str) -> None:
    """Refuse folders that are not cross-encoders, or that hold pickle weights only."""
    folder = Path(path)
    config_file, st_config = folder / "config.json", folder / "config_sentence_transformers.json"
    if st_config.exists():
        model_type = json.loads(st_config.read_text()).get("model_type")
        if model_type not in (None, "CrossEncoder"):
            raise ModelLoadError(f"{path} is a sentence-transformers {model_type}, not a CrossEncoder reranker")
    if not (folder / "modules.json").exists():
        if not config_file.exists():
            raise ModelLoadError(f"{path} holds neither modules.json nor config.json: not a model folder")
        archs = json.loads(config_file.read_text()).get("architectures") or []
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ModelLoadError(f"{path} is not a cross-encoder: found architectures {archs}, expected a "
                                 "sentence-transformers CrossEncoder (modules.json) or a *ForSequenceClassification "
                                 "checkpoint")
    pickles = [p for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if pickles and not any(folder.rglob("*.safetensors")):
        raise ModelLoadError(f"{path} has only pickle weights ({pickles[0].name}); ettin-batch loads safetensors "
                             "only. Convert them with safetensors' save_file first.")


def check_model(model: str, revision: str | None, max_length: int) -> ResolvedModel:
    """Everything the driver can check about a model without loading it (nor torch): it resolves,
    its folder holds a cross-encoder with a fast tokenizer, and `max_length` fits its positions.
    So a wrong --model or --max-length fails before Ray starts, not inside every actor."""
    resolved = resolve_model(model, revision)
    check_model_folder(resolved.path)
    folder = Path(resolved.path)
    if not (folder / "tokenizer.json").exists():
        raise ModelLoadError(f"{resolved.path} has no tokenizer.json: ettin-batch needs a fast (Rust) tokenizer")
    limit = _max_positions(folder)
    if limit is not None and max_length > limit:
        raise ConfigError(f"max_length={max_length} is above what {model} can read ({limit} tokens); "
                          f"pass --max-length {limit} or less (the published benchmarks use 512)")
    return resolved


def _max_positions(folder: Path) -> int | None:
    """The longest input the encoder takes, from its config.json (the Transformer module's folder for a
    sentence-transformers chain, the folder itself otherwise)."""
    for config in (folder / "config.json", *sorted(folder.glob("*/config.json"))):
        if config.exists():
            found = json.loads(config.read_text()).get("max_position_embeddings")
            if isinstance(found, int):
                return found
    return None


def load_cross_encoder(path: str, *, max_length: int, trust_remote_code: bool = False):
    """The sentence-transformers CrossEncoder saved at `path`, float32 on the CPU, in eval mode.

    Loaded in float32 whatever the saved dtype (the engine casts to its own dtype after): a model saved
    in bfloat16 would otherwise load as bfloat16 and sentence-transformers would warn that it runs
    slowly on the CPU, though the engine never runs it so."""
    check_model_folder(path)
    import torch
    from sentence_transformers import CrossEncoder

    return CrossEncoder(path, device="cpu", max_length=max_length, trust_remote_code=trust_remote_code,
                        model_kwargs={"use_safetensors": True, "dtype": torch.float32}).eval()


@dataclass
class ModelPlan:
    """How the engine runs a loaded CrossEncoder."""

    path_kind: str  # "unpadded" or "padded"
    encoder: object  # the transformers model inside the Transformer module
    pooling: str | None  # "cls" / "mean" for unpadded; None for padded
    head: list  # sentence-transformers modules after pooling (unpadded only)
    why_padded: str = ""


def plan_model(ce) -> ModelPlan:
    modules = list(ce.children())
    first = modules[0]
    encoder = getattr(first, "model", None)
    model_type = getattr(getattr(encoder, "config", None), "model_type", None)
    if type(encoder).__name__ != "ModernBertModel":
        return ModelPlan("padded", encoder, None, [], f"{type(encoder).__name__} ({model_type}) runs padded")
    if len(modules) < 2 or type(modules[1]).__name__ != "Pooling":
        return ModelPlan("padded", encoder, None, [], "no Pooling module after the encoder")
    mode = getattr(modules[1], "pooling_mode", None) or _pooling_mode(modules[1])
    if mode not in ("cls", "mean"):
        return ModelPlan("padded", encoder, None, [], f"pooling mode {mode!r} runs padded")
    return ModelPlan("unpadded", encoder, mode, modules[2:])


def _pooling_mode(pooling) -> str | None:
    cfg = pooling.get_config_dict() if hasattr(pooling, "get_config_dict") else {}
    return cfg.get("pooling_mode")
