"""Error shapes shared by the routes: `{"error": message, "error_type": kind}` with a status."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An error answered as {"error", "error_type"} with an HTTP status."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.error_type, self.message, self.headers = (
            status,
            error_type,
            message,
            headers,
        )


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def error_response(
    status: int, message: str, error_type: str, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": message, "error_type": error_type}, status_code=status, headers=headers
    )


def unsupported(route: str, why: str) -> ApiError:
    """400 `unsupported`: this run cannot answer `route`."""
    return ApiError(400, "unsupported", f"{route}: {why}")


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client disconnects (the body was read already: the next message the
    server sends for this request is http.disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
