"""The Ray dashboard of a Ray the CLI starts: where it binds, when token auth is on, and the /ops link (no Ray)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from aisys.config import AppConfig, ConfigError, load_config
from aisys.runtime import dashboard_options, is_loopback, private_ray_auth_mode, with_dashboard_link


def ray_cfg(**ray):
    return AppConfig(ray=ray).ray


def test_the_dashboard_binds_to_loopback_unless_told_otherwise():
    ray = AppConfig().ray
    assert ray.dashboard_host == "127.0.0.1" and ray.dashboard_port is None
    assert dashboard_options(ray_cfg(include_dashboard=True)) == {"include_dashboard": True,
                                                                  "dashboard_host": "127.0.0.1"}
    assert dashboard_options(ray_cfg(include_dashboard=True, dashboard_port=8300))["dashboard_port"] == 8300
    assert dashboard_options(ray_cfg(include_dashboard=False, dashboard_host="0.0.0.0")) == {"include_dashboard": False}


@pytest.mark.parametrize("bad", [{"dashboard_port": 0}, {"dashboard_port": 70000}, {"dashboard_host": ""},
                                 {"dashboard": True}])
def test_bad_dashboard_settings_are_refused_by_name(tmp_path, bad):
    path = tmp_path / "c.yaml"
    path.write_text("ray:\n" + "".join(f"  {k}: {v!r}\n" for k, v in bad.items()))
    with pytest.raises(ConfigError, match=next(iter(bad))):
        load_config(path, environ={})


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.0.1.5", True), ("localhost", True),
                                           ("::1", True), ("[::1]", True), ("0.0.0.0", False),
                                           ("10.1.2.3", False), ("::", False), ("head.example", False)])
def test_loopback_is_only_what_other_machines_cannot_reach(host, loopback):
    assert is_loopback(host) is loopback


def test_a_dashboard_beyond_loopback_turns_token_auth_on():
    exposed = ray_cfg(include_dashboard=True, dashboard_host="0.0.0.0")
    assert private_ray_auth_mode(exposed, {}) == "token"
    assert private_ray_auth_mode(exposed, {"RAY_AUTH_MODE": "token"}) == "token"
    # Loopback, or no dashboard at all: the private Ray stays without auth, as before (or as the operator says).
    assert private_ray_auth_mode(ray_cfg(include_dashboard=True), {}) == "disabled"
    assert private_ray_auth_mode(ray_cfg(include_dashboard=False, dashboard_host="0.0.0.0"), {}) == "disabled"
    assert private_ray_auth_mode(ray_cfg(include_dashboard=True), {"RAY_AUTH_MODE": "token"}) == "token"


def test_an_exposed_dashboard_without_auth_is_refused():
    exposed = ray_cfg(include_dashboard=True, dashboard_host="10.0.0.5")
    with pytest.raises(ValueError, match=r"dashboard_host='10.0.0.5'.*RAY_AUTH_MODE=disabled"):
        private_ray_auth_mode(exposed, {"RAY_AUTH_MODE": "disabled"})


def fake_ray(monkeypatch, webui_url: str | None, initialized: bool = True) -> None:
    """A stand-in ``ray`` module holding what Ray records of the dashboard it started."""
    node = SimpleNamespace(address_info={"webui_url": webui_url})
    module = SimpleNamespace(is_initialized=lambda: initialized,
                             _private=SimpleNamespace(worker=SimpleNamespace(global_worker=SimpleNamespace(node=node))))
    monkeypatch.setitem(sys.modules, "ray", module)


def test_ops_links_to_the_dashboard_ray_really_bound(monkeypatch):
    fake_ray(monkeypatch, "127.0.0.1:8266")  # 8265 was taken: Ray moved to the next port
    cfg = with_dashboard_link(AppConfig(ray={"include_dashboard": True}))
    assert cfg.serve.ray_dashboard_url == "http://127.0.0.1:8266"


def test_no_link_is_invented(monkeypatch):
    fake_ray(monkeypatch, "127.0.0.1:8265")
    given = AppConfig(ray={"include_dashboard": True}, serve={"ray_dashboard_url": "https://ops.example/ray"})
    assert with_dashboard_link(given).serve.ray_dashboard_url == "https://ops.example/ray"  # the operator's wins
    assert with_dashboard_link(AppConfig(ray={"include_dashboard": False})).serve.ray_dashboard_url is None
    joined = AppConfig(ray={"include_dashboard": True, "address": "auto"})
    assert with_dashboard_link(joined).serve.ray_dashboard_url is None  # a cluster's dashboard: set the URL
    fake_ray(monkeypatch, None)
    assert with_dashboard_link(AppConfig(ray={"include_dashboard": True})).serve.ray_dashboard_url is None
