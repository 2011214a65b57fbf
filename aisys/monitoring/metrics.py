"""Every metric aisys exports, declared in one table, and the helpers that record them.

Why ``ray.serve.metrics``: a ``prometheus_client`` metric created inside a Serve
replica (or any Ray actor) is never exported. Ray metrics are exported by the
node's metrics agent on the Ray metrics port, named ``ray_<name>``; counters whose
name ends in ``_total`` are exported once, as ``ray_<name>``; histograms as
``ray_<name>_bucket|_sum|_count``. Inside a replica Serve adds the ``deployment``,
``replica`` and ``application`` tags itself.

:data:`CATALOGUE` is plain data (no Ray): it is what the Grafana dashboard and the
unit tests read. The Ray metric objects are created from it lazily, on the first
record in a process (:class:`RayMetricsSink`), never at import.

Callers use the helpers (:func:`record_request`, :func:`record_fallback`, ...).
They write to the process's sink: the one set by :func:`set_metrics_sink`, else
Ray's when Ray is up, else nothing (a plain process, e.g. a unit test, records
nothing and pays nothing). :class:`InMemoryMetricsSink` keeps values for tests
and benchmarks and checks every name and tag against the catalogue.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Protocol

MetricKind = Literal["counter", "gauge", "histogram"]

# Buckets in seconds: the API's budget is ~100 ms, so resolve 1 ms .. 10 s.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# Ray histograms need positive boundaries and model scores are unbounded logits, so
# scores are recorded through the logistic function (monotone: it keeps the shape).
SCORE_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99,
)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its Ray name (exported as ``ray_<name>``), kind, help text and tag keys."""

    name: str
    kind: MetricKind
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    def exported_names(self) -> tuple[str, ...]:
        """The series names Prometheus sees for this metric."""
        base = f"ray_{self.name}"
        if self.kind == "histogram":
            return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
        return (base,)


CATALOGUE: tuple[MetricSpec, ...] = (
    MetricSpec("aisys_http_requests_total", "counter", "API requests by route, method and status code.",
               ("route", "method", "status")),
    MetricSpec("aisys_http_request_duration_seconds", "histogram", "API request latency in seconds.",
               ("route", "method", "status"), LATENCY_BUCKETS_S),
    MetricSpec("aisys_fallbacks_total", "counter",
               "Recommendations answered by the popularity fallback, by reason "
               "(latency_budget, model_error, no_model, unknown_user).",
               ("reason",)),
    MetricSpec("aisys_cache_lookups_total", "counter", "Recommendation cache lookups by result (hit, miss).",
               ("result",)),
    MetricSpec("aisys_rate_limited_total", "counter", "Requests refused by the rate limiter, by key scope.",
               ("scope",)),
    MetricSpec("aisys_model_info", "gauge",
               "1 for each model version a replica serves, with its canary arm (champion, challenger).",
               ("model_name", "model_version", "arm")),
    MetricSpec("aisys_model_data_timestamp_seconds", "gauge",
               "Unix time of the lake snapshot a served model version was trained on (its data's age).",
               ("model_name", "model_version", "arm")),
    MetricSpec("aisys_rate_limiter_degraded_total", "counter",
               "Requests decided by a replica's local bucket because the shared rate limiter was unreachable.",
               ()),
    MetricSpec("aisys_champion_refused_total", "counter",
               "Champion versions a replica refused to serve because aisys did not record them as champion "
               "(an alias moved by hand; serve.require_recorded_promotion).",
               ("model_version",)),
    MetricSpec("aisys_canary_share", "gauge", "Share of users routed to the challenger arm.", ()),
    MetricSpec("aisys_recommendation_score", "histogram",
               "Served recommendation scores, through the logistic function (0..1).",
               ("model_version", "arm"), SCORE_BUCKETS),
    MetricSpec("aisys_online_hit_rate", "gauge",
               "Share of recent served lists the user then interacted with within the horizon.",
               ("model_version", "arm")),
    MetricSpec("aisys_online_judged_lists", "gauge", "Served lists judged hit or miss so far.",
               ("model_version", "arm")),
    MetricSpec("aisys_drift_statistic", "gauge",
               "Drift of the live window against the training reference (PSI, Jensen-Shannon distance).",
               ("feature", "statistic")),
    MetricSpec("aisys_drift_window_events", "gauge", "Live events in the drift monitor's window.", ()),
    MetricSpec("aisys_retrain_decisions_total", "counter",
               "Retrain policy decisions: retrain, blocked (triggered but held back) or none.",
               ("decision",)),
)

SPECS: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOGUE}


class MetricsSink(Protocol):
    """Where recorded values go. Names and tags follow :data:`CATALOGUE`."""

    def inc(self, name: str, value: float, tags: Mapping[str, str]) -> None: ...

    def set(self, name: str, value: float, tags: Mapping[str, str]) -> None: ...

    def observe(self, name: str, value: float, tags: Mapping[str, str]) -> None: ...


def _checked(name: str, kind: MetricKind, tags: Mapping[str, str]) -> MetricSpec:
    spec = SPECS.get(name)
    if spec is None:
        raise KeyError(f"metric {name!r} is not declared in aisys.monitoring.metrics.CATALOGUE")
    if spec.kind != kind:
        raise TypeError(f"metric {name!r} is a {spec.kind}, not a {kind}")
    if set(tags) != set(spec.tag_keys):
        raise ValueError(f"metric {name!r} takes tags {sorted(spec.tag_keys)}, got {sorted(tags)}")
    return spec


class NullMetricsSink:
    """Records nothing: the sink of a process without Ray."""

    def inc(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        pass

    def set(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        pass

    def observe(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        pass


class InMemoryMetricsSink:
    """Keeps counter sums, last gauge values and histogram observations; validates every call."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.observations: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(name: str, tags: Mapping[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted((k, str(v)) for k, v in tags.items()))

    def inc(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        _checked(name, "counter", tags)
        if value < 0:
            raise ValueError(f"counter {name!r} cannot decrease (got {value})")
        with self._lock:
            key = self._key(name, tags)
            self.counters[key] = self.counters.get(key, 0.0) + value

    def set(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        _checked(name, "gauge", tags)
        with self._lock:
            self.gauges[self._key(name, tags)] = float(value)

    def observe(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        _checked(name, "histogram", tags)
        with self._lock:
            self.observations.setdefault(self._key(name, tags), []).append(float(value))

    def value(self, name: str, **tags: str) -> float | None:
        """A counter's sum or a gauge's last value for exactly these tags (None if never recorded)."""
        key = self._key(name, tags)
        return self.counters.get(key, self.gauges.get(key))


class RayMetricsSink:
    """Creates the ``ray.serve.metrics`` objects of :data:`CATALOGUE` on first use in this process."""

    def __init__(self) -> None:
        self._metrics: dict[str, object] | None = None
        self._lock = threading.Lock()

    def _get(self, name: str):
        if self._metrics is None:
            with self._lock:
                if self._metrics is None:
                    self._metrics = _create_ray_metrics(CATALOGUE)
        metric = self._metrics.get(name)
        if metric is None:
            raise KeyError(f"metric {name!r} is not declared in aisys.monitoring.metrics.CATALOGUE")
        return metric

    def inc(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        self._get(name).inc(value, tags=dict(tags))

    def set(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        self._get(name).set(value, tags=dict(tags))

    def observe(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        self._get(name).observe(value, tags=dict(tags))


def _create_ray_metrics(specs: Iterable[MetricSpec]) -> dict[str, object]:
    # ray.serve.metrics works in replicas (adds the Serve tags) and in plain actors alike.
    from ray.serve import metrics as serve_metrics

    created: dict[str, object] = {}
    for spec in specs:
        tag_keys = spec.tag_keys or None
        if spec.kind == "counter":
            created[spec.name] = serve_metrics.Counter(spec.name, spec.description, tag_keys=tag_keys)
        elif spec.kind == "gauge":
            created[spec.name] = serve_metrics.Gauge(spec.name, spec.description, tag_keys=tag_keys)
        else:
            created[spec.name] = serve_metrics.Histogram(
                spec.name, spec.description, boundaries=list(spec.boundaries), tag_keys=tag_keys
            )
    return created


_sink_override: MetricsSink | None = None
_ray_sink: RayMetricsSink | None = None
_sink_lock = threading.Lock()
_NULL_SINK = NullMetricsSink()


def set_metrics_sink(sink: MetricsSink | None) -> None:
    """Send this process's records to ``sink`` (None: back to Ray's when Ray is up)."""
    global _sink_override
    _sink_override = sink


def metrics_sink() -> MetricsSink:
    """The sink the helpers write to in this process."""
    global _ray_sink
    if _sink_override is not None:
        return _sink_override
    if _ray_sink is not None:
        return _ray_sink
    import sys

    # Only look at Ray if something already imported it: a plain process stays Ray-free.
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return _NULL_SINK
    with _sink_lock:
        if _ray_sink is None:
            _ray_sink = RayMetricsSink()
    return _ray_sink


# --- helpers the serving, gateway and monitoring code call ------------------------------------


def record_request(route: str, method: str, status: int | str, seconds: float) -> None:
    """Count one API request and its latency. ``route`` is the route template (``/recommendations``),
    never the raw path, so user ids do not explode the series count."""
    tags = {"route": route, "method": method.upper(), "status": str(status)}
    sink = metrics_sink()
    sink.inc("aisys_http_requests_total", 1.0, tags)
    sink.observe("aisys_http_request_duration_seconds", max(float(seconds), 0.0), tags)


def record_fallback(reason: str) -> None:
    """Count one recommendation answered by the popularity fallback."""
    metrics_sink().inc("aisys_fallbacks_total", 1.0, {"reason": reason})


def record_cache_lookup(hit: bool) -> None:
    """Count one response-cache lookup as a hit or a miss."""
    metrics_sink().inc("aisys_cache_lookups_total", 1.0, {"result": "hit" if hit else "miss"})


def record_rate_limited(scope: str) -> None:
    """Count one request refused by the rate limiter (``scope``: the key's scope)."""
    metrics_sink().inc("aisys_rate_limited_total", 1.0, {"scope": scope})


def set_model_info(model_name: str, model_version: str, arm: str, serving: bool = True) -> None:
    """Mark ``model_version`` as served (1) or no longer served (0) on ``arm`` by this process."""
    tags = {"model_name": model_name, "model_version": str(model_version), "arm": arm}
    metrics_sink().set("aisys_model_info", 1.0 if serving else 0.0, tags)


def set_model_data_time(model_name: str, model_version: str, arm: str, unix_seconds: float) -> None:
    """Publish when the data a served model version was trained on was snapshotted (the stale-model alert)."""
    tags = {"model_name": model_name, "model_version": str(model_version), "arm": arm}
    metrics_sink().set("aisys_model_data_timestamp_seconds", float(unix_seconds), tags)


def record_rate_limiter_degraded() -> None:
    """Count one request limited locally because the shared limiter did not answer in time."""
    metrics_sink().inc("aisys_rate_limiter_degraded_total", 1.0, {})


def record_champion_refused(model_version: str) -> None:
    """Count one champion version a replica refused (moved by hand, not recorded by aisys)."""
    metrics_sink().inc("aisys_champion_refused_total", 1.0, {"model_version": str(model_version)})


def set_canary_share(share: float) -> None:
    """Publish the share of users routed to the challenger."""
    metrics_sink().set("aisys_canary_share", float(share), {})


def logistic(score: float) -> float:
    """The score as recorded in the histogram: 1 / (1 + e^-score), safe for any float."""
    if score >= 0:
        return 1.0 / (1.0 + math.exp(-score))
    z = math.exp(score)
    return z / (1.0 + z)


def record_scores(scores: Iterable[float], model_version: str, arm: str) -> None:
    """Observe every finite score of one served list (through :func:`logistic`)."""
    sink = metrics_sink()
    tags = {"model_version": str(model_version), "arm": arm}
    for score in scores:
        score = float(score)
        if math.isfinite(score):
            sink.observe("aisys_recommendation_score", logistic(score), tags)


def set_online_hit_rate(model_version: str, arm: str, hit_rate: float, judged_lists: int) -> None:
    """Publish the online hit-rate of one model version and arm, and how many lists it rests on."""
    sink = metrics_sink()
    tags = {"model_version": str(model_version), "arm": arm}
    sink.set("aisys_online_hit_rate", float(hit_rate), tags)
    sink.set("aisys_online_judged_lists", float(judged_lists), tags)


def set_drift_statistic(feature: str, statistic: str, value: float) -> None:
    """Publish one drift statistic (``statistic``: ``psi`` or ``js``) of one feature."""
    metrics_sink().set("aisys_drift_statistic", float(value), {"feature": feature, "statistic": statistic})


def set_drift_window_events(n: int) -> None:
    """Publish how many live events the drift monitor's window holds."""
    metrics_sink().set("aisys_drift_window_events", float(n), {})


def record_retrain_decision(decision: Literal["retrain", "blocked", "none"]) -> None:
    """Count one retrain policy decision."""
    if decision not in ("retrain", "blocked", "none"):
        raise ValueError(f"retrain decision must be retrain, blocked or none; got {decision!r}")
    metrics_sink().inc("aisys_retrain_decisions_total", 1.0, {"decision": decision})
