"""random:ettin-* models: the real-vocabulary tokenizer, and a cache that never reuses another build."""

from dataclasses import replace

from transformers import AutoTokenizer

from ettin_batch.engine import olmo_assets
from ettin_batch.engine.random_models import ETTIN_SHAPES, cache_key, random_model_path


def test_a_real_shape_saves_the_modernbert_style_real_vocabulary_tokenizer():
    saved = AutoTokenizer.from_pretrained(random_model_path("random:ettin-17m"))
    real = olmo_assets.modernbert_tokenizer()
    assert len(saved) == 50285 and (saved.cls_token_id, saved.sep_token_id, saved.pad_token_id) == (50281, 50282, 50283)
    query, document = "who wrote the iliad", "The Iliad is an ancient Greek epic poem attributed to Homer."
    ids = saved(query, document)["input_ids"]
    assert ids == real(query, document)["input_ids"]
    assert ids[0] == 50281 and ids.count(50282) == 2 and len(ids) < 25  # words, not characters


def test_the_cache_key_changes_with_the_tokenizer_and_the_dtype():
    shape = ETTIN_SHAPES["ettin-17m"]
    variants = [shape, replace(shape, tokenizer="trained"), replace(shape, dtype="float32")]
    keys = {cache_key(v) for v in variants}
    assert len(keys) == 3
    assert ETTIN_SHAPES["ettin-tiny"].tokenizer == "trained"  # the test suite's model fetches nothing
