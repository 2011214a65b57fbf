"""API keys: hashed storage, 0600 atomic file, scopes, revocation, dev keys and the `aisys keys` verb."""

from __future__ import annotations

import argparse
import json
import re
import stat
import threading
from pathlib import Path

import pytest

from aisys.cli.access_verbs import register
from aisys.gateway.dev_keys import DEV_ADMIN_NAME, DEV_STOREFRONT_NAME, dev_keys_path, ensure_dev_keys, read_dev_keys
from aisys.gateway.keys import (
    FileKeyStore,
    InMemoryKeyStore,
    KeyStoreError,
    create_key,
    granted_scopes,
    hash_key,
    keys_file_path,
    list_keys,
    revoke_key,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_file_holds_only_digests_and_is_0600(tmp_path):
    path = tmp_path / "keys" / "api-keys.json"
    store = FileKeyStore(path)
    admin = create_key(store, "ops", ["admin"])
    shop = create_key(store, "shop", ["storefront"])

    text = path.read_text()
    assert admin.startswith("ak_") and len(admin) > 40
    assert admin not in text and shop not in text
    assert hash_key(admin) in text and hash_key(shop) in text
    assert mode_of(path) == 0o600
    # No temporary file is left next to it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["api-keys.json", "api-keys.json.lock"]


def test_a_fresh_store_finds_keys_by_plaintext_and_rejects_others(tmp_path):
    path = tmp_path / "api-keys.json"
    key = create_key(FileKeyStore(path), "svc", ["recommend", "events"])

    reader = FileKeyStore(path)
    record = reader.lookup(key)
    assert record is not None and record.name == "svc"
    assert record.scopes == ("events", "recommend")
    assert reader.lookup(key + "x") is None
    assert reader.lookup("") is None
    assert reader.lookup(hash_key(key)) is None  # the digest itself is not a key


def test_scope_grants_admin_implies_all_storefront_implies_recommend_and_events():
    assert granted_scopes(["admin"]) == {"admin", "storefront", "recommend", "events", "sessions"}
    assert granted_scopes(["storefront"]) == {"storefront", "recommend", "events"}
    assert granted_scopes(["events"]) == {"events"}
    store = InMemoryKeyStore()
    record = store.lookup(create_key(store, "e", ["events"]))
    assert record.grants("events") and not record.grants("recommend") and not record.grants("admin")


@pytest.mark.parametrize(
    "name, scopes, message",
    [
        ("ok", ["root"], "unknown scope(s) ['root']"),
        ("ok", [], "at least one scope"),
        ("bad name", ["events"], "invalid key name 'bad name'"),
        ("", ["events"], "invalid key name ''"),
    ],
)
def test_bad_names_and_scopes_are_refused_by_name(name, scopes, message):
    with pytest.raises(KeyStoreError, match=re.escape(message)):
        create_key(InMemoryKeyStore(), name, scopes)


def test_duplicate_names_are_refused(tmp_path):
    store = FileKeyStore(tmp_path / "k.json")
    create_key(store, "shop", ["storefront"])
    with pytest.raises(KeyStoreError, match="'shop' exists already"):
        create_key(store, "shop", ["admin"])


def test_list_never_shows_secrets_and_revoke_removes(tmp_path):
    store = FileKeyStore(tmp_path / "k.json")
    key = create_key(store, "shop", ["storefront"], rate_limit_per_s=2.0, rate_limit_burst=4)
    listed = list_keys(store)
    assert [k["name"] for k in listed] == ["shop"]
    assert "digest" not in listed[0] and key not in json.dumps(listed) and hash_key(key) not in json.dumps(listed)
    assert listed[0]["rate_limit_per_s"] == 2.0 and listed[0]["rate_limit_burst"] == 4

    revoke_key(store, "shop")
    assert FileKeyStore(tmp_path / "k.json").lookup(key) is None
    with pytest.raises(KeyStoreError, match="no key named 'shop'"):
        revoke_key(store, "shop")


def test_a_running_store_sees_a_revocation_after_its_reload_interval(tmp_path):
    path = tmp_path / "k.json"
    clock = FakeClock()
    server = FileKeyStore(path, reload_every_s=1.0, clock=clock)
    key = create_key(FileKeyStore(path), "svc", ["recommend"])
    assert server.lookup(key) is not None

    revoke_key(FileKeyStore(path), "svc")  # another process (the CLI)
    clock.now += 0.5
    assert server.lookup(key) is not None  # not re-checked yet
    clock.now += 0.6
    assert server.lookup(key) is None


def test_concurrent_creates_lose_no_key(tmp_path):
    path = tmp_path / "k.json"
    keys: dict[str, str] = {}

    def make(i: int) -> None:
        keys[f"k{i}"] = create_key(FileKeyStore(path), f"k{i}", ["events"])

    threads = [threading.Thread(target=make, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader = FileKeyStore(path)
    assert sorted(r.name for r in reader.records()) == sorted(keys)
    assert all(reader.lookup(k).name == name for name, k in keys.items())


def test_malformed_key_file_is_named(tmp_path):
    path = tmp_path / "k.json"
    path.write_text("{not json")
    with pytest.raises(KeyStoreError, match=str(path)):
        FileKeyStore(path).records()


def test_ensure_dev_keys_creates_admin_and_storefront_once(small_config):
    created = ensure_dev_keys(small_config)
    assert set(created) == {DEV_ADMIN_NAME, DEV_STOREFRONT_NAME}
    store = FileKeyStore(keys_file_path(small_config))
    assert store.lookup(created[DEV_ADMIN_NAME]).scopes == ("admin",)
    assert store.lookup(created[DEV_STOREFRONT_NAME]).scopes == ("storefront",)
    assert read_dev_keys(small_config) == created
    assert mode_of(dev_keys_path(small_config)) == 0o600
    assert mode_of(keys_file_path(small_config)) == 0o600

    assert ensure_dev_keys(small_config) == {}  # the file has keys: nothing new, nothing shown
    assert len(store.records()) == 2


def _run_cli(cfg, argv: list[str], capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="verb")
    register(sub, lambda p: p.add_argument("--config"))
    args = parser.parse_args(argv)
    code = args.func(cfg, args)
    return code, capsys.readouterr().out


def test_keys_verb_creates_lists_and_revokes(small_config, capsys):
    code, out = _run_cli(small_config, ["keys", "create", "--name", "shop", "--scope", "storefront"], capsys)
    key = out.strip()
    assert code == 0 and key.startswith("ak_")
    assert FileKeyStore(keys_file_path(small_config)).lookup(key).name == "shop"

    code, out = _run_cli(small_config, ["keys", "list"], capsys)
    assert code == 0 and "shop" in out and "storefront" in out and key not in out

    code, out = _run_cli(small_config, ["keys", "list", "--json"], capsys)
    assert [k["name"] for k in json.loads(out)] == ["shop"]

    code, out = _run_cli(small_config, ["keys", "revoke", "--name", "shop"], capsys)
    assert code == 0 and "revoked key 'shop'" in out
    assert FileKeyStore(keys_file_path(small_config)).records() == []
