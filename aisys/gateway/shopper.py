"""Shopper sessions: server-issued, signed, expiring tokens, each bound to one user id.

A browser gets no API key. It asks ``POST /shop/session`` for a session and
receives a token ``st_<payload>.<signature>``:

- ``payload`` is URL-safe base64 of compact JSON ``{"v": 1, "sid", "uid", "exp"}``
  (a random session id, the user id the token is bound to, expiry in epoch seconds);
- ``signature`` is URL-safe base64 of HMAC-SHA256(server secret, ``"st1." + payload``).

The token is opaque to clients (they store and send it, nothing more): only a
server holding the secret can mint one or change its user id. The ``st_``
prefix tells it apart from an API key (``ak_``) before any lookup.

Why a signed token and not a server-side session table: every replica can
verify it with no shared state and no round trip (the session store and the
limiter actor already cost one each), and nothing grows with the number of
sessions issued. Ending one session before it expires takes the revocation
list (:mod:`aisys.gateway.revocations`: ``aisys sessions revoke SID``), which
holds only the sessions revoked within one ``gateway.shopper_session_ttl_s``;
rotating the secret file revokes every session at once.

The secret is 32 random bytes in a 0600 file beside the key store
(``gateway.session_secret_file``, default ``<dir of keys_file>/session-secret``),
created with ``O_EXCL`` by whichever process needs it first, so every replica
and CLI of one workspace share it. It is never an API key and never leaves the server.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from aisys.config import AppConfig

TOKEN_PREFIX = "st_"
_SIGNING_CONTEXT = b"st1."  # domain separation: this secret signs nothing but v1 shopper tokens
TOKEN_VERSION = 1
SECRET_BYTES = 32
ANONYMOUS_PREFIX = "anon-"
# Longest token accepted before any decoding (a user id is at most 128 characters): a bigger
# "token" is refused without spending CPU on base64 or HMAC.
MAX_TOKEN_LENGTH = 1024
_B64_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class InvalidToken(ValueError):
    """A presented shopper token that is malformed, forged or expired (the message says which, never why in detail)."""


@dataclass(frozen=True)
class ShopperSession:
    """What a valid token proves: session ``sid`` acts for ``user_id`` until ``expires_at`` (epoch seconds)."""

    sid: str
    user_id: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not _B64_RE.match(text):
        raise InvalidToken("malformed shopper token")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed shopper token") from None


def is_shopper_token(presented: str | None) -> bool:
    """Whether a presented credential is meant as a shopper token (by its prefix)."""
    return bool(presented) and presented.startswith(TOKEN_PREFIX)


def new_anonymous_user_id() -> str:
    """``anon-<24 hex>``: a user id nobody else holds (96 random bits) and nobody can choose."""
    return ANONYMOUS_PREFIX + secrets.token_hex(12)


class ShopperTokens:
    """Mint and verify shopper tokens with one secret (pure: the clock is injectable)."""

    def __init__(self, secret: bytes, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 16:
            raise ValueError(f"the session secret must be at least 16 bytes, got {len(secret)}")
        if not ttl_s > 0:
            raise ValueError(f"the session lifetime must be > 0 s, got {ttl_s}")
        self._secret = secret
        self.ttl_s = ttl_s
        self._clock = clock

    def now(self) -> float:
        """The signer's clock (epoch seconds)."""
        return self._clock()

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, _SIGNING_CONTEXT + payload.encode("ascii"), hashlib.sha256).digest())

    def mint(self, user_id: str) -> tuple[str, ShopperSession]:
        """A new token for ``user_id`` (a new random session id); returns ``(token, session)``."""
        if not user_id:
            raise ValueError("a shopper session needs a user id")
        session = ShopperSession(
            sid=secrets.token_hex(8), user_id=user_id, expires_at=int(self._clock() + self.ttl_s)
        )
        body = {"v": TOKEN_VERSION, "sid": session.sid, "uid": user_id, "exp": session.expires_at}
        payload = _b64(json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii"))
        return f"{TOKEN_PREFIX}{payload}.{self._sign(payload)}", session

    def verify(self, token: str) -> ShopperSession:
        """The session a token proves; raises :class:`InvalidToken` if it is malformed, forged or expired.

        The signature is checked (in constant time) before the payload is parsed,
        so nothing an attacker wrote is interpreted until the server vouched for it.
        """
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.startswith(TOKEN_PREFIX):
            raise InvalidToken("malformed shopper token")
        payload, dot, signature = token[len(TOKEN_PREFIX):].partition(".")
        if not dot or not payload or not signature or not _B64_RE.match(payload):
            raise InvalidToken("malformed shopper token")
        if not hmac.compare_digest(self._sign(payload).encode("ascii"), signature.encode("ascii")):
            raise InvalidToken("invalid shopper token signature")
        try:
            body = json.loads(_unb64(payload))
            session = ShopperSession(sid=str(body["sid"]), user_id=str(body["uid"]), expires_at=int(body["exp"]))
            version = body["v"]
        except (KeyError, TypeError, ValueError):
            raise InvalidToken("malformed shopper token") from None
        if version != TOKEN_VERSION:
            raise InvalidToken(f"unsupported shopper token version {version!r}")
        if self._clock() >= session.expires_at:
            raise InvalidToken("expired shopper session: ask POST /shop/session for a new one")
        return session


# ---------------------------------------------------------------------- the secret file


def session_secret_path(cfg: "AppConfig") -> Path:
    """``gateway.session_secret_file``, or ``session-secret`` in the key file's folder."""
    if cfg.gateway.session_secret_file:
        return Path(cfg.gateway.session_secret_file)
    from aisys.gateway.keys import keys_file_path

    return keys_file_path(cfg).parent / "session-secret"


def load_or_create_secret(path: str | Path) -> bytes:
    """The secret in ``path`` (hex), created (32 random bytes, mode 0600) if the file does not exist.

    ``O_CREAT | O_EXCL`` makes creation race-free: when two replicas start at
    once, one writes the file and the other reads it. A file that is not
    usable (too short, not hex, readable by others) is an error naming it:
    the server must not start with a secret it cannot trust.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (secrets.token_hex(SECRET_BYTES) + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
    for _ in range(50):  # another process may have created it an instant ago and not written it yet
        text = path.read_text(encoding="ascii").strip()
        if text:
            break
        time.sleep(0.02)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise RuntimeError(f"session secret {path} has mode {mode:o}; it must be 0600 (chmod 600 {path})")
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise RuntimeError(f"session secret {path} must hold hex digits; delete it to make a new one") from None
    if len(secret) < 16:
        raise RuntimeError(f"session secret {path} is shorter than 16 bytes; delete it to make a new one")
    return secret


def shopper_tokens_from_config(cfg: "AppConfig") -> ShopperTokens:
    """The :class:`ShopperTokens` of ``cfg``'s workspace (creates the secret file on first use)."""
    return ShopperTokens(load_or_create_secret(session_secret_path(cfg)), cfg.gateway.shopper_session_ttl_s)
