"""Request bodies of the HTTP API (pydantic): strict types, unknown fields refused.

The shapes follow Hugging Face text-embeddings-inference's `/predict` and `/embed`, the
de-facto convention for BERT classifiers. Every bound is explicit so that absurd values
(negative counts, 10**30 tokens) get a 422 naming the field rather than reaching the model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

# A text, or a batch whose items are texts or [text] / [text, text_pair] lists.
PredictInputs = StrictStr | list[StrictStr | list[StrictStr]]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PredictRequest(_Body):
    """POST /v1/predict."""

    inputs: PredictInputs = Field(
        description='"text", ["text", ...], or [["text"], ["text", "text_pair"], ...]'
    )
    top_k: StrictInt | None = Field(
        None, ge=1, le=100_000, description="Labels returned per input, best first; null = all."
    )
    raw_scores: StrictBool = Field(False, description="Logits instead of probabilities.")
    truncate: StrictBool = Field(
        False, description="Cut texts longer than the model's limit instead of refusing them."
    )


class EmbedRequest(_Body):
    """POST /v1/embed."""

    inputs: StrictStr | list[StrictStr]
    pooling: Literal["mean", "cls", "pooler"] = Field(
        "mean",
        description="mean of the last hidden states over real tokens, the hidden state at "
        "[CLS], or the pooler's output (runs whose model has a pooler).",
    )
    normalize: StrictBool = Field(True, description="Scale each vector to unit L2 norm.")
    truncate: StrictBool = False


def as_rows(inputs: PredictInputs) -> tuple[list[str], list[str | None], bool]:
    """(texts, text pairs, whether the request sent a single input) of a predict request.

    Raises ValueError naming the element for an empty batch or a list of other than 1 or 2 texts.
    """
    if isinstance(inputs, str):
        return [inputs], [None], True
    if not inputs:
        raise ValueError("inputs: the list is empty")
    texts: list[str] = []
    pairs: list[str | None] = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            texts.append(item)
            pairs.append(None)
        elif len(item) in (1, 2):
            texts.append(item[0])
            pairs.append(item[1] if len(item) == 2 else None)
        else:
            raise ValueError(f"inputs[{i}]: expected [text] or [text, text_pair], got {len(item)}")
    return texts, pairs, False
