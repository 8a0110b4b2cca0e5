"""POST /v1/generate: a GPT run's continuation as JSON, or token by token as server-sent events.

    {"prompt": "Once upon a time", "max_new_tokens": 40, "temperature": 0.8, "top_p": 0.95,
     "seed": 1, "stop": ["\\n\\n"], "banned_words": ["dragon"], "stream": false}

JSON answer: {"generated_text", "finish_reason": "length" | "eos" | "stop", "generated_tokens",
"prompt_tokens", "token_ids", "seed"} with x-queue-time / x-inference-time headers (ms, summed
over the request's steps). With "stream": true, `text/event-stream`: one `data: {"index",
"token_id", "text"}` event per token ("text" is the newly released text, "" while it may be the
start of a stop string), then `data: {"finish_reason", "generated_text", "generated_tokens",
"seed", "text"}` (any text held back until the end), then `data: [DONE]`. An error after the
stream started is a `data: {"error", "error_type"}` event that ends it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from bertjax.serve.errors import ApiError, ClientGone, wait_for_disconnect
from bertjax.serve.generation import (
    GenerateOptions,
    GenerationBackend,
    GenerationSession,
    GenerationWorker,
    PromptTooLong,
)
from bertjax.serve.schemas import GenerateRequest


def sse(data: Any) -> bytes:
    """One server-sent event carrying `data` (JSON, or a plain string such as [DONE])."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


def add_routes(
    app: FastAPI, backend: GenerationBackend, worker: GenerationWorker, state: Any
) -> None:
    """Adds POST /v1/generate for `backend`; `state` has `settings` and `metrics`."""

    async def start(body: GenerateRequest) -> GenerationSession:
        try:
            # Tokenising off the event loop, as /v1/predict does.
            prompt = await asyncio.to_thread(backend.encode_prompt, body.prompt)
            options = GenerateOptions(
                max_new_tokens=body.max_new_tokens or min(32, backend.max_new_tokens),
                temperature=body.temperature,
                top_k=body.top_k,
                top_p=body.top_p,
                seed=secrets.randbelow(2**31) if body.seed is None else body.seed,
                stop=tuple(body.stop),
                banned=backend.banned_sequences(body.banned_words),
            )
            return backend.session(prompt, options)
        except PromptTooLong as e:
            raise ApiError(413, "input_too_long", str(e)) from e
        except ValueError as e:  # the message starts with the field's name
            raise ApiError(422, "validation", str(e)) from e

    async def advance(session: GenerationSession, waited: list[float]) -> Any:
        event, queued = await worker.run(session.advance)
        waited.append(queued)
        return event

    def finished(session: GenerationSession, started: float, waited: list[float]) -> None:
        metrics = state.metrics
        metrics.generated_tokens.inc(len(session.tokens))
        metrics.queue_time.observe(sum(waited))
        metrics.inference_time.observe(session.inference_s)
        metrics.generations.labels(session.finish_reason).inc()

    @app.post("/v1/generate")
    async def generate(body: GenerateRequest, request: Request) -> Any:
        """Continue the prompt (JSON, or server-sent events with "stream": true)."""
        session = await start(body)
        started = time.perf_counter()
        timeout = state.settings.request_timeout_s
        deadline = started + timeout
        if body.stream:
            return StreamingResponse(
                _stream(session, started, deadline, timeout),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        waited: list[float] = []
        watcher = asyncio.ensure_future(wait_for_disconnect(request))
        worker.active += 1
        try:
            while session.finish_reason is None:
                if watcher.done():
                    raise ClientGone
                if time.perf_counter() > deadline:
                    raise ApiError(
                        504, "timeout",
                        f"no answer within the request timeout of {timeout}s",
                    )  # fmt: skip
                await advance(session, waited)
        except ClientGone:
            raise ApiError(499, "client_closed", "the client closed the connection") from None
        finally:
            worker.active -= 1
            watcher.cancel()
            session.close()
        finished(session, started, waited)
        headers = {
            "x-queue-time": f"{sum(waited) * 1e3:.3f}",
            "x-inference-time": f"{session.inference_s * 1e3:.3f}",
        }
        return JSONResponse(session.result(), headers=headers)

    async def _stream(
        session: GenerationSession, started: float, deadline: float, timeout: float
    ) -> AsyncIterator[bytes]:
        # A client that disconnects makes starlette cancel this generator (or the next send
        # fail): the session is then never advanced again and its cache is freed.
        waited: list[float] = []
        worker.active += 1
        try:
            while True:
                if time.perf_counter() > deadline:
                    message = f"the request timeout of {timeout}s passed"
                    yield sse({"error": message, "error_type": "timeout"})
                    return
                try:
                    event = await advance(session, waited)
                except Exception as e:  # noqa: BLE001 - the status line has been sent
                    yield sse({"error": f"{type(e).__name__}: {e}", "error_type": "internal"})
                    return
                if event.finish_reason is None:
                    yield sse(
                        {"index": len(session.tokens) - 1, "token_id": event.token_id,
                         "text": event.text}
                    )  # fmt: skip
                    continue
                finished(session, started, waited)
                result = session.result()
                yield sse(
                    {"index": len(session.tokens) - 1, "token_id": event.token_id,
                     "text": event.text, "finish_reason": event.finish_reason,
                     "generated_text": result["generated_text"],
                     "generated_tokens": result["generated_tokens"], "seed": result["seed"]}
                )  # fmt: skip
                yield sse("[DONE]")
                return
        finally:
            worker.active -= 1
            session.close()
