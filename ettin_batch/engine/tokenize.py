"""Pair tokenization: (query, document) texts -> flat int32 token ids plus offsets.

Runs anywhere a fast tokenizer runs (CPU workers in the Ray job), and its output
travels as Arrow (`to_arrow` / `from_arrow`), so the GPU actor never touches text.
Truncation is `longest_first` at `max_length`, the same call sentence-transformers'
CrossEncoder makes, so token ids match the reference exactly.

Byte-level BPE tokenizers (ModernBERT's, so every Ettin model's; GPT-2's, RoBERTa's) take
fast_pairs.py's exact fast path, 3.5-5x the pairs/s of `tokenizers`' own encode_batch on one
core (benchmarks/RESULTS.md); any other tokenizer (BERT WordPiece, XLM-R's SentencePiece)
keeps that library's encode_batch, and `PairTokenizer.fast_path` says which runs and why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from . import fast_pairs

# Column names used when tokenized pairs travel between Ray stages.
IDS_COL = "_input_ids"
SPLIT_COL = "_segment_a_len"
TRUNC_COL = "_truncated"


@dataclass
class TokenizedPairs:
    """A batch of tokenized pairs, unpadded.

    input_ids: int32 [total_tokens], all pairs concatenated.
    offsets:   int64 [n + 1], pair i is input_ids[offsets[i]:offsets[i + 1]].
    segment_a: int32 [n] tokens of the first segment ([CLS] query [SEP]), only for
               models that read token_type_ids (BERT); None otherwise.
    truncated: bool [n], whether the pair was cut at max_length.
    """

    input_ids: np.ndarray
    offsets: np.ndarray
    segment_a: np.ndarray | None
    truncated: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per pair, int64 [n]."""
        return np.diff(self.offsets)

    def content_keys(self) -> np.ndarray:
        """A 64-bit hash of each pair's token ids (uint64 [n]): the same pairs get the same keys, in any order."""
        lengths = self.lengths
        position = np.arange(len(self.input_ids)) - np.repeat(self.offsets[:-1], lengths)
        with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
            powers = np.cumprod(np.full(int(lengths.max(initial=1)), 0x100000001B3, np.uint64))
            terms = (self.input_ids.astype(np.uint64) + np.uint64(1)) * powers[position]
        return np.add.reduceat(terms, self.offsets[:-1]) if len(lengths) else np.zeros(0, np.uint64)

    @property
    def num_truncated(self) -> int:
        return int(self.truncated.sum())

    def to_arrow(self) -> dict[str, pa.Array]:
        """Columns to append to an Arrow batch: list<int32> ids, the segment split, the truncation flag."""
        ids = pa.LargeListArray.from_arrays(pa.array(self.offsets, pa.int64()), pa.array(self.input_ids, pa.int32()))
        cols = {IDS_COL: ids, TRUNC_COL: pa.array(self.truncated, pa.bool_())}
        if self.segment_a is not None:
            cols[SPLIT_COL] = pa.array(self.segment_a, pa.int32())
        return cols

    @classmethod
    def from_arrow(cls, table: pa.Table | pa.RecordBatch) -> TokenizedPairs:
        """Inverse of `to_arrow`: reads the columns back without a Python loop."""
        ids = table.column(IDS_COL)
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        if ids.type != pa.large_list(pa.int32()):
            ids = ids.cast(pa.large_list(pa.int32()))
        # A sliced ListArray keeps its parent's offsets: rebase them to zero.
        offsets = ids.offsets.to_numpy().astype(np.int64)
        values = ids.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
        offsets = offsets - offsets[0]
        split = None
        if SPLIT_COL in table.column_names:
            split = np.asarray(table.column(SPLIT_COL).to_numpy(zero_copy_only=False), dtype=np.int32)
        truncated = np.asarray(table.column(TRUNC_COL).to_numpy(zero_copy_only=False), dtype=bool)
        return cls(values.astype(np.int32, copy=False), offsets, split, truncated)

    def take(self, index: np.ndarray) -> TokenizedPairs:
        """The pairs at `index`, in that order."""
        starts, ends = self.offsets[:-1][index], self.offsets[1:][index]
        lengths = ends - starts
        offsets = np.zeros(len(index) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        split = None if self.segment_a is None else self.segment_a[index]
        return TokenizedPairs(self.input_ids[gather], offsets, split, self.truncated[index])


def concat(parts: Sequence[TokenizedPairs]) -> TokenizedPairs:
    """The pairs of `parts`, one after another."""
    lengths = np.concatenate([p.lengths for p in parts])
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    split = None if parts[0].segment_a is None else np.concatenate([p.segment_a for p in parts])
    return TokenizedPairs(np.concatenate([p.input_ids for p in parts]), offsets, split,
                          np.concatenate([p.truncated for p in parts]))


def _check_texts(queries: Sequence[str], documents: Sequence[str]) -> None:
    if len(queries) != len(documents):
        raise ValueError(f"queries and documents differ in length: {len(queries)} queries, {len(documents)} documents")
    for name, texts in (("query", queries), ("document", documents)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"{name} at index {i} is {type(text).__name__}, not a string; drop or fill it first")


class PairTokenizer:
    """The model's fast tokenizer, set up for pairs: longest_first truncation, no padding.

    `fast_path` is None when fast_pairs.py's path runs, else the reason it does not apply.
    """

    def __init__(self, hf_tokenizer, max_length: int):
        if not getattr(hf_tokenizer, "is_fast", False) and not hasattr(hf_tokenizer, "_tokenizer"):
            raise ValueError("ettin-batch needs a fast (Rust) tokenizer; the model folder has no tokenizer.json")
        self._setup(hf_tokenizer._tokenizer.to_str(), max_length, "token_type_ids" in hf_tokenizer.model_input_names,
                    hf_tokenizer.pad_token_id)

    def _setup(self, spec: str, max_length: int, uses_token_types: bool, pad_token_id: int | None) -> None:
        self.max_length = int(max_length)
        self.spec = spec  # the Rust tokenizer's JSON, as loaded: two PairTokenizers agree when these do
        self.uses_token_types = uses_token_types
        self.pad_token_id = pad_token_id if pad_token_id is not None else 0
        # A private copy of the Rust tokenizer, configured once (HF's __call__ reconfigures per call);
        # a copy, so two PairTokenizers over one model never change each other's truncation.
        from tokenizers import Tokenizer

        self._backend = Tokenizer.from_str(spec)
        self._backend.no_padding()
        self._backend.enable_truncation(self.max_length, strategy="longest_first")
        self._fast, self.fast_path = fast_pairs.build(spec)
        if self._fast is not None and self.max_length <= len(self._fast.specials):
            # tokenizers raises on a max_length the special tokens fill; the plain path says so.
            self._fast, self.fast_path = None, f"max_length {self.max_length} leaves no room for text"

    @classmethod
    def from_pretrained(cls, path: str, max_length: int) -> PairTokenizer:
        """The tokenizer saved in a model folder, read without transformers: a tokenize task then costs the
        `tokenizers` library and no torch (~60 MB against ~300 MB a process). transformers 5 loads
        tokenizer.json as it is (the job's scoring actors check that theirs equals this one). Without
        `model_input_names` in tokenizer_config.json it gives every pair's segment split, for the model to
        use or not."""
        from pathlib import Path

        from tokenizers import Tokenizer

        folder = Path(path)
        if not (folder / "tokenizer.json").exists():
            raise ValueError("ettin-batch needs a fast (Rust) tokenizer; the model folder has no tokenizer.json")
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        tokenizer = cls.__new__(cls)
        tokenizer._setup(Tokenizer.from_file(str(folder / "tokenizer.json")).to_str(), max_length,
                         "token_type_ids" in config.get("model_input_names", ["token_type_ids"]), None)
        return tokenizer

    def __call__(self, queries: Sequence[str], documents: Sequence[str]) -> TokenizedPairs:
        """Tokenize pairs; raises ValueError naming the index of a non-string text."""
        _check_texts(queries, documents)
        if self._fast is None:
            return self._plain(queries, documents)
        unproven = self._fast.unproven(queries, documents)
        if not unproven.any():
            return self._fast_pairs(queries, documents)
        # The rare pair with a character fast_pairs cannot vouch for goes the library's way.
        fast, slow = np.flatnonzero(~unproven), np.flatnonzero(unproven)
        parts = [self._fast_pairs([queries[i] for i in fast], [documents[i] for i in fast]),
                 self._plain([queries[i] for i in slow], [documents[i] for i in slow])]
        return concat(parts).take(np.argsort(np.concatenate([fast, slow]), kind="stable"))

    def _fast_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> TokenizedPairs:
        ids, offsets, segment_a, truncated = self._fast(queries, documents, self.max_length)
        return TokenizedPairs(ids, offsets, segment_a if self.uses_token_types else None, truncated)

    def _plain(self, queries: Sequence[str], documents: Sequence[str]) -> TokenizedPairs:
        """`tokenizers`' own encode_batch: every tokenizer, and the reference the fast path equals."""
        encodings = self._backend.encode_batch(list(zip(queries, documents)), add_special_tokens=True)
        ids = pa.array([e.ids for e in encodings], pa.large_list(pa.int32()))
        truncated = np.fromiter((len(e.overflowing) > 0 for e in encodings), bool, len(encodings))
        split = None
        if self.uses_token_types:
            split = np.fromiter((e.type_ids.count(0) for e in encodings), np.int32, len(encodings))
        offsets = ids.offsets.to_numpy().astype(np.int64)
        values = ids.values.to_numpy(zero_copy_only=False) if len(ids.values) else np.zeros(0, np.int32)
        return TokenizedPairs(values.astype(np.int32, copy=False), offsets, split, truncated)
