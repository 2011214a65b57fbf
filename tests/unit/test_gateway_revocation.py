"""Revoking one shopper session before it expires (issue 17): the list, the gateway's check on the real API app,
``DELETE /admin/sessions/{sid}`` and ``aisys sessions revoke SID --purge``. No Ray; the Serve deployment's test is
in tests/ray/test_shopper_security.py."""

from __future__ import annotations

import errno
import json
import stat

import pytest

from aisys.cli import main
from aisys.config import config_from_dict
from aisys.gateway.revocations import (
    FileRevocationList,
    InMemoryRevocationList,
    RevocationError,
    parse_session_id,
    revocations_from_config,
    revocations_path,
)
from aisys.serving.collector_store import collector_folder
from aisys.serving.event_log import JsonlEventLog
from tests.conftest import small_config_dict
from tests.unit.test_gateway_shopper import Clock, api, shopper

SID = "0123456789abcdef"


def test_a_session_id_is_taken_as_logs_and_events_show_it():
    assert parse_session_id(SID) == parse_session_id(f"session:{SID}") == parse_session_id(f" shopper:{SID}") == SID
    for junk in ("", "abc", SID.upper(), SID + "0", "../../etc", "session:"):
        with pytest.raises(RevocationError, match="16 hex digits"):
            parse_session_id(junk)


def test_an_entry_lasts_one_session_lifetime_then_is_dropped():
    clock = Clock()
    revoked = InMemoryRevocationList(ttl_s=60, clock=clock)
    until = revoked.revoke(f"session:{SID}")
    assert until == clock.now + 60 and revoked.is_revoked(SID) and not revoked.is_revoked("f" * 16)
    clock.now += 59
    assert revoked.is_revoked(SID)
    clock.now += 1  # every token of the session has expired by now: the entry is no longer needed
    assert not revoked.is_revoked(SID) and revoked.revoked() == {}
    revoked.revoke("f" * 16)
    assert list(revoked.entries()) == ["f" * 16]  # the expired entry was dropped by the next write: bounded


def test_the_list_is_capped(monkeypatch):
    monkeypatch.setattr("aisys.gateway.revocations.MAX_REVOKED", 2)
    revoked = InMemoryRevocationList(ttl_s=60)
    revoked.revoke("a" * 16)
    revoked.revoke("b" * 16)
    revoked.revoke("b" * 16)  # again: no new entry
    with pytest.raises(RevocationError, match="rotate the session secret"):
        revoked.revoke("c" * 16)


def test_the_file_is_shared_by_replicas_and_bounded(tmp_path):
    clock = Clock()
    path = tmp_path / "gw" / "session-revocations.json"
    writer = FileRevocationList(path, ttl_s=60, reload_every_s=0, clock=clock)
    replica = FileRevocationList(path, ttl_s=60, reload_every_s=0, clock=clock)  # another process, same file
    assert not replica.is_revoked(SID)
    writer.revoke(SID)
    assert replica.is_revoked(SID)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    clock.now += 61
    writer.revoke("f" * 16)
    assert set(json.loads(path.read_text())["revoked"]) == {"f" * 16}  # the expired entry left the file

    path.write_text("{not json")
    with pytest.raises(RevocationError, match="not valid JSON"):
        FileRevocationList(path, ttl_s=60).entries()


def test_a_read_only_list_says_where_to_revoke(tmp_path, monkeypatch):
    def read_only(path, data):  # what a Kubernetes Secret volume answers (chmod does not stop root, who runs CI)
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr("aisys.gateway.json_file.write_json_atomic", read_only)
    with pytest.raises(RevocationError, match="Read-only file system.*gateway.session_revocations_file"):
        FileRevocationList(tmp_path / "session-revocations.json", ttl_s=60).revoke(SID)


def test_the_list_lives_beside_the_key_file(tmp_path):
    cfg = config_from_dict({"paths": {"workspace": str(tmp_path)},
                            "gateway": {"keys_file": str(tmp_path / "k/keys.json")}})
    assert revocations_path(cfg) == tmp_path / "k" / "session-revocations.json"
    cfg.gateway.session_revocations_file = str(tmp_path / "shared" / "revoked.json")
    assert revocations_path(cfg) == tmp_path / "shared" / "revoked.json"


# ---------------------------------------------------------------------- the gateway on the API app


def test_a_revoked_session_gets_401_on_every_guarded_route_and_cannot_renew():
    client, keys, log, gw = api()
    gw.revocations = InMemoryRevocationList(ttl_s=3600)
    me, auth = shopper(client)
    other, other_auth = shopper(client)
    user = me["user_id"]
    event = {"user_id": user, "item_id": "i1", "event_type": "view"}
    assert client.get(f"/recommendations/{user}", headers=auth).status_code == 200
    assert client.post("/events", headers=auth, json=event).status_code == 202
    sid = log.events[0]["sender"].split(":", 1)[1]  # what the operator finds in the collector

    admin = {"X-API-Key": keys["admin"]}
    assert client.delete(f"/admin/sessions/{sid}", headers=auth).status_code == 403  # a shopper cannot revoke
    assert client.delete(f"/admin/sessions/{sid}", headers={"X-API-Key": keys["events"]}).status_code == 403
    revoked = client.delete(f"/admin/sessions/session:{sid}", headers=admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["session_id"] == sid and "--purge" in revoked.json()["events"]

    for answer in (client.get(f"/recommendations/{user}", headers=auth),
                   client.post("/events", headers=auth, json=event),
                   client.get("/model", headers=auth),
                   client.post("/shop/session", headers=auth)):  # renewing would hand out a fresh, unrevoked token
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["message"].startswith("revoked shopper session")
    assert len(log.events) == 1
    assert client.get(f"/recommendations/{other['user_id']}", headers=other_auth).status_code == 200  # only that one
    assert gw.counts["unauthorized"] == 4

    bad = client.delete("/admin/sessions/not-a-session", headers=admin)
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "path.sid"


def test_revoke_and_purge_through_the_cli(tmp_path, capsys):
    cfg = config_from_dict(small_config_dict(tmp_path))
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))
    log = JsonlEventLog(collector_folder(cfg))
    for n, sender in enumerate((f"session:{SID}", "session:" + "f" * 16, f"session:{SID}", "key:k1")):
        log.append({"event_id": f"e{n}", "sender": sender})

    assert main(["sessions", "revoke", f"shopper:{SID}", "--purge", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert f"revoked shopper session {SID}" in captured.out and "purged 2 event(s)" in captured.err
    remaining = [json.loads(line)["event_id"] for path in sorted(collector_folder(cfg).glob("*.jsonl"))
                 for line in path.read_text().splitlines()]
    assert remaining == ["e1", "e3"]
    assert revocations_from_config(cfg).is_revoked(SID)  # what every replica of the workspace reads

    assert main(["sessions", "list", "--json", "--config", str(config)]) == 0
    assert list(json.loads(capsys.readouterr().out)) == [SID]
    assert main(["sessions", "revoke", "nonsense", "--config", str(config)]) == 1  # one line, no traceback
    assert "invalid session id 'nonsense'" in capsys.readouterr().err
