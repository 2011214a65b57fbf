"""Security over the whole app: every route needs a key with its scope, keys are stored hashed, CORS, no key in logs.

The routes come from the app itself (its OpenAPI and its route table, storefront
included), not from a hand-picked list: a new route that is neither in
``GUARDED`` nor in ``OPEN`` fails :func:`test_every_route_is_classified`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from pathlib import Path

import pytest
import yaml
from starlette.routing import Mount

from aisys.config import load_config
from aisys.serving.app import ServeAppArgs

from aisys.gateway import FileKeyStore, create_key
from aisys.gateway.keys import granted_scopes
from aisys.gateway.middleware import ACCESS_LOGGER_NAME
from tests.reliability.conftest import (
    ORIGIN,
    SCOPE_KEYS,
    FullApp,
    assert_error_shape,
    build_full_app,
    reliability_config,
)

pytestmark = pytest.mark.reliability

# (method, path template) -> the scope the route needs.
GUARDED = {
    ("GET", "/recommendations/{user_id}"): "recommend",
    ("GET", "/model"): "recommend",
    ("POST", "/events"): "events",
    ("PUT", "/admin/stock"): "admin",
    ("GET", "/admin/counters"): "admin",
    ("GET", "/catalogue"): "storefront",
    ("GET", "/shop/recommendations/{user_id}"): "recommend",
    ("POST", "/sessions"): "sessions",
    ("DELETE", "/admin/sessions/{sid}"): "admin",
    ("GET", "/admin/overview"): "admin",
    ("GET", "/admin/reports/drift/latest"): "admin",
}
# Open on purpose: health, the two pages (they hold no secret; the operator page asks for a key), the redirect,
# the static assets, and the route that hands a browser its shopper session (limited per client address).
OPEN = {"/healthz", "/shop", "/ops", "/", "/shop/static", "/shop/session"}
# FastAPI's own schema and docs pages: open, and mounted only with gateway.api_docs (true for local development,
# false on a cluster: serve_configs/cluster.yaml). Listed apart so that either way is a visible decision.
FASTAPI_DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/docs-assets"}
SERVE_CLUSTER = Path(__file__).resolve().parents[2] / "serve_configs" / "cluster.yaml"

SAMPLE_BODIES = {
    "/events": {"user_id": "alice", "item_id": "i5", "event_type": "view"},
    "/admin/stock": {"items": {"i1": True}},
    "/sessions": {"user_id": "alice"},
}


def route_table(app) -> set[tuple[str, str]]:
    """Every ``(method, path)`` the app routes, walking included routers and mounts (``MOUNT`` for a mount)."""
    found: set[tuple[str, str]] = set()

    def walk(routes) -> None:
        for route in routes:
            original = getattr(route, "original_router", None)  # FastAPI 0.165 keeps included routers nested
            if original is not None:
                walk(original.routes)
            elif isinstance(route, Mount):
                found.add(("MOUNT", route.path))
            else:
                for method in route.methods or ():
                    if method != "HEAD":
                        found.add((method, route.path))

    walk(app.routes)
    return found


def openapi_operations(app) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops}


def call(client, method: str, template: str, **headers):
    path = template.replace("{user_id}", "alice").replace("{sid}", "0123456789abcdef")
    body = SAMPLE_BODIES.get(path)
    return client.request(method, path, json=body, headers=headers)


def test_every_route_is_classified(full_app: FullApp):
    table = route_table(full_app.app)
    operations = openapi_operations(full_app.app)
    assert operations <= table  # the OpenAPI documents nothing that is not routed
    paths = {path for _, path in table}
    assert {op for op in table if op[1] not in OPEN | FASTAPI_DOCS} == set(GUARDED)
    assert paths - set(p for _, p in GUARDED) == OPEN | FASTAPI_DOCS
    # The OpenAPI itself marks exactly the guarded operations as needing a key.
    spec = full_app.app.openapi()["paths"]
    secured = {(m.upper(), p) for p, ops in spec.items() for m, op in ops.items() if op.get("security")}
    assert secured == set(GUARDED)


def test_without_api_docs_the_docs_routes_are_absent():
    app = build_full_app(reliability_config(api_docs=False))
    table = route_table(app.app)
    assert {path for _, path in table} - {p for _, p in GUARDED} == OPEN  # open routes: exactly the app's own
    client = app.client()
    for path in sorted(FASTAPI_DOCS):
        assert assert_error_shape(client.get(path), 404)["error"]["code"] == "not_found", path
    # The schema is still built in-process (tests and tools read it); it is only not served.
    assert set(GUARDED) <= openapi_operations(app.app)


def test_with_api_docs_the_docs_routes_are_served(full_app: FullApp):
    client = full_app.client()
    assert client.get("/openapi.json").json()["paths"].keys() >= {p for _, p in GUARDED}
    for page in ("/docs", "/redoc"):
        assert client.get(page).headers["content-type"].startswith("text/html"), page


def test_the_cluster_serve_config_turns_the_docs_routes_off():
    """serve_configs/cluster.yaml's args, loaded the way its builder (aisys.serving.app.build_app) loads them."""
    (application,) = yaml.safe_load(SERVE_CLUSTER.read_text())["applications"]
    args = ServeAppArgs.model_validate(application["args"])
    cfg = load_config(args.config_path, args.overrides, environ={})
    assert cfg.gateway.api_docs is False and cfg.gateway.auth is True
    client = build_full_app(cfg).client()
    for path in sorted(FASTAPI_DOCS):
        assert client.get(path).status_code == 404, path


@pytest.mark.parametrize("method,path", sorted(GUARDED), ids=[f"{m} {p}" for m, p in sorted(GUARDED)])
def test_a_guarded_route_refuses_no_key_a_wrong_key_and_a_wrong_scope(full_app: FullApp, method, path):
    client = full_app.client()
    missing = call(client, method, path)
    assert assert_error_shape(missing, 401)["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    forged = call(client, method, path, **{"X-API-Key": full_app.keys["admin"][:-3] + "abc"})
    assert assert_error_shape(forged, 401)["error"]["code"] == "unauthorized"
    empty_bearer = call(client, method, path, Authorization="Bearer ")
    assert_error_shape(empty_bearer, 401)

    needed = GUARDED[(method, path)]
    wrong = [s for s in SCOPE_KEYS if needed not in granted_scopes([s])]
    right = [s for s in SCOPE_KEYS if needed in granted_scopes([s])]
    assert wrong and right
    for scope in wrong:
        denied = call(client, method, path, Authorization=f"Bearer {full_app.keys[scope]}")
        body = assert_error_shape(denied, 403)
        assert body["error"]["code"] == "forbidden" and repr(needed) in body["error"]["message"]
    for scope in right:
        allowed = call(client, method, path, Authorization=f"Bearer {full_app.keys[scope]}")
        assert allowed.status_code not in (401, 403), (scope, allowed.text[:200])
        assert allowed.status_code < 500, allowed.text[:200]
    # Nothing above reached the event log but the allowed calls.
    assert len(full_app.log.events) == (len(right) if path == "/events" else 0)


def test_open_routes_answer_without_a_key(full_app: FullApp):
    client = full_app.client()
    assert client.get("/healthz").json()["status"] == "ok"
    for page in ("/shop", "/ops"):
        response = client.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert "content-security-policy" in response.headers
    assert client.get("/", follow_redirects=False).headers["location"] == "/shop"
    assert client.get("/shop/static/app.js").status_code == 200
    # No key of any scope reaches a page: the shop asks POST /shop/session for a shopper session instead.
    shop = client.get("/shop").text
    assert 'name="aisys-key"' not in shop
    assert all(full_app.keys[s] not in shop + client.get("/ops").text for s in SCOPE_KEYS)
    minted = client.post("/shop/session")
    assert minted.status_code == 200 and minted.json()["user_id"].startswith("anon-")


def test_the_key_file_holds_only_digests(tmp_path):
    path = tmp_path / "keys.json"
    store = FileKeyStore(path)
    plaintexts = {scope: create_key(store, f"k-{scope}", [scope]) for scope in SCOPE_KEYS}
    text = path.read_text()
    for key in plaintexts.values():
        assert key not in text and key[3:] not in text  # neither the key nor its random part
    records = {r["name"]: r for r in json.loads(text)["keys"]}
    assert set(records) == {f"k-{scope}" for scope in SCOPE_KEYS}
    for scope, key in plaintexts.items():
        assert records[f"k-{scope}"]["digest"] == hashlib.sha256(key.encode()).hexdigest()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.lookup(plaintexts["events"]).name == "k-events"


def test_cors_allows_only_the_configured_origin(full_app: FullApp):
    client = full_app.client()
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "x-api-key"}
    ok = client.options("/recommendations/alice", headers={"Origin": ORIGIN, **preflight})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-credentials" not in ok.headers
    for other in ("https://evil.example", "http://shop.example.com", ORIGIN + ".evil.example", "null"):
        refused = client.options("/recommendations/alice", headers={"Origin": other, **preflight})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        simple = client.get("/recommendations/alice", headers={"Origin": other, "X-API-Key": full_app.keys["admin"]})
        assert "access-control-allow-origin" not in simple.headers


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        if record.exc_info:
            self.lines.append(logging.Formatter().formatException(record.exc_info))


def test_no_key_ever_appears_in_the_logs(full_app: FullApp, capfd):
    capture = _Capture()
    loggers = [logging.getLogger(), logging.getLogger(ACCESS_LOGGER_NAME), logging.getLogger("aisys")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(capture)
        lg.setLevel(logging.DEBUG)
    secrets = list(full_app.keys.values())
    near_miss = full_app.keys["admin"][:-2] + "zz"
    try:
        client = full_app.client()
        for key in secrets + [near_miss]:
            for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
                client.get("/recommendations/alice?k=2", headers=headers)
                client.post("/events", json={"user_id": "alice", "item_id": "i1", "event_type": "like"},
                            headers=headers)  # a 422 with a key
                client.put("/admin/stock", json={"items": {}}, headers=headers)
                client.get("/catalogue", headers=headers)
                client.post("/events", content=b"x" * 10_000, headers=headers)  # 413
    finally:
        for lg, level in saved:
            lg.removeHandler(capture)
            lg.setLevel(level)
    out, err = capfd.readouterr()
    logged = "\n".join(capture.lines) + out + err
    # One handler on several loggers of one hierarchy sees a line more than once: count request ids.
    access = {json.loads(line)["request_id"]: json.loads(line) for line in capture.lines
              if line.startswith('{"event":"access"')}.values()
    assert len(access) == 5 * 2 * (len(secrets) + 1)  # the capture saw every request: the check is not vacuous
    assert {line["key"] for line in access} == {f"key-{s}" for s in SCOPE_KEYS} | {None}
    for key in secrets + [near_miss]:
        assert key not in logged
        assert key[3:20] not in logged  # not even a prefix of the random part
    assert "Bearer" not in logged
