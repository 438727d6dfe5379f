"""The Reranker: one process, one device, (query, document) pairs in, raw logits out.

    rr = Reranker.from_pretrained("cross-encoder/ettin-reranker-17m-v1")
    scores = rr.score(queries, documents)        # float32 [n], input order
    best = rr.rank(query, documents, top_k=10)   # [(index, score), ...], best first

The hot loop is `score_tokens`: pack length-sorted pairs into token-budget batches,
run each batch (unpadded or padded), write the logits back in input order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch

from ettin_batch.config import ScoringConfig, dtype_name

from .attention import choose_backend, get_backend
from .faults import FaultHooks
from .loading import SCORES_KEY, ModelLoadError, ResolvedModel, load_cross_encoder, plan_model, resolve_model
from .modernbert import UnpaddedModernBert
from .options import EngineOptions
from .packing import PackedBatch, pack_batches
from .tokenize import PairTokenizer, TokenizedPairs

log = logging.getLogger("ettin_batch")

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return TORCH_DTYPES[dtype_name(dtype, device.type)]


def default_token_budget(device: torch.device, hidden: int, max_length: int) -> int:
    """Tokens per batch: enough to fill the device, small enough to leave memory headroom.

    On CPU, small batches keep activations in cache: with the 17M shape, 2,048 tokens
    scored 77 pairs/s in float32 against 58 at 16,384 (benchmarks/RESULTS.md). On an
    H100, 131,072 tokens was the fastest for the 17M shape and 65,536 is within 1% of
    the best for the wider ones.
    """
    if device.type != "cuda":
        return max(2048, max_length)
    return max(131072 if hidden <= 512 else 65536, max_length)


def _embedded_tokens(encoder) -> int | None:
    """Rows of the encoder's token embedding (None where the model does not say)."""
    try:
        return getattr(encoder.get_input_embeddings(), "num_embeddings", None)
    except (AttributeError, NotImplementedError):
        return None


class Reranker:
    """Scores (query, document) pairs with a cross-encoder on one device."""

    def __init__(self, cross_encoder, resolved: ResolvedModel, *, device: torch.device, dtype: torch.dtype,
                 max_length: int, max_tokens_per_batch: int | None, attention: str):
        self.resolved = resolved
        self.device, self.dtype, self.max_length = device, dtype, max_length
        self._ce = cross_encoder.to(device=device, dtype=dtype)
        plan = plan_model(self._ce)
        backend = "padded" if plan.path_kind == "padded" else choose_backend(attention, device, dtype)
        if plan.path_kind == "padded" and attention not in ("auto", "padded"):
            raise ValueError(f"attention={attention!r} needs an unpadded model; {plan.why_padded}")
        self.attention = backend
        self._head = plan.head
        self._encoder = None
        if backend != "padded":
            self._encoder = UnpaddedModernBert(plan.encoder, get_backend(backend), plan.pooling)
        else:
            log.info("scoring padded: %s", plan.why_padded or f"attention={attention}")
        hidden = getattr(plan.encoder.config, "hidden_size", 768)
        self.max_tokens_per_batch = int(max_tokens_per_batch or default_token_budget(device, hidden, max_length))
        if self.max_tokens_per_batch < max_length:
            raise ValueError(f"max_tokens_per_batch ({self.max_tokens_per_batch}) must be >= max_length ({max_length})")
        self.tokenizer = PairTokenizer(self._ce.tokenizer, max_length)
        # Token ids at or past this have no embedding row. On a GPU such an id is a device-side assert that leaves
        # the process's CUDA context unusable (every later batch of a scoring actor fails too): score_tokens
        # refuses it on the host instead, as an IndexError, the error the CPU's embedding lookup raises.
        self._embedded = _embedded_tokens(plan.encoder)
        if self._embedded is not None and len(self._ce.tokenizer) > self._embedded:
            log.warning("%s: %d token(s) of its tokenizer have no embedding in the model (ids %d and up: added to the "
                        "tokenizer without model.resize_token_embeddings?); pairs holding one cannot be scored",
                        resolved.model_id, len(self._ce.tokenizer) - self._embedded, self._embedded)
        num_labels = getattr(self._ce, "num_labels", 1)
        if num_labels != 1:
            raise ModelLoadError(f"{resolved.model_id} has {num_labels} output labels; ettin-batch scores "
                                 "single-logit rerankers")
        self.stats = {"pairs": 0, "tokens": 0, "truncated": 0, "batches": 0, "oom_splits": 0, "seconds": 0.0}
        # Fault-injection hooks for tests (ettin_batch.engine.faults); None in real runs.
        self.faults: FaultHooks | None = None

    @classmethod
    def from_pretrained(cls, model: str, *, revision: str | None = None, device: str = "auto", dtype: str = "auto",
                        max_length: int = 512, max_tokens_per_batch: int | None = None, attention: str = "auto",
                        trust_remote_code: bool = False) -> Reranker:
        """Load a cross-encoder by Hub id, local folder or `random:<shape>`.

        device: "auto" (CUDA if present), "cpu", "cuda", "cuda:1", ...
        dtype: "auto" (bfloat16 on CUDA, float32 on CPU), "float32", "bfloat16", "float16".
        max_length: tokens per pair after longest_first truncation.
        max_tokens_per_batch: token budget of one forward pass (default: by device and model width).
        attention: "auto", "flash", "torch", "reference" or "padded".
        """
        resolved = resolve_model(model, revision)
        dev = resolve_device(device)
        ce = load_cross_encoder(resolved.path, max_length=max_length, trust_remote_code=trust_remote_code)
        return cls(ce, resolved, device=dev, dtype=resolve_dtype(dtype, dev), max_length=max_length,
                   max_tokens_per_batch=max_tokens_per_batch, attention=attention)

    @classmethod
    def from_config(cls, scoring: ScoringConfig, device: str = "auto") -> Reranker:
        """The engine a job's ScoringConfig describes, on `device`."""
        return cls.from_pretrained(scoring.model, revision=scoring.revision, device=device, dtype=scoring.dtype,
                                   max_length=scoring.max_length, max_tokens_per_batch=scoring.max_tokens_per_batch,
                                   attention=scoring.attention)

    @property
    def info(self) -> dict:
        """What produced the scores: goes into run manifests."""
        return {
            "model_id": self.resolved.model_id,
            "revision": self.resolved.revision,
            "path": self.resolved.path,
            "is_random": self.resolved.is_random,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "max_length": self.max_length,
            "attention": self.attention,
            "max_tokens_per_batch": self.max_tokens_per_batch,
        }

    def score(self, queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
        """Raw logits (float32 [n]) for the pairs (queries[i], documents[i]), in input order."""
        if isinstance(queries, str) or isinstance(documents, str):
            raise ValueError("score() takes two lists of texts, one pair per position; for one pair pass "
                             "score([query], [document]), for one query's documents use rank(query, documents)")
        return self.score_tokens(self.tokenizer(queries, documents))

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None) -> list[tuple[int, float]]:
        """The documents' (index, score) pairs, best first: score descending, ties by index ascending;
        the first `top_k` only if given. As sentence-transformers' `CrossEncoder.rank`, with raw logits."""
        if not isinstance(query, str):
            raise ValueError(f"query is {type(query).__name__}, not a string: rank() takes one query and its documents")
        scores = self.score([query] * len(documents), documents)
        best = np.argsort(-scores, kind="stable")[:top_k]
        return [(int(i), float(scores[i])) for i in best]

    @torch.inference_mode()
    def score_tokens(self, pairs: TokenizedPairs, ties: np.ndarray | None = None) -> np.ndarray:
        """Raw logits (float32 [n]) for already tokenized pairs, in input order.

        ties: a uint64 key per pair, any function of the pair's content (default: a hash of its token ids;
        the job passes its pair fingerprints, already computed). Pairs of one length are packed in key order,
        not arrival order: a pair's float rounding depends on where it sits in a batch, so the same pairs
        give the same bits however they came in."""
        start = time.perf_counter()
        padded = self._encoder is None
        out = np.empty(len(pairs), np.float32)
        pending = []  # device results; copied back once so the host never waits mid-stream
        if self._embedded is not None and len(pairs.input_ids) and (top := int(pairs.input_ids.max())) >= self._embedded:
            raise IndexError(f"token id {top} has no embedding in this model (it embeds ids below {self._embedded}): its "
                             "tokenizer has tokens the model was not given (tokenizer.add_tokens without "
                             "model.resize_token_embeddings?)")
        ties = pairs.content_keys() if ties is None else ties
        for index in pack_batches(pairs.lengths, self.max_tokens_per_batch, padded=padded, ties=ties):
            pending.extend(self._run_with_split(pairs, index))
        for index, scores in pending:
            out[index] = scores.float().cpu().numpy()
        self.stats["pairs"] += len(pairs)
        self.stats["tokens"] += int(pairs.offsets[-1])
        self.stats["truncated"] += pairs.num_truncated
        self.stats["seconds"] += time.perf_counter() - start
        return out

    def _run_with_split(self, pairs: TokenizedPairs, index: np.ndarray) -> list:
        """Run one batch; if the device runs out of memory, halve it and retry."""
        try:
            self.stats["batches"] += 1
            return [(index, self._forward(pairs.take(index)))]
        except torch.OutOfMemoryError as e:
            if len(index) == 1:
                raise self._pair_too_big(int(pairs.lengths[index[0]]), e) from e
            self.stats["oom_splits"] += 1
            log.warning("out of device memory on a batch of %d pairs; splitting it in two", len(index))
            torch.cuda.empty_cache()
            half = len(index) // 2
            return self._run_with_split(pairs, index[:half]) + self._run_with_split(pairs, index[half:])

    def _pair_too_big(self, tokens: int, error: torch.OutOfMemoryError) -> torch.OutOfMemoryError:
        """The error for a pair that runs out of device memory alone: no split can help, so say what can."""
        return torch.OutOfMemoryError(
            f"one pair of {tokens} tokens does not fit in {self.device} memory on its own ({self.resolved.model_id} in "
            f"{str(self.dtype).removeprefix('torch.')}, max_length {self.max_length}). Another process may hold the "
            "device's memory (nvidia-smi lists them); else lower --max-length, or use a device with more memory. "
            f"The device said: {str(error).splitlines()[0] if str(error) else type(error).__name__}")

    def _forward(self, batch_pairs: TokenizedPairs) -> torch.Tensor:
        if self.faults is not None:
            self.faults.before_forward(self.stats["pairs"], batch_pairs)
        if self._encoder is None:
            return self._forward_padded(batch_pairs)
        packed = PackedBatch.from_pairs(batch_pairs, self.device)
        pooled = self._encoder(packed)  # [pairs, hidden]
        if self.faults is not None:
            pooled = self.faults.after_encoder(pooled)
        features = {"sentence_embedding": pooled}
        for module in self._head:
            features = module(features)
        return features[SCORES_KEY].reshape(-1)

    def _use_engine(self, options: EngineOptions) -> None:
        """Rebuild the unpadded forward pass with these fast paths (options.py); the weights are shared."""
        if self._encoder is None:
            raise ValueError("engine options apply to the unpadded path; this model runs padded")
        enc = self._encoder
        self._encoder = UnpaddedModernBert(enc.model, enc.attention, enc.pooling, options)

    def _forward_padded(self, batch_pairs: TokenizedPairs) -> torch.Tensor:
        lengths = batch_pairs.lengths
        n, width = len(lengths), int(lengths.max())
        positions = np.arange(width)[None, :]
        mask = positions < lengths[:, None]
        ids = np.full((n, width), self.tokenizer.pad_token_id, np.int64)
        ids[mask] = batch_pairs.input_ids
        features = {
            "input_ids": torch.from_numpy(ids).to(self.device),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)).to(self.device),
        }
        if batch_pairs.segment_a is not None and self.tokenizer.uses_token_types:
            types = (positions >= batch_pairs.segment_a[:, None]) & mask
            features["token_type_ids"] = torch.from_numpy(types.astype(np.int64)).to(self.device)
        for module in self._ce.children():
            features = module(features)
        return features[SCORES_KEY].reshape(-1)
