"""Plaintext demo keys for a developer's own machine: ``aisys demo``, ``aisys serve`` on a fresh workspace, tests.

:func:`ensure_dev_keys` makes an admin and a storefront key when the key file has none and keeps their plaintext in
``<workspace>/dev-keys.json`` (0600) so a later local run finds them. Never for a shared or production workspace:
there, keys are made with ``aisys keys create`` and shown once.
"""

from __future__ import annotations

import json
from pathlib import Path

from aisys.config import AppConfig
from aisys.gateway.json_file import write_json_atomic
from aisys.gateway.keys import FileKeyStore, KeyStoreError, keys_file_path, new_record

DEV_ADMIN_NAME = "dev-admin"
DEV_STOREFRONT_NAME = "dev-storefront"


def dev_keys_path(cfg: AppConfig) -> Path:
    """``<workspace>/dev-keys.json``: plaintext demo keys, for local development only."""
    return Path(cfg.paths.workspace) / "dev-keys.json"


def read_dev_keys(cfg: AppConfig) -> dict[str, str]:
    """The plaintext demo keys written by :func:`ensure_dev_keys` (empty when there are none)."""
    path = dev_keys_path(cfg)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as err:
        raise KeyStoreError(f"dev key file {path} is not valid JSON: {err}") from None
    return {str(k): str(v) for k, v in data.get("keys", {}).items()}


def ensure_dev_keys(cfg: AppConfig) -> dict[str, str]:
    """For the local demo and tests: make an admin and a storefront key if the key file has none.

    Returns ``{name: plaintext}`` only when it created them (empty otherwise),
    and also writes them to ``<workspace>/dev-keys.json`` (mode 0600) so a later
    local run can find them. That file holds plaintext keys: it is for a
    developer's own machine, never for a shared or production workspace.
    """
    store = FileKeyStore(keys_file_path(cfg))
    created: dict[str, str] = {}
    # Check and create under the file lock, so two processes starting the demo
    # at once cannot both decide the file is empty.
    with store.editing() as records:
        if records:
            return {}
        for name, scope in ((DEV_ADMIN_NAME, "admin"), (DEV_STOREFRONT_NAME, "storefront")):
            plaintext, record = new_record(name, [scope])
            records.append(record)
            created[name] = plaintext
    write_json_atomic(
        dev_keys_path(cfg),
        {"note": "plaintext API keys for LOCAL development only; never copy to a shared machine", "keys": created},
    )
    return created
