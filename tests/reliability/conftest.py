"""Fixtures of the reliability suite: the whole HTTP app (API + storefront) behind a real gateway, no Ray.

:func:`build_full_app` wires what a Serve replica wires in
``RecommenderService.__serve_build_asgi_app__`` (routes, gateway, storefront and
operator pages, request metrics), around a real :class:`OnlineService` over a
tiny untrained bundle, a real :class:`Gateway` with an in-memory key store and
an in-memory limiter. It is rebuilt here rather than taken from the deployment
because importing the deployment imports Ray Serve.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from aisys.config import AppConfig, config_from_dict
from aisys.gateway import Gateway, InMemoryKeyStore, InMemoryRateLimiter, create_key
from aisys.gateway.revocations import InMemoryRevocationList
from aisys.gateway.shopper import ShopperTokens
from aisys.serving.event_log import InMemoryEventLog
from aisys.serving.routes import build_fastapi_app
from aisys.serving.telemetry import install_request_metrics
from aisys.storefront.catalogue import Catalogue
from aisys.storefront.routes import install_storefront
from tests.unit.test_api import DEFAULT_K, MAX_K, make_service

ORIGIN = "https://shop.example.com"
MAX_BODY_BYTES = 4096
# One key per scope, each holding only that scope (admin implies the others).
SCOPE_KEYS = ("admin", "storefront", "recommend", "events")


def reliability_config(**gateway: Any) -> AppConfig:
    """A config whose gateway has a small body limit, one CORS origin and generous default limits."""
    settings = {
        "max_body_bytes": MAX_BODY_BYTES,
        "cors_origins": [ORIGIN],
        "rate_limit_backend": "memory",
        "rate_limit_per_s": 1e6,
        "rate_limit_burst": 1_000_000,
        "storefront_rate_limit_per_s": 1e6,
        "storefront_rate_limit_burst": 1_000_000,
        "cache_ttl_s": 0,
    }
    settings.update(gateway)
    return config_from_dict({"gateway": settings}, "reliability tests")


@dataclass
class FullApp:
    """The app, its gateway and service, the event log, and the plaintext key of each scope."""

    app: FastAPI
    gateway: Gateway
    service: Any
    log: InMemoryEventLog
    keys: dict[str, str] = field(default_factory=dict)

    def client(self) -> TestClient:
        # raise_server_exceptions=False: a bug must show as the 500 a client would get, not as a test error.
        return TestClient(self.app, raise_server_exceptions=False)


def build_full_app(cfg: AppConfig | None = None) -> FullApp:
    """The replica's app (see the module docstring) with one key per scope already created."""
    torch.set_num_threads(1)
    cfg = cfg or reliability_config()
    store = InMemoryKeyStore()
    keys = {scope: create_key(store, f"key-{scope}", [scope]) for scope in SCOPE_KEYS}
    gateway = Gateway(cfg, store, InMemoryRateLimiter(), tokens=ShopperTokens(secrets.token_bytes(32), 3600.0),
                      revocations=InMemoryRevocationList(3600.0))
    log = InMemoryEventLog()
    service = make_service(event_log=log)
    app = build_fastapi_app(service, default_k=DEFAULT_K, max_k=MAX_K, gateway=gateway)

    async def overview() -> dict[str, Any]:
        return {"champion": service.model_info().model_dump()}

    async def no_report():
        return None

    install_storefront(app, catalogue=Catalogue, storefront_key=lambda: keys["storefront"],
                       guard=gateway.require, overview=overview, latest_report=no_report,
                       recommend=service.recommend)
    install_request_metrics(app)
    return FullApp(app=app, gateway=gateway, service=service, log=log, keys=keys)


@pytest.fixture
def full_app() -> FullApp:
    return build_full_app()


def report_figure(fault: str, observed: str, lost: str) -> None:
    """Print one row of the figures table; ``benchmarks/chaos.py`` collects these lines (run pytest with -s)."""
    print(f"\nCHAOS|{fault}|{observed}|{lost}", flush=True)


def assert_error_shape(response, status: int | None = None) -> dict:
    """The one JSON error shape of ``aisys.gateway.errors``; returns the body."""
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error", "request_id"}, body
    assert set(body["error"]) == {"code", "message", "fields"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and isinstance(body["error"]["fields"], list)
    return body
