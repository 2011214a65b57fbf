"""The dashboard of a Ray that aisys starts: it answers on the configured port, on loopback by default, and
with token auth when it is bound beyond loopback.

Each case starts its own private Ray through ``aisys.runtime.init_ray`` in a child process (the session's
shared Ray in the pytest process has no dashboard and must keep none), then probes it over HTTP from here.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DRIVER = textwrap.dedent("""
    import json, os, sys
    from aisys.config import AppConfig
    from aisys.runtime import init_ray, with_dashboard_link

    cfg = AppConfig(ray=json.loads(sys.argv[1]))
    ray = init_ray(cfg)
    print(json.dumps({"link": with_dashboard_link(cfg).serve.ray_dashboard_url,
                      "auth_mode": os.environ.get("RAY_AUTH_MODE")}), flush=True)
    sys.stdin.read()  # until the test closes our stdin
    ray.shutdown()
""")


def free_port() -> int:
    """The dashboard's port, bound by Ray later: outside the ephemeral range and Ray's worker ports."""
    from aisys.runtime.ingress import free_tcp_port

    return free_tcp_port()


def lan_address() -> str | None:
    """An IPv4 address of this machine other than loopback (None when it has none)."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


@pytest.fixture
def private_ray(tmp_path):
    """Start a private Ray with the given ``ray`` settings in a child process; yield what it printed."""
    started: list[subprocess.Popen] = []

    def start(ray_settings: dict, env: dict[str, str]) -> dict:
        environ = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(ray_settings)], cwd=tmp_path,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**environ, **env})
        started.append(proc)
        line = proc.stdout.readline()
        assert line, f"the driver exited ({proc.wait(timeout=30)}) before Ray was up"
        return json.loads(line)

    yield start
    for proc in started:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_dashboard_answers_on_the_configured_port_on_loopback_only(private_ray):
    port = free_port()
    out = private_ray({"include_dashboard": True, "dashboard_port": port, "num_cpus": 1,
                       "object_store_memory_mb": 128}, {})
    assert out["link"] == f"http://127.0.0.1:{port}" and out["auth_mode"] == "disabled"
    page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()  # the UI itself, not just an API
    assert httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=10).status_code == 200
    lan = lan_address()
    if lan is not None:  # bound to loopback: another interface of the same machine finds nothing there
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{lan}:{port}/", timeout=5)


def test_a_dashboard_beyond_loopback_needs_the_token(private_ray):
    port, token = free_port(), secrets.token_hex(16)
    out = private_ray({"include_dashboard": True, "dashboard_host": "0.0.0.0", "dashboard_port": port,
                       "num_cpus": 1, "object_store_memory_mb": 128}, {"RAY_AUTH_TOKEN": token})
    assert out["auth_mode"] == "token"
    url = f"http://{lan_address() or '127.0.0.1'}:{port}"
    assert httpx.get(f"{url}/api/version", timeout=10).status_code == 401
    assert httpx.get(f"{url}/api/jobs/", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 403
    answer = httpx.get(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200 and answer.json().get("ray_version")
