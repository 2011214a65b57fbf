"""Shopper sessions revoked before they expire: a list every replica checks, bounded by the session lifetime.

A shopper token is verified without server state (:mod:`aisys.gateway.shopper`), so ending one session early needs
a list of the session ids that are no longer good. An entry only has to outlive the tokens it names: a token
carrying session id ``sid`` was minted before the revocation and lives ``gateway.shopper_session_ttl_s`` at most,
so the entry is kept until ``revoked_at + ttl`` and then dropped. The list therefore holds at most the sessions
revoked within one session lifetime (and at most :data:`MAX_REVOKED`: past that, rotate the session secret, which
ends every session at once).

Where it lives: a JSON file (:func:`revocations_path`, default ``session-revocations.json`` beside the key file),
shared by every replica and CLI of a workspace like the key file: written under a file lock, replaced atomically,
re-read by servers when it changed, at most every ``gateway.keys_reload_s``. On Kubernetes, where the key file is a
read-only Secret, the list rides in the same Secret (docs/operations.md#keys-on-a-cluster).

Who writes it: ``aisys sessions revoke SID [--purge]`` and ``DELETE /admin/sessions/{sid}`` (admin).
"""

from __future__ import annotations

import json
import re
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from aisys.gateway.json_file import WatchedJsonFile

if TYPE_CHECKING:
    from aisys.config import AppConfig

FILE_FORMAT_VERSION = 1
MAX_REVOKED = 100_000  # ~4 MB of JSON; more revocations than this within one session lifetime: rotate the secret
# A session id as ShopperTokens.mint makes it (secrets.token_hex(8)); access logs show it as `shopper:<sid>`, the
# collector as `session:<sid>`, so either prefix is accepted.
_SID_RE = re.compile(r"^[0-9a-f]{16}$")
_SID_PREFIXES = ("session:", "shopper:")
SESSION_ID_PATTERN = r"^(session:|shopper:)?[0-9a-f]{16}$"  # what the HTTP route accepts (OpenAPI declares it)


class RevocationError(ValueError):
    """A revocation that cannot be made (bad session id, a full or unreadable list), naming what is wrong."""


def parse_session_id(text: str) -> str:
    """The session id in ``text`` (``<sid>``, ``session:<sid>`` or ``shopper:<sid>``), or a RevocationError."""
    value = (text or "").strip()
    for prefix in _SID_PREFIXES:
        if value.startswith(prefix):
            value = value[len(prefix):]
    if not _SID_RE.match(value):
        raise RevocationError(
            f"invalid session id {text!r}: expected 16 hex digits, as in an access log's 'shopper:<sid>' or an "
            "event's sender 'session:<sid>'"
        )
    return value


def live_entries(entries: dict[str, float], now: float) -> dict[str, float]:
    """The entries whose tokens may still be alive at ``now`` (``{sid: until}``, pure)."""
    return {sid: until for sid, until in entries.items() if until > now}


class RevocationList(ABC):
    """Revoked session ids, each until the last moment a token of it could still be valid (epoch seconds)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s  # gateway.shopper_session_ttl_s: how long any token of a session can live
        self._clock = clock

    @abstractmethod
    def entries(self) -> dict[str, float]:
        """``{sid: until}`` as stored (expired entries may still be there until the next write)."""

    @abstractmethod
    def _store(self, sid: str, until: float, now: float) -> None:
        """Add ``sid`` until ``until`` and drop the entries expired at ``now``."""

    def is_revoked(self, sid: str) -> bool:
        """Whether a token of session ``sid`` must be refused now."""
        until = self.entries().get(sid)
        return until is not None and until > self._clock()

    def revoke(self, sid: str) -> float:
        """Revoke session ``sid`` (its id as minted, or with a ``session:``/``shopper:`` prefix); return until when.

        Idempotent: revoking again extends the entry to one lifetime from now, which still covers every token.
        """
        sid = parse_session_id(sid)
        now = self._clock()
        until = now + self.ttl_s
        self._store(sid, until, now)
        return until

    def revoked(self) -> dict[str, float]:
        """The live entries, ``{sid: until}``."""
        return live_entries(self.entries(), self._clock())


class InMemoryRevocationList(RevocationList):
    """Revocations held in this process only (tests, a single-process server)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        super().__init__(ttl_s, clock)
        self._entries: dict[str, float] = {}

    def entries(self) -> dict[str, float]:
        return dict(self._entries)

    def _store(self, sid: str, until: float, now: float) -> None:
        live = live_entries(self._entries, now)
        _check_room(live, sid)
        live[sid] = until
        self._entries = live


def _check_room(live: dict[str, float], sid: str) -> None:
    if sid not in live and len(live) >= MAX_REVOKED:
        raise RevocationError(
            f"{len(live)} sessions are revoked already (the most kept at once is {MAX_REVOKED}): rotate the session "
            "secret instead (gateway.session_secret_file), which ends every session"
        )


class FileRevocationList(RevocationList):
    """Revocations in a JSON file every replica of a workspace reads (see the module docstring)."""

    def __init__(self, path: str | Path, ttl_s: float, reload_every_s: float = 1.0,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ttl_s, clock)
        self.path = Path(path)
        self._file: WatchedJsonFile[dict[str, float]] = WatchedJsonFile(
            self.path, self._read, _document, reload_every_s=reload_every_s, clock=monotonic
        )

    def entries(self) -> dict[str, float]:
        return self._file.read()

    def _read(self, path: Path) -> dict[str, float]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as err:
            raise RevocationError(f"session revocation file {path} is not valid JSON: {err}") from None
        revoked = data.get("revoked") if isinstance(data, dict) else None
        if not isinstance(revoked, dict):
            raise RevocationError(f"session revocation file {path} must hold an object with a 'revoked' object")
        try:
            return {str(sid): float(until) for sid, until in revoked.items()}
        except (TypeError, ValueError):
            raise RevocationError(f"session revocation file {path}: each entry must be 'sid': epoch seconds") from None

    def _store(self, sid: str, until: float, now: float) -> None:
        try:
            with self._file.update() as entries:
                live = live_entries(entries, now)
                _check_room(live, sid)
                live[sid] = until
                entries.clear()
                entries.update(live)
        except OSError as err:  # e.g. a read-only Kubernetes Secret mount
            raise RevocationError(
                f"cannot write the session revocation file {self.path} ({err.strerror or err}): set "
                "gateway.session_revocations_file to a writable path, or revoke with the CLI where the file is "
                "made (docs/gateway.md#revoking-one-session)"
            ) from None


def _document(entries: dict[str, float]) -> dict:
    return {"version": FILE_FORMAT_VERSION, "revoked": {sid: round(until, 3) for sid, until in sorted(entries.items())}}


def revocations_path(cfg: "AppConfig") -> Path:
    """``gateway.session_revocations_file``, or ``session-revocations.json`` in the key file's folder."""
    if cfg.gateway.session_revocations_file:
        return Path(cfg.gateway.session_revocations_file)
    from aisys.gateway.keys import keys_file_path

    return keys_file_path(cfg).parent / "session-revocations.json"


def revocations_from_config(cfg: "AppConfig") -> FileRevocationList:
    """The workspace's revocation list, re-read every ``gateway.keys_reload_s`` like the key file."""
    return FileRevocationList(revocations_path(cfg), cfg.gateway.shopper_session_ttl_s,
                              reload_every_s=cfg.gateway.keys_reload_s)
