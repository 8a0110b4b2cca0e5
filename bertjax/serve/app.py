"""The FastAPI app: routes, error shapes, start-up (compile every bucket, warm up) and shutdown.

    app = create_app(backend, ServerSettings(max_batch_tokens=4096))
    uvicorn.run(app, host="127.0.0.1", port=8080)

Every error is `{"error": message, "error_type": kind}` with kind one of `validation` (422),
`payload_too_large` / `too_many_inputs` / `input_too_long` (413), `overloaded` (429, with
Retry-After), `unavailable` (503: loading or stopping), `timeout` (504), `not_found`,
`method_not_allowed`, `unsupported` (400: the run cannot answer that route), `internal` (500).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bertjax.serve import generate_api, results, spans
from bertjax.serve.backend import EncoderBackend, InputTooLong, Row
from bertjax.serve.batcher import Batcher, RowResult
from bertjax.serve.buckets import BucketGrid
from bertjax.serve.errors import (
    ApiError,
    ClientGone,
    error_response,
    unsupported,
    wait_for_disconnect,
)
from bertjax.serve.generation import GenerateOptions, GenerationBackend, GenerationWorker
from bertjax.serve.limits import LimitsMiddleware
from bertjax.serve.metrics import ServerMetrics
from bertjax.serve.row_packing import PackedGrid
from bertjax.serve.schemas import EmbedRequest, PredictRequest, as_rows
from bertjax.serve.spans import SpanBackend

log = logging.getLogger("bertjax.serve")


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Batching and admission limits (the flags of `python -m bertjax.serve`)."""

    max_batch_tokens: int = 4096
    max_batch_size: int = 32
    max_wait_ms: float = 0.0
    min_bucket_length: int = 16
    max_concurrent_requests: int = 512
    max_client_batch_size: int = 32
    max_payload_bytes: int = 1_000_000
    request_timeout_s: float = 30.0
    # Classifiers and encoders: several inputs share a token row (bertjax.serve.row_packing)
    # instead of one padded row each. Runs with per-token outputs (QA, NER) always pad.
    pack_rows: bool = True

    def grid(self, backend: EncoderBackend) -> BucketGrid | PackedGrid:
        """The shapes `backend` is compiled for: packed where it can and `pack_rows` asks."""
        kind = PackedGrid if self.pack_rows and backend.can_pack_rows else BucketGrid
        return kind.build(
            max_seq_length=backend.max_seq_length,
            max_batch_size=self.max_batch_size,
            max_batch_tokens=self.max_batch_tokens,
            min_length=self.min_bucket_length,
        )


class ServerState:
    """What the routes share: the backend, the batcher, metrics and the readiness flags."""

    def __init__(self, backend: EncoderBackend | GenerationBackend, settings: ServerSettings):
        self.backend = backend
        self.settings = settings
        self.metrics = ServerMetrics()
        # A GPT run generates on its own worker (token by token); the others batch rows.
        self.generator = isinstance(backend, GenerationBackend)
        self.grid: BucketGrid | PackedGrid | None = None
        self.batcher: Batcher | None = None
        self.worker: GenerationWorker | None = None
        if self.generator:
            self.worker = GenerationWorker()
        else:
            self.grid = settings.grid(backend)
            self.batcher = Batcher(
                backend.run,
                self.grid,
                max_wait_ms=settings.max_wait_ms,
                on_batch=self.metrics.observe_batch,
            )
        self.ready = False
        self.stopping = False
        self.failure: str | None = None
        self.startup_s: float | None = None

    def not_accepting(self) -> str | None:
        """None when /v1 requests are accepted, else why not."""
        if self.failure is not None:
            return f"start-up failed: {self.failure}"
        if self.stopping:
            return "the server is shutting down"
        if not self.ready:
            return "the model is still compiling; see /health"
        return None

    async def warm_up(self) -> None:
        """Compiles every shape (on a thread: the event loop keeps answering /health with
        503), then runs one request through the batcher or a generation through the worker;
        only then is the server ready."""
        started = time.perf_counter()
        try:
            if self.generator:
                compiled = await self._warm_up_generator()
            else:
                compiled = await self._warm_up_encoder()
        except Exception as e:  # noqa: BLE001 - reported by /health and logged
            log.exception("start-up failed")
            self.failure = f"{type(e).__name__}: {e}"
            return
        self.startup_s = time.perf_counter() - started
        self.ready = True
        log.info("ready: %d shapes compiled in %.1fs", compiled, self.startup_s)

    async def _warm_up_encoder(self) -> int:
        shapes = self.grid.shapes()
        examples = self.grid.max_examples if isinstance(self.grid, PackedGrid) else None
        await asyncio.to_thread(self.backend.compile, shapes, examples=examples)
        # Run every bucket once: an executable's first run pays one-off costs (on
        # XLA:CPU several times a later run's) that must not land on a request.
        await asyncio.to_thread(self.backend.warm_up, shapes, examples=examples)
        rows = await asyncio.to_thread(
            self.backend.featurize, ["warm-up request"], None, truncate=True
        )
        await asyncio.gather(*self.batcher.submit(rows))
        return len(shapes)

    async def _warm_up_generator(self) -> int:
        # Every prefill width and the step, each run once, then a generation on the worker.
        backend = self.backend
        await asyncio.to_thread(backend.compile)
        await asyncio.to_thread(backend.warm_up)
        prompt = await asyncio.to_thread(backend.encode_prompt, "warm-up request")
        session = backend.session(prompt, GenerateOptions(max_new_tokens=2, temperature=0.0))
        while session.finish_reason is None:
            await self.worker.run(session.advance)
        return len(backend.decoder.shapes.prompt_widths) + 1

    @property
    def queue_depth(self) -> int:
        """Rows waiting for a batch, or generations in progress."""
        return self.worker.active if self.generator else self.batcher.queue_depth

    async def infer(self, rows: Sequence[Row], request: Request) -> list[RowResult]:
        """Runs rows through the batcher; drops them if the client goes or the time runs out."""
        futures = self.batcher.submit(rows)
        gathered = asyncio.gather(*futures)
        watcher = asyncio.ensure_future(wait_for_disconnect(request))
        try:
            done, _ = await asyncio.wait(
                {gathered, watcher},
                timeout=self.settings.request_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if gathered in done:
                return gathered.result()
            for future in futures:  # the batcher skips cancelled rows not yet batched
                future.cancel()
            if watcher in done:
                raise ClientGone
            raise ApiError(
                504,
                "timeout",
                f"no answer within the request timeout of {self.settings.request_timeout_s}s",
            )
        finally:
            watcher.cancel()


def _timing_headers(row_results: Sequence[RowResult]) -> dict[str, str]:
    queue_s = max(r.queue_s for r in row_results)
    inference_s = max(r.inference_s for r in row_results)
    return {"x-queue-time": f"{queue_s * 1e3:.3f}", "x-inference-time": f"{inference_s * 1e3:.3f}"}


def create_app(
    backend: EncoderBackend | GenerationBackend,
    settings: ServerSettings | None = None,
    *,
    ready_before_serving: bool = False,
) -> LimitedApp:
    """The app serving `backend`; it compiles and warms up in the background once started.

    ready_before_serving: finish compiling and warming up inside the ASGI lifespan start-up
    instead (for hosts such as Ray Serve that route traffic to a replica once it has started).
    """
    settings = settings or ServerSettings()
    state = ServerState(backend, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if state.batcher is not None:
            state.batcher.start()
        else:
            state.worker.start()
        warm_up = asyncio.create_task(state.warm_up())
        if ready_before_serving:
            await warm_up
            if state.failure is not None:
                raise RuntimeError(f"bertjax.serve start-up failed: {state.failure}")
        try:
            yield
        finally:
            # uvicorn calls this after the in-flight requests have been answered (SIGTERM).
            state.stopping = True
            warm_up.cancel()
            if state.batcher is not None:
                await state.batcher.stop()
            else:
                await state.worker.stop()

    app = FastAPI(
        title="bertjax prediction service",
        description="A fine-tuned bertjax run behind HTTP, with dynamic batching.",
        lifespan=lifespan,
    )
    app.state.server = state

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.message, e.error_type, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = []
        for err in e.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, "; ".join(problems), "validation")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
        return error_response(e.status_code, str(e.detail), kinds.get(e.status_code, "http_error"))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return error_response(500, f"{type(e).__name__}: {e}", "internal")

    @app.get("/health")
    async def health() -> Response:
        """200 once every bucket is compiled and a warm-up request has passed; 503 before."""
        reason = state.not_accepting()
        if reason is not None:
            return error_response(503, reason, "unavailable")
        return JSONResponse({"status": "ok"})

    @app.get("/info")
    async def info() -> JSONResponse:
        """The model, its labels, the server's limits and the compiled buckets."""
        return JSONResponse(
            {
                "model": backend.info(),
                "limits": dataclasses.asdict(settings),
                "buckets": None if state.grid is None else state.grid.to_dict(),
                "ready": state.ready,
                "startup_seconds": state.startup_s,
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format."""
        state.metrics.queue_depth.set(state.queue_depth)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    def _check_count(count: int) -> None:
        if count > settings.max_client_batch_size:
            raise ApiError(
                413,
                "too_many_inputs",
                f"{count} inputs in one request; the limit is {settings.max_client_batch_size}",
            )

    async def _featurize(
        texts: list[str], pairs: list[str | None] | None, truncate: bool
    ) -> list[Row]:
        _check_count(len(texts))
        try:
            # Off the event loop: tokenising a large batch must not stall other requests.
            return await asyncio.to_thread(backend.featurize, texts, pairs, truncate=truncate)
        except InputTooLong as e:
            raise ApiError(413, "input_too_long", str(e)) from e

    async def _run(rows: list[Row], request: Request) -> list[RowResult]:
        try:
            outputs = await state.infer(rows, request)
        except ClientGone:
            raise ApiError(499, "client_closed", "the client closed the connection") from None
        state.metrics.queue_time.observe(max(r.queue_s for r in outputs))
        state.metrics.inference_time.observe(max(r.inference_s for r in outputs))
        return outputs

    if state.generator:
        generate_api.add_routes(app, backend, state.worker, state)
        _add_unsupported(app, "/v1/predict", "this is a GPT (causal_lm) run; use /v1/generate")
        _add_unsupported(app, "/v1/embed", "this is a GPT (causal_lm) run; use /v1/generate")
        return LimitedApp(app, state)

    _add_unsupported(
        app, "/v1/generate", f"this is a {backend.info().get('task') or 'BERT'} run, not a GPT "
        "(causal_lm) run; generation needs a GPT run"
    )  # fmt: skip
    if isinstance(backend, SpanBackend):
        spans.add_routes(app, backend, _check_count, _run)
    else:

        @app.post("/v1/predict")
        async def predict(body: PredictRequest, request: Request) -> JSONResponse:
            """Label scores of each input, best first (TEI's /predict shape)."""
            if not backend.has_classifier:
                raise unsupported(
                    "/v1/predict", "this run has no classification head; use /v1/embed"
                )
            try:
                texts, pairs, single = as_rows(body.inputs)
            except ValueError as e:
                raise ApiError(422, "validation", str(e)) from e
            rows = await _featurize(texts, pairs, body.truncate)
            outputs = await _run(rows, request)
            scores = [
                results.label_scores(
                    r.outputs["logits"],
                    problem_type=backend.problem_type,
                    label_names=backend.label_names,
                    top_k=body.top_k,
                    raw_scores=body.raw_scores,
                )
                for r in outputs
            ]
            return JSONResponse(scores[0] if single else scores, headers=_timing_headers(outputs))

    @app.post("/v1/embed")
    async def embed(body: EmbedRequest, request: Request) -> JSONResponse:
        """One vector per input: mean-pooled, [CLS] or pooler output, optionally normalised."""
        if body.pooling not in backend.poolings:
            raise ApiError(
                422,
                "validation",
                f"pooling: {body.pooling!r} is not available for this model; "
                f"choose one of {backend.poolings}",
            )
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        if not texts:
            raise ApiError(422, "validation", "inputs: the list is empty")
        rows = await _featurize(texts, None, body.truncate)
        outputs = await _run(rows, request)
        key = {"pooler": "pooled"}.get(body.pooling, body.pooling)
        vectors = [results.embedding(r.outputs[key], normalize=body.normalize) for r in outputs]
        return JSONResponse(vectors, headers=_timing_headers(outputs))

    # The try-it page (GET /) and POST /v1/explain: attributions and attention maps.
    from bertjax.explain import page as explain_page

    explain_page.add_routes(app, backend)
    return LimitedApp(app, state)


def _add_unsupported(app: FastAPI, route: str, why: str) -> None:
    """POST `route` answers 400 `unsupported` (whatever the body) for this run."""

    async def handler() -> None:
        raise unsupported(route, why)

    handler.__doc__ = f"Not served for this run: {why}."
    app.add_api_route(route, handler, methods=["POST"], name=route.strip("/").replace("/", "_"))


class LimitedApp:
    """The FastAPI app behind `LimitsMiddleware` (admission, size limits, request metrics).

    `.app` is the FastAPI app, `.state` the `ServerState`.
    """

    def __init__(self, app: FastAPI, state: ServerState):
        self.app = app
        self.state = state
        self._asgi = LimitsMiddleware(
            app,
            state.metrics,
            max_concurrent_requests=state.settings.max_concurrent_requests,
            max_payload_bytes=state.settings.max_payload_bytes,
            is_accepting=state.not_accepting,
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self._asgi(scope, receive, send)
