"""The operator view's sections, shaped from their sources (pure: dicts and strings in, dicts and SVG out).

:mod:`aisys.serving.ops_view` reads the sources (the registry's runs, the retrain audit log in
the lake, the drift monitor, the UIs' addresses); these functions turn what it read into what
the page shows, so each rule is tested without Ray, MLflow or a browser.
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from typing import Any, Iterable, Mapping, Sequence

OFFLINE_KEYS = ("ndcg@10", "hr@10", "mrr@10", "coverage@10")
CHART_W, CHART_H, PAD = 560, 180, 32
SERIES_COLOURS = ("#2e6fba", "#2f8f4e", "#b35900", "#7d4fb0", "#a3326b", "#14857f")


def metric_key(name: str) -> str:
    """An MLflow metric name back to the project's key: ``test_ndcg_at_10`` -> ``ndcg@10``."""
    return name.removeprefix("test_").replace("_at_", "@")


def offline_metrics(bundle_metrics: Mapping[str, float] | None, run_metrics: Mapping[str, float] | None) -> dict:
    """The test-split metrics of a model: the registry run's ``test_*`` (the truth the gate saw), else
    what the bundle carries; ``baseline_*`` from the run become ``baseline`` (popularity on the same users)."""
    out: dict[str, Any] = {k: float(v) for k, v in (bundle_metrics or {}).items() if isinstance(v, (int, float))}
    baseline: dict[str, float] = {}
    for name, value in (run_metrics or {}).items():
        if not isinstance(value, (int, float)):
            continue
        if name.startswith("baseline_"):
            baseline[metric_key(name.removeprefix("baseline_"))] = float(value)
        elif name.startswith("test_") or "_at_" in name:
            out[metric_key(name)] = float(value)
    if baseline:
        out["baseline"] = baseline
    return out


def _inputs(record: Mapping[str, Any]) -> dict:
    raw = record.get("inputs")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return {}
    return raw if isinstance(raw, dict) else {}


def _iso(moment: Any) -> str | None:
    if moment is None:
        return None
    if isinstance(moment, datetime):
        return moment.isoformat()
    iso = getattr(moment, "isoformat", None)  # pandas Timestamp
    return iso() if callable(iso) else str(moment)


def decision_rows(records: Iterable[Mapping[str, Any]], limit: int = 10) -> list[dict]:
    """The newest ``limit`` retrain decisions (audit rows or monitor ``status()['decisions']``), newest first."""
    rows = []
    for d in records:
        reasons = list(d.get("reasons") or []) + [f"blocked: {b}" for b in d.get("blocked_by") or []]
        rows.append({
            "time": _iso(d.get("at")),
            "decision": d.get("outcome") or ("retrain" if d.get("retrain") else "none"),
            "triggers": list(d.get("triggers") or []),
            "reasons": reasons,
            "model_version": d.get("model_version"),
        })
    rows.sort(key=lambda r: r["time"] or "", reverse=True)
    return rows[:limit]


def drift_series(records: Iterable[Mapping[str, Any]], limit: int = 50) -> list[dict]:
    """PSI per feature at each drift check, oldest first: ``[{"at": iso, "psi": {feature: value}}]``.

    Each audit row carries the check's ``inputs.latest_drift``; rows without drift numbers (the
    policy also runs on new data alone) and repeats of the same check are skipped.
    """
    points: list[dict] = []
    seen_checks: set[tuple] = set()
    for d in records:
        inputs = _inputs(d)
        psi = {k: float(v) for k, v in (inputs.get("latest_drift") or {}).items() if isinstance(v, (int, float))}
        if not psi:
            continue
        check = (inputs.get("drift_checks"), tuple(sorted(psi.items())))
        if check in seen_checks:
            continue
        seen_checks.add(check)
        points.append({"at": _iso(d.get("at")), "psi": psi})
    points.sort(key=lambda p: p["at"] or "")
    return points[-limit:]


def drift_chart_svg(series: Sequence[Mapping[str, Any]], threshold: float) -> str:
    """A line per feature of PSI over the checks, with the threshold dashed (SVG markup, no script).

    Shown as an ``<img>`` data URI, so the page inserts no markup and the CSP stays strict.
    """
    features = sorted({f for point in series for f in point["psi"]})
    top = max([threshold * 1.25] + [v for point in series for v in point["psi"].values()])
    n = len(series)

    def x(i: int) -> float:
        return PAD + (CHART_W - 2 * PAD) * (i / (n - 1) if n > 1 else 0.5)

    def y(v: float) -> float:
        return CHART_H - PAD - (CHART_H - 2 * PAD) * (v / top if top else 0)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {CHART_W} {CHART_H}" width="{CHART_W}" '
        f'height="{CHART_H}" font-family="sans-serif" font-size="11">',
        f'<rect width="{CHART_W}" height="{CHART_H}" fill="#fff"/>',
        f'<line x1="{PAD}" y1="{CHART_H - PAD}" x2="{CHART_W - PAD}" y2="{CHART_H - PAD}" stroke="#999"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{CHART_H - PAD}" stroke="#999"/>',
        f'<line x1="{PAD}" y1="{y(threshold):.1f}" x2="{CHART_W - PAD}" y2="{y(threshold):.1f}" stroke="#c0392b" '
        'stroke-dasharray="5 4"/>',
        f'<text x="{CHART_W - PAD}" y="{y(threshold) - 4:.1f}" text-anchor="end" fill="#c0392b">'
        f'threshold {threshold:g}</text>',
        f'<text x="{PAD - 4}" y="{PAD + 4}" text-anchor="end" fill="#555">{top:.2f}</text>',
        f'<text x="{PAD - 4}" y="{CHART_H - PAD}" text-anchor="end" fill="#555">0</text>',
    ]
    if n:
        parts.append(f'<text x="{PAD}" y="{CHART_H - 10}" fill="#555">{escape(str(series[0]["at"])[:16])}</text>')
        parts.append(f'<text x="{CHART_W - PAD}" y="{CHART_H - 10}" text-anchor="end" fill="#555">'
                     f'{escape(str(series[-1]["at"])[:16])}</text>')
    for f_index, feature in enumerate(features):
        colour = SERIES_COLOURS[f_index % len(SERIES_COLOURS)]
        pts = [(x(i), y(p["psi"][feature])) for i, p in enumerate(series) if feature in p["psi"]]
        if len(pts) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for px, py in pts:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{PAD + 8 + 110 * f_index}" y="{PAD - 12}" fill="{colour}">{escape(feature)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def drift_summary(series: Sequence[Mapping[str, Any]], threshold: float) -> str:
    """One sentence for screen readers and the chart's alt text."""
    if not series:
        return "no drift check yet"
    latest = series[-1]["psi"]
    over = sorted(f for f, v in latest.items() if v > threshold)
    worst = max(latest, key=latest.get)
    tail = f"; over the threshold: {', '.join(over)}" if over else "; all under the threshold"
    return f"{len(series)} drift checks; latest worst PSI {worst} = {latest[worst]:.3f}{tail}"


def link_row(name: str, url: str | None, reachable: bool | None, why: str | None, setting: str) -> dict:
    """One operator link: ``href`` only when the UI answered; otherwise ``reason`` says what to do."""
    if not url:
        return {"name": name, "href": None, "url": None, "ok": False, "reason": f"not configured: set {setting}"}
    if reachable:
        return {"name": name, "href": url, "url": url, "ok": True, "reason": None}
    return {"name": name, "href": None, "url": url, "ok": False,
            "reason": f"not reachable at {url} ({why or 'no answer'}): is it running?"}
