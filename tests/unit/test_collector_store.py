"""The collector on object storage (``paths.collector_uri``), here on a local path (the S3 path runs in
``tests/e2e/test_multinode.py`` against moto): an event is stored before ``append`` returns, concurrent appends
share objects (group commit), a failed write acknowledges nothing, and the loop's claim/stage/ingested cycle
neither loses nor repeats an object."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from aisys.config import config_from_dict
from aisys.serving.collector_store import (
    ObjectStoreEventLog,
    claim_collected_objects,
    collected_objects,
    mark_ingested,
    open_event_log,
    purge_sender_objects,
    read_collected_events,
    stage_for_ingest,
)
from aisys.serving.event_log import JsonlEventLog
from tests.conftest import small_config_dict


def event(n: int, sender: str = "key:a") -> dict:
    return {"event_id": f"e{n}", "user_id": "u1", "item_id": f"i{n}", "event_type": "view",
            "timestamp": "2026-12-05T00:00:00+00:00", "sender": sender}


def test_the_config_chooses_the_collector(tmp_path):
    data = small_config_dict(tmp_path)
    assert isinstance(open_event_log(config_from_dict(data, "t")), JsonlEventLog)  # one machine: the folder
    data["paths"]["collector_uri"] = "relative/collector/"
    cfg = config_from_dict(data, "t")
    assert cfg.paths.collector_uri.startswith("/") and not cfg.paths.collector_uri.endswith("/")
    log = open_event_log(cfg)
    assert isinstance(log, ObjectStoreEventLog) and log.uri == cfg.paths.collector_uri
    data["paths"]["collector_uri"] = "s3://bucket/lake/collector"
    assert config_from_dict(data, "t").paths.collector_uri == "s3://bucket/lake/collector"  # URIs unchanged


def test_an_appended_event_is_stored_before_append_returns(tmp_path):
    log = ObjectStoreEventLog(str(tmp_path / "collector"))
    log.append(event(1))
    # Read independently of the writer, straight from the folder.
    objects = sorted((tmp_path / "collector").glob("*.jsonl"))
    assert len(objects) == 1 and json.loads(objects[0].read_text())["event_id"] == "e1"
    assert not list((tmp_path / "collector").glob(".*"))  # no partial object left behind


def test_concurrent_appends_share_objects_and_none_is_lost(tmp_path):
    log = ObjectStoreEventLog(str(tmp_path / "collector"))
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(log.append, [event(n) for n in range(400)]))
    stored = [e["event_id"] for e in read_collected_events(log.uri)]
    assert sorted(stored) == sorted(f"e{n}" for n in range(400))  # each exactly once
    assert log.events_written == 400 and log.objects_written < 400  # group commit: fewer PUTs than events


def test_two_writers_never_share_an_object_name(tmp_path):
    first, second = (ObjectStoreEventLog(str(tmp_path / "c")) for _ in range(2))
    for n in range(5):
        first.append(event(n))
        second.append(event(100 + n))
    assert len(list((tmp_path / "c").glob("*.jsonl"))) == 10


def test_a_failed_write_acknowledges_no_event_of_its_batch(tmp_path):
    log = ObjectStoreEventLog(str(tmp_path / "collector"))
    calls = []

    def broken_put(text: str, seq: int) -> None:
        calls.append(text)
        raise OSError("bucket unreachable")

    log._put = broken_put
    with pytest.raises(OSError, match="bucket unreachable"):
        log.append(event(1))
    assert calls and log.events_written == 0
    del log._put  # the store is back: the next append goes through
    log.append(event(2))
    assert [e["event_id"] for e in read_collected_events(log.uri)] == ["e2"]


def test_the_loop_claims_stages_and_marks_without_losing_a_late_object(tmp_path):
    uri = str(tmp_path / "collector")
    log = ObjectStoreEventLog(uri)
    for n in range(3):
        log.append(event(n))
    claimed = claim_collected_objects(uri)
    assert len(claimed) == 3 and all("/claimed/" in p for p in claimed)
    log.append(event(3))  # arrives while the ingest runs: not in this claim, in the next
    staged = stage_for_ingest(uri, claimed, tmp_path / "staging")
    assert sorted(json.loads(p.read_text())["event_id"] for p in staged) == ["e0", "e1", "e2"]
    assert claim_collected_objects(uri)[:3] == claimed  # an unfinished ingest's claim is returned again
    mark_ingested(uri, claim_collected_objects(uri))
    assert collected_objects(uri) == []
    assert len(read_collected_events(uri)) == 4 and read_collected_events(uri, include_ingested=False) == []


def test_purge_removes_one_senders_events_from_pending_objects_only(tmp_path):
    uri = str(tmp_path / "collector")
    log = ObjectStoreEventLog(uri)
    log.append(event(0, "key:gone"))
    mark_ingested(uri, claim_collected_objects(uri))  # already in the lake: left alone
    barrier = threading.Barrier(3)

    def send(n: int, sender: str) -> None:
        barrier.wait()
        log.append(event(n, sender))

    threads = [threading.Thread(target=send, args=(n, s)) for n, s in ((1, "key:gone"), (2, "key:kept"),
                                                                      (3, "key:gone"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    removed = purge_sender_objects(uri, "key:gone")
    assert sum(removed.values()) == 2
    pending = [e["event_id"] for e in read_collected_events(uri, include_ingested=False)]
    assert pending == ["e2"]
    assert [e["event_id"] for e in read_collected_events(uri) if e["sender"] == "key:gone"] == ["e0"]


def test_the_loop_ingests_the_objects_once_and_keeps_them_as_the_record(tmp_path, monkeypatch):
    from aisys import pipeline
    from aisys.loop.controller import ingest_collected

    data = small_config_dict(tmp_path)
    data["paths"]["collector_uri"] = str(tmp_path / "lake" / "collector")
    cfg = config_from_dict(data, "t")
    log = open_event_log(cfg)
    for n in range(3):
        log.append(event(n))
    seen: list[list[str]] = []

    def fake_ingest(cfg, paths, source=None, on_progress=None):
        seen.append(sorted(json.loads(open(p).read())["event_id"] for p in paths))
        return "manifest"

    monkeypatch.setattr(pipeline, "ingest", fake_ingest)
    assert ingest_collected(cfg) == ("manifest", 3)
    assert seen == [["e0", "e1", "e2"]]
    assert ingest_collected(cfg) == (None, 0)  # nothing new: nothing read twice
    assert not list((tmp_path / "ws" / "collector-staging").glob("*/*"))  # the local copies are gone
    assert len(read_collected_events(cfg.paths.collector_uri)) == 3  # the objects stay, under ingested/
