"""Kill one of 2 Serve replicas under an open-loop HTTP load, behind the chosen ingress; print one JSON line.

Run by ``test_replica_kill.py`` in a subprocess, because the ingress is chosen by environment variables that
must be set before Ray starts (``aisys.runtime.init_ray`` sets them from ``serve.ingress``), and the pytest
process already holds the suite's Ray::

    python -m tests.reliability.replica_kill_driver --root /tmp/x [--ingress haproxy] [--rate 200]

It starts a private Ray (2 CPUs, 256 MiB object store, a short temp dir), registers a small untrained champion over
a 12-user shop snapshot, serves it with 2 replicas and the gateway, then sends requests on a fixed schedule (open
loop: request ``i`` is sent at ``start + i / rate`` whatever the answers, by the shared ``send_on_schedule``; 9 in
10 are ``GET /recommendations``, 1 in 10 a ``POST /events`` with its own ``event_id``). No request is retried.
``--kill-at-s`` into the load one replica is killed (``ray.kill(no_restart=True)``); the load goes on ``--after-s``
seconds after Serve reports 2 RUNNING replicas again, one of them new. The output line (``RESULT {...}``) holds:
sent, ok, failed by status or exception, the achieved send rate, latency percentiles (from each request's scheduled
time, so a stall counts in full), replaced_s, and the checks that no event was applied twice (session store) and
what the collector file holds. With ``--ingress haproxy``, HAProxy's own log lines (syslog on a unix socket) say
which requests it retried.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from aisys.loadgen.http import Outcome, Send, client_session, send_on_schedule
from aisys.loadgen.stats import percentile

N_POST_EVERY = 10  # 1 request in 10 is a POST /events
HAPROXY_LINE = re.compile(
    r" (?P<server>\S+/\S+) (?P<timers>\S+) (?P<status>-?\d+) \d+ \S+ \S+ (?P<term>\S{4}) "
    r"(?P<conns>\S+/\S+/\S+/\S+/(?P<retries>\+?\d+)) \S+ \"(?P<method>\S+) (?P<path>\S+)")


class SyslogReader:
    """Collect HAProxy's log datagrams on a unix socket (``RAY_SERVE_HAPROXY_LOG_TARGET``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.5)
        self.lines: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.lines.append(self.sock.recv(65536).decode(errors="replace"))
            except (socket.timeout, OSError):
                continue

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=2)
        self.sock.close()

    def summary(self) -> dict:
        """Requests HAProxy logged, those it retried (and how they ended), and its non-2xx answers."""
        requests = [m.groupdict() for m in map(HAPROXY_LINE.search, self.lines) if m]
        retried = [r for r in requests if r["retries"] not in ("0", "+0")]
        bad = [r for r in requests if not r["status"].startswith("2") or r["term"] != "----"]
        keep = ("server", "status", "term", "retries", "method", "path", "timers")
        return {
            "log_lines": len(self.lines),
            "requests_logged": len(requests),
            "retried": len(retried),
            "retried_by_method_status": dict(Counter(f"{r['method']} {r['status']}" for r in retried)),
            "not_clean": len(bad),  # not 2xx, or a termination state other than "----"
            "not_clean_samples": [{k: r[k] for k in keep} for r in bad[:20]],
            "retried_samples": [{k: r[k] for k in keep} for r in retried[:20]],
            "other_samples": [line[-300:] for line in self.lines if not HAPROXY_LINE.search(line)
                              and " stopped (cumulated" not in line and "Health check" not in line][:15],
        }

    def save(self, path: Path) -> None:
        path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in self.lines))


def isolate_haproxy(ray_tmp: Path, free_port) -> None:
    """HAProxy's files and side ports under this run's temp dir: another local Ray may hold the defaults."""
    hap = ray_tmp / "hap"
    hap.mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(hap / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(hap / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(hap),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(hap / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(hap / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_LOG_TARGET": str(hap / "log.sock"),
        # The Python proxy HAProxy falls back to when no replica is up.
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
    })


T0 = time.perf_counter()


def progress(what: str) -> None:
    """One line on stderr per phase, with the seconds since start (the test shows them when it fails)."""
    print(f"[driver {time.perf_counter() - T0:6.1f}s] {what}", file=sys.stderr, flush=True)


class OpenLoop:
    """Request ``i`` at ``start + i / rate`` until stopped (shared ``send_on_schedule``), each outcome kept, no retry.

    aiohttp, not httpx: measured here, an httpx AsyncClient spent 5.7 ms of CPU per request at 150 requests/s
    (more than a replica), which on a 2-core box starved the very servers under test.
    """

    def __init__(self, session, rate: float, n_users: int, n_items: int) -> None:
        self.session, self.rate, self.n_users, self.n_items = session, rate, n_users, n_items
        self.stop_at: float | None = None
        self.outcomes: list[dict] = []

    def request(self, i: int) -> Send:
        user, post = f"user{i % self.n_users}", i % N_POST_EVERY == N_POST_EVERY - 1
        tag = {"i": i, "post": post, "user": user}
        if not post:
            return Send("GET", f"/recommendations/{user}", params={"k": "5"}, tag=tag)
        event = {"event_id": f"rk-{i}", "user_id": user, "item_id": f"item{(i // N_POST_EVERY) % self.n_items:02d}",
                 "event_type": "view"}
        return Send("POST", "/events", json=event, tag=tag)

    def record(self, out: Outcome) -> None:
        self.outcomes.append({**out.request.tag, "outcome": out.outcome, "scheduled": out.scheduled,
                              "sent": out.sent, "latency": out.latency})

    async def run(self) -> None:
        await send_on_schedule(self.session, self.rate, self.request, self.record, drain_timeout_s=60,
                               should_stop=lambda: self.stop_at is not None and time.perf_counter() >= self.stop_at)


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process and every process under it (the private Ray's), by pid."""
    import psutil

    me = psutil.Process()
    seen = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            name = proc.name() if proc.pid != me.pid else "load driver"
            name = "ray::ServeReplica" if name.startswith("ray::ServeReplica") else name
            seen[proc.pid] = (name, sum(proc.cpu_times()[:2]))  # user + system
        except psutil.Error:
            pass
    return seen


def cpu_used(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds per process name between two :func:`cpu_seconds` snapshots (new processes count in full)."""
    used: Counter = Counter()
    for pid, (name, total) in after.items():
        used[name] += total - before.get(pid, (name, 0.0))[1]
    return {name: round(sec, 1) for name, sec in used.most_common(8)}


def replica_names(ray, deployment: str) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::") and f"#{deployment}#" in a["name"]}


def running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    return int(serve.status().applications[app].deployments[deployment].replica_states.get("RUNNING", 0))


async def wait_ready(url: str, key: str, timeout: float = 90) -> None:
    """Until 20 answers in a row are 200 through the ingress (HAProxy learns the replicas after serve.run)."""
    deadline = time.perf_counter() + timeout
    streak = 0
    async with httpx.AsyncClient(base_url=url, timeout=10, headers={"X-API-Key": key}) as client:
        while streak < 20:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{url} did not answer 20 requests in a row within {timeout}s")
            try:
                ok = (await client.get("/recommendations/user0", params={"k": 5})).status_code == 200
            except httpx.HTTPError:
                ok = False
            streak = streak + 1 if ok else 0
            if not ok:
                await asyncio.sleep(0.2)


async def scenario(args, cfg, url: str, key: str) -> dict:
    from aisys.serving.app import APP_NAME
    from aisys.serving.deployment import DEPLOYMENT_NAME
    from tests.ray.test_serve import N_ITEMS, N_USERS
    import ray

    await wait_ready(url, key)
    progress("ready: 20 answers in a row through the ingress")
    before = await asyncio.to_thread(replica_names, ray, DEPLOYMENT_NAME)
    assert len(before) == 2, before
    victim = sorted(before)[0]
    async with client_session({"X-API-Key": key}, 1000, args.request_timeout_s, base_url=url) as session:
        load = OpenLoop(session, args.rate, N_USERS, N_ITEMS)
        cpu_before = cpu_seconds()
        runner = asyncio.create_task(load.run())
        await asyncio.sleep(args.kill_at_s)
        killed_at = time.perf_counter()
        replaced_s = None
        if args.no_kill:  # a baseline: the same load, nothing killed
            victim = ""
        else:
            await asyncio.to_thread(ray.kill, ray.get_actor(victim, namespace="serve"), no_restart=True)
            progress(f"killed {victim}")
        while victim and time.perf_counter() < killed_at + args.replace_timeout_s:
            names = await asyncio.to_thread(replica_names, ray, DEPLOYMENT_NAME)
            running = await asyncio.to_thread(running_replicas, APP_NAME, DEPLOYMENT_NAME)
            if victim not in names and len(names) == 2 and running == 2:
                replaced_s = time.perf_counter() - killed_at
                progress(f"replaced after {replaced_s:.1f}s")
                break
            await asyncio.sleep(0.25)
        load.stop_at = time.perf_counter() + args.after_s
        await runner
        progress(f"load done: {len(load.outcomes)} requests")
        cpu = cpu_used(cpu_before, cpu_seconds())
    after = await asyncio.to_thread(replica_names, ray, DEPLOYMENT_NAME)
    return {**summarise(load, killed_at, replaced_s, victim, before, after), "cpu_s_by_process": cpu}


def _rounded(value: float | None, scale: float = 1.0) -> float | None:
    return None if value is None else round(value * scale, 1)


def summarise(load: OpenLoop, killed_at: float, replaced_s: float | None, victim: str, before, after) -> dict:
    outcomes = load.outcomes
    ok = [o for o in outcomes if o["outcome"] in ("200", "202")]
    failed = [o for o in outcomes if o["outcome"] not in ("200", "202")]
    sends = sorted(o["sent"] for o in outcomes)
    span = sends[-1] - sends[0] if len(sends) > 1 else float("nan")
    lateness = [o["sent"] - o["scheduled"] for o in outcomes]
    latencies = [o["latency"] * 1000 for o in ok]
    return {
        "sent": len(outcomes),
        "ok": len(ok),
        "failed": len(failed),
        "failed_by_outcome": dict(Counter(f"{'POST' if o['post'] else 'GET'} {o['outcome']}" for o in failed)),
        "failed_at_s_after_kill": [round(o["scheduled"] - killed_at, 2) for o in failed[:30]],
        "posts_ok": sum(o["post"] for o in ok),
        "target_rate": load.rate,
        "achieved_rate": round((len(sends) - 1) / span, 1) if len(sends) > 1 else 0.0,
        "duration_s": round(span, 1),
        "send_lateness_p99_ms": _rounded(percentile(lateness, 99), 1000),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": _rounded(percentile(latencies, 99)),
        "max_ms": round(max(latencies), 1) if latencies else None,
        "sent_before_kill": sum(o["scheduled"] < killed_at for o in outcomes),
        "replaced_s": None if replaced_s is None else round(replaced_s, 1),
        "victim_gone": victim not in after,
        "replicas_after": len(after),
        "new_replicas": len(after - before),
        "_ok_posts_by_user": dict(Counter(o["user"] for o in ok if o["post"])),
    }


async def event_checks(cfg, posts_by_user: dict[str, int], n_users: int, seeded_items: int) -> dict:
    """No POST applied twice: each user's session grew by exactly its accepted POSTs; the collector lines."""
    import ray

    from aisys.serving.collector_store import collector_folder
    from aisys.serving.session_actor import NAMESPACE, ActorSessionStore, session_actor_name

    handle = ray.get_actor(session_actor_name(cfg), namespace=NAMESPACE)
    sessions = await ActorSessionStore(handle).get_many([f"user{u}" for u in range(n_users)])
    applied = {f"user{u}": len(s.items) - seeded_items for u, s in enumerate(sessions)}
    excess = {user: n - posts_by_user.get(user, 0) for user, n in applied.items()}
    lines = [json.loads(line) for path in sorted(collector_folder(cfg).glob("*.jsonl"))
             for line in path.read_text().splitlines() if line.strip()]
    ids = [row["event_id"] for row in lines if str(row.get("event_id", "")).startswith("rk-")]
    return {
        # With no failed request this is exactly 0; above 0, a POST the client saw fail was applied anyway.
        "session_items_excess": sum(excess.values()),
        "session_items_excess_by_user": {u: e for u, e in excess.items() if e},
        "session_replays_ignored": await handle.replays.remote(),
        "collector_lines": len(ids),
        "collector_duplicate_lines": len(ids) - len(set(ids)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="workspace, lake and MLflow go here")
    parser.add_argument("--ingress", choices=["proxy", "direct", "haproxy"], default="haproxy")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (open loop)")
    parser.add_argument("--kill-at-s", type=float, default=4.0, help="seconds into the load before the kill")
    parser.add_argument("--after-s", type=float, default=10.0, help="load kept on after the replacement runs")
    parser.add_argument("--replace-timeout-s", type=float, default=60.0)
    parser.add_argument("--no-kill", action="store_true", help="baseline: the same load without the kill")
    parser.add_argument("--request-timeout-s", type=float, default=30.0)
    args = parser.parse_args(argv)

    from tests.ray.test_serve import free_port

    began = time.perf_counter()
    # Ray's unix socket paths must stay under ~107 bytes: a short private temp dir.
    ray_tmp = Path(f"/tmp/rk{secrets.token_hex(3)}")
    ray_tmp.mkdir()
    syslog = None
    try:
        if args.ingress == "haproxy":
            isolate_haproxy(ray_tmp, free_port)
            syslog = SyslogReader(Path(os.environ["RAY_SERVE_HAPROXY_LOG_TARGET"]))
        result = run(args, ray_tmp)
        if syslog is not None:
            result["haproxy"] = syslog.summary()
            syslog.save(args.root / "haproxy.log")
        result["run_s"] = round(time.perf_counter() - began, 1)
        print("RESULT " + json.dumps(result), flush=True)
    finally:
        teardown(ray_tmp, syslog)
    return 0


def teardown(ray_tmp: Path, syslog: SyslogReader | None) -> None:
    """Stop the private Ray, then whatever still runs from its temp dir (HAProxy outlives its actor).

    Not ``serve.shutdown()``: it waits out Serve's 30 s drain, for a Ray that is thrown away anyway.
    """
    import psutil
    import ray

    ray.shutdown()
    progress("Ray stopped")
    leftovers = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(ray_tmp) in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
                proc.terminate()
                leftovers.append(proc)
        except psutil.Error:
            continue
    psutil.wait_procs(leftovers, timeout=5)
    if leftovers:
        progress(f"stopped {len(leftovers)} leftover process(es) of {ray_tmp}")
    if syslog is not None:
        syslog.close()
    shutil.rmtree(ray_tmp, ignore_errors=True)


def run(args, ray_tmp: Path) -> dict:
    import torch

    from aisys.config import config_from_dict
    from aisys.gateway import create_key
    from aisys.gateway.keys import FileKeyStore, keys_file_path
    from aisys.runtime import init_ray
    from aisys.serving.app import start_serving
    from tests.conftest import small_config_dict
    from tests.ray.test_serve import LENGTH, N_USERS, commit_snapshot, free_port, register_untrained, shop_events

    torch.set_num_threads(1)
    cfg = config_from_dict(small_config_dict(args.root), "replica kill driver")
    cfg.ray.num_cpus, cfg.ray.object_store_memory_mb = 2, 256
    cfg.serve.ingress = args.ingress
    cfg.serve.port, cfg.serve.num_replicas = free_port(), 2
    cfg.serve.access_log = False  # 200 log lines a second on a 2-core box
    cfg.online.latency_budget_ms = 5000  # a busy box must not trigger the budget fallback here
    events = shop_events()
    register_untrained(cfg, events, commit_snapshot(cfg, events))
    key = create_key(FileKeyStore(keys_file_path(cfg)), "load", ["admin"], rate_limit_per_s=1e6,
                     rate_limit_burst=1_000_000)
    progress("snapshot and champion registered")
    init_ray(cfg, _temp_dir=str(ray_tmp))
    progress("Ray up")
    began = time.perf_counter()
    url = start_serving(cfg)
    started_s = time.perf_counter() - began
    progress(f"serving at {url}")
    result = asyncio.run(scenario(args, cfg, url, key))
    result.update(asyncio.run(event_checks(cfg, result.pop("_ok_posts_by_user"), N_USERS, LENGTH)))
    result.update({"ingress": args.ingress, "serve_started_s": round(started_s, 1)})
    return result


if __name__ == "__main__":
    raise SystemExit(main())
