"""The live app's telemetry read back through a real Prometheus: requests, refusals, fallbacks, cache,
rate limits, the served model, scores, and the drift monitor fed by the replica (no test forwards events)."""

import time
from collections import Counter
from datetime import datetime, timezone

import httpx
import pytest
import torch
from ray import serve

from aisys.config import AppConfig, MonitorConfig
from aisys.data.lake import COUNT_KEYS, Lake, Manifest, new_snapshot_id
from aisys.features.sequences import build_vocabulary
from aisys.gateway import create_key, ensure_dev_keys
from aisys.gateway.keys import FileKeyStore, keys_file_path
from aisys.models.bundle import ModelBundle
from aisys.models.sasrec import SASRec, SASRecConfig
from aisys.monitoring.monitor_actor import NAMESPACE, drop_monitor, monitor_actor_name
from aisys.registry.mlflow_registry import log_and_register
from aisys.schemas import schema_hash
from aisys.serving.app import APP_NAME, start_serving, stop_serving

pytestmark = pytest.mark.ray

from tests.prometheus import PROMETHEUS, prometheus_query, running_prometheus  # noqa: E402
from tests.ray.test_serve import N_ITEMS, free_port, shop_events  # noqa: E402  (shared fixtures data)
RECS = "/recommendations/{user_id}"


def register_untrained_champion(cfg: AppConfig) -> str:
    """Commit the events as a lake snapshot and register an untrained SASRec over it; return its version."""
    events = shop_events()
    lake = Lake(cfg.paths.lake_uri)
    snapshot_id = new_snapshot_id()
    files = lake.write_event_files(events, snapshot_id)
    n = events.num_rows
    lake.commit(Manifest(
        snapshot_id=snapshot_id, parent_id=None, created_at=datetime.now(timezone.utc).isoformat(),
        source="test_serving_metrics", schema_hash=schema_hash(),
        counts=dict.fromkeys(COUNT_KEYS, 0) | {"input": n, "clean": n, "written": n, "total_rows": n},
        files=[path for path, _ in files],
    ))
    torch.manual_seed(0)
    vocab = build_vocabulary(events, cfg.features.event_weights)
    config = SASRecConfig.from_app(cfg, vocab.n_items)
    bundle = ModelBundle(
        model_kind="sasrec", model_config=config.to_dict(), item_ids=vocab.item_ids,
        item_popularity=vocab.item_popularity, state_dict=SASRec(config).state_dict(),
        item_categories=vocab.item_categories, max_seq_len=cfg.features.max_seq_len,
    )
    return log_and_register(cfg, bundle, params={}, metrics={}, history=[], snapshot_id=snapshot_id,
                            alias="champion").version


def ids(body: dict) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def by_labels(result: list[dict], *labels: str) -> dict:
    """``{(label values...): value}`` of a query result (one label: the bare value as key)."""
    out = {}
    for series in result:
        key = tuple(series["metric"].get(label) for label in labels)
        out[key[0] if len(key) == 1 else key] = float(series["value"][1])
    return out


@pytest.fixture
def cfg(small_config):
    small_config.serve.port = free_port()
    small_config.serve.num_replicas = 1  # the response cache and hit-rate lists counted below are per replica
    small_config.serve.access_log = False
    small_config.online.latency_budget_ms = 5000  # a busy box must not turn model answers into fallbacks
    small_config.gateway.storefront_rate_limit_burst = 2
    small_config.gateway.storefront_rate_limit_per_s = 0.01
    small_config.monitor = MonitorConfig(
        check_every_events=4, hit_rate_horizon_events=1, hit_rate_min_lists=1, hit_rate_window_lists=10,
        report_every_s=1e6, report_on_drift=False,
    )
    yield small_config
    drop_monitor(small_config)


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus binary (apt-get install prometheus)")
def test_prometheus_reads_the_live_apps_metrics_and_the_monitor_fed_by_the_replica(ray_session, cfg, tmp_path):
    ray = ray_session
    version = register_untrained_champion(cfg)
    admin_key = ensure_dev_keys(cfg)["dev-admin"]
    shop_key = create_key(FileKeyStore(keys_file_path(cfg)), "shop", ["storefront"])  # the tight limits
    requests: Counter = Counter()  # (route, method, status) -> what we sent and got
    scored_items = 0

    url = start_serving(cfg)
    try:
        with httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": admin_key}) as client:

            def recommend(user: str, http=client) -> httpx.Response:
                resp = http.get(f"/recommendations/{user}", params={"k": 5})
                requests[(RECS, "GET", str(resp.status_code))] += 1
                return resp

            assert httpx.get(f"{url}/recommendations/user3").status_code == 401
            requests[(RECS, "GET", "401")] += 1

            user3 = recommend("user3").json()
            assert recommend("user3").json() == user3  # same session: the cache answers
            user5 = recommend("user5").json()
            stranger = recommend("stranger").json()
            assert not user3["fallback"] and not user5["fallback"]
            assert stranger["fallback_reason"] == "unknown_user"
            scored_items += len(user3["items"]) + len(user5["items"])

            with httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": shop_key}) as shop:
                shop_codes = []
                while 429 not in shop_codes and len(shop_codes) < 6:
                    shop_codes.append(recommend("user1", shop).status_code)
            assert shop_codes[-1] == 429 and set(shop_codes[:-1]) == {200}
            scored_items += 5  # the first of user1's answers; the others came from the cache
            cache = {"miss": 4, "hit": 1 + (len(shop_codes) - 2)}

            # user3 then takes an item of its list (a hit), user5 one outside its list (a miss); 4 events in all.
            outside = next(f"item{n:02d}" for n in range(N_ITEMS) if f"item{n:02d}" not in ids(user5))
            for user, item in [("user3", ids(user3)[0]), ("user5", outside), ("user7", "item01"), ("user8", "item02")]:
                posted = client.post("/events", json={"user_id": user, "item_id": item, "event_type": "view"})
                assert posted.status_code == 202
                requests[("/events", "POST", "202")] += 1

        stats = serve.get_app_handle(APP_NAME).telemetry_stats.remote().result()
        replica = stats["replica"]
        # The replica's feed creates the monitor and reaches it within ~1 s, unprompted.
        deadline, status = time.monotonic() + 20, {}
        while status.get("events_seen", 0) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                status = ray.get(ray.get_actor(monitor_actor_name(cfg), namespace=NAMESPACE).status.remote())
            except ValueError:
                continue  # not created yet
        assert status["events_seen"] == 4 and status["checks"] == 1
        rate = next(r for r in status["hit_rates"] if r["model_version"] == version and r["arm"] == "champion")
        assert (rate["hits"], rate["judged"]) == (1, 2)  # user3 hit, user5 missed, user1's list still open
        feed = serve.get_app_handle(APP_NAME).telemetry_stats.remote().result()["monitor_feed"]
        assert feed["sent"] == {"lists": 3, "events": 4} and feed["dropped"] == {} and feed["send_errors"] == 0

        metrics_port = ray._private.worker.global_worker.node.metrics_export_port
        mine = f'replica="{replica}"'
        expected = {
            f"sum by (route, method, status) (ray_aisys_http_requests_total{{{mine}}})":
                (("route", "method", "status"), dict(requests)),
            f'sum by (route) (ray_aisys_http_request_duration_seconds_count{{{mine},route="/events"}})':
                (("route",), {"/events": 4.0}),
            f"ray_aisys_fallbacks_total{{{mine}}}": (("reason",), {"unknown_user": 1.0}),
            f"ray_aisys_cache_lookups_total{{{mine}}}": (("result",), cache),
            f"ray_aisys_rate_limited_total{{{mine}}}": (("scope",), {"storefront": 1.0}),
            f"ray_aisys_model_info{{{mine}}}": (("model_name", "model_version", "arm"),
                                              {(cfg.registry.model_name, version, "champion"): 1.0}),
            f"sum by (arm) (ray_aisys_recommendation_score_count{{{mine}}})": (("arm",), {"champion": scored_items}),
        }
        # The monitor is an actor, not a replica: an earlier test's monitor may still be listed, so look for ours.
        monitor_series = {
            f'ray_aisys_online_hit_rate{{model_version="{version}",arm="champion"}}': 0.5,
            f'ray_aisys_online_judged_lists{{model_version="{version}",arm="champion"}}': 2.0,
            "ray_aisys_drift_window_events": 4.0,
        }
        started, got, monitor_got = time.monotonic(), {}, {}
        with running_prometheus(metrics_port, tmp_path) as web_port:
            while time.monotonic() - started < 30:
                time.sleep(1)
                try:
                    got = {q: by_labels(prometheus_query(web_port, q), *labels) for q, (labels, _) in expected.items()}
                    monitor_got = {q: [float(s["value"][1]) for s in prometheus_query(web_port, q)]
                                   for q in monitor_series}
                except OSError:
                    continue  # not listening yet
                if all(got[q] == want for q, (_, want) in expected.items()) and all(
                        v in monitor_got[q] for q, v in monitor_series.items()):
                    break
        print(f"Prometheus had every series {time.monotonic() - started:.1f} s after it started")
        for q, (_, want) in expected.items():
            assert got.get(q) == want, f"{q}: Prometheus returned {got.get(q)}, expected {want}"
        for q, v in monitor_series.items():
            assert v in monitor_got.get(q, []), f"{q}: Prometheus returned {monitor_got.get(q)}, expected {v}"
    finally:
        stop_serving(cfg)
