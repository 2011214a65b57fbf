"""API keys: random secrets with scopes, stored only as SHA-256 digests.

A key looks like ``ak_<43 url-safe characters>`` (32 random bytes). The key
store keeps, per key, a public ``key_id``, a unique ``name``, the hex SHA-256
digest of the key, its scopes, when it was made, and optional per-key rate
limits. The plaintext is returned once by :func:`create_key` and never stored.

Why a plain SHA-256 and not bcrypt/argon2: a slow KDF protects *low-entropy*
secrets (passwords) against guessing once the hash file leaks. A 256-bit random
key cannot be guessed whatever the hash speed, and a fast hash keeps the check
at microseconds per request instead of ~100 ms per request.

Scopes: ``admin`` grants every scope; ``storefront`` grants ``recommend`` and
``events`` too, and is rate-limited more tightly (see :mod:`aisys.gateway.gateway`);
``sessions`` mints shopper sessions for named users. No key is ever given to a browser.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import stat
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable

from aisys.config import AppConfig
from aisys.gateway.json_file import WatchedJsonFile

logger = logging.getLogger(__name__)

SCOPES: tuple[str, ...] = ("storefront", "recommend", "events", "sessions", "admin")
# What holding a scope grants. A storefront key is for a shop's own backend (a page
# no longer embeds any key: browsers get shopper sessions, see aisys.gateway.shopper);
# `sessions` lets a sign-in service mint a shopper session for a named user.
SCOPE_GRANTS: dict[str, frozenset[str]] = {
    "admin": frozenset(SCOPES),
    "storefront": frozenset({"storefront", "recommend", "events"}),
    "recommend": frozenset({"recommend"}),
    "events": frozenset({"events"}),
    "sessions": frozenset({"sessions"}),
}
KEY_PREFIX = "ak_"
FILE_FORMAT_VERSION = 1
# Names end up in access logs: keep them to characters that cannot forge a log line.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyStoreError(ValueError):
    """A key store problem (bad name or scope, duplicate name, unreadable file), naming what is wrong."""


def generate_key() -> str:
    """A new random API key (``ak_`` + 32 random bytes, URL-safe base64)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plaintext: str) -> str:
    """Hex SHA-256 digest of a key: what the store keeps instead of the key."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def granted_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Every scope that holding ``scopes`` grants (``admin`` -> all; ``storefront`` -> recommend, events)."""
    granted: set[str] = set()
    for scope in scopes:
        granted |= SCOPE_GRANTS.get(scope, frozenset())
    return frozenset(granted)


def validate_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Sorted, de-duplicated scopes; raises :class:`KeyStoreError` naming an unknown one."""
    unique = sorted(set(scopes))
    if not unique:
        raise KeyStoreError(f"a key needs at least one scope (one of {', '.join(SCOPES)})")
    unknown = [s for s in unique if s not in SCOPES]
    if unknown:
        raise KeyStoreError(f"unknown scope(s) {unknown}; known scopes: {', '.join(SCOPES)}")
    return tuple(unique)


def validate_name(name: str) -> str:
    """Return ``name`` if it is a usable key name, else raise :class:`KeyStoreError` saying why."""
    if not _NAME_RE.match(name or ""):
        raise KeyStoreError(
            f"invalid key name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class KeyRecord:
    """One stored key: everything but the key itself."""

    key_id: str
    name: str
    digest: str
    scopes: tuple[str, ...]
    created_at: str
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None

    def grants(self, scope: str) -> bool:
        """Whether this key may use ``scope`` (admin implies all)."""
        return scope in granted_scopes(self.scopes)

    def public(self) -> dict[str, Any]:
        """The record without its digest: what ``aisys keys list`` shows."""
        view = asdict(self)
        view.pop("digest")
        view["scopes"] = list(self.scopes)
        return view

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["scopes"] = list(self.scopes)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], origin: str) -> "KeyRecord":
        try:
            return cls(
                key_id=str(data["key_id"]),
                name=str(data["name"]),
                digest=str(data["digest"]),
                scopes=tuple(data["scopes"]),
                created_at=str(data["created_at"]),
                rate_limit_per_s=data.get("rate_limit_per_s"),
                rate_limit_burst=data.get("rate_limit_burst"),
            )
        except (KeyError, TypeError) as err:
            raise KeyStoreError(
                f"{origin}: malformed key record ({err!r}); needs key_id, name, digest, scopes, created_at"
            ) from None


class KeyStore(ABC):
    """Where key records live. Implementations: :class:`FileKeyStore`, :class:`InMemoryKeyStore`."""

    @abstractmethod
    def records(self) -> list[KeyRecord]:
        """Every stored key record."""

    @abstractmethod
    def add(self, record: KeyRecord) -> None:
        """Store a new record; raises :class:`KeyStoreError` if its name is taken."""

    @abstractmethod
    def remove(self, name: str) -> KeyRecord | None:
        """Delete the key called ``name``; return its record, or None if there was none."""

    def lookup(self, plaintext: str) -> KeyRecord | None:
        """The record of a presented key, or None.

        Every stored digest is compared with :func:`hmac.compare_digest`, with
        no early exit, so the time taken does not depend on how much of a
        digest matched (a handful of keys: microseconds).
        """
        if not plaintext:
            return None
        presented = hash_key(plaintext).encode("ascii")
        found: KeyRecord | None = None
        for record in self.records():
            if hmac.compare_digest(presented, record.digest.encode("ascii")):
                found = record
        return found


def _check_new(records: Iterable[KeyRecord], record: KeyRecord) -> None:
    for existing in records:
        if existing.name == record.name:
            raise KeyStoreError(f"a key named {record.name!r} exists already; revoke it first or pick another name")
        if existing.key_id == record.key_id:
            raise KeyStoreError(f"key id {record.key_id!r} is taken (retry)")


class InMemoryKeyStore(KeyStore):
    """Keys held in this process only (tests, single-process demos)."""

    def __init__(self, records: Iterable[KeyRecord] = ()) -> None:
        self._lock = threading.Lock()
        self._records: list[KeyRecord] = list(records)

    def records(self) -> list[KeyRecord]:
        with self._lock:
            return list(self._records)

    def add(self, record: KeyRecord) -> None:
        with self._lock:
            _check_new(self._records, record)
            self._records.append(record)

    def remove(self, name: str) -> KeyRecord | None:
        with self._lock:
            for i, record in enumerate(self._records):
                if record.name == name:
                    return self._records.pop(i)
        return None


def _key_file_document(records: list[KeyRecord]) -> dict[str, Any]:
    return {"version": FILE_FORMAT_VERSION, "keys": [r.to_json() for r in records]}


class FileKeyStore(KeyStore):
    """Keys in a JSON file (mode 0600) shared by every server and CLI of a workspace.

    Changes are made under an exclusive ``flock`` on ``<file>.lock`` (so two
    ``aisys keys create`` cannot lose each other's key) and land with
    ``os.replace``, so readers see the old file or the new one, never half.
    A long-running server re-reads the file when it changed, checking at most
    every ``reload_every_s`` seconds: a revoked key stops working within that
    time without a restart (:class:`~aisys.gateway.json_file.WatchedJsonFile`).
    """

    def __init__(
        self, path: str | Path, reload_every_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = Path(path)
        self._file: WatchedJsonFile[list[KeyRecord]] = WatchedJsonFile(
            self.path, self._read, _key_file_document, reload_every_s=reload_every_s, clock=clock
        )

    def records(self) -> list[KeyRecord]:
        return list(self._file.read())

    def _read(self, path: Path) -> list[KeyRecord]:
        try:
            text = path.read_text(encoding="utf-8")
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            return []
        if mode & 0o077:
            logger.warning("API key file %s has mode %o; it should be 0600 (chmod 600 %s)", path, mode, path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise KeyStoreError(f"API key file {path} is not valid JSON: {err}") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise KeyStoreError(f"API key file {path} must hold an object with a 'keys' list")
        return [KeyRecord.from_json(item, str(path)) for item in data["keys"]]

    def editing(self) -> ContextManager[list[KeyRecord]]:
        """The current records under the file lock, to change in place; written back when the block ends."""
        return self._file.update()

    def add(self, record: KeyRecord) -> None:
        with self.editing() as records:
            _check_new(records, record)
            records.append(record)

    def remove(self, name: str) -> KeyRecord | None:
        removed: KeyRecord | None = None
        with self.editing() as records:
            for i, record in enumerate(records):
                if record.name == name:
                    removed = records.pop(i)
                    break
        return removed


# ---------------------------------------------------------------------- operations


def create_key(
    store: KeyStore,
    name: str,
    scopes: Iterable[str],
    *,
    rate_limit_per_s: float | None = None,
    rate_limit_burst: int | None = None,
) -> str:
    """Create a key called ``name`` with ``scopes``; return its plaintext (the only time it is shown)."""
    if rate_limit_per_s is not None and rate_limit_per_s <= 0:
        raise KeyStoreError(f"rate_limit_per_s must be > 0, got {rate_limit_per_s}")
    if rate_limit_burst is not None and rate_limit_burst < 1:
        raise KeyStoreError(f"rate_limit_burst must be >= 1, got {rate_limit_burst}")
    plaintext, record = new_record(name, scopes, rate_limit_per_s, rate_limit_burst)
    store.add(record)
    return plaintext


def new_record(
    name: str, scopes: Iterable[str], rate_limit_per_s: float | None = None, rate_limit_burst: int | None = None
) -> tuple[str, KeyRecord]:
    plaintext = generate_key()
    record = KeyRecord(
        key_id=secrets.token_hex(6),
        name=validate_name(name),
        digest=hash_key(plaintext),
        scopes=validate_scopes(scopes),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        rate_limit_per_s=rate_limit_per_s,
        rate_limit_burst=rate_limit_burst,
    )
    return plaintext, record


def revoke_key(store: KeyStore, name: str) -> KeyRecord:
    """Delete the key called ``name``; raises :class:`KeyStoreError` if there is none."""
    removed = store.remove(name)
    if removed is None:
        known = ", ".join(sorted(r.name for r in store.records())) or "none"
        raise KeyStoreError(f"no key named {name!r} (known: {known})")
    return removed


def list_keys(store: KeyStore) -> list[dict[str, Any]]:
    """Every key's public fields (name, key_id, scopes, created_at, limits), never a digest or key."""
    return [r.public() for r in sorted(store.records(), key=lambda r: r.created_at)]


# ---------------------------------------------------------------------- config helpers


def keys_file_path(cfg: AppConfig) -> Path:
    """``cfg.gateway.keys_file``, or ``<workspace>/api-keys.json``."""
    return Path(cfg.gateway.keys_file or Path(cfg.paths.workspace) / "api-keys.json")
