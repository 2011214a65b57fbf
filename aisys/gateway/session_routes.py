"""The routes that hand out shopper sessions (see :mod:`aisys.gateway.shopper` and docs/gateway.md).

::

    POST /shop/session   (no key; limited per client address)  -> a new anonymous shopper,
                         or, with a valid shopper token in ``Authorization``, the same user renewed
    POST /sessions       (scope ``sessions``)                    -> a session for a named (signed-in) user
    DELETE /admin/sessions/{sid}  (scope ``admin``)              -> that session's tokens get 401 from now on

The first is what the storefront page calls at startup; the second is for a
shop's sign-in service, server to server, after it has checked who the user is;
the third is an operator's (:mod:`aisys.gateway.revocations`; ``aisys sessions
revoke SID --purge`` also removes the session's events from the collector).
"""

# No `from __future__ import annotations`: FastAPI evaluates the annotations.
import asyncio
import re
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from aisys.gateway.middleware import GatewayError
from aisys.gateway.revocations import SESSION_ID_PATTERN, RevocationError, parse_session_id
from aisys.gateway.shopper import ANONYMOUS_PREFIX, ShopperSession, is_shopper_token, new_anonymous_user_id
from aisys.schemas import HOSTILE_ID_CHARS

# As the collector's ids (aisys.serving.api_models.MAX_ID_LENGTH, cfg.ingest.max_id_length).
MAX_USER_ID_LENGTH = 128
_HOSTILE = re.compile(HOSTILE_ID_CHARS)


class SessionIn(BaseModel):
    """Body of ``POST /sessions``: the signed-in user the session acts for."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(..., min_length=1, max_length=MAX_USER_ID_LENGTH, description="The signed-in user.")

    @field_validator("user_id")
    @classmethod
    def _usable(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        found = _HOSTILE.search(value)
        if found is not None:
            raise ValueError(f"must not contain control or bidirectional-control characters "
                             f"(found U+{ord(found.group()):04X} at position {found.start()})")
        if value.startswith(ANONYMOUS_PREFIX):
            # Anonymous ids are the server's to choose: a named session must not take over one.
            raise ValueError(f"must not start with {ANONYMOUS_PREFIX!r} (reserved for anonymous shoppers)")
        return value


class SessionOut(BaseModel):
    """A shopper session: send ``token`` as ``Authorization: Bearer <token>`` until ``expires_at``."""

    token: str = Field(..., description="Opaque; send it back as a Bearer credential, never parse it.")
    user_id: str = Field(..., description="The only user this session may read and write.")
    expires_at: str = Field(..., description="ISO 8601 UTC; ask for a new session before then.")
    expires_in_s: int


class RevokedOut(BaseModel):
    """A revoked shopper session: its tokens get 401 on every route until they would have expired anyway."""

    session_id: str
    revoked_until: str = Field(..., description="ISO 8601 UTC; after this no token of the session can be valid.")
    events: str = Field(..., description="What happens to the events the session already sent.")


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _out(token: str, session: ShopperSession, now: float) -> SessionOut:
    when = datetime.fromtimestamp(session.expires_at, timezone.utc)
    return SessionOut(token=token, user_id=session.user_id, expires_at=when.isoformat().replace("+00:00", "Z"),
                      expires_in_s=max(0, int(session.expires_at - now)))


def session_router(gateway: Any) -> APIRouter:
    """``POST /shop/session`` and ``POST /sessions`` over ``gateway`` (its signer and limiter)."""
    router = APIRouter(tags=["sessions"])

    def signer():
        if gateway.tokens is None:
            raise GatewayError(503, "sessions_unavailable", "shopper sessions are not enabled on this server")
        return gateway.tokens

    # 200, not 201: like an OAuth token endpoint, the answer is a credential, not a stored resource.
    @router.post("/shop/session", response_model=SessionOut, status_code=200)
    async def new_shopper_session(request: Request) -> SessionOut:
        """A shopper session for this browser: a new anonymous user, or the caller's own user renewed.

        No key needed, so it is limited per client address
        (``gateway.session_mint_rate_per_s`` / ``session_mint_burst``).
        """
        tokens = signer()
        g = gateway.settings
        await gateway.take(request, f"mint:{gateway.client_address(request)}", g.session_mint_rate_per_s,
                           g.session_mint_burst, "new sessions from your network address")
        # The header is read by hand (not with HTTPBearer) so the OpenAPI keeps this route open.
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        user_id = None
        if scheme.lower() == "bearer" and is_shopper_token(presented.strip()):
            user_id = gateway.verify_shopper(presented.strip()).user_id  # 401 when forged or expired
        token, session = tokens.mint(user_id or new_anonymous_user_id())
        return _out(token, session, tokens.now())

    @router.post("/sessions", response_model=SessionOut, status_code=200,
                 dependencies=[Depends(gateway.require("sessions"))])
    async def new_user_session(body: SessionIn) -> SessionOut:
        """A shopper session for a signed-in user (server to server: needs a ``sessions`` or ``admin`` key)."""
        tokens = signer()
        token, session = tokens.mint(body.user_id)
        return _out(token, session, tokens.now())

    @router.delete("/admin/sessions/{sid}", response_model=RevokedOut, tags=["admin"],
                   dependencies=[Depends(gateway.require("admin"))])
    async def revoke_session(sid: Annotated[str, Path(pattern=SESSION_ID_PATTERN)]) -> RevokedOut:
        """Revoke one shopper session now, on every replica (within ``gateway.keys_reload_s``); idempotent.

        ``sid`` is the session id as an access log shows it (``shopper:<sid>``) or an event's sender
        (``session:<sid>``), with or without the prefix (anything else: 422 naming ``path.sid``).
        """
        if gateway.revocations is None:
            raise GatewayError(503, "revocation_unavailable", "this server keeps no session revocation list")
        sid = parse_session_id(sid)  # the pattern held: this only drops the prefix
        try:
            until = await asyncio.to_thread(gateway.revocations.revoke, sid)  # a locked file write: off the loop
        except RevocationError as err:
            raise GatewayError(503, "revocation_unavailable", str(err)) from None
        return RevokedOut(session_id=sid, revoked_until=_iso(until),
                          events=f"kept; remove them with `aisys sessions revoke {sid} --purge` on the collector host")

    return router

