"""Shopper sessions without Ray: token signing, verification and expiry; the secret file; what a session may do.

The attacks over the real Serve deployment are in tests/ray/test_shopper_security.py; here is the pure logic
and the gateway's rules on the real API app (``build_fastapi_app``) around a real ``OnlineService``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat

import pytest
from fastapi.testclient import TestClient

from aisys.config import config_from_dict
from aisys.gateway import Gateway, InMemoryKeyStore, InMemoryRateLimiter, create_key
from aisys.gateway.shopper import (
    InvalidToken,
    ShopperTokens,
    is_shopper_token,
    load_or_create_secret,
    session_secret_path,
)
from aisys.serving.event_log import InMemoryEventLog
from aisys.serving.routes import build_fastapi_app
from aisys.storefront.catalogue import Catalogue, Product
from tests.unit.test_api import make_service


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


SECRET = bytes(range(32))


# ---------------------------------------------------------------------- tokens (pure)


def test_a_minted_token_verifies_to_its_user_until_it_expires():
    clock = Clock()
    tokens = ShopperTokens(SECRET, ttl_s=60, clock=clock)
    token, session = tokens.mint("anon-1")
    assert is_shopper_token(token) and not is_shopper_token("ak_something")
    assert tokens.verify(token) == session and session.user_id == "anon-1"
    clock.now += 59
    assert tokens.verify(token).user_id == "anon-1"
    clock.now += 1
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(token)


def test_each_mint_is_a_new_session():
    tokens = ShopperTokens(SECRET, ttl_s=60)
    (_, a), (_, b) = tokens.mint("u"), tokens.mint("u")
    assert a.sid != b.sid


def _payload(token: str) -> dict:
    body = token[3:].split(".")[0]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def _forge(token: str, **changes) -> str:
    payload = {**_payload(token), **changes}
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"st_{body}.{token.split('.')[1]}"


def test_changing_the_user_or_the_expiry_breaks_the_signature():
    tokens = ShopperTokens(SECRET, ttl_s=60)
    token, _ = tokens.mint("anon-1")
    for forged in (_forge(token, uid="alice"), _forge(token, exp=2**40)):
        with pytest.raises(InvalidToken, match="signature"):
            tokens.verify(forged)


def test_a_token_from_another_secret_is_refused():
    token, _ = ShopperTokens(b"x" * 32, ttl_s=60).mint("alice")
    with pytest.raises(InvalidToken, match="signature"):
        ShopperTokens(SECRET, ttl_s=60).verify(token)


@pytest.mark.parametrize("bad", ["", "st_", "st_abc", "st_.sig", "st_a.b.c", "st_!!!.x", "ak_x.y", "st_" + "a" * 2000])
def test_malformed_tokens_are_refused_without_raising_anything_else(bad):
    with pytest.raises(InvalidToken):
        ShopperTokens(SECRET, ttl_s=60).verify(bad)


def test_a_signed_payload_that_is_not_a_session_is_refused():
    tokens = ShopperTokens(SECRET, ttl_s=60)
    body = base64.urlsafe_b64encode(b'{"v":2,"sid":"s","uid":"u","exp":99999999999}').rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="version"):
        tokens.verify(f"st_{body}.{tokens._sign(body)}")


def test_the_secret_file_is_created_once_0600_and_reused(tmp_path):
    path = tmp_path / "keys" / "session-secret"
    first = load_or_create_secret(path)
    assert len(first) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first
    os.chmod(path, 0o644)
    with pytest.raises(RuntimeError, match="0600"):
        load_or_create_secret(path)


def test_the_secret_lives_beside_the_key_file(tmp_path):
    cfg = config_from_dict({"paths": {"workspace": str(tmp_path)}, "gateway": {"keys_file": str(tmp_path / "k/keys.json")}})
    assert session_secret_path(cfg) == tmp_path / "k" / "session-secret"


# ---------------------------------------------------------------------- the gateway's rules on the API app


CATALOGUE = Catalogue([Product(f"i{n}", f"c{n % 2}", float(n), 10 - n) for n in range(1, 9)], ["alice"])


def api(**gateway) -> tuple[TestClient, dict, InMemoryEventLog, Gateway]:
    settings = {"rate_limit_backend": "memory", "cache_ttl_s": 0, "shopper_rate_limit_per_s": 0.001,
                "shopper_rate_limit_burst": 5, "address_rate_limit_per_s": 0.001, "address_rate_limit_burst": 1000,
                "session_mint_rate_per_s": 0.001, "session_mint_burst": 50}
    settings.update(gateway)
    cfg = config_from_dict({"gateway": settings})
    store = InMemoryKeyStore()
    keys = {s: create_key(store, f"key-{s}", [s]) for s in ("admin", "sessions", "events")}
    gw = Gateway(cfg, store, InMemoryRateLimiter(), tokens=ShopperTokens(secrets.token_bytes(32), 3600))
    log = InMemoryEventLog()
    service = make_service(event_log=log)
    service.catalogue = lambda: CATALOGUE
    return TestClient(build_fastapi_app(service, default_k=3, max_k=8, gateway=gw)), keys, log, gw


def shopper(client: TestClient) -> tuple[dict, dict]:
    minted = client.post("/shop/session")
    assert minted.status_code == 200, minted.text
    body = minted.json()
    return body, {"Authorization": f"Bearer {body['token']}"}


def test_a_browser_gets_an_anonymous_session_without_a_key():
    client, *_ = api()
    body, auth = shopper(client)
    assert body["user_id"].startswith("anon-") and 3590 <= body["expires_in_s"] <= 3600
    assert client.get(f"/recommendations/{body['user_id']}", headers=auth).status_code == 200
    assert shopper(client)[0]["user_id"] != body["user_id"]  # every session is a new anonymous user


def test_a_session_reads_and_writes_only_its_own_user():
    client, _, log, _ = api()
    me, auth = shopper(client)
    other = client.get("/recommendations/alice", headers=auth)
    assert other.status_code == 403
    assert other.json()["error"]["fields"] == [{"field": "path.user_id", "message": "not this session's user"}]
    posted = client.post("/events", headers=auth, json={"user_id": "alice", "item_id": "i1", "event_type": "view"})
    assert posted.status_code == 403 and posted.json()["error"]["fields"][0]["field"] == "body.user_id"
    assert log.events == []  # nothing reached the collector
    assert client.put("/admin/stock", headers=auth, json={"items": {"i1": False}}).status_code == 403
    assert client.post("/sessions", headers=auth, json={"user_id": "alice"}).status_code == 403


def test_event_attributes_come_from_the_catalogue_and_the_sender_is_recorded():
    client, keys, log, _ = api()
    me, auth = shopper(client)
    body = {"user_id": me["user_id"], "item_id": "i3", "event_type": "purchase", "category": "c9", "price": 0.01}
    assert client.post("/events", headers=auth, json=body).status_code == 202
    (row,) = log.events
    assert (row["category"], row["price"]) == ("c1", 3.0)  # the catalogue's, not the client's 0.01
    assert row["sender"].startswith("session:")
    # A server key's events are stamped too, with the key id; its unknown items get no attributes at all.
    admin = {"X-API-Key": keys["admin"]}
    assert client.post("/events", headers=admin, json={**body, "user_id": "bob", "item_id": "new"}).status_code == 202
    assert log.events[1]["sender"].startswith("key:") and log.events[1]["price"] is None


def test_a_shopper_may_post_only_catalogue_items():
    client, _, log, _ = api()
    me, auth = shopper(client)
    refused = client.post("/events", headers=auth, json={"user_id": me["user_id"], "item_id": "nope", "event_type": "view"})
    assert refused.status_code == 422 and refused.json()["error"]["fields"][0]["field"] == "body.item_id"
    assert log.events == []


def test_one_shopper_flooding_does_not_exhaust_another():
    client, *_ = api()
    (a, auth_a), (b, auth_b) = shopper(client), shopper(client)
    codes = [client.get(f"/recommendations/{a['user_id']}", headers=auth_a).status_code for _ in range(8)]
    assert codes == [200] * 5 + [429] * 3
    assert client.get(f"/recommendations/{b['user_id']}", headers=auth_b).status_code == 200


def test_one_address_is_limited_across_all_its_sessions():
    client, *_ = api(address_rate_limit_burst=6)
    sessions = [shopper(client) for _ in range(4)]
    codes = [client.get(f"/recommendations/{me['user_id']}", headers=auth).status_code
             for me, auth in sessions for _ in range(2)]
    assert codes.count(200) == 6 and codes[-2:] == [429, 429]


def test_minting_is_limited_per_address():
    client, *_ = api(session_mint_burst=3)
    codes = [client.post("/shop/session").status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]


def test_a_session_is_renewed_for_the_same_user_and_a_forged_one_is_refused():
    client, *_ = api()
    me, auth = shopper(client)
    renewed = client.post("/shop/session", headers=auth).json()
    assert renewed["user_id"] == me["user_id"] and renewed["token"] != me["token"]
    forged = _forge(me["token"], uid="alice")
    assert client.post("/shop/session", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    assert client.get("/recommendations/alice", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_a_sign_in_service_mints_a_named_session():
    client, keys, *_ = api()
    named = client.post("/sessions", headers={"X-API-Key": keys["sessions"]}, json={"user_id": "alice"})
    assert named.status_code == 200 and named.json()["user_id"] == "alice"
    auth = {"Authorization": f"Bearer {named.json()['token']}"}
    assert client.get("/recommendations/alice", headers=auth).status_code == 200
    assert client.post("/sessions", headers={"X-API-Key": keys["events"]}, json={"user_id": "a"}).status_code == 403
    taken = client.post("/sessions", headers={"X-API-Key": keys["admin"]}, json={"user_id": "anon-123"})
    assert taken.status_code == 422 and taken.json()["error"]["fields"][0]["field"] == "body.user_id"


def test_server_keys_still_act_for_any_user():
    client, keys, log, _ = api()
    admin = {"X-API-Key": keys["admin"]}
    assert client.get("/recommendations/alice", headers=admin).status_code == 200
    assert client.post("/events", headers={"X-API-Key": keys["events"]},
                       json={"user_id": "alice", "item_id": "i1", "event_type": "view"}).status_code == 202
