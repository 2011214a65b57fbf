"""A real Prometheus for tests (Debian's ``prometheus`` package, installed by ``scripts/install-system-deps.sh``).

:func:`running_prometheus` starts one scraping Ray's metrics export port every second and stops it on exit;
:func:`prometheus_query` reads a PromQL instant query back through Prometheus's HTTP API.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PROMETHEUS = shutil.which("prometheus")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def immediate_rules(source: Path, folder: Path) -> Path:
    """A copy of the alert rules ``source`` with every ``for:`` removed, so an alert fires on the first
    evaluation instead of after minutes; everything else (expressions, thresholds, labels) is the shipped rule."""
    import yaml

    rules = yaml.safe_load(Path(source).read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    target = Path(folder) / "alerts-immediate.yml"
    target.write_text(yaml.safe_dump(rules))
    return target


def prometheus_alerts(port: int) -> list[dict]:
    """The alerts Prometheus holds now (``/api/v1/alerts``), each with ``labels`` and ``state``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5) as response:
        return json.loads(response.read())["data"]["alerts"]


@contextmanager
def running_prometheus(metrics_port: int, folder: Path, rule_files: tuple[Path, ...] = ()) -> Iterator[int]:
    """A Prometheus scraping ``127.0.0.1:metrics_port`` (config and TSDB under ``folder``), evaluating
    ``rule_files`` every second; yields its web port."""
    if PROMETHEUS is None:
        raise RuntimeError("prometheus is not installed: run scripts/install-system-deps.sh")
    web_port = _free_port()
    config = Path(folder) / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: {json.dumps([str(p) for p in rule_files])}\n"
        f"scrape_configs: [{{job_name: ray, static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]}}]\n"
    )
    server = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{web_port}",
         f"--storage.tsdb.path={Path(folder) / 'tsdb'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield web_port
    finally:
        server.terminate()
        server.wait(timeout=10)


def prometheus_query(port: int, promql: str) -> list[dict]:
    """The ``data.result`` of an instant query (raises ``OSError`` while Prometheus is not listening yet)."""
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(promql)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]["result"]
