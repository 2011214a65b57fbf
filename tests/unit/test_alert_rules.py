"""The Prometheus alert rules are valid, and each alert fires on the series that should fire it (promtool)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from aisys.config import MonitorConfig
from aisys.monitoring.metrics import CATALOGUE

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="needs Debian's prometheus (scripts/install-system-deps.sh)")


@needs_promtool
def test_promtool_checks_the_rules():
    proc = subprocess.run([PROMTOOL, "check", "rules", "alerts.yml"], cwd=MONITORING, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout


@needs_promtool
def test_every_alert_fires_in_promtools_rule_tests():
    proc = subprocess.run([PROMTOOL, "test", "rules", "alerts.test.yml"], cwd=MONITORING, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = {case["alertname"] for test in yaml.safe_load((MONITORING / "alerts.test.yml").read_text())["tests"]
              for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested == set(alert_names())


def alert_names() -> list[str]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"]]


def test_the_rules_use_only_series_the_app_exports_and_the_triggers_drift_threshold():
    text = (MONITORING / "alerts.yml").read_text()
    exported = {name for spec in CATALOGUE for name in spec.exported_names()}
    used = set(re.findall(r"ray_aisys_[a-z_]+", text))
    assert used and used <= exported, used - exported
    assert f'statistic="psi"}}) > {MonitorConfig().psi_threshold}' in text
