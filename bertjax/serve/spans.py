"""SQuAD and NER runs behind POST /v1/predict: answers and entity spans with character offsets.

QA: `{"inputs": {"question", "context"}}` (or a list) -> per input `{"answer", "score",
"start", "end"}` (character offsets into the context; "" / -1 / -1 / null for no answer). The
windows of a question (`bertjax.inference.qa.featurize`, the run's doc_stride and
max_query_length) are rows of the batcher like any others, and `qa.postprocess` picks the
answer, so answers equal `bertjax.inference.qa.predict` / `python -m bertjax.predict`.

NER: `{"inputs": "text" | ["text", ...]}` -> per text `[{"type", "start", "end", "text",
"score"}]`, as `bertjax.inference.ner.predict`: words split by `ner.split_words`, one row per
piece of a sentence (`bertjax.data.conll.featurize_words`), each word's tag at its first piece.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bertjax.data import conll
from bertjax.inference import ner, qa
from bertjax.serve.backend import EncoderBackend, Row
from bertjax.serve.batcher import RowResult
from bertjax.serve.schemas import NERRequest, QARequest

SPAN_TASKS = ("squad", "ner")


class SpanBackend(EncoderBackend):
    """A squad (question_answering head) or ner (token_classification head) run.

    Args (beyond `EncoderBackend`'s): task: "squad" or "ner"; label_names: the ner run's tags;
    data: run.json's "data" (doc_stride, max_query_length, n_best_size, ...).
    """

    def __init__(self, module: Any, params: Any, model_config: Any, tokenizer: Any, *,
                 max_seq_length: int, task: str, label_names: Sequence[str] | None = None,
                 data: dict[str, Any] | None = None, name: str = ""):  # fmt: skip
        heads = {"squad": "question_answering", "ner": "token_classification"}
        if task not in heads or model_config.head != heads.get(task):
            raise ValueError(f"a {task!r} run with a {model_config.head!r} head is not served")
        super().__init__(module, params, model_config, tokenizer, max_seq_length=max_seq_length,
                         name=name, task=task)  # fmt: skip
        if task == "ner" and (not label_names or len(label_names) != model_config.num_labels):
            raise ValueError("an ner run needs one label name per tag (run.json's label_names)")
        self.tags = list(label_names) if task == "ner" else None
        # What `qa.featurize` / `qa.predict` read from a LoadedRun.
        self.manifest = {"task": task, "data": dict(data or {})}
        if self.tags is not None:  # the explain page reads an ner run's tags from here
            self.manifest["label_names"] = self.tags
        settings = {**qa.DEFAULTS, **self.manifest["data"]}
        self.qa_options = {
            "n_best_size": int(settings["n_best_size"]),
            "max_answer_length": int(settings["max_answer_length"]),
            "version_2": bool(settings.get("version_2", False)),
            "null_score_diff_threshold": float(settings.get("null_score_diff_threshold", 0.0)),
        }

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["label_names"] = self.tags
        if self.task == "squad":
            data = {**qa.DEFAULTS, **self.manifest["data"]}
            windows = {k: int(data[k]) for k in ("doc_stride", "max_query_length")}
            out["qa"] = {**self.qa_options, **windows}
        return out

    # -- QA -------------------------------------------------------------------------------------

    def qa_rows(self, questions: Sequence[str], contexts: Sequence[str]) -> tuple[Any, ...]:
        """(rows, feats, examples): every window a row at full width (its padding masked, as
        offline prediction computes it, so that the same positions compete for n-best)."""
        feats, examples = qa.featurize(self, questions, contexts)
        rows = [
            Row(feats["input_ids"][i], feats["token_type_ids"][i], feats["attention_mask"][i])
            for i in range(len(feats["input_ids"]))
        ]
        return rows, feats, examples

    def qa_answers(self, feats: Any, examples: Any, outputs: Sequence[RowResult]) -> list[dict]:
        width = feats["input_ids"].shape[1]
        start = np.stack([o.outputs["start_logits"] for o in outputs]) if outputs else None
        end = np.stack([o.outputs["end_logits"] for o in outputs]) if outputs else None
        if start is None:
            start = end = np.zeros((0, width), np.float32)
        answers = qa.postprocess(examples, feats, start, end, **self.qa_options)
        return [
            {"answer": a["text"], "score": a["score"] if math.isfinite(a["score"]) else None,
             "start": a["start"], "end": a["end"]}
            for a in answers
        ]  # fmt: skip

    # -- NER ------------------------------------------------------------------------------------

    def ner_rows(self, texts: Sequence[str]) -> tuple[list[Row], Any, list]:
        """(rows, feats, word spans): each row cut to its real pieces (only first pieces are
        read, so padding does not matter)."""
        spans = [ner.split_words(t) for t in texts]
        feats = conll.featurize_words(
            [[w for w, _, _ in s] for s in spans], self.tokenizer, self.max_seq_length
        )
        rows = []
        for i in range(len(feats["input_ids"])):
            n = int(feats["attention_mask"][i].sum())
            rows.append(Row(feats["input_ids"][i, :n], feats["token_type_ids"][i, :n]))
        return rows, feats, spans

    def ner_entities(self, texts: Sequence[str], feats: Any, spans: list,
                     outputs: Sequence[RowResult]) -> list[list[dict]]:  # fmt: skip
        width, tags = feats["input_ids"].shape[1], len(self.tags)
        probs = np.zeros((len(outputs), width, tags))
        for i, o in enumerate(outputs):
            logits = np.asarray(o.outputs["logits"], np.float64)
            probs[i, : len(logits)] = ner.softmax(logits)
        words = conll.words_from_rows(feats, probs, [len(s) for s in spans])
        return [
            ner.char_entities(text, span, ner.sentence_entities(self.tags, p))
            for text, span, p in zip(texts, spans, words, strict=True)
        ]


RunRows = Callable[[list[Row], Request], Awaitable[list[RowResult]]]


def add_routes(
    app: FastAPI, backend: SpanBackend, check_count: Callable[[int], None], run_rows: RunRows
) -> None:
    """POST /v1/predict for a squad or ner run; rows go through `run_rows` (the batcher)."""

    def timing(outputs: Sequence[RowResult]) -> dict[str, str]:
        if not outputs:
            return {}
        return {
            "x-queue-time": f"{max(r.queue_s for r in outputs) * 1e3:.3f}",
            "x-inference-time": f"{max(r.inference_s for r in outputs) * 1e3:.3f}",
        }

    if backend.task == "squad":

        @app.post("/v1/predict")
        async def predict_qa(body: QARequest, request: Request) -> JSONResponse:
            """The answer to each question in its context, with character offsets."""
            single = not isinstance(body.inputs, list)
            items = [body.inputs] if single else body.inputs
            if not items:
                return JSONResponse(
                    {"error": "inputs: the list is empty", "error_type": "validation"}, 422
                )
            check_count(len(items))
            rows, feats, examples = await asyncio.to_thread(
                backend.qa_rows, [x.question for x in items], [x.context for x in items]
            )
            outputs = await run_rows(rows, request) if rows else []
            answers = backend.qa_answers(feats, examples, outputs)
            return JSONResponse(answers[0] if single else answers, headers=timing(outputs))

    else:

        @app.post("/v1/predict")
        async def predict_ner(body: NERRequest, request: Request) -> JSONResponse:
            """The entities of each text: type, character offsets, text and score."""
            single = isinstance(body.inputs, str)
            texts = [body.inputs] if single else body.inputs
            if not texts:
                return JSONResponse(
                    {"error": "inputs: the list is empty", "error_type": "validation"}, 422
                )
            check_count(len(texts))
            rows, feats, spans = await asyncio.to_thread(backend.ner_rows, texts)
            outputs = await run_rows(rows, request)
            entities = backend.ner_entities(texts, feats, spans, outputs)
            return JSONResponse(entities[0] if single else entities, headers=timing(outputs))
