"""The storefront in a real browser: Debian's chromium driven by Playwright, against real Serve + gateway.

Clicking several items of one category must move the recommendations toward that
category; the operator view must render the served model after an admin login;
the page must work at phone width and from the keyboard. Screenshots are saved
under ``$AISYS_ARTIFACTS`` (default ``artifacts/``) for people to look at.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import httpx
import pytest

from aisys.config import config_from_dict
from aisys.data.lake import Lake
from tests.conftest import small_config_dict
from tests.e2e.cluster_helpers import commit_events, tiny_events, train_tiny_champion
from tests.e2e.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
K = 10
CLICKS = 5


def artifacts_dir() -> Path:
    path = Path(os.environ.get("AISYS_ARTIFACTS", "artifacts")) / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def shop(tmp_path_factory, ray_session):
    """A trained champion served with the gateway on; yields (base_url, dev keys, served version)."""
    from aisys.gateway import ensure_dev_keys
    from aisys.serving.app import start_serving, stop_serving

    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (make system-deps installs it)")
    pytest.importorskip("playwright")
    root = tmp_path_factory.mktemp("shop")
    data = small_config_dict(root)
    data["serve"] = {"port": free_port(), "access_log": False}
    data["online"] = {"session_store": "memory", "latency_budget_ms": 5000, "follow_alias_every_s": 0}
    data["train"] = {"epochs": 1, "batch_size": 32, "lr": 0.005}
    cfg = config_from_dict(data, "storefront test")
    # Four categories with strong tastes: a user who keeps clicking one category should be shown it.
    events = tiny_events(n_users=60, n_items=40, n_sessions=900)
    snapshot_id = commit_events(Lake.from_config(cfg.paths), events)
    registered = train_tiny_champion(cfg, events, snapshot_id, epochs=25)
    keys = ensure_dev_keys(cfg)
    url = start_serving(cfg)
    try:
        yield url, keys, registered.version
    finally:
        stop_serving(cfg)


def _rec_categories(page) -> list[str]:
    return page.eval_on_selector_all("#recs li", "els => els.map(e => e.dataset.category)")


def test_recommendations_follow_clicks_in_one_category(shop):
    from playwright.sync_api import sync_playwright

    url, keys, version = shop
    shots = artifacts_dir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{url}/shop")
        page.wait_for_selector("#grid li.card")
        # The page holds the storefront key only; it cannot open the operator data.
        html = page.content()
        assert keys["dev-admin"] not in html and keys["dev-storefront"] in html
        denied = httpx.get(f"{url}/admin/overview", headers={"X-API-Key": keys["dev-storefront"]})
        assert denied.status_code == 403

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
        page.screenshot(path=str(shots / "storefront.png"), full_page=True)
        assert share_after > share_before, (target, before, after)
        assert share_after >= 0.3, (target, after)
        meta = page.text_content("#meta")
        assert f"model v{version}" in meta and "ms" in meta
        reasons = page.eval_on_selector_all("#recs li .reason", "els => els.map(e => e.textContent)")
        assert reasons and all(r.strip() for r in reasons)
        assert errors == []
        browser.close()


def test_phone_width_and_keyboard(shop):
    from playwright.sync_api import sync_playwright

    url, _, _ = shop
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(f"{url}/shop")
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
        page.screenshot(path=str(artifacts_dir() / "storefront-phone.png"), full_page=True)
        browser.close()


def test_operator_view_needs_admin_and_shows_the_champion(shop):
    from playwright.sync_api import sync_playwright

    url, keys, version = shop
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(f"{url}/ops")
        assert keys["dev-storefront"] not in page.content()
        page.fill("#admin-key", keys["dev-storefront"])  # the wrong scope is refused
        page.click("#login button[type=submit]")
        page.wait_for_selector("#login-error:has-text('403')")
        assert page.is_hidden("#overview")
        page.fill("#admin-key", keys["dev-admin"])
        page.click("#login button[type=submit]")
        page.wait_for_selector("#models tbody tr[data-alias='champion']")
        assert page.get_attribute("#models tbody tr[data-alias='champion']", "data-version") == version
        assert page.input_value("#admin-key") == ""  # the key is not left in the form
        page.screenshot(path=str(artifacts_dir() / "ops.png"), full_page=True)
        browser.close()
