"""Events carry their sender; ``aisys keys revoke NAME --purge`` takes a key's events out of the collector files."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from aisys.cli import main
from aisys.gateway.keys import FileKeyStore, create_key, keys_file_path
from aisys.serving.collector_store import collector_folder
from aisys.serving.event_log import JsonlEventLog, purge_sender
from aisys.serving.service import event_with_catalogue_attributes
from aisys.storefront.catalogue import Product
from aisys.config import config_from_dict
from tests.conftest import small_config_dict


def test_catalogue_attributes_replace_whatever_the_client_sent():
    raw = {"event_id": "e", "item_id": "i1", "category": "cheap", "price": 0.01}
    out = event_with_catalogue_attributes(raw, Product("i1", "shoes", 59.0, 3), "session:abc")
    assert (out["category"], out["price"], out["sender"]) == ("shoes", 59.0, "session:abc")
    unknown = event_with_catalogue_attributes(raw, None, "key:k1")
    assert (unknown["category"], unknown["price"]) == (None, None)  # never the client's
    assert raw["price"] == 0.01  # the input is not modified


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.rglob("*.jsonl")) for line in path.read_text().splitlines()]


def test_purge_removes_one_senders_events_from_pending_and_claimed_files(tmp_path):
    log = JsonlEventLog(tmp_path)
    for n in range(6):
        log.append({"event_id": f"e{n}", "sender": "key:bad" if n % 2 else "key:good"})
    (tmp_path / "claimed").mkdir()
    (tmp_path / "claimed" / "events-20260101.jsonl").write_text(
        json.dumps({"event_id": "c1", "sender": "key:bad"}) + "\nnot json\n")
    removed = purge_sender(tmp_path, "key:bad")
    assert sum(removed.values()) == 4
    remaining = [line for path in sorted(tmp_path.rglob("*.jsonl")) for line in path.read_text().splitlines()]
    assert "not json" in remaining  # a bad line is ingestion's to quarantine, not ours to drop
    assert all('"key:bad"' not in line for line in remaining)
    assert [json.loads(line)["event_id"] for line in remaining if line != "not json"] == ["e0", "e2", "e4"]
    assert purge_sender(tmp_path, "key:bad") == {}  # idempotent


def test_appends_during_a_purge_are_not_lost(tmp_path):
    log = JsonlEventLog(tmp_path)
    for n in range(2000):
        log.append({"event_id": f"old{n}", "sender": "key:bad" if n % 2 else "key:good"})
    stop = threading.Event()
    written: list[str] = []

    def writer() -> None:
        n = 0
        while not stop.is_set() or n < 200:
            event_id = f"new{n}"
            JsonlEventLog(tmp_path).append({"event_id": event_id, "sender": "key:good"})  # as another replica
            written.append(event_id)
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    for _ in range(5):
        purge_sender(tmp_path, "key:bad")
    stop.set()
    thread.join()
    ids = [line["event_id"] for line in rows(tmp_path)]
    assert set(written) <= set(ids)  # every concurrent append survived the rewrites
    assert not any(i.startswith("old") and int(i[3:]) % 2 for i in ids)


def test_revoke_purge_through_the_cli(tmp_path, capsys):
    cfg = config_from_dict(small_config_dict(tmp_path))
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))
    store = FileKeyStore(keys_file_path(cfg))
    create_key(store, "scraper", ["events"])
    create_key(store, "shop", ["events"])
    ids = {r.name: r.key_id for r in store.records()}
    log = JsonlEventLog(collector_folder(cfg))
    for name in ("scraper", "shop", "scraper"):
        log.append({"event_id": f"{name}-{len(rows(collector_folder(cfg)))}", "sender": f"key:{ids[name]}"})

    assert main(["keys", "revoke", "scraper", "--purge", "--config", str(config)]) == 0
    assert "purged 2 event(s)" in capsys.readouterr().err
    assert [r["sender"] for r in rows(collector_folder(cfg))] == [f"key:{ids['shop']}"]
    assert [r.name for r in FileKeyStore(keys_file_path(cfg)).records()] == ["shop"]


def test_revoke_purge_reaches_a_clusters_object_collector(tmp_path, capsys):
    from aisys.serving.collector_store import ObjectStoreEventLog

    data = small_config_dict(tmp_path)
    data["paths"]["collector_uri"] = str(tmp_path / "objects")
    cfg = config_from_dict(data)
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))
    store = FileKeyStore(keys_file_path(cfg))
    create_key(store, "scraper", ["events"])
    create_key(store, "shop", ["events"])
    ids = {r.name: r.key_id for r in store.records()}
    log = ObjectStoreEventLog(cfg.paths.collector_uri)
    for n, name in enumerate(("scraper", "shop", "scraper")):
        log.append({"event_id": f"e{n}", "sender": f"key:{ids[name]}"})

    assert main(["keys", "revoke", "scraper", "--purge", "--config", str(config)]) == 0
    assert "purged 2 event(s)" in capsys.readouterr().err
    kept = [json.loads(line) for path in sorted((tmp_path / "objects").glob("*.jsonl"))
            for line in path.read_text().splitlines()]
    assert [r["sender"] for r in kept] == [f"key:{ids['shop']}"]
