"""The word and entity tag an NER explanation looks at.

A ner run tags words (`bertjax.inference.ner.split_words` splits raw text) on their first
sub-token, as training labels them (`bertjax.data.conll.featurize_words`), so the explained
score is the tag's logit / probability / log-probability at the word's first sub-token. The
word is given by its index; by default the first word of the first predicted entity (the first
word when no entity is predicted, noted in the target). The tag defaults to the word's predicted
tag. A text longer than one row (max_seq_length word pieces) is split between words as training
splits it; the explanation reads the row holding the word.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bertjax.data import conll
from bertjax.explain.targets import Selection, trim
from bertjax.inference import ner as ner_inference


def select(
    run: Any,
    text: str,
    *,
    word: int | None = None,
    tag: str | None = None,
    pad_to: int | None = None,
) -> Selection:
    """The row, word and tag to explain (see the module docstring).

    Raises ValueError naming the flag and the valid range (--word) or tags (--target).
    """
    spans = ner_inference.split_words(text)
    if not spans:
        raise ValueError("text has no words: nothing to explain")
    words = [w for w, _, _ in spans]
    names = run.label_names or [str(i) for i in range(run.model_config.num_labels)]
    probs = ner_inference.word_probabilities(run, [words])[0]  # [num_words, num_tags]
    tags = [names[i] for i in probs.argmax(-1)]
    entities = []
    for e in ner_inference.entities_of(tags, probs):
        start, end = spans[e["first_token"]][1], spans[e["last_token"]][2]
        entities.append({"type": e["type"], "start": start, "end": end, "text": text[start:end],
                         "score": e["score"], "first_word": e["first_token"],
                         "last_word": e["last_token"]})  # fmt: skip
    if word is None:
        chosen = "first predicted entity" if entities else "no entity predicted: the first word"
        word = entities[0]["first_word"] if entities else 0
    else:
        chosen = "given"
        if not 0 <= word < len(words):
            raise ValueError(
                f"--word={word} is out of range: the text has {len(words)} words (0-"
                f"{len(words) - 1}: {words[:20]}{' ...' if len(words) > 20 else ''})"
            )
    if tag is None or tag == "":
        index = int(probs[word].argmax())
    elif tag in names:
        index = names.index(tag)
    else:
        raise ValueError(f"--target={tag!r} is not one of the run's tags {names}")

    feats = conll.featurize_words([words], run.tokenizer, run.max_seq_length)
    rows, cols = np.nonzero(feats["word_index"] == word)
    row, position = int(rows[0]), int(cols[0])
    length = int(feats["attention_mask"][row].sum())
    prediction = {
        "words": [
            {"word": w, "start": s, "end": e, "tag": t, "probability": float(p.max())}
            for (w, s, e), t, p in zip(spans, tags, probs, strict=True)
        ],  # fmt: skip
        "entities": entities,
    }
    target = {
        "kind": "word_tag",
        "word_index": int(word),
        "word": words[word],
        "start": spans[word][1],
        "end": spans[word][2],
        "word_from": chosen,
        "position": position,
        "tag": names[index],
        "tag_index": index,
        "row": row,
        "rows": len(feats["input_ids"]),
    }
    extra = (np.int32(position), np.int32(index))
    return Selection(trim(feats, row, length, pad_to), length, prediction, target, extra)
