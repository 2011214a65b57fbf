"""A private Ray's HAProxy gets its own side ports and keeps its stats page and exporter on loopback
(aisys.runtime.ingress.private_haproxy_environment and the shim), so two HAProxy-mode Rays can share a machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

from aisys.runtime.ingress import HAPROXY_SIDE_HOST_ENV, HAPROXY_SIDE_PORTS, private_haproxy_environment, write_haproxy_shim

CONFIG = """global
    stats socket /tmp/admin.sock mode 666 level admin
defaults
    mode http
frontend prometheus
    bind :{metrics}
    mode http
frontend http_frontend
    bind 0.0.0.0:8000
listen stats
  bind *:{stats}
  stats enable
"""


def test_free_side_ports_are_picked_and_an_operator_value_wins():
    ports = iter(range(41000, 41010))
    environ = {"RAY_SERVE_HAPROXY_STATS_PORT": "18404"}
    applied = private_haproxy_environment(environ, pick_port=lambda: next(ports))
    assert environ["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404" and "RAY_SERVE_HAPROXY_STATS_PORT" not in applied
    assert [environ[key] for key in HAPROXY_SIDE_PORTS[1:]] == ["41000", "41001", "41002"]
    assert environ[HAPROXY_SIDE_HOST_ENV] == "127.0.0.1"
    assert private_haproxy_environment(environ, pick_port=lambda: next(ports)) == {}  # a second call keeps them


def test_two_private_rays_get_different_side_ports():
    first, second = {}, {}
    private_haproxy_environment(first)
    private_haproxy_environment(second)
    assert all(int(first[key]) > 0 for key in HAPROXY_SIDE_PORTS)
    assert len({first[key] for key in HAPROXY_SIDE_PORTS}) == len(HAPROXY_SIDE_PORTS)


def run_shim(tmp_path: Path, env: dict[str, str]) -> str:
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(metrics=env["RAY_SERVE_HAPROXY_METRICS_PORT"],
                                    stats=env["RAY_SERVE_HAPROXY_STATS_PORT"]))
    shim = write_haproxy_shim(tmp_path / "shim", binary="/bin/true")
    subprocess.run([shim, "-f", str(config)], env={"PATH": "/usr/bin:/bin", **env}, check=True)
    return config.read_text()


def test_the_shim_binds_stats_and_exporter_to_loopback_only_when_asked(tmp_path):
    ports = {"RAY_SERVE_HAPROXY_METRICS_PORT": "45101", "RAY_SERVE_HAPROXY_STATS_PORT": "45404"}
    local = run_shim(tmp_path, {**ports, HAPROXY_SIDE_HOST_ENV: "127.0.0.1"})
    assert "    bind 127.0.0.1:45101\n" in local and "  bind 127.0.0.1:45404\n" in local
    assert "    bind 0.0.0.0:8000\n" in local  # the app's own frontend is the operator's choice
    assert "option http-buffer-request" in local
    # Without the variable (a cluster's `ray start`), Ray's binds stay as generated.
    cluster = run_shim(tmp_path, ports)
    assert "    bind :45101\n" in cluster and "  bind *:45404\n" in cluster


def test_free_ports_come_from_below_the_ephemeral_range_and_skip_taken_ones():
    import random
    import socket

    from aisys.runtime.ingress import ephemeral_port_range, free_tcp_port

    low, high = ephemeral_port_range()
    assert 1_024 <= low < high
    ports = {free_tcp_port() for _ in range(20)}
    assert all(20_000 <= port < low for port in ports)  # above Ray's worker ports, below the ephemeral range
    # A taken port is never answered: hold the first choice of a seeded draw, ask again with the same seed.
    first = free_tcp_port(rng=random.Random(7))
    with socket.socket() as held:
        held.bind(("127.0.0.1", first))
        held.listen()
        assert free_tcp_port(rng=random.Random(7)) != first
