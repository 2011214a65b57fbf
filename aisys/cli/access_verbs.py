"""The ``aisys keys`` and ``aisys sessions`` verbs: API keys in the key file, revoked shopper sessions.

``register(sub, common)`` adds both verbs to the CLI's subparsers; ``common``
adds ``--config``/``--set`` to each action, so they go after it
(``aisys keys create --name shop --scope storefront --config my.yaml``).

``aisys sessions revoke SID [--purge]`` ends one shopper session before it
expires (:mod:`aisys.gateway.revocations`) and, with ``--purge``, removes the
events it sent from the collector; ``aisys sessions list`` shows the revoked ones.

A face, not part of the gateway: revoking with ``--purge`` composes the gateway's key and session stores with
serving's collector, and the gateway itself never imports serving (contract ``gateway-below-serving``).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Callable

from aisys.config import AppConfig
from aisys.gateway.keys import (
    SCOPES,
    FileKeyStore,
    KeyStoreError,
    create_key,
    keys_file_path,
    list_keys,
    revoke_key,
)
from aisys.gateway.revocations import parse_session_id, revocations_from_config


def cmd_keys(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Create, list or revoke API keys (stored hashed in gateway.keys_file)."""
    path = keys_file_path(cfg)
    store = FileKeyStore(path)
    action = args.keys_action
    if action == "create":
        plaintext = create_key(
            store, args.name, args.scope, rate_limit_per_s=args.rate_per_s, rate_limit_burst=args.burst
        )
        # The key alone on stdout (scriptable); the warning on stderr.
        print(plaintext)
        print(
            f"created key {args.name!r} with scopes {sorted(set(args.scope))} in {path}; "
            "this is the only time it is shown: store it now",
            file=sys.stderr,
        )
        return 0
    if action == "list":
        keys = list_keys(store)
        if args.json:
            print(json.dumps(keys, indent=2))
            return 0
        if not keys:
            print(f"no API keys in {path} (create one: aisys keys create --name NAME --scope SCOPE)")
            return 0
        print(f"{'name':<24} {'key_id':<14} {'scopes':<28} {'limit':<14} created_at")
        for key in keys:
            limit = "default"
            if key["rate_limit_per_s"] is not None or key["rate_limit_burst"] is not None:
                limit = f"{key['rate_limit_per_s'] or '-'}/s,{key['rate_limit_burst'] or '-'}"
            scopes = ",".join(key["scopes"])
            print(f"{key['name']:<24} {key['key_id']:<14} {scopes:<28} {limit:<14} {key['created_at']}")
        return 0
    if action == "revoke":
        name = args.revoke_name or args.name
        if not name or (args.revoke_name and args.name and args.revoke_name != args.name):
            raise KeyStoreError("name the key to revoke once: aisys keys revoke NAME [--purge]")
        record = revoke_key(store, name)
        print(f"revoked key {record.name!r} (key_id {record.key_id}); servers stop accepting it within "
              f"gateway.keys_reload_s ({cfg.gateway.keys_reload_s:g} s)")
        if args.purge:
            purge_key_events(cfg, record.key_id, record.name)
        return 0
    raise ValueError(f"unknown keys action {action!r}; use create, list or revoke")


def purge_key_events(cfg: AppConfig, key_id: str, name: str) -> int:
    """Remove the events sent with key ``key_id`` from the collector files; print and return how many.

    Run after the revocation: a server may still accept the key for up to
    ``gateway.keys_reload_s``, so run the purge again after that if the key was
    in use (it is idempotent).
    """
    return purge_sender_events(cfg, f"key:{key_id}", f"key {name!r}")


def purge_sender_events(cfg: AppConfig, sender: str, what: str) -> int:
    """Remove the events whose sender is ``sender`` from the collector (the folder, or the objects under
    ``paths.collector_uri`` on a cluster); print and return how many."""
    if cfg.paths.collector_uri:  # a cluster's collector: immutable objects in object storage
        from aisys.serving.collector_store import purge_sender_objects

        where = cfg.paths.collector_uri
        removed = purge_sender_objects(where, sender, cfg.paths)
    else:
        from aisys.serving.collector_store import collector_folder
        from aisys.serving.event_log import purge_sender  # the event log owns its file format

        where = str(collector_folder(cfg))
        removed = purge_sender(collector_folder(cfg), sender)
    total = sum(removed.values())
    for path, n in removed.items():
        print(f"  {path}: removed {n} event(s)")
    print(f"purged {total} event(s) sent by {what} from {where} (not yet ingested); "
          "events already in a lake snapshot stay there", file=sys.stderr)
    return total


def cmd_sessions(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Revoke shopper sessions before they expire (and purge their events), or list the revoked ones."""
    revocations = revocations_from_config(cfg)
    if args.sessions_action == "revoke":
        sid = parse_session_id(args.sid)
        until = revocations.revoke(sid)
        when = datetime.fromtimestamp(until, timezone.utc).isoformat(timespec="seconds")
        print(f"revoked shopper session {sid} until {when} in {revocations.path}; servers refuse its tokens "
              f"within gateway.keys_reload_s ({cfg.gateway.keys_reload_s:g} s)")
        if args.purge:
            # Like a key's purge: a server may accept the session for up to keys_reload_s more; run it again then.
            purge_sender_events(cfg, f"session:{sid}", f"shopper session {sid}")
        return 0
    revoked = revocations.revoked()
    if args.json:
        print(json.dumps({sid: datetime.fromtimestamp(until, timezone.utc).isoformat(timespec="seconds")
                          for sid, until in sorted(revoked.items())}, indent=2))
        return 0
    if not revoked:
        print(f"no revoked shopper sessions in {revocations.path}")
        return 0
    print(f"{'session':<18} revoked until (UTC)")
    for sid, until in sorted(revoked.items(), key=lambda item: item[1]):
        print(f"{sid:<18} {datetime.fromtimestamp(until, timezone.utc).isoformat(timespec='seconds')}")
    return 0


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``aisys keys {create,list,revoke}`` and ``aisys sessions {revoke,list}`` to the CLI's subparsers."""
    _register_sessions(sub, common)
    parser = sub.add_parser("keys", help="create, list and revoke API keys", description=cmd_keys.__doc__)
    parser.set_defaults(func=cmd_keys)
    actions = parser.add_subparsers(dest="keys_action", metavar="ACTION")
    actions.required = True

    create = actions.add_parser("create", help="create a key and print it once")
    common(create)
    create.add_argument("--name", required=True, help="unique key name (shown in access logs)")
    create.add_argument(
        "--scope", action="append", required=True, choices=SCOPES, help="a scope (repeatable); admin implies all"
    )
    create.add_argument("--rate-per-s", type=float, default=None, help="this key's refill rate (overrides config)")
    create.add_argument("--burst", type=int, default=None, help="this key's bucket size (overrides config)")

    listing = actions.add_parser("list", help="list keys (never their secrets)")
    common(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")

    revoke = actions.add_parser("revoke", help="delete a key by name")
    common(revoke)
    revoke.add_argument("revoke_name", nargs="?", metavar="NAME", help="the key to revoke")
    revoke.add_argument("--name", help="the key to revoke (same as NAME)")
    revoke.add_argument(
        "--purge", action="store_true",
        help="also remove the events this key sent from the collector files, so the next snapshot leaves them out",
    )


def _register_sessions(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    parser = sub.add_parser("sessions", help="revoke shopper sessions before they expire",
                            description=cmd_sessions.__doc__)
    parser.set_defaults(func=cmd_sessions)
    actions = parser.add_subparsers(dest="sessions_action", metavar="ACTION")
    actions.required = True

    revoke = actions.add_parser("revoke", help="end one shopper session on every replica")
    common(revoke)
    revoke.add_argument("sid", metavar="SID",
                        help="the session id: 16 hex digits, as in an access log's shopper:<sid> or an event's "
                        "sender session:<sid> (either prefix is accepted)")
    revoke.add_argument(
        "--purge", action="store_true",
        help="also remove the events this session sent from the collector files, so the next snapshot leaves them out",
    )

    listing = actions.add_parser("list", help="list the revoked sessions whose tokens could still be alive")
    common(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
