"""One JSON shape for every HTTP error the API returns.

Every error body looks the same, whatever went wrong, so a client needs one
parser::

    {
      "error": {
        "code": "validation_error",
        "message": "request validation failed: query.k: Input should be greater than or equal to 1",
        "fields": [{"field": "query.k", "message": "Input should be greater than or equal to 1"}]
      },
      "request_id": "5b0c…"
    }

``fields`` is always present (empty when no field is to blame). ``request_id``
is the request's ``X-Request-ID`` header (Ray Serve's proxy sets one and logs
it) or, when there is none, a generated id that is also sent back as the
``X-Request-ID`` response header, so logs and clients can meet.
Unexpected exceptions become a 500 with a generic message: tracebacks go to the
server log, never into the body.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"

# Stable machine-readable codes for the HTTP statuses the API produces.
_STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


def error_body(
    code: str, message: str, request_id: str | None, fields: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """Build the one error body shape (see the module docstring)."""
    return {
        "error": {"code": code, "message": message, "fields": list(fields or [])},
        "request_id": request_id,
    }


def code_for_status(status: int) -> str:
    """The stable error code for an HTTP status (``http_<status>`` when unnamed)."""
    return _STATUS_CODES.get(status, f"http_{status}")


def request_id_of(request: Request) -> str:
    """The id :class:`RequestIdMiddleware` gave this request (or a fresh one)."""
    rid = getattr(request.state, "request_id", None)
    return rid if isinstance(rid, str) else uuid.uuid4().hex


def validation_fields(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Turn pydantic/FastAPI error entries into ``[{field, message}]``.

    ``field`` is the dotted location (``body.event_type``, ``query.k``); an
    unknown key is reported under its own name with "unknown field". The input
    value is deliberately left out: it may be large or sensitive.
    """
    fields = []
    for item in errors:
        loc = ".".join(str(part) for part in item.get("loc", ())) or "request"
        message = "unknown field" if item.get("type") == "extra_forbidden" else str(item.get("msg", "invalid"))
        fields.append({"field": loc, "message": message})
    return fields


class RequestIdMiddleware:
    """Give every HTTP request an id (its ``X-Request-ID`` header, or a new uuid returned in that header).

    A plain ASGI middleware rather than ``BaseHTTPMiddleware``: it neither
    buffers bodies nor interferes with exception propagation.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.encode())
        if incoming:
            # Bound what we keep: the header is caller-controlled. Whoever set it
            # (the caller, or Serve's proxy, which also echoes it) already has it,
            # so it is not added to the response again.
            scope.setdefault("state", {})["request_id"] = incoming.decode("latin-1")[:128]
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in headers:
                    headers.append(REQUEST_ID_HEADER, rid)
            await send(message)

        await self.app(scope, receive, send_with_id)


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    fields = validation_fields(list(exc.errors()))
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    body = error_body("validation_error", f"request validation failed: {summary}", request_id_of(request), fields)
    return JSONResponse(body, status_code=422)


async def _on_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route matches {request.method} {request.url.path}"
    elif exc.status_code == 405 and message == "Method Not Allowed":
        message = f"method {request.method} is not allowed on {request.url.path}"
    body = error_body(code_for_status(exc.status_code), message, request_id_of(request))
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id_of(request)
    logger.exception("unhandled error in %s %s (request_id=%s)", request.method, request.url.path, rid)
    body = error_body("internal_error", "internal server error; the server log has details", rid)
    return JSONResponse(body, status_code=500, headers={REQUEST_ID_HEADER: rid})


def install_error_handlers(app: FastAPI) -> None:
    """Make every error ``app`` returns use the one JSON shape, and tag requests with ids."""
    app.add_middleware(RequestIdMiddleware)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)
