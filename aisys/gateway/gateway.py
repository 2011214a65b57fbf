"""The API gateway inside the FastAPI ingress: keys and scopes, per-key rate limits, cache, limits, logs.

Usage (what the serving app does)::

    gateway = Gateway.from_config(cfg)        # FileKeyStore + RayRateLimiter (+ cache if ttl > 0)
    app = build_fastapi_app(...)
    gateway.install(app)                      # middlewares + JSON handlers for 401/403/413/429/503
    @router.get("/recommendations/{user_id}")
    async def recs(principal: Annotated[Principal, Depends(gateway.require("recommend"))]): ...

A key comes in ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; a
shopper session token (``st_...``, :mod:`aisys.gateway.shopper`) comes in
``Authorization: Bearer <token>`` and yields a principal bound to one user id
with only ``storefront``/``recommend``/``events``, limited per session and per
client address. Missing, unknown, expired or revoked (``gateway.revocations``):
401. Known but without the scope: 403. Over its token
bucket: 429 with ``Retry-After``; every request that passed the limiter also
gets ``X-RateLimit-Limit/Remaining/Reset``. Keys holding the ``storefront``
scope (and not ``admin``) get the tighter storefront limits; a key's own
``rate_limit_per_s``/``rate_limit_burst`` override both. With
``gateway.auth: false`` every request is an anonymous admin and nothing is
limited: local development only.
"""

# No `from __future__ import annotations`: FastAPI evaluates the dependency's
# parameter annotations at run time.
import collections
import logging
import sys
from dataclasses import dataclass
from typing import Annotated, Callable, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.middleware.cors import CORSMiddleware

from aisys.config import AppConfig
from aisys.gateway.cache import ResponseCache
from aisys.gateway.keys import SCOPES, FileKeyStore, KeyRecord, KeyStore, granted_scopes, keys_file_path
from aisys.gateway.middleware import (
    ACCESS_LOGGER_NAME,
    STATE_KEY_NAME,
    STATE_RESPONSE_HEADERS,
    AccessLogMiddleware,
    BodySizeLimitMiddleware,
    GatewayError,
    cors_options,
    enable_access_log,
    gateway_error_response,
)
from aisys.gateway.ratelimit import Decision, InMemoryRateLimiter, RateLimiter
from aisys.gateway.revocations import RevocationList
from aisys.gateway.shopper import InvalidToken, ShopperSession, ShopperTokens, is_shopper_token
from aisys.gateway.errors import request_id_of

logger = logging.getLogger(__name__)

# auto_error=False: a missing key is our 401 in our JSON shape, not FastAPI's.
# Declared as security schemes, so the OpenAPI names them on every guarded route.
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <api key>`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <api key>`")

BearerDep = Annotated[Optional[HTTPAuthorizationCredentials], Depends(_bearer)]
ApiKeyDep = Annotated[Optional[str], Depends(_api_key_header)]


# What a shopper session may do: browse, see its own recommendations, report its own events.
SHOPPER_SCOPES = frozenset({"storefront", "recommend", "events"})


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name, every scope it grants, and its public id.

    ``user_id`` is set for a shopper session: the one user it may act for
    (``None``: a server-to-server key, which may name any user).
    ``session_id`` is the shopper session's public id.
    """

    name: str
    scopes: frozenset
    key_id: str = ""
    user_id: Optional[str] = None
    session_id: Optional[str] = None

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def may_act_for(self, user_id: str) -> bool:
        """Whether this caller may read or write ``user_id``'s data."""
        return self.user_id is None or self.user_id == user_id

    @property
    def sender(self) -> str:
        """What the event log records as the sender: ``key:<key_id>``, ``session:<sid>`` or ``anonymous``."""
        if self.session_id is not None:
            return f"session:{self.session_id}"
        return f"key:{self.key_id}" if self.key_id else "anonymous"


ANONYMOUS = Principal(name="anonymous", scopes=frozenset(SCOPES), key_id="")


def shopper_principal(session: ShopperSession) -> Principal:
    """The principal a valid shopper token yields: shopper scopes, bound to the token's user."""
    return Principal(name=f"shopper:{session.sid}", scopes=SHOPPER_SCOPES, key_id="",
                     user_id=session.user_id, session_id=session.sid)

Listener = Callable[[str, Optional[str]], None]


def _in_serve_replica() -> bool:
    """Whether this runs inside a Ray Serve replica (whose proxy already echoes X-Request-ID)."""
    if "ray.serve" not in sys.modules:  # never import Ray just to ask
        return False
    try:
        from ray import serve

        serve.get_replica_context()
        return True
    except Exception:
        return False


class Gateway:
    """Authentication, scopes, rate limits and the response cache for one FastAPI app.

    ``counts`` holds how many requests were refused, by error code
    (``unauthorized``, ``forbidden``, ``too_many_requests``,
    ``payload_too_large``, ``rate_limiter_unavailable``) plus
    ``rate_limiter_degraded`` (served while the limiter was unreachable);
    each listener in ``listeners`` is called with ``(code, key_name)``.
    ``cache`` (hits, misses, ``on_hit``/``on_miss``) is for the routes to use.
    """

    def __init__(
        self,
        cfg: AppConfig,
        keys: KeyStore,
        limiter: RateLimiter,
        cache: Optional[ResponseCache] = None,
        tokens: Optional[ShopperTokens] = None,
        revocations: Optional[RevocationList] = None,
    ) -> None:
        self.cfg = cfg
        self.settings = cfg.gateway
        self.keys = keys
        self.limiter = limiter
        self.cache = cache
        # Without a signer no shopper token is accepted, and POST /shop/session answers 503.
        self.tokens = tokens
        # Sessions ended before they expire (aisys.gateway.revocations); None: no session can be revoked early.
        self.revocations = revocations
        self.counts: collections.Counter = collections.Counter()
        self.listeners: list[Listener] = []

    @classmethod
    def from_config(cls, cfg: AppConfig) -> "Gateway":
        """The gateway ``cfg.gateway`` describes: key file, shared limiter actor (or per-process), cache."""
        keys = FileKeyStore(keys_file_path(cfg), reload_every_s=cfg.gateway.keys_reload_s)
        limiter: RateLimiter
        if cfg.gateway.rate_limit_backend == "actor" and cfg.gateway.auth:
            import ray

            from aisys.gateway.ratelimit import RayRateLimiter

            ray_limiter = RayRateLimiter.from_config(cfg)
            if ray.is_initialized():  # in a replica: start the shared actor now, not on the first request
                ray_limiter.connect()
            limiter = ray_limiter
        else:
            limiter = InMemoryRateLimiter()
        if not cfg.gateway.auth:
            logger.warning("gateway.auth is false: every request is served without a key (local development only)")
        if cfg.serve.access_log:
            enable_access_log()
        else:  # the demo and benchmarks turn per-request lines off, like Serve's own access log
            logging.getLogger(ACCESS_LOGGER_NAME).setLevel(logging.WARNING)
        from aisys.gateway.revocations import revocations_from_config
        from aisys.gateway.shopper import shopper_tokens_from_config

        # An unusable secret file raises here: a replica must not start unable to check sessions.
        revocations = revocations_from_config(cfg)
        revocations.entries()  # likewise an unreadable revocation list: fail now, not on a shopper's request
        return cls(cfg, keys, limiter, ResponseCache.from_config(cfg), shopper_tokens_from_config(cfg), revocations)

    # ------------------------------------------------------------------ counters

    @property
    def rate_limited(self) -> int:
        """Requests refused with 429 so far."""
        return self.counts["too_many_requests"]

    def _count(self, code: str, key_name: Optional[str] = None) -> None:
        self.counts[code] += 1
        for listener in self.listeners:
            listener(code, key_name)

    # ------------------------------------------------------------------ wiring

    def install(self, app: FastAPI, *, echo_request_id: Optional[bool] = None) -> None:
        """Add the gateway's middlewares and JSON error handler to ``app`` (before it starts).

        Outermost first: access log + request id, CORS, body-size limit, then
        the app. ``echo_request_id`` defaults to "not inside a Serve replica"
        (Serve's proxy echoes the id itself).
        """
        if getattr(app.state, "gateway", None) is not None:
            raise RuntimeError("a gateway is already installed on this app (install() once, before it starts)")
        if echo_request_id is None:
            echo_request_id = not _in_serve_replica()
        app.add_exception_handler(GatewayError, self._on_gateway_error)
        # add_middleware puts each new one outside the previous ones.
        app.add_middleware(
            BodySizeLimitMiddleware,
            max_body_bytes=self.settings.max_body_bytes,
            on_reject=lambda: self._count("payload_too_large"),
        )
        app.add_middleware(CORSMiddleware, **cors_options(self.settings.cors_origins))
        app.add_middleware(AccessLogMiddleware, echo_request_id=echo_request_id)
        app.state.gateway = self

    async def _on_gateway_error(self, request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        if exc.code == "payload_too_large":  # the others are counted where they are raised
            self._count(exc.code)
        return gateway_error_response(exc, request_id_of(request))

    def limits_for(self, record: KeyRecord) -> tuple[float, int]:
        """``(rate per second, burst)`` for a key: its override, else storefront or default limits."""
        g = self.settings
        if "storefront" in record.scopes and "admin" not in record.scopes:
            rate, burst = g.storefront_rate_limit_per_s, g.storefront_rate_limit_burst
        else:
            rate, burst = g.rate_limit_per_s, g.rate_limit_burst
        return (
            record.rate_limit_per_s if record.rate_limit_per_s is not None else rate,
            record.rate_limit_burst if record.rate_limit_burst is not None else burst,
        )

    # ------------------------------------------------------------------ the dependency

    def require(self, scope: str) -> Callable:
        """A FastAPI dependency: a valid key with ``scope``, within its rate limit; returns the :class:`Principal`."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; known scopes: {', '.join(SCOPES)}")

        async def require_scope(request: Request, bearer: BearerDep, api_key: ApiKeyDep) -> Principal:
            return await self.authorize(request, scope, bearer.credentials if bearer else None, api_key)

        require_scope.__name__ = f"require_{scope}"
        return require_scope

    async def authorize(
        self, request: Request, scope: str, bearer_key: Optional[str], header_key: Optional[str]
    ) -> Principal:
        """Check a presented key for ``scope`` and take a token; raise :class:`GatewayError` otherwise."""
        if not self.settings.auth:
            setattr(request.state, STATE_KEY_NAME, ANONYMOUS.name)
            return ANONYMOUS
        presented = bearer_key or header_key
        if not presented:
            self._count("unauthorized")
            raise GatewayError(
                401,
                "unauthorized",
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if is_shopper_token(presented):
            return await self._authorize_shopper(request, scope, presented)
        record = self.keys.lookup(presented)
        if record is None:
            self._count("unauthorized")
            raise GatewayError(
                401, "unauthorized", "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"}
            )
        principal = Principal(name=record.name, scopes=granted_scopes(record.scopes), key_id=record.key_id)
        setattr(request.state, STATE_KEY_NAME, record.name)
        if not principal.has(scope):
            self._count("forbidden", record.name)
            raise GatewayError(
                403,
                "forbidden",
                f"key {record.name!r} lacks scope {scope!r} (it has: {', '.join(record.scopes)})",
            )
        rate, burst = self.limits_for(record)
        await self.take(request, record.key_id, rate, burst, f"key {record.name!r}", record.name)
        return principal

    def verify_shopper(self, token: str) -> ShopperSession:
        """The session a shopper token proves; a 401 :class:`GatewayError` when it is invalid, expired or revoked."""
        if self.tokens is None:
            self._count("unauthorized")
            raise GatewayError(401, "unauthorized", "shopper sessions are not enabled on this server",
                               headers={"WWW-Authenticate": "Bearer"})
        try:
            session = self.tokens.verify(token)
        except InvalidToken as err:
            self._count("unauthorized")
            raise GatewayError(401, "unauthorized", str(err), headers={"WWW-Authenticate": "Bearer"}) from None
        # Checked after the signature, so only a genuine token costs a lookup (a dict read; the file is re-read
        # at most every keys_reload_s). A revoked session cannot renew itself either: renewal verifies here.
        if self.revocations is not None and self.revocations.is_revoked(session.sid):
            self._count("unauthorized", f"shopper:{session.sid}")
            raise GatewayError(401, "unauthorized", "revoked shopper session: ask POST /shop/session for a new one",
                               headers={"WWW-Authenticate": "Bearer"})
        return session

    async def _authorize_shopper(self, request: Request, scope: str, token: str) -> Principal:
        principal = shopper_principal(self.verify_shopper(token))
        setattr(request.state, STATE_KEY_NAME, principal.name)
        if not principal.has(scope):
            self._count("forbidden", principal.name)
            raise GatewayError(403, "forbidden", f"a shopper session lacks scope {scope!r}")
        # Any route with a {user_id} in its path (the API's and the shop's recommendation routes, and any
        # added later) is bound here, before a handler runs: a session reads only its own user.
        path_user = request.path_params.get("user_id")
        if path_user is not None and not principal.may_act_for(str(path_user)):
            self._count("forbidden", principal.name)
            raise GatewayError(403, "forbidden",
                               "a shopper session may only read and write its own user's data "
                               "(path.user_id is not this session's user)",
                               fields=[{"field": "path.user_id", "message": "not this session's user"}])
        g = self.settings
        # The address bucket first: one client minting many sessions is still limited as one client;
        # the session bucket then keeps one shopper from spending what the other shoppers of an address get.
        await self.take(request, f"addr:{self.client_address(request)}", g.address_rate_limit_per_s,
                        g.address_rate_limit_burst, "your network address", principal.name)
        await self.take(request, f"session:{principal.session_id}", g.shopper_rate_limit_per_s,
                        g.shopper_rate_limit_burst, "this shopper session", principal.name)
        return principal

    def client_address(self, request: Request) -> str:
        """The caller's address: the last entry of ``gateway.client_address_header`` when set, else the TCP peer."""
        header = self.settings.client_address_header
        if header:
            value = request.headers.get(header, "")
            last = value.split(",")[-1].strip()
            if last:
                return last[:64]  # a bucket id, not a parsed address: bound what a header can make us store
        return request.client.host if request.client else "unknown"

    async def take(self, request: Request, bucket: str, rate: float, burst: int, what: str,
                   name: Optional[str] = None) -> Decision:
        """Take one token from ``bucket``; raise 429 (or 503 when failing closed) if there is none.

        ``what`` names the limited party in the 429 message. The response carries
        the ``X-RateLimit-*`` headers of the last bucket taken from.
        """
        decision = await self.limiter.acquire_async(bucket, rate, burst)
        setattr(request.state, STATE_RESPONSE_HEADERS, decision.headers())
        if decision.error is not None and not decision.fallback:
            self._count("rate_limiter_unavailable", name)
            raise GatewayError(
                503,
                "rate_limiter_unavailable",
                "the rate limiter is unreachable and gateway.rate_limit_fail_open is false; retry shortly",
                headers=decision.headers(),
            )
        if decision.error is not None:
            self._count("rate_limiter_degraded", name)
        if not decision.allowed:
            self._count("too_many_requests", name)
            raise GatewayError(
                429,
                "too_many_requests",
                f"rate limit of {what} exceeded ({burst} burst, {rate:g}/s); "
                f"retry in {decision.retry_after_s:.2f} s",
                headers=decision.headers(),
            )
        return decision
