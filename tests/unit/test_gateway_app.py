"""The gateway on a bare FastAPI app, over real HTTP semantics (TestClient / raw ASGI), no Ray."""

# No `from __future__ import annotations`: FastAPI evaluates the route annotations.
import asyncio
import json
import logging
import re
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient

from aisys.config import AppConfig, config_from_dict
from aisys.gateway import Decision, Gateway, InMemoryKeyStore, InMemoryRateLimiter, Principal, RateLimiter, create_key
from aisys.gateway.middleware import ACCESS_LOGGER_NAME
from aisys.gateway.errors import install_error_handlers

ORIGIN = "https://shop.example.com"


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def gateway_config(**gateway) -> AppConfig:
    settings = {
        "rate_limit_per_s": 1.0,
        "rate_limit_burst": 5,
        "storefront_rate_limit_per_s": 1.0,
        "storefront_rate_limit_burst": 2,
        "max_body_bytes": 100,
        "cors_origins": [ORIGIN],
        "rate_limit_backend": "memory",
    }
    settings.update(gateway)
    return config_from_dict({"gateway": settings})


def build_app(gateway: Gateway, seen: list | None = None) -> FastAPI:
    """A bare app shaped like the serving one: JSON errors first, then the gateway."""
    app = FastAPI()
    install_error_handlers(app)
    calls = seen if seen is not None else []

    @app.get("/recommendations/{user_id}")
    async def recommendations(
        user_id: str, who: Annotated[Principal, Depends(gateway.require("recommend"))]
    ) -> dict:
        calls.append("recommendations")
        return {"user_id": user_id, "key": who.name}

    @app.post("/events", status_code=202)
    async def events(body: dict, who: Annotated[Principal, Depends(gateway.require("events"))]) -> dict:
        calls.append("events")
        return {"accepted": len(json.dumps(body)), "key": who.name}

    @app.post("/raw")
    async def raw(request: Request) -> dict:
        calls.append("raw")
        return {"bytes": len(await request.body())}

    @app.get("/admin/overview")
    async def admin(who: Annotated[Principal, Depends(gateway.require("admin"))]) -> dict:
        return {"key": who.name}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    gateway.install(app, echo_request_id=True)
    return app


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def keys():
    store = InMemoryKeyStore()
    plain = {
        "admin": create_key(store, "ops", ["admin"]),
        "shop": create_key(store, "shop", ["storefront"]),
        "recs": create_key(store, "recs-svc", ["recommend"]),
        "events": create_key(store, "collector", ["events"]),
    }
    return store, plain


@pytest.fixture
def gw(keys, clock):
    return Gateway(gateway_config(), keys[0], InMemoryRateLimiter(clock))


@pytest.fixture
def client(gw):
    with TestClient(build_app(gw)) as c:
        yield c


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"}
    assert body["error"]["code"] == code and body["error"]["message"] and body["error"]["fields"] == []
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# ---------------------------------------------------------------------- auth and scopes


def test_missing_key_is_401_json(client, gw):
    body = assert_error(client.get("/recommendations/u1"), 401, "unauthorized")
    assert "Authorization: Bearer" in body["error"]["message"]
    assert gw.counts["unauthorized"] == 1


def test_unknown_key_is_401(client, keys):
    response = client.get("/recommendations/u1", headers=bearer(keys[1]["recs"] + "x"))
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    basic = {"Authorization": "Basic Zm9vOmJhcg=="}  # not a bearer key
    assert_error(client.get("/recommendations/u1", headers=basic), 401, "unauthorized")


def test_bearer_and_x_api_key_headers_both_work(client, keys):
    assert client.get("/recommendations/u1", headers=bearer(keys[1]["recs"])).json()["key"] == "recs-svc"
    assert client.get("/recommendations/u1", headers={"X-API-Key": keys[1]["recs"]}).json()["key"] == "recs-svc"


def test_wrong_scope_is_403_naming_the_scope(client, keys):
    body = assert_error(client.get("/recommendations/u1", headers=bearer(keys[1]["events"])), 403, "forbidden")
    assert "'recommend'" in body["error"]["message"] and "'collector'" in body["error"]["message"]
    assert_error(client.get("/admin/overview", headers=bearer(keys[1]["shop"])), 403, "forbidden")


def test_admin_implies_every_scope_and_storefront_reaches_recommend_and_events(client, keys):
    admin, shop = bearer(keys[1]["admin"]), bearer(keys[1]["shop"])
    assert client.get("/recommendations/u1", headers=admin).status_code == 200
    assert client.post("/events", json={"a": 1}, headers=admin).status_code == 202
    assert client.get("/admin/overview", headers=admin).json() == {"key": "ops"}
    assert client.get("/recommendations/u1", headers=shop).status_code == 200
    assert client.post("/events", json={"a": 1}, headers=shop).status_code == 202


def test_unguarded_routes_need_no_key(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_auth_disabled_serves_everyone_as_anonymous(keys, clock):
    gateway = Gateway(gateway_config(auth=False), keys[0], InMemoryRateLimiter(clock))
    with TestClient(build_app(gateway)) as c:
        for _ in range(10):  # and is not rate-limited
            assert c.get("/admin/overview").json() == {"key": "anonymous"}


def test_openapi_declares_both_key_schemes_on_guarded_routes(client):
    spec = client.get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    assert spec["paths"]["/recommendations/{user_id}"]["get"]["security"]
    assert "security" not in spec["paths"]["/healthz"]["get"]


# ---------------------------------------------------------------------- rate limits


def test_burst_then_429_with_headers_then_refill(client, keys, clock, gw):
    shop = bearer(keys[1]["shop"])  # storefront: burst 2, 1/s
    first, second, third = (client.get("/recommendations/u1", headers=shop) for _ in range(3))
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit"] == "2"
    assert [first.headers["x-ratelimit-remaining"], second.headers["x-ratelimit-remaining"]] == ["1", "0"]
    body = assert_error(third, 429, "too_many_requests")
    assert "'shop'" in body["error"]["message"]
    assert third.headers["retry-after"] == "1"
    assert third.headers["x-ratelimit-remaining"] == "0" and third.headers["x-ratelimit-limit"] == "2"
    assert third.headers["x-ratelimit-reset"] == "2"
    assert gw.rate_limited == 1

    clock.now += 1.0
    refilled = client.get("/recommendations/u1", headers=shop)
    assert refilled.status_code == 200 and refilled.headers["x-ratelimit-remaining"] == "0"


def test_storefront_keys_get_tighter_limits_than_other_keys(client, keys):
    def allowed(key: str) -> int:
        return sum(client.get("/recommendations/u", headers=bearer(key)).status_code == 200 for _ in range(8))

    assert allowed(keys[1]["shop"]) == 2
    assert allowed(keys[1]["recs"]) == 5


def test_a_keys_own_override_wins(keys, clock):
    store = keys[0]
    vip = create_key(store, "vip", ["recommend"], rate_limit_burst=7)
    gateway = Gateway(gateway_config(), store, InMemoryRateLimiter(clock))
    with TestClient(build_app(gateway)) as c:
        codes = [c.get("/recommendations/u", headers=bearer(vip)).status_code for _ in range(8)]
    assert codes.count(200) == 7 and codes[-1] == 429


def test_forbidden_requests_do_not_spend_tokens(client, keys):
    shop = bearer(keys[1]["shop"])
    for _ in range(5):
        assert client.get("/admin/overview", headers=shop).status_code == 403
    assert client.get("/recommendations/u1", headers=shop).status_code == 200


class UnreachableLimiter(RateLimiter):
    """A limiter whose backend is down: open = a local per-replica bucket decides, closed = refused."""

    def __init__(self, fail_open: bool) -> None:
        self.fail_open = fail_open

    def acquire(self, key_id: str, rate: float, burst: int) -> Decision:
        if self.fail_open:
            return Decision(True, burst - 1, burst, 0.0, 0.0, error="actor unreachable", fallback=True)
        return Decision(False, 0, burst, 0.0, 2.0, error="actor unreachable")


def test_limiter_outage_fails_open_or_closed_as_configured(keys):
    recs = bearer(keys[1]["recs"])
    open_gw = Gateway(gateway_config(), keys[0], UnreachableLimiter(fail_open=True))
    with TestClient(build_app(open_gw)) as c:
        served = c.get("/recommendations/u1", headers=recs)
    # Served, and still limited: the local bucket's headers are there.
    assert served.status_code == 200 and "x-ratelimit-limit" in served.headers
    assert open_gw.counts["rate_limiter_degraded"] == 1

    closed_gw = Gateway(gateway_config(), keys[0], UnreachableLimiter(fail_open=False))
    with TestClient(build_app(closed_gw)) as c:
        refused = c.get("/recommendations/u1", headers=recs)
    assert_error(refused, 503, "rate_limiter_unavailable")
    assert refused.headers["retry-after"] == "2"


def test_listeners_hear_each_refusal_with_the_key_name(client, gw, keys):
    heard: list = []
    gw.listeners.append(lambda code, name: heard.append((code, name)))
    client.get("/recommendations/u1")
    client.get("/admin/overview", headers=bearer(keys[1]["shop"]))
    for _ in range(3):
        client.get("/recommendations/u1", headers=bearer(keys[1]["shop"]))
    assert heard == [("unauthorized", None), ("forbidden", "shop"), ("too_many_requests", "shop")]


# ---------------------------------------------------------------------- body limits


def test_413_on_content_length_before_the_endpoint_runs(keys, clock):
    seen: list = []
    gateway = Gateway(gateway_config(), keys[0], InMemoryRateLimiter(clock))
    with TestClient(build_app(gateway, seen)) as c:
        response = c.post("/raw", content=b"x" * 101)
        assert_error(response, 413, "payload_too_large")
        assert "100 bytes" in response.json()["error"]["message"]
        assert seen == [] and gateway.counts["payload_too_large"] == 1
        # At the limit is fine.
        ok = c.post("/raw", content=b"y" * 100)
        assert ok.json() == {"bytes": 100}


def test_413_on_a_streamed_body_without_content_length(client, keys, gw):
    def chunks():
        for _ in range(5):
            yield b"z" * 40

    headers = {**bearer(keys[1]["admin"]), "Content-Type": "application/json"}
    response = client.post("/events", content=chunks(), headers=headers)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")
    assert gw.counts["payload_too_large"] == 1


def test_a_streamed_body_is_cut_off_before_it_is_all_read(gw):
    """Raw ASGI: the app stops receiving once the limit is passed; the rest is never read."""
    app = build_app(gw)
    pulled: list[int] = []
    sent: list[dict] = []
    total_chunks = 50

    async def receive() -> dict:
        pulled.append(1)
        return {"type": "http.request", "body": b"q" * 30, "more_body": len(pulled) < total_chunks}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/raw", "raw_path": b"/raw", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"test"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1), "server": ("test", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert len(pulled) == 4  # 4 x 30 bytes > 100: stopped there, 46 chunks never read


# ---------------------------------------------------------------------- request ids and access log


def test_a_sane_request_id_is_echoed(client):
    response = client.get("/healthz", headers={"X-Request-ID": "trace-42.abc:1"})
    assert response.headers["x-request-id"] == "trace-42.abc:1"
    assert response.headers.get_list("x-request-id") == ["trace-42.abc:1"]


@pytest.mark.parametrize("incoming", [None, "has space", "x" * 129, "<script>"])
def test_a_missing_or_insane_request_id_is_replaced(client, incoming):
    headers = {"X-Request-ID": incoming} if incoming else {}
    response = client.get("/recommendations/u1", headers=headers)
    rid = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert response.json()["request_id"] == rid  # the error body names the same id


def test_access_log_is_one_json_line_per_request_and_never_holds_a_key(client, keys, caplog):
    secret = keys[1]["recs"]
    wrong = keys[1]["admin"][:-2] + "zz"
    with caplog.at_level(logging.DEBUG):
        client.get("/recommendations/u1?k=3", headers={**bearer(secret), "X-Request-ID": "req-1"})
        client.get("/recommendations/u1", headers={"X-API-Key": secret})
        client.get("/recommendations/u1", headers=bearer(wrong))
    access = [r for r in caplog.records if r.name == ACCESS_LOGGER_NAME]
    lines = [json.loads(r.getMessage()) for r in access]
    assert len(lines) == 3
    assert lines[0]["method"] == "GET" and lines[0]["path"] == "/recommendations/u1"
    assert lines[0]["status"] == 200 and lines[0]["request_id"] == "req-1" and lines[0]["key"] == "recs-svc"
    assert lines[0]["ms"] >= 0
    assert lines[2]["status"] == 401 and lines[2]["key"] is None
    everything = caplog.text + "".join(r.getMessage() for r in caplog.records)
    for leaked in (secret, wrong, "Bearer", keys[1]["admin"]):
        assert leaked not in everything


# ---------------------------------------------------------------------- CORS


def test_cors_allows_the_configured_origin(client):
    preflight = client.options(
        "/recommendations/u1",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    simple = client.get("/healthz", headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "x-ratelimit-remaining" in simple.headers["access-control-expose-headers"].lower()


def test_cors_refuses_another_origin(client):
    preflight = client.options(
        "/recommendations/u1",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    simple = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


# ---------------------------------------------------------------------- from_config


@pytest.fixture
def restore_access_logger():
    access = logging.getLogger(ACCESS_LOGGER_NAME)
    saved = (list(access.handlers), access.propagate, access.level)
    yield access
    access.handlers[:], access.propagate = saved[0], saved[1]
    access.setLevel(saved[2])


def test_from_config_serves_the_key_file_and_logs_bare_json(small_config, restore_access_logger, capsys):
    from aisys.gateway import ensure_dev_keys

    cfg = small_config.model_copy(update={"gateway": gateway_config(cache_ttl_s=5).gateway})
    cfg.serve.access_log = True  # off by default (docs/serving.md, Benchmarks); this test is about its lines
    dev = ensure_dev_keys(cfg)
    gateway = Gateway.from_config(cfg)
    assert gateway.cache is not None and gateway.cache.ttl_s == 5
    with TestClient(build_app(gateway)) as c:
        assert c.get("/admin/overview", headers=bearer(dev["dev-admin"])).json() == {"key": "dev-admin"}
        assert c.get("/admin/overview", headers=bearer(dev["dev-storefront"])).status_code == 403
        with pytest.raises(RuntimeError, match="already installed"):
            gateway.install(c.app)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [(line["key"], line["status"]) for line in lines] == [("dev-admin", 200), ("dev-storefront", 403)]
