"""Named-entity recognition with a loaded run: words, forward, entity spans with character
offsets (the featuriser and entity reading of the ner task, so served tags are scored ones).

    run = load_run("runs/conll")
    predict(run, ["Angela Merkel visited Paris."])
    # [[{"type": "PER", "start": 0, "end": 13, "text": "Angela Merkel", "score": 0.98}, ...]]

Raw text is split into words at white space and punctuation (`split_words`: runs of word
characters, with inner hyphens and apostrophes, or single other characters, as CoNLL-style
tokenisation); `predict_tokens` takes words already split. Each word's tag is the argmax at its
first word piece; entities are read off the tags with conlleval's rules
(`bertjax.ner_metrics.get_entities`); an entity's score is the mean probability of its words'
tags.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from bertjax import ner_metrics
from bertjax.data import conll
from bertjax.data.features import MODEL_KEYS
from bertjax.inference import batches

_WORD = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")


def split_words(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) character spans of the words of `text`."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def forward(module: Any, params: Any, batch: dict[str, Any]) -> Any:
    """Tag logits [B, T, num_tags] float32; jit with `module` bound."""
    inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
    return module.apply({"params": params}, inputs, train=False)["logits"]


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (float64 logits -> tag probabilities)."""
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def word_probabilities(
    run: Any, words: Sequence[Sequence[str]], batch_size: int = 32
) -> list[np.ndarray]:
    """Per sentence, the tag probabilities [num_words, num_tags] of each word."""
    feats = conll.featurize_words(words, run.tokenizer, run.max_seq_length)
    apply = batches.jitted(forward, run.module)
    chunks = []
    for batch, real in batches.fixed_batches(feats, MODEL_KEYS, batch_size):
        chunks.append(softmax(np.asarray(apply(run.params, batch), np.float64))[:real])
    num_tags = run.model_config.num_labels
    probs = np.concatenate(chunks) if chunks else np.zeros((0, 1, num_tags))
    return conll.words_from_rows(feats, probs, [len(w) for w in words])


def entities_of(tags: Sequence[str], probs: np.ndarray) -> list[dict[str, Any]]:
    """Entities (type, first_token, last_token, score) of one sentence's tags."""
    out = []
    for kind, first, last in ner_metrics.get_entities(list(tags)):
        score = float(np.mean(probs[first : last + 1].max(-1)))
        out.append({"type": kind, "first_token": first, "last_token": last, "score": score})
    return out


def sentence_entities(names: Sequence[str], probs: np.ndarray) -> list[dict[str, Any]]:
    """Entities of one sentence from its words' tag probabilities [num_words, num_tags]."""
    tags = [names[i] for i in probs.argmax(-1)] if len(probs) else []
    return entities_of(tags, probs)


def char_entities(
    text: str, spans: Sequence[tuple[str, int, int]], entities: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Entities (token indices) -> {"type", "start", "end", "text", "score"} in `text`, whose
    words are `spans` (`split_words`)."""
    out = []
    for e in entities:
        start, end = spans[e["first_token"]][1], spans[e["last_token"]][2]
        out.append({"type": e["type"], "start": start, "end": end,
                    "text": text[start:end], "score": e["score"]})  # fmt: skip
    return out


def predict_tokens(
    run: Any, words: Sequence[Sequence[str]], batch_size: int = 32
) -> list[list[dict[str, Any]]]:
    """Entities of sentences already split into words (token indices, inclusive)."""
    return [
        sentence_entities(run.label_names, probs)
        for probs in word_probabilities(run, words, batch_size)
    ]


def predict(run: Any, texts: Sequence[str], batch_size: int = 32) -> list[list[dict[str, Any]]]:
    """Entities of raw texts: {"type", "start", "end", "text", "score"}, character offsets."""
    spans = [split_words(t) for t in texts]
    results = predict_tokens(run, [[w for w, _, _ in s] for s in spans], batch_size)
    return [
        char_entities(text, span, entities)
        for text, span, entities in zip(texts, spans, results, strict=True)
    ]
