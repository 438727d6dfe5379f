"""Small models in the exact saved formats of the real ones: random weights, tokenizers trained here."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ettin_batch.engine.random_models import EttinShape, save_ettin_model, synthetic_corpus, train_tokenizer

WORDS = sorted({w for line in synthetic_corpus(200) for w in line.split()})
TOPICS = 4


def random_texts(n: int, min_words: int, max_words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(min_words, max_words))) for _ in range(n)]


def build_ettin(folder: Path, *, layers: int = 4, hidden: int = 64, heads: int = 2, local_attention: int = 16,
                global_every: int = 3, pooling: str = "cls", seed: int = 0) -> Path:
    shape = EttinShape(layers, hidden, hidden * 3 // 2, heads, vocab_size=1024, local_attention=local_attention,
                       global_every=global_every, max_positions=2048)
    tok = train_tokenizer(1024, synthetic_corpus(), 2048)
    path = save_ettin_model(folder, shape, seed=seed, tokenizer=tok, pooling=pooling)
    _scale_head(path, seed)
    return path


def _scale_head(path: Path, seed: int) -> None:
    """Give the random head a useful output scale: a fresh model's scores barely differ pair to pair."""
    from safetensors.torch import load_file, save_file

    f = path / "4_Dense" / "model.safetensors"
    weights = load_file(f)
    gen = torch.Generator().manual_seed(seed)
    weights["linear.weight"] = torch.randn(weights["linear.weight"].shape, generator=gen)
    save_file(weights, f)


def build_bert_classifier(folder: Path, seed: int = 0) -> Path:
    """A classic BERT cross-encoder: BertForSequenceClassification, one label, token type ids."""
    from transformers import BertConfig, BertForSequenceClassification

    tok = train_tokenizer(1024, synthetic_corpus(), 512, token_types=True)
    cfg = BertConfig(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=512, num_labels=1,
                     pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg)
    torch.nn.init.normal_(model.classifier.weight, std=1.0)  # a real score spread, as in _scale_head
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


def build_modernbert_classifier(folder: Path, seed: int = 0) -> Path:
    """A ModernBertForSequenceClassification checkpoint (the padded path for ModernBERT)."""
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    tok = train_tokenizer(1024, synthetic_corpus(), 2048)
    cfg = ModernBertConfig(vocab_size=1024, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                           num_attention_heads=2, local_attention=16, max_position_embeddings=2048, num_labels=1,
                           pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id,
                           sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                           eos_token_id=tok.sep_token_id)
    torch.manual_seed(seed)
    model = ModernBertForSequenceClassification(cfg)
    torch.nn.init.normal_(model.classifier.weight, std=1.0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


def relevance_task(n_queries: int, n_candidates: int, n_relevant: int, seed: int):
    """A synthetic relevance task a tiny model learns in seconds.

    The vocabulary is split into topics; a query is 3 words of one topic, a relevant
    document is made of that topic's words (the query's own among them), the others of
    other topics' words. Returns (queries, documents, labels), one row per (query, candidate).
    """
    rng = random.Random(seed)
    topics = [WORDS[i::TOPICS] for i in range(TOPICS)]
    queries, documents, labels = [], [], []
    for _ in range(n_queries):
        t = rng.randrange(TOPICS)
        q = rng.sample(topics[t], 3)
        for c in range(n_candidates):
            relevant = c < n_relevant
            pool = topics[t] if relevant else topics[rng.choice([i for i in range(TOPICS) if i != t])]
            doc = rng.choices(pool, k=rng.randint(6, 24))
            queries.append(" ".join(q))
            documents.append(" ".join(doc))
            labels.append(float(relevant))
    return queries, documents, np.array(labels, np.float32)


def train_relevance(path: Path, steps: int = 400, seed: int = 0) -> Path:
    """Train a saved CrossEncoder for `steps` batches of 32 on `relevance_task` (about 40 s on 2 idle cores),
    then save it in place. A step count, not a time: on a busy machine a timed run learnt too little."""
    from sentence_transformers import CrossEncoder

    torch.manual_seed(seed)
    ce = CrossEncoder(str(path), max_length=128, device="cpu")
    q, d, y = relevance_task(1000, 4, 2, seed=seed + 1)
    opt = torch.optim.AdamW(ce.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    ce.train()
    order = np.random.default_rng(seed).permutation(len(q))
    for step in range(steps):
        idx = order[(step * 32) % (len(order) - 32):][:32]
        features = ce.preprocess([(q[i], d[i]) for i in idx])
        for module in ce.children():
            features = module(features)
        loss = loss_fn(features["scores"].reshape(-1), torch.from_numpy(y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    ce.eval()
    ce.save(str(path))
    return path


UNEMBEDDED_TOKEN = "<unembedded>"


def build_ettin_with_an_unembedded_token(folder: Path) -> Path:
    """An Ettin-format model whose tokenizer knows one token more than the model has embeddings, as a
    checkpoint saved after `tokenizer.add_tokens` without `model.resize_token_embeddings` does: a pair
    holding UNEMBEDDED_TOKEN makes the model's forward pass raise (IndexError on CPU); the others score."""
    tok = train_tokenizer(1024, synthetic_corpus(), 2048)
    embedded = len(tok)
    tok.add_tokens([UNEMBEDDED_TOKEN])
    shape = EttinShape(3, 64, 96, 1, vocab_size=embedded, local_attention=16, max_positions=2048)
    return save_ettin_model(folder, shape, tokenizer=tok)


OVERFLOW_TOKEN = "<overflow>"


def build_ettin_with_an_overflowing_token(folder: Path) -> Path:
    """An Ettin-format model whose embedding of OVERFLOW_TOKEN is infinite, as a corrupt checkpoint's row or a
    float16 overflow gives: a pair holding it scores NaN (every token of the pair attends to it); the others
    score as usual."""
    from sentence_transformers import CrossEncoder

    tok = train_tokenizer(1024, synthetic_corpus(), 2048)
    tok.add_tokens([OVERFLOW_TOKEN])
    shape = EttinShape(3, 64, 96, 1, vocab_size=len(tok), local_attention=16, max_positions=2048)
    save_ettin_model(folder, shape, tokenizer=tok)
    ce = CrossEncoder(str(folder), device="cpu")
    with torch.no_grad():
        next(ce.children()).auto_model.get_input_embeddings().weight[tok.convert_tokens_to_ids(OVERFLOW_TOKEN)] = float("inf")
    ce.save(str(folder))
    return folder
