"""Exact fast pair tokenization for byte-level BPE tokenizers (GPT-2, OLMo, ModernBERT, Ettin).

`tokenizers`' own `encode_batch` spends most of its time on work a reranker throws away
(offsets, word ids, masks, one Python `Encoding` object per pair) and re-tokenizes every
repeated query. This path reproduces its ids and truncation flags exactly, and is the same
code run in a different order:

1. Added tokens are split out as `tokenizers` does: first the non-normalized ones on the raw
   text, then, after normalization, the normalized ones (leftmost-longest, like its
   Aho-Corasick matcher; lstrip/rstrip eat the whitespace beside a token).
2. Normalization: ASCII text is left as it is (every Unicode normal form leaves ASCII alone);
   any other text goes through the tokenizer's own NFC normalizer.
3. Pre-tokenization: the ByteLevel pre-tokenizer's regex (`PRE_TOKEN`), run by the `regex`
   module. The pattern reads only three character classes (\s, \p{L}, \p{N}), so the two
   engines split alike wherever they class each character alike. They follow different Unicode
   versions: `disputed_code_points` finds, once per machine and versions, every code point
   they class differently (17,480 with tokenizers 0.23.2 and regex 2026.11: code points newer
   Unicode assigns), and a pair holding one goes through the library itself (`unproven`).
4. BPE: each distinct pre-token goes once through the tokenizer's own BPE model
   (`model.tokenize`), and its ids are kept in a dict; BPE never looks across pre-tokens, so a
   text's ids are its pre-tokens' ids in order.
5. Truncation: `longest_first` depends only on the two lengths it compares (`longest_first`
   below is the library's rule; from tokenizers 0.23 it compares lengths its early exit caps,
   see `_read_truncation`), so each distinct query of a batch is tokenized once, and a
   document only up to the pre-token where the length to compare is known (`_append_limited`), on a
   prefix cut at a certain pre-token boundary when it is far longer (`SAFE_CUT`). The pair is
   assembled from the two halves and the template's special tokens with NumPy.

`build` refuses (returns the reason) any tokenizer where one of these steps is not proven
equal: another normalizer or pre-tokenizer, BPE dropout, single-word added tokens, a
post-processor whose layout it cannot read, a truncation rule neither known one explains.
The caller then keeps `tokenizers`' own path.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Sequence
from itertools import chain
from pathlib import Path

import numpy as np
import regex

from .cache import cache_dir

# The ByteLevel pre-tokenizer's pattern (GPT-2's), as `tokenizers` compiles it.
PRE_TOKEN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")



def _ascii_class(pattern: str) -> str:
    return "".join(regex.escape(chr(c)) for c in range(128) if regex.fullmatch(pattern, chr(c)))


# The same pattern for ASCII text, in the standard library's `re` (2-3x faster here), with the
# ASCII members of PRE_TOKEN's own classes spelled out, so on ASCII text it cuts as PRE_TOKEN.
_SPACE, _LETTER, _NUMBER = _ascii_class(r"\s"), _ascii_class(r"\p{L}"), _ascii_class(r"\p{N}")
PRE_TOKEN_ASCII = re.compile(
    rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[{_LETTER}]+| ?[{_NUMBER}]+| ?[^{_SPACE}{_LETTER}{_NUMBER}]+"""
    rf"""|[{_SPACE}]+(?![^{_SPACE}])|[{_SPACE}]+""")
# A certain pre-token boundary: a plain space after a non-space and before a letter. No pattern
# branch runs over it, NFC never composes across it, and it needs no character after it.
SAFE_CUT = regex.compile(r"(?<=\S) (?=\p{L})")
CHARS_PER_TOKEN_CUT = 8  # cut a document after ~8 characters per token it may keep (English: ~4.5)
WHITESPACE = r"\p{White_Space}"  # what Rust's char::is_whitespace, and so lstrip/rstrip, takes
CACHE_LIMIT = 200_000  # distinct pre-tokens kept between batches (~40 MB); past it the dict starts over


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet the BPE vocabulary is written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_LEVEL = str.maketrans({chr(b): c for b, c in bytes_to_unicode().items()})


def longest_first(n1: np.ndarray, n2: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens kept of each half under `tokenizers`' longest_first, `budget` = max_length - specials.

    The library's rule: nothing is cut if both fit. Else, with s the shorter and l the longer
    length, the longer is cut to max(s, budget - s) (to s if s alone is over budget); if the two
    are still over, both are cut to budget // 2, the longer (the second on a tie) getting the odd
    token.
    """
    n1, n2 = np.asarray(n1, np.int64), np.asarray(n2, np.int64)
    swap = n1 > n2
    short, long_ = np.minimum(n1, n2), np.maximum(n1, n2)
    long_ = np.where(short > budget, short, np.maximum(short, budget - short))
    both = short + long_ > budget
    short = np.where(both, budget // 2, short)
    long_ = np.where(both, budget // 2 + budget % 2, long_)
    k1, k2 = np.where(swap, long_, short), np.where(swap, short, long_)
    fits = n1 + n2 <= budget
    return np.where(fits, n1, np.minimum(k1, n1)), np.where(fits, n2, np.minimum(k2, n2))


class _WordIds(dict):
    """pre-token -> its BPE ids, computed by the tokenizer's own model on first sight."""

    def __init__(self, model):
        super().__init__()
        self._model = model

    def __missing__(self, word: str) -> list[int]:
        byte_level = word.encode("utf-8").decode("latin-1").translate(_BYTE_LEVEL)
        ids = self[word] = [t.id for t in self._model.tokenize(byte_level)]
        return ids


PROBE_CHARS = 7


def _class_probe(code_points) -> str:
    # A letter before, a digit after, a space before, doubled, a full stop after: each class
    # (letter, number, space, other) splits this differently, and every piece of a probe starts
    # inside it (the next probe's "a" always starts a piece): PROBE_CHARS characters each.
    return "".join(f"a{chr(c)}1 {chr(c)}{chr(c)}." for c in code_points)


def _disputed_in(code_points: list[int], library) -> list[int]:
    """The code points whose probe PRE_TOKEN and the library cut at different places."""
    run = "a" + "".join(map(chr, code_points)) + "1"
    all_other = [(0, 1), (1, len(run) - 1), (len(run) - 1, len(run))]  # a letter, one piece, a digit
    if [m.span() for m in PRE_TOKEN.finditer(run)] == all_other == [s for _, s in library.pre_tokenize_str(run)]:
        return []  # every code point is "other" (not letter, number or space) to both: most unassigned planes
    text = _class_probe(code_points)
    ours = [m.span() for m in PRE_TOKEN.finditer(text)]
    theirs = [span for _, span in library.pre_tokenize_str(text)]
    if ours == theirs:  # almost every run of code points
        return []
    # Every piece starts inside its own code point's probe: group the cuts by probe and compare.
    ours_by, theirs_by = [[] for _ in code_points], [[] for _ in code_points]
    for cuts, by in ((ours, ours_by), (theirs, theirs_by)):
        for span in cuts:
            by[span[0] // PROBE_CHARS].append(span)
    return [c for c, a, b in zip(code_points, ours_by, theirs_by) if a != b]


def disputed_code_points() -> frozenset[str]:
    """Characters `tokenizers`' ByteLevel pre-tokenizer and PRE_TOKEN class differently.

    Found by probing every code point through both, once per machine and pair of versions
    (~4 s of one core; the answer is kept in the cache folder).
    """
    import tokenizers
    from tokenizers import pre_tokenizers

    path = cache_dir() / f"pre-token-disputed-{tokenizers.__version__}-{regex.__version__}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process per machine probes; the others wait and read
        if not path.exists():
            library = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
            code_points = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
            disputed = [c for start in range(0, len(code_points), 4096)
                        for c in _disputed_in(code_points[start:start + 4096], library)]
            _write_atomically(path, json.dumps(disputed))
    return frozenset(chr(c) for c in json.loads(path.read_text()))


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def _stop_at(pieces: list, limit: int) -> int | None:
    """Ids up to the first pre-token (a list; added tokens are tuples) that brings their count to
    `limit`, as tokenizers' early exit stops; None if the count never gets there."""
    count = 0
    for piece in pieces:
        count += len(piece)
        if count >= limit and type(piece) is list:
            return count
    return None


def _witnesses(tokens: list[dict]) -> list[str]:
    """The added tokens' contents that hold no other one (of "  ", "   ", ...: "  ")."""
    contents = {t["content"] for t in tokens}
    return sorted(c for c in contents if not any(o != c and o in c for o in contents))


def _added_pattern(tokens: list[dict]) -> regex.Pattern | None:
    # Longest first: at one position a regex alternation takes the first branch that matches,
    # which is then the longest token there, as the leftmost-longest Aho-Corasick does.
    branches = []
    for t in sorted(tokens, key=lambda t: -len(t["content"])):
        branch = regex.escape(t["content"])
        branches.append(f"{WHITESPACE}*{branch}" if t.get("lstrip") else branch)
        if t.get("rstrip"):
            branches[-1] += f"{WHITESPACE}*"
    return regex.compile("|".join(branches)) if branches else None


def _refusal(spec: dict, backend) -> str | None:
    """Why this tokenizer's steps are not the ones this path reproduces, or None."""
    if spec.get("normalizer") not in (None, {"type": "NFC"}):
        return f"normalizer {spec['normalizer'].get('type')} (only NFC or none is reproduced)"
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        return f"pre-tokenizer {pre.get('type')} (only ByteLevel, regex on, no prefix space, is reproduced)"
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout"):
        return f"model {model.get('type')} with dropout {model.get('dropout')} (only BPE without dropout)"
    if getattr(backend, "encode_special_tokens", False):
        return "encode_special_tokens is on"
    raw = [t for t in spec["added_tokens"] if not t["normalized"]]
    for t in spec["added_tokens"]:
        if t["single_word"]:
            return f"added token {t['content']!r} is single_word"
        if (t["lstrip"] or t["rstrip"]) and (t["normalized"] or any(regex.search(r"\s", r["content"]) for r in raw)):
            return f"added token {t['content']!r} strips whitespace beside text that is normalized or has spaces"
    return None


class FastPairs:
    """Pairs -> (ids, offsets, segment_a, truncated), equal to `tokenizers`' encode_batch (see module doc).

    Build with `build`, which proves the template layout on probes and refuses what it cannot.
    """

    def __init__(self, tokenizer_json: str):
        from tokenizers import Tokenizer

        spec = json.loads(tokenizer_json)
        self._backend = Tokenizer.from_str(tokenizer_json)
        self._backend.no_truncation()
        self._backend.no_padding()
        self.refusal = _refusal(spec, self._backend)
        norm = self._backend.normalizer
        self._normalize = norm.normalize_str if norm is not None else None
        self._words = _WordIds(self._backend.model)
        raw = [t for t in spec["added_tokens"] if not t["normalized"]]
        normalized = [dict(t, content=self._normalize(t["content"]) if self._normalize else t["content"])
                      for t in spec["added_tokens"] if t["normalized"]]
        self._raw, self._norm = _added_pattern(raw), _added_pattern(normalized)
        # A regex search for an alternation of literals costs as much as pre-tokenizing; `in` is
        # memchr-fast, and a text holds an added token only if it holds one of these.
        self._raw_witnesses, self._norm_witnesses = _witnesses(raw), _witnesses(normalized)
        self._added_ids = {t["content"]: t["id"] for t in raw + normalized}
        # The cut (SAFE_CUT) is a boundary only if no added token can match across a space.
        self._cut_ok = not any(regex.search(r"\s", t["content"]) and regex.search(r"\S", t["content"])
                               for t in raw + normalized)
        self.early_exit: bool | None = None
        self._disputed = disputed_code_points() if self.refusal is None else frozenset()
        if self.refusal is None:
            self.refusal = self._read_template() or self._read_truncation()

    def _read_template(self) -> str | None:
        """Learn where the template puts A, B and its special tokens, from probes through the library."""
        enc = self._backend.encode
        a, b = self.text_ids("alpha beta"), self.text_ids("gamma")
        empty, full = enc("", ""), enc("alpha beta", "gamma")
        s = empty.ids

        def where(ids, alone):  # the place in the specials where `ids` goes, if any
            return next((k for k in range(len(s) + 1) if s[:k] + ids + s[k:] == alone), None)

        i, j = where(a, enc("alpha beta", "").ids), where(b, enc("", "gamma").ids)
        if i is None or j is None or i > j or full.ids != s[:i] + a + s[i:j] + b + s[j:]:
            return "the post-processor's pair layout is not [specials] A [specials] B [specials]"
        processor = self._backend.post_processor
        if len(empty.ids) != (processor.num_special_tokens_to_add(True) if processor is not None else 0):
            return "the post-processor adds a number of tokens that differs from what truncation reserves"
        self.specials = np.array(empty.ids, np.int32)
        self._a_at, self._b_at = i, j
        types = full.type_ids
        self._a_type0, self._b_type0 = int(types[i] == 0), int(types[i + len(a) + j - i] == 0)
        self._special_type0 = int(sum(t == 0 for t in empty.type_ids))
        return None

    def _read_truncation(self) -> str | None:
        """Which longest_first the installed `tokenizers` runs, read off probe pairs.

        From 0.23 it stops tokenizing each text at the first pre-token that reaches max_length
        tokens (an early exit) and compares the two lengths so capped, which moves the odd token
        of a both-cut pair in some cases; before 0.23 it compared the full lengths.
        """
        for max_length in (16, 17, 24, 25):
            self._backend.enable_truncation(max_length, strategy="longest_first")
            for q_words, d_words in ((q, d) for q in range(max_length - 3, max_length + 4)
                                     for d in range(max_length - 4, max_length + 4)):
                query, document = " ".join(["a"] * q_words), " ".join(["a"] * d_words)
                got = self._backend.encode(query, document)
                rules = {}
                for early_exit in (True, False):
                    self.early_exit = early_exit
                    ids, _, _, truncated = self([query], [document], max_length)
                    rules[early_exit] = (ids.tolist(), bool(truncated[0]))
                if rules[True] != rules[False]:
                    self._backend.no_truncation()
                    matches = [rule for rule, out in rules.items() if out == (got.ids, len(got.overflowing) > 0)]
                    self.early_exit = matches[0] if len(matches) == 1 else None
                    return None if matches else "its longest_first truncation matches neither known rule"
        self._backend.no_truncation()
        self.early_exit = None
        return "no probe pair tells its longest_first rule apart"

    def unproven(self, queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
        """bool [n]: pairs holding a character the two regex engines class differently."""
        clean = self._disputed.isdisjoint
        return np.fromiter((not (q.isascii() and d.isascii()) and not (clean(q) and clean(d))
                            for q, d in zip(queries, documents)), bool, len(queries))

    def text_ids(self, text: str) -> list[int]:
        """One text's ids, no special tokens: `tokenizers`' encode(text, add_special_tokens=False).ids."""
        return list(chain.from_iterable(self._pieces(text)))

    def _pieces(self, text: str) -> list:
        """The text's ids split by split, in order: a list per pre-token, a 1-tuple per added token."""
        pieces: list = []
        # Step 1 of the module doc, raw added tokens; most texts hold none, and skip the split.
        if not any(w in text for w in self._raw_witnesses):
            self._normalized_pieces(text, pieces)
        else:
            self._split_added(text, self._raw, self._normalized_pieces, pieces)
        return pieces

    def _normalized_pieces(self, text: str, pieces: list) -> None:
        if self._normalize is not None and not text.isascii():
            text = self._normalize(text)
        if not any(w in text for w in self._norm_witnesses):
            self._word_pieces(text, pieces)
        else:
            self._split_added(text, self._norm, self._word_pieces, pieces)

    def _word_pieces(self, text: str, pieces: list) -> None:
        words = (PRE_TOKEN_ASCII if text.isascii() else PRE_TOKEN).findall(text)
        pieces.extend(map(self._words.__getitem__, words))

    def _split_added(self, text: str, pattern: regex.Pattern, between, pieces: list) -> None:
        """The added tokens `pattern` finds in `text` as 1-tuples, with `between` run on the text around them."""
        pos = 0
        for match in pattern.finditer(text):
            if match.start() > pos:
                between(text[pos:match.start()], pieces)
            found = match.group()
            token = self._added_ids.get(found)
            if token is None:  # an lstrip/rstrip match carries the whitespace it ate
                token = self._added_ids[regex.sub(rf"^{WHITESPACE}+|{WHITESPACE}+$", "", found)]
            pieces.append((token,))
            pos = match.end()
        if pos < len(text):
            between(text[pos:], pieces)

    def _append_limited(self, text: str, limit: int, out: list[int]) -> None:
        """Append the text's ids up to the first pre-token at which `limit` ids are reached (all, if never)."""
        start = len(out)
        if self._cut_ok and len(text) > CHARS_PER_TOKEN_CUT * limit:
            cut = SAFE_CUT.search(text, CHARS_PER_TOKEN_CUT * limit)
            if cut is not None:
                # The cut is a pre-token boundary: the prefix's pieces are the text's first pieces.
                pieces = self._pieces(text[:cut.start()])
                count = _stop_at(pieces, limit)
                if count is not None:
                    out.extend(chain.from_iterable(pieces))
                    del out[start + count:]
                    return
        pieces = self._pieces(text)
        out.extend(chain.from_iterable(pieces))
        if len(out) - start >= limit:  # most texts never reach it: no walk over their pieces
            count = _stop_at(pieces, limit)
            if count is not None:
                del out[start + count:]

    def _encode(self, texts: Sequence[str], limits: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated ids (int32) and ids per text (int64); with `limits`, text i stops as `_append_limited`."""
        out: list[int] = []
        lengths = np.empty(len(texts), np.int64)
        for i, text in enumerate(texts):
            start = len(out)
            if limits is None:
                out.extend(chain.from_iterable(self._pieces(text)))
            else:
                self._append_limited(text, limits[i], out)
            lengths[i] = len(out) - start
        return np.array(out, np.int32), lengths

    def __call__(self, queries: Sequence[str], documents: Sequence[str], max_length: int):
        """(input_ids int32 [T], offsets int64 [n+1], segment_a int32 [n] (type-0 tokens), truncated bool [n])."""
        if len(self._words) > CACHE_LIMIT:
            self._words.clear()
        budget = max_length - len(self.specials)
        distinct: dict[str, int] = {}
        query_of = np.fromiter((distinct.setdefault(q, len(distinct)) for q in queries), np.int64, len(queries))
        # The lengths longest_first compares (see _read_truncation): capped at max_length from
        # tokenizers 0.23 on; before it the full length, of which a document needs only
        # max(budget, query) + 1 tokens to decide the cut, and no query needs a cap.
        q_ids, q_len = self._encode(list(distinct), [max_length] * len(distinct) if self.early_exit else None)
        n_q = q_len[query_of]
        d_limits = np.full(len(queries), max_length) if self.early_exit else np.maximum(n_q, budget) + 1
        d_ids, n_d = self._encode(documents, d_limits.tolist())
        k_q, k_d = longest_first(n_q, n_d, budget)
        truncated = (k_q < n_q) | (k_d < n_d)
        q_starts = (np.cumsum(q_len) - q_len)[query_of]
        d_starts = np.cumsum(n_d) - n_d
        ids, offsets = self._assemble(q_ids, q_starts, k_q, d_ids, d_starts, k_d)
        segment_a = (self._special_type0 + self._a_type0 * k_q + self._b_type0 * k_d).astype(np.int32)
        return ids, offsets, segment_a, truncated

    def _assemble(self, q_ids, q_starts, k_q, d_ids, d_starts, k_d) -> tuple[np.ndarray, np.ndarray]:
        """[specials] query[:k_q] [specials] document[:k_d] [specials] per pair, by one NumPy gather."""
        n, s = len(k_q), self.specials
        source = np.concatenate([s, q_ids, d_ids])
        q_base, d_base = len(s), len(s) + len(q_ids)
        a, b = self._a_at, self._b_at

        def const(value):
            return np.full(n, value, np.int64)

        # Five segments per pair, as (start in `source`, length): [n, 5] each.
        starts = np.stack([const(0), q_starts + q_base, const(a), d_starts + d_base, const(b)], axis=1)
        lengths = np.stack([const(a), k_q, const(b - a), k_d, const(len(s) - b)], axis=1)
        bounds = np.zeros(5 * n + 1, np.int64)
        np.cumsum(lengths.ravel(), out=bounds[1:])
        gather = np.repeat(starts.ravel() - bounds[:-1], lengths.ravel()) + np.arange(bounds[-1])
        return source[gather], bounds[::5].copy()


def build(tokenizer_json: str) -> tuple[FastPairs | None, str | None]:
    """The fast path for this tokenizer, or (None, why not)."""
    fast = FastPairs(tokenizer_json)
    return (None, fast.refusal) if fast.refusal else (fast, None)
