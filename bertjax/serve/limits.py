"""ASGI middleware in front of the routes: admission (429), payload size (413), metrics.

It runs before FastAPI parses anything, so that an overloaded server answers an excess
request at once and a 10 MB body is refused without being buffered. The body of an admitted
request is read here (up to the limit) and replayed to the app; later `receive` calls go to
the server, so a handler can still notice that its client has gone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bertjax.serve.metrics import ServerMetrics

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ROUTES = (
    "/v1/predict",
    "/v1/embed",
    "/v1/generate",
    "/v1/explain",
    "/",
    "/health",
    "/info",
    "/metrics",
    "/docs",
)


def error_body(error: str, error_type: str) -> bytes:
    return json.dumps({"error": error, "error_type": error_type}).encode()


async def send_error(
    send: Send, status: int, error: str, error_type: str, headers: dict[str, str] | None = None
) -> None:
    body = error_body(error, error_type)
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class LimitsMiddleware:
    """Admission control and size limits on /v1/* routes; request metrics on every route.

    Args:
      app: the ASGI app behind.
      metrics: where request counts and latencies go.
      max_concurrent_requests: /v1 requests admitted at once; beyond it 429 + Retry-After.
      max_payload_bytes: the largest request body; beyond it 413.
      is_accepting: () -> None when requests are accepted, else the reason (loading, stopping),
        answered with 503.
    """

    def __init__(
        self,
        app: Callable,
        metrics: ServerMetrics,
        *,
        max_concurrent_requests: int,
        max_payload_bytes: int,
        is_accepting: Callable[[], str | None],
    ):
        self.app = app
        self.metrics = metrics
        self.max_concurrent_requests = max_concurrent_requests
        self.max_payload_bytes = max_payload_bytes
        self.is_accepting = is_accepting
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else "other"
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if path.startswith("/v1/"):
                await self._limited(scope, receive, send_and_record)
            else:
                await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = self.is_accepting()
        if reason is not None:
            await send_error(send, 503, reason, "unavailable", {"retry-after": "1"})
            return
        if self.in_flight >= self.max_concurrent_requests:
            await send_error(
                send,
                429,
                f"the server is at its limit of {self.max_concurrent_requests} concurrent "
                "requests; retry later",
                "overloaded",
                {"retry-after": "1"},
            )
            return
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            body = await self._read_body(scope, receive, send)
            if body is None:
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None after answering 413 (too large) / nothing (client gone)."""
        limit = self.max_payload_bytes
        too_large = f"the request body exceeds the limit of {limit} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await send_error(send, 413, too_large, "payload_too_large")
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_error(send, 413, too_large, "payload_too_large")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
