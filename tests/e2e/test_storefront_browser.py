"""The storefront in a real browser: Debian's chromium driven by Playwright, against real Serve + gateway.

The app is the one ``aisys serve`` builds (``start_serving``), over a real lake snapshot, the
simulator's product table in the lake, a registered champion whose registry run holds its
test-split NDCG/HR, real retrain decisions in the lake's audit log, and a real MLflow UI.

What a shopper and an operator would notice:

- the grid shows product names and pictures, and pages through the whole catalogue;
- clicking items of one category moves the recommendations toward it;
- the product being viewed (and what is in the basket) is never recommended beside itself;
- the page works at phone width and from the keyboard;
- the operator view shows the champion's metrics, decisions, a drift chart, live traffic and
  links (a link where the UI answers, a reason where it does not).

Screenshots go to a pytest temporary folder whose path the tests print; with
``AISYS_DOCS_SCREENSHOTS=1`` the shop and ops pictures are also copied to ``docs/img/``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from aisys.config import SimulatorConfig, config_from_dict
from aisys.data.lake import Lake
from tests.conftest import seed_mlflow_db, small_config_dict
from tests.e2e.cluster_helpers import commit_events, tiny_events, train_tiny_champion, wait_until
from tests.e2e.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
K = 10
CLICKS = 5
# The shop of tiny_events(n_users=60, n_items=40, n_sessions=900): its product table must name the same items.
SHOP = SimulatorConfig(n_users=60, n_items=40, n_categories=4, n_sessions=900, days=5)


def _save(shots: Path, page, name: str) -> Path:
    path = shots / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    if os.environ.get("AISYS_DOCS_SCREENSHOTS") == "1" and name in ("storefront.png", "ops.png"):
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, REPO / "docs" / "img" / name)
    return path


def _log_offline_metrics(cfg, events, version: str) -> dict[str, float]:
    """The champion's test-split metrics and the popularity baseline's, computed as training computes them
    (the tiny champion saw every event, so its numbers flatter it: they test the plumbing, not the model),
    logged to its registry run."""
    import mlflow

    from aisys.features.sequences import build_vocabulary, user_histories
    from aisys.models.popularity import PopularityModel
    from aisys.models.sasrec import build_model
    from aisys.quality.protocol import leave_last_one_out
    from aisys.registry.mlflow_registry import configure_mlflow, load_bundle, mlflow_metric_name
    from aisys.training.loop import evaluate

    bundle, info = load_bundle(cfg, version=version)
    vocab = build_vocabulary(events, cfg.features.event_weights)
    split = leave_last_one_out(user_histories(events, vocab.item_index()))
    metrics = evaluate(build_model(bundle), split.test, cfg.features.max_seq_len, k=10,
                       item_popularity=vocab.item_popularity)
    baseline = evaluate(PopularityModel(vocab), split.test, cfg.features.max_seq_len, k=10,
                        item_popularity=vocab.item_popularity)
    configure_mlflow(cfg)
    client = mlflow.MlflowClient()
    # Named as training logs them (aisys.training.pipeline): test_* for the model, baseline_* for popularity.
    for key in ("ndcg@10", "hr@10"):
        client.log_metric(info["run_id"], mlflow_metric_name(f"test_{key}"), float(metrics[key]))
        client.log_metric(info["run_id"], mlflow_metric_name(f"baseline_{key}"), float(baseline[key]))
    return {**metrics, "baseline_ndcg@10": baseline["ndcg@10"]}


def _mlflow_ui(cfg, root: Path) -> tuple[subprocess.Popen, str]:
    """A real MLflow UI over the test's registry (one worker: STACK.md)."""
    port = free_port()
    # Job execution off: its job runner and huey consumers (GenAI jobs, unused here) start 7 more processes, ~1.2
    # GiB and seconds of CPU (see the session's MLflow server in tests/e2e/conftest.py).
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", cfg.paths.mlflow_tracking_uri,
         "--default-artifact-root", (root / "mlartifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=(root / "mlflow-ui.log").open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def shop(tmp_path_factory, ray_session, mlflow_db_template):
    """A trained champion served with the gateway on, the lake's product table and retrain decisions, an MLflow UI."""
    from aisys.data.products import read_products, write_products
    from aisys.data.simulator import simulate_products
    from aisys.gateway import ensure_dev_keys
    from aisys.serving.app import start_serving, stop_serving
    from tests.unit.test_storefront_ops import write_decisions

    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (make system-deps installs it)")
    pytest.importorskip("playwright")
    root = tmp_path_factory.mktemp("shop")
    shots = tmp_path_factory.mktemp("screenshots")
    print(f"screenshots folder: {shots}")
    seed_mlflow_db(mlflow_db_template, root / "mlflow.db")  # small_config_dict's tracking URI, already migrated
    data = small_config_dict(root)
    data["serve"] = {"port": free_port(), "access_log": False}
    data["online"] = {"session_store": "memory", "latency_budget_ms": 5000, "follow_alias_every_s": 0}
    data["train"] = {"epochs": 1, "batch_size": 32, "lr": 0.005}
    cfg = config_from_dict(data, "storefront test")
    # The MLflow UI (~10 s to answer on a busy 2-core box) boots while the champion trains and Serve starts.
    mlflow_ui, mlflow_url = _mlflow_ui(cfg, root)
    try:
        # Four categories with strong tastes: a user who keeps clicking one category should be shown it.
        events = tiny_events(n_users=SHOP.n_users, n_items=SHOP.n_items, n_sessions=SHOP.n_sessions)
        lake = Lake.from_config(cfg.paths)
        snapshot_id = commit_events(lake, events)
        write_products(lake, simulate_products(SHOP))
        registered = train_tiny_champion(cfg, events, snapshot_id, epochs=25)
        offline = _log_offline_metrics(cfg, events, registered.version)
        write_decisions(cfg, [0.05, 0.24, 0.28, 0.34, 0.12])  # three checks over 0.2 in a row: a retrain
        cfg = config_from_dict({**data, "serve": {**data["serve"], "mlflow_ui_url": mlflow_url,
                                                  "ray_dashboard_url": f"http://127.0.0.1:{free_port()}/"}},
                               "storefront test")
        keys = ensure_dev_keys(cfg)
        url = start_serving(cfg)
        try:
            wait_until(lambda: httpx.get(mlflow_url, timeout=2).status_code == 200, timeout=90,
                       what="the MLflow UI to answer")
            yield SimpleNamespace(url=url, keys=keys, version=registered.version, shots=shots, offline=offline,
                                  products={r["item_id"]: r for r in read_products(lake).to_pylist()})
        finally:
            stop_serving(cfg)
    finally:
        mlflow_ui.terminate()
        mlflow_ui.wait(timeout=30)


def _browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def _rec_items(page) -> list[str]:
    return page.eval_on_selector_all("#recs li", "els => els.map(e => e.dataset.item)")


def _rec_categories(page) -> list[str]:
    return page.eval_on_selector_all("#recs li", "els => els.map(e => e.dataset.category)")


def _grid_items(page) -> list[str]:
    return page.eval_on_selector_all("#grid li.card", "els => els.map(e => e.dataset.item)")


def test_grid_shows_names_and_pages_through_the_whole_catalogue(shop):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{shop.url}/shop")
        page.wait_for_selector("#grid li.card")
        page.wait_for_selector("#recs li")
        html = page.content()
        assert shop.keys["dev-admin"] not in html and shop.keys["dev-storefront"] not in html  # no key in the page
        first = _grid_items(page)
        titles = page.eval_on_selector_all("#grid li.card h3", "els => els.map(e => e.textContent)")
        assert titles == [shop.products[i]["name"] for i in first]  # names from the product table, not ids
        assert not any(re.fullmatch(r"i\d+", t) for t in titles)
        images = page.eval_on_selector_all("#grid li.card img", "els => els.map(e => [e.src, e.naturalWidth])")
        assert images and all(src.startswith("data:image/svg+xml") and width > 0 for src, width in images)
        chips = page.eval_on_selector_all("#categories button", "els => els.map(e => e.textContent)")
        assert any(c.startswith(("Kitchen", "Garden", "Books", "Toys")) for c in chips)
        assert page.is_disabled("#prev") and not page.is_disabled("#next")
        # Page through: every product of the table appears exactly once.
        seen = list(first)
        while not page.is_disabled("#next"):
            before = page.get_attribute("#page-info", "data-page")
            page.click("#next")
            page.wait_for_function("b => document.querySelector('#page-info').dataset.page !== b", arg=before)
            seen += _grid_items(page)
        assert sorted(seen) == sorted(shop.products) and len(seen) == len(set(seen))
        assert page.get_attribute("#page-info", "data-page") == page.get_attribute("#page-info", "data-pages") != "1"
        assert f"of {len(shop.products)}" in page.text_content("#page-info")
        page.click("#prev")
        page.wait_for_function("() => !document.querySelector('#next').disabled")
        assert errors == []
        browser.close()


def test_recommendations_follow_clicks_in_one_category(shop):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{shop.url}/shop")
        page.wait_for_selector("#grid li.card")
        denied = httpx.get(f"{shop.url}/admin/overview", headers={"X-API-Key": shop.keys["dev-storefront"]})
        assert denied.status_code in (401, 403)

        with page.expect_response(lambda r: "/recommendations/" in r.url):
            page.click("#anon")
        page.wait_for_selector("#recs li")
        before = _rec_categories(page)
        assert len(before) == K
        # The category the anonymous (popularity) list shows least: the hardest one to move toward.
        counts = Counter(before)
        chips = page.eval_on_selector_all("#categories button[data-category]:not([data-category=''])",
                                          "els => els.map(e => e.dataset.category)")
        target = min(chips, key=lambda c: (counts.get(c, 0), c))
        page.click(f"#categories button[data-category='{target}']")
        page.wait_for_function(
            "c => [...document.querySelectorAll('#grid li.card')].every(li => li.dataset.category === c)", arg=target
        )
        cards = page.locator("#grid li.card")
        assert cards.count() >= CLICKS
        for i in range(CLICKS):
            with page.expect_response(lambda r: "/recommendations/" in r.url and r.ok):
                cards.nth(i).locator("button[data-event='view']").click()
        page.wait_for_selector("#recs li")
        after = _rec_categories(page)
        share_before, share_after = before.count(target) / K, after.count(target) / K
        assert share_after > share_before, (target, before, after)
        assert share_after >= 0.3, (target, after)
        meta = page.text_content("#meta")
        assert f"model v{shop.version}" in meta and "ms" in meta
        reasons = page.eval_on_selector_all("#recs li .reason", "els => els.map(e => e.textContent)")
        assert reasons and all(r.strip() for r in reasons)
        assert not any(re.search(r"viewed i\d+$", r) for r in reasons)  # reasons name products
        assert errors == []
        browser.close()


def test_the_viewed_product_and_the_basket_are_never_recommended(shop):
    from playwright.sync_api import sync_playwright

    admin = {"Authorization": f"Bearer {shop.keys['dev-admin']}"}
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{shop.url}/shop")
        page.wait_for_selector("#grid li.card")
        page.wait_for_selector("#recs li")
        cards = page.locator("#grid li.card")
        viewed = []
        # The most popular products first: the ones a ranker is most tempted to show again.
        for i in range(4):
            item = cards.nth(i).get_attribute("data-item")
            with page.expect_response(lambda r: "/shop/recommendations/" in r.url and r.ok):
                cards.nth(i).locator("button[data-event='view']").click()
            page.wait_for_function("v => document.querySelector('#recs').dataset.viewing === v", arg=item)
            shown = _rec_items(page)
            assert shown and item not in shown, (item, shown)
            assert page.text_content("#recs-title") == "Customers also viewed"
            assert page.get_attribute("#viewing", "data-item") == item
            viewed.append(item)
        basket_item = cards.nth(4).get_attribute("data-item")
        with page.expect_response(lambda r: "/shop/recommendations/" in r.url and r.ok):
            cards.nth(4).locator("button[data-event='add_to_cart']").click()
        with page.expect_response(lambda r: "/shop/recommendations/" in r.url and r.ok):
            cards.nth(5).locator("button[data-event='view']").click()
        shown = _rec_items(page)
        assert basket_item not in shown and cards.nth(5).get_attribute("data-item") not in shown
        _save(shop.shots, page, "storefront.png")
        user = page.input_value("#user-id")
        # The rule bites: over the whole catalogue the raw ranking does hold the viewed item...
        n = len(shop.products)
        raw = httpx.get(f"{shop.url}/recommendations/{user}", params={"k": n}, headers=admin).json()["items"]
        assert viewed[-1] in [i["item_id"] for i in raw]
        # ...and the shelf, asked for every other product, still leaves out the viewed one and the basket.
        current = cards.nth(5).get_attribute("data-item")
        shelf = httpx.get(f"{shop.url}/shop/recommendations/{user}",
                          params={"k": 50, "viewing": current, "basket": [basket_item]}, headers=admin).json()
        ids = [i["item_id"] for i in shelf["items"]]
        assert ids and current not in ids and basket_item not in ids
        browser.close()


def test_phone_width_and_keyboard(shop):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(f"{shop.url}/shop")
        page.wait_for_selector("#grid li.card")
        page.wait_for_selector("#recs li")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
        # Recommendations come first on a phone.
        recs_top = page.eval_on_selector(".recs", "e => e.getBoundingClientRect().top")
        grid_top = page.eval_on_selector("#grid", "e => e.getBoundingClientRect().top")
        assert recs_top < grid_top
        # Every input has a label; a product can be viewed with the keyboard alone.
        unlabeled = page.eval_on_selector_all(
            "input", "els => els.filter(e => !document.querySelector(`label[for='${e.id}']`)).length")
        assert unlabeled == 0
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip"
        page.locator("#grid li.card button[data-event='view']").first.focus()
        with page.expect_response(lambda r: r.url.endswith("/events") and r.status == 202):
            page.keyboard.press("Enter")
        _save(shop.shots, page, "storefront-phone.png")
        browser.close()


def test_operator_view_shows_every_section(shop):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"{shop.url}/ops")
        assert shop.keys["dev-storefront"] not in page.content()
        page.fill("#admin-key", shop.keys["dev-storefront"])  # the wrong scope is refused
        page.click("#login button[type=submit]")
        page.wait_for_selector("#login-error:has-text('403')")
        assert page.is_hidden("#overview")
        page.fill("#admin-key", shop.keys["dev-admin"])
        page.click("#login button[type=submit]")
        champion = "#models tbody tr[data-alias='champion']"
        page.wait_for_selector(champion)
        assert page.get_attribute(champion, "data-version") == shop.version
        assert page.input_value("#admin-key") == ""  # the key is not left in the form
        # Offline metrics: the registry run's test-split NDCG@10 and HR@10, not blanks.
        cells = page.eval_on_selector_all(f"{champion} td", "els => els.map(e => e.textContent)")
        assert float(cells[4]) == pytest.approx(shop.offline["ndcg@10"], abs=1e-4)
        assert float(cells[5]) == pytest.approx(shop.offline["hr@10"], abs=1e-4)
        assert float(cells[6]) == pytest.approx(shop.offline["baseline_ndcg@10"], abs=1e-4)
        # Retrain decisions from the lake's audit log, newest first.
        decisions = page.eval_on_selector_all("#decisions tbody tr", "els => els.map(e => e.dataset.decision)")
        assert len(decisions) == 5 and "none" in decisions and set(decisions) & {"retrain", "blocked"}
        # Drift over time: the chart is drawn and summarised.
        assert page.is_visible("#drift-chart")
        assert page.get_attribute("#drift-chart", "src").startswith("data:image/svg+xml")
        assert page.eval_on_selector("#drift-chart", "e => e.naturalWidth") > 0
        assert "5 drift checks" in page.text_content("#drift-summary")
        # Live traffic of this replica: the earlier tests' requests.
        rate = float(page.text_content("#traffic li[data-stat='rate'] strong"))
        assert rate > 0 and "ms" in page.text_content("#traffic li[data-stat='p95'] strong")
        # Links: the MLflow UI runs, so it is a link; the others say why not.
        mlflow_link = page.locator("#links a", has_text="MLflow UI")
        assert mlflow_link.count() == 1
        assert httpx.get(mlflow_link.get_attribute("href"), timeout=5).status_code == 200
        reasons = page.eval_on_selector_all("#links li[data-ok='false']", "els => els.map(e => e.textContent)")
        assert any(r.startswith("Ray dashboard") and "not reachable" in r for r in reasons)
        assert any(r.startswith("Grafana") and "serve.grafana_url" in r for r in reasons)
        _save(shop.shots, page, "ops.png")
        browser.close()
