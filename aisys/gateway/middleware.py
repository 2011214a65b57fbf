"""Pure ASGI middlewares of the gateway: request ids + access log, body-size limit, CORS options.

Plain ASGI classes rather than ``BaseHTTPMiddleware``: they neither buffer
bodies nor run the app in a separate task, and exceptions pass through
unchanged.

- :class:`AccessLogMiddleware` gives each request an id (its sane
  ``X-Request-ID``, else a new one), echoes it, adds the headers the gateway
  left in the request state (``X-RateLimit-*``), and writes one JSON line per
  request to the ``aisys.gateway.access`` logger: method, path, status, ms,
  request id and the key's *name*. Never a key, never a header, never a query.
- :class:`BodySizeLimitMiddleware` answers 413 (JSON) when ``Content-Length``
  is too large, before the app runs, and stops a body without one as soon as
  the bytes streamed pass the limit.
- :func:`cors_options` restricts Starlette's ``CORSMiddleware`` to the
  configured origins.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any, Callable, Sequence

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aisys.gateway.errors import error_body

ACCESS_LOGGER_NAME = "aisys.gateway.access"
REQUEST_ID_HEADER = "x-request-id"
# Keys the gateway keeps in the request state (``request.state.<key>``).
STATE_REQUEST_ID = "request_id"  # the name aisys.gateway.errors reads too
STATE_KEY_NAME = "gateway_key_name"
STATE_RESPONSE_HEADERS = "gateway_response_headers"

# Ids we accept from callers: what uuids and common tracing ids look like,
# nothing that could break a log line or a header.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class GatewayError(StarletteHTTPException):
    """An HTTP error the gateway raises (401, 403, 413, 429, 503), with a stable ``code``.

    A Starlette ``HTTPException`` so FastAPI passes it through untouched, even
    when it is raised while the body is read.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        fields: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code
        self.fields = list(fields or [])  # [{"field": "path.user_id", "message": ...}]: what to blame


def gateway_error_response(exc: GatewayError, request_id: str | None) -> JSONResponse:
    """The one JSON error shape (``aisys.gateway.errors``) for a :class:`GatewayError`."""
    return JSONResponse(
        error_body(exc.code, str(exc.detail), request_id, getattr(exc, "fields", None)),
        status_code=exc.status_code,
        headers=exc.headers,
    )


def sane_request_id(value: str | None) -> str | None:
    """``value`` if it is an acceptable request id (1-128 of ``A-Za-z0-9._:-``), else None."""
    if value and _SANE_REQUEST_ID.match(value):
        return value
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return None


def enable_access_log(stream: Any = None) -> logging.Logger:
    """Print access-log lines as bare JSON to ``stream`` (stderr), once; return the logger.

    The lines stop there (``propagate = False``): a root handler with its own
    format (Ray workers have one) would print each line a second time, no
    longer as pure JSON. Library code never configures logging at import; a
    server calls this when it starts (``Gateway.from_config`` does).
    """
    access = logging.getLogger(ACCESS_LOGGER_NAME)
    if not any(getattr(h, "_aisys_access", False) for h in access.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._aisys_access = True  # type: ignore[attr-defined]
        access.addHandler(handler)
    access.propagate = False
    if access.level == logging.NOTSET:
        access.setLevel(logging.INFO)
    return access


class AccessLogMiddleware:
    """Request id in, request id out, gateway headers added, one JSON access-log line per request.

    The request's ``X-Request-ID`` header is rewritten to the chosen id, so
    everything downstream (the error handlers, Serve) sees the same one.
    ``echo_request_id=False`` leaves echoing to whoever already does it (Ray
    Serve's proxy always adds the header; a second copy would be a duplicate).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        echo_request_id: bool = True,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self.echo_request_id = echo_request_id
        self.logger = logger or logging.getLogger(ACCESS_LOGGER_NAME)
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        rid = sane_request_id(_header(scope, REQUEST_ID_HEADER.encode())) or uuid.uuid4().hex
        scope["headers"] = [(k, v) for k, v in scope.get("headers") or () if k != REQUEST_ID_HEADER.encode()]
        scope["headers"].append((REQUEST_ID_HEADER.encode(), rid.encode("ascii")))
        state = scope.setdefault("state", {})
        state[STATE_REQUEST_ID] = rid
        status = 500  # what the client gets if the app raises before answering

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if self.echo_request_id:
                    headers[REQUEST_ID_HEADER] = rid  # replaces, never duplicates
                for name, value in (state.get(STATE_RESPONSE_HEADERS) or {}).items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self._log(scope, status, self.clock() - started, rid, state.get(STATE_KEY_NAME))

    def _log(self, scope: Scope, status: int, seconds: float, rid: str, key_name: str | None) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        line = {
            "event": "access",
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": status,
            "ms": round(seconds * 1000.0, 3),
            "request_id": rid,
            "key": key_name,
        }
        self.logger.info(json.dumps(line, ensure_ascii=True, separators=(",", ":")))


class PayloadTooLarge(GatewayError):
    """The request body is larger than ``gateway.max_body_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            "payload_too_large",
            f"request body is larger than {limit} bytes (gateway.max_body_bytes)",
            headers={"Connection": "close"},
        )


class BodySizeLimitMiddleware:
    """413 for bodies over ``max_body_bytes``: by ``Content-Length`` up front, else while streaming.

    Hand-written rather than Starlette's ``RequestBodyLimitMiddleware``: that
    one answers in plain text, and with a too-large ``Content-Length`` still
    runs the endpoint until it reads the body or starts its response. The
    streamed case raises :class:`PayloadTooLarge` from ``receive``; FastAPI
    passes it to the gateway's JSON handler, and if nothing handled it this
    middleware answers. ``on_reject`` is called for each 413 sent here.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, on_reject: Callable[[], None] | None = None) -> None:
        if max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be >= 0, got {max_body_bytes}")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._reject(scope, send)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise PayloadTooLarge(self.max_body_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge:
            if response_started:
                raise
            await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        if self.on_reject is not None:
            self.on_reject()
        rid = (scope.get("state") or {}).get(STATE_REQUEST_ID)
        response = gateway_error_response(PayloadTooLarge(self.max_body_bytes), rid)

        async def no_body() -> Message:  # the rest of the body is never read
            return {"type": "http.disconnect"}

        await response(scope, no_body, send)


def _content_length(scope: Scope) -> int | None:
    raw = _header(scope, b"content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None  # not a number: fall back to counting what arrives


# Headers a browser may send, and may read from our responses.
CORS_ALLOW_HEADERS = ("Authorization", "X-API-Key", "Content-Type", "X-Request-ID")
CORS_EXPOSE_HEADERS = (
    "X-Request-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
)


def cors_options(origins: Sequence[str]) -> dict[str, Any]:
    """Keyword arguments for Starlette's ``CORSMiddleware``: only ``origins``, no cookies.

    Keys travel in headers, never cookies, so credentials stay off; an empty
    list refuses every cross-origin browser request.
    """
    return {
        "allow_origins": list(origins),
        "allow_methods": ["GET", "POST"],
        "allow_headers": list(CORS_ALLOW_HEADERS),
        "expose_headers": list(CORS_EXPOSE_HEADERS),
        "allow_credentials": False,
        "max_age": 600,
    }
