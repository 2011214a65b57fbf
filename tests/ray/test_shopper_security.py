"""Issue 17's attacks against the real deployment ``aisys serve`` builds (Ray Serve, gateway, storefront, HTTP),
and an operator revoking one shopper session early.

The attacker holds only what an anonymous browser gets from /shop: a shopper session from
``POST /shop/session``. The app is the one :func:`aisys.serving.app.start_serving` deploys (the same path as
tests/ray/test_serve.py, whose lake/registry helpers this reuses), not a twin assembled for the test.
"""

import base64
import json
import time
from pathlib import Path

import httpx
import pytest
import ray

from aisys.gateway import ensure_dev_keys
from aisys.gateway.revocations import revocations_from_config
from aisys.serving.app import start_serving, stop_serving
from aisys.serving.session_actor import NAMESPACE, session_actor_name
from tests.ray.test_serve import commit_snapshot, free_port, register_untrained, shop_events

pytestmark = pytest.mark.ray

SHOPPER_BURST = 6
MINT_BURST = 8
MAX_SESSIONS = 25


def shopper(url: str) -> tuple[str, dict]:
    minted = httpx.post(f"{url}/shop/session", timeout=30)
    assert minted.status_code == 200, minted.text
    body = minted.json()
    return body["user_id"], {"Authorization": f"Bearer {body['token']}"}


def session_id(auth: dict) -> str:
    """The session id inside a shopper token (the test reads its payload; a client never needs to)."""
    payload = auth["Authorization"].removeprefix("Bearer st_").split(".", 1)[0]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sid"]


def collected(cfg) -> list[dict]:
    files = sorted((Path(cfg.paths.workspace) / "collector").glob("*.jsonl"))
    return [json.loads(line) for path in files for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_an_anonymous_browser_cannot_reach_other_users_or_unbound_state(ray_session, small_config):
    cfg = small_config
    cfg.serve.port = free_port()
    cfg.online.latency_budget_ms = 5000
    cfg.online.max_sessions = MAX_SESSIONS
    g = cfg.gateway
    g.rate_limit_actor_name = f"limiter-{cfg.serve.port}"  # buckets of this test only (the actor is detached)
    g.shopper_rate_limit_per_s, g.shopper_rate_limit_burst = 0.01, SHOPPER_BURST
    g.address_rate_limit_per_s, g.address_rate_limit_burst = 0.01, 200
    g.session_mint_rate_per_s, g.session_mint_burst = 0.01, MINT_BURST
    events = shop_events()
    register_untrained(cfg, events, commit_snapshot(cfg, events))
    admin = {"X-API-Key": ensure_dev_keys(cfg)["dev-admin"]}

    url = start_serving(cfg)
    try:
        # What the browser gets: a page without any key, then a session bound to a user the server chose.
        page = httpx.get(f"{url}/shop", timeout=30).text
        assert 'name="aisys-key"' not in page and "ak_" not in page
        me, auth = shopper(url)
        assert me.startswith("anon-")
        mine = httpx.get(f"{url}/recommendations/{me}", headers=auth, timeout=30)
        assert mine.status_code == 200 and mine.json()["user_id"] == me

        # 1. Reading another user's recommendations (their reasons disclose their history): refused, on every
        #    route that takes a user id, and the catalogue no longer lists user ids to a shopper.
        for path in ("/recommendations/user3", "/shop/recommendations/user3"):
            stolen = httpx.get(f"{url}{path}", headers=auth, timeout=30)
            assert stolen.status_code == 403, (path, stolen.text)
            assert stolen.json()["error"]["fields"][0]["field"] == "path.user_id"
        catalogue = httpx.get(f"{url}/catalogue", headers=auth, timeout=30).json()
        assert catalogue["sample_users"] == []

        # 2. Posting events for another user: refused, and nothing reaches the collector.
        forged = httpx.post(f"{url}/events", headers=auth, timeout=30,
                            json={"user_id": "user3", "item_id": "item05", "event_type": "purchase"})
        assert forged.status_code == 403 and forged.json()["error"]["fields"][0]["field"] == "body.user_id"

        # 3. Repricing an item: the body's price and category are ignored; the catalogue's are stored,
        #    with the session that sent the event.
        repriced = httpx.post(f"{url}/events", headers=auth, timeout=30, json={
            "user_id": me, "item_id": "item05", "event_type": "purchase", "price": 0.01, "category": "c-free",
            "event_id": "reprice-1"})
        assert repriced.status_code == 202, repriced.text
        unknown = httpx.post(f"{url}/events", headers=auth, timeout=30,
                             json={"user_id": me, "item_id": "item-made-up", "event_type": "view"})
        assert unknown.status_code == 422 and unknown.json()["error"]["fields"][0]["field"] == "body.item_id"

        # 4. Exhausting another shopper's limit: one session flooding meets its own bucket, not the other's.
        flood_user, flood_auth = shopper(url)
        codes = [httpx.get(f"{url}/recommendations/{flood_user}", headers=flood_auth, timeout=30).status_code
                 for _ in range(SHOPPER_BURST + 3)]
        assert codes.count(200) == SHOPPER_BURST and codes[-1] == 429
        assert httpx.get(f"{url}/recommendations/{me}", headers=auth, timeout=30).status_code == 200

        # 5. Minting sessions without end from one address: limited.
        mints = [httpx.post(f"{url}/shop/session", timeout=30).status_code for _ in range(MINT_BURST + 2)]
        assert 429 in mints and mints.count(200) <= MINT_BURST

        # 6. Growing the shared session store: even a server key posting for ever new user ids (a shopper can
        #    write only its own user) leaves at most online.max_sessions users in the actor.
        for n in range(3 * MAX_SESSIONS):
            posted = httpx.post(f"{url}/events", headers=admin, timeout=30,
                                json={"user_id": f"flood-{n}", "item_id": "item01", "event_type": "view"})
            assert posted.status_code == 202
        actor = ray.get_actor(session_actor_name(cfg), namespace=NAMESPACE)
        stats = ray.get(actor.stats.remote())
        assert stats["users"] <= MAX_SESSIONS and stats["evicted"] > 0, stats

        # 7. Early revocation: an operator ends one session on every replica before it expires. Its token gets 401
        #    on every guarded route. (Renewal with it is refused too, tests/unit/test_gateway_revocation.py; here
        #    step 5 has emptied this address's mint bucket, which POST /shop/session takes from first.)
        sid = next(row["sender"] for row in collected(cfg) if row.get("event_id") == "reprice-1").split(":", 1)[1]
        assert httpx.delete(f"{url}/admin/sessions/{sid}", headers=auth, timeout=30).status_code == 403
        revoked = httpx.delete(f"{url}/admin/sessions/{sid}", headers=admin, timeout=30)
        assert revoked.status_code == 200 and revoked.json()["session_id"] == sid, revoked.text
        #    The replica that took the DELETE knows at once; the others re-read the shared list within
        #    gateway.keys_reload_s (the documented bound; `aisys serve` runs one replica per CPU). After that bound
        #    every replica refuses: each route is asked several times, so both replicas answer.
        time.sleep(cfg.gateway.keys_reload_s + 0.5)
        event = {"user_id": me, "item_id": "item05", "event_type": "view"}
        for method, path, body in (("GET", f"/recommendations/{me}", None),
                                   ("GET", f"/shop/recommendations/{me}", None), ("GET", "/catalogue", None),
                                   ("GET", "/model", None), ("POST", "/events", event)) * 3:
            answer = httpx.request(method, f"{url}{path}", headers=auth, json=body, timeout=30)
            assert answer.status_code == 401, (path, answer.text)
            assert answer.json()["error"]["message"].startswith("revoked shopper session"), path
        #    The CLI's way (`aisys sessions revoke`): the shared file, which the replica re-reads (keys_reload_s).
        revocations_from_config(cfg).revoke(session_id(flood_auth))
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/recommendations/{flood_user}", headers=flood_auth, timeout=30).status_code != 401:
            assert time.monotonic() < deadline, "the replica did not pick up the revocation file"
            time.sleep(0.2)

        # Server-to-server keys keep working exactly as before: any user, any route.
        assert httpx.get(f"{url}/recommendations/user3", headers=admin, timeout=30).status_code == 200
        assert httpx.get(f"{url}/catalogue", headers=admin, timeout=30).json()["sample_users"]
    finally:
        stop_serving(cfg)

    rows = {row["event_id"]: row for row in collected(cfg)}
    assert (rows["reprice-1"]["price"], rows["reprice-1"]["category"]) == (2.0, "c2")  # item05: c(5 % 3), 2.0
    assert rows["reprice-1"]["sender"].startswith("session:")
    assert all(row["user_id"] != "user3" for row in rows.values())
    assert all(row["sender"].startswith("key:") for row in rows.values() if row["user_id"].startswith("flood-"))


def test_a_gateway_that_cannot_be_built_fails_the_replica(monkeypatch, small_config):
    """No more serving every route unguarded when the gateway fails (the old try/except-None path)."""
    from aisys.gateway import Gateway
    from aisys.serving.deployment import make_gateway

    def broken(cfg):
        raise RuntimeError("session secret unusable")

    monkeypatch.setattr(Gateway, "from_config", classmethod(lambda cls, cfg: broken(cfg)))
    with pytest.raises(RuntimeError, match="session secret"):
        make_gateway(small_config)
