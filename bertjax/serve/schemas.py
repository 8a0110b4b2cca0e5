"""Request bodies of the HTTP API (pydantic): strict types, unknown fields refused.

The shapes follow Hugging Face text-embeddings-inference's `/predict` and `/embed`, the
de-facto convention for BERT classifiers. Every bound is explicit so that absurd values
(negative counts, 10**30 tokens) get a 422 naming the field rather than reaching the model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)

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


class GenerateRequest(_Body):
    """POST /v1/generate (GPT runs)."""

    prompt: StrictStr = Field(description="Text to continue (<|endoftext|> is put before it).")
    max_new_tokens: StrictInt | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Tokens to generate at most (default: 32, or the server's limit if lower).",
    )
    temperature: float = Field(1.0, ge=0.0, le=100.0, description="0 = greedy.")
    top_k: StrictInt = Field(
        0, ge=0, le=10_000_000, description="Sample among the k best (0: all)."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus mass (1: off).")
    seed: StrictInt | None = Field(
        None, ge=0, le=2**31 - 1, description="Sampling seed (default: a random one, returned)."
    )
    stop: list[StrictStr] = Field(
        [], max_length=8, description="Generation ends when the text contains one of these; "
        "the text is cut before it."
    )  # fmt: skip
    banned_words: list[StrictStr] = Field(
        [], max_length=64, description="Words never generated (as token sequences)."
    )
    stream: StrictBool = Field(False, description="Server-sent events, one per token.")

    @field_validator("temperature", "top_p", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        # strict mode refuses ints for floats; 1 is a fine temperature (but True is not).
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("expected a number")
        return float(value)

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: list[str]) -> list[str]:
        for i, s in enumerate(value):
            if not s or len(s) > 256:
                raise ValueError(f"stop[{i}] must be 1..256 characters")
        return value


class QAInput(_Body):
    """One question about one context."""

    question: StrictStr
    context: StrictStr


class QARequest(_Body):
    """POST /v1/predict on a squad run."""

    inputs: QAInput | list[QAInput] = Field(description='{"question", "context"} or a list of them')


class NERRequest(_Body):
    """POST /v1/predict on an ner run."""

    inputs: StrictStr | list[StrictStr] = Field(description='"text" or ["text", ...]')
