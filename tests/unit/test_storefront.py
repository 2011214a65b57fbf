"""The storefront's catalogue (pure) and its routes on a bare FastAPI app (no Ray, no gateway)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from aisys.storefront.catalogue import build_catalogue
from aisys.storefront.routes import install_storefront, render_shop_page


def _events() -> pa.Table:
    return pa.table(
        {
            "user_id": ["u1", "u1", "u2", "u2", "u2", "u3"],
            "item_id": ["a", "b", "a", "c", "a", "b"],
            "timestamp": pa.array([1, 2, 3, 4, 5, 6], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "category": ["x", "y", None, "z", "x2", "y"],
            "price": [1.0, 2.0, None, 3.0, 1.5, None],
        }
    )


def test_catalogue_takes_latest_category_and_price_and_ranks_by_popularity():
    cat = build_catalogue(_events())
    assert [p.item_id for p in cat.products] == ["a", "b", "c"]  # 3, 2, 1 events
    a = cat.get("a")
    assert (a.category, a.price, a.popularity) == ("x2", 1.5, 3)  # the latest non-null values
    assert cat.get("b").price == 2.0  # a later event without a price keeps the earlier one
    assert cat.categories() == ["x2", "y", "z"]
    assert [p.item_id for p in cat.page("y")] == ["b"]
    assert cat.sample_users[0] == "u2"  # the most active user first


def test_catalogue_of_no_events_is_empty_and_missing_columns_are_named():
    assert len(build_catalogue(_events().slice(0, 0))) == 0
    with pytest.raises(ValueError, match="'timestamp'"):
        build_catalogue(pa.table({"user_id": ["u"], "item_id": ["i"]}))


def test_shop_page_embeds_no_key():
    # Issue 17: the page gets a shopper session from POST /shop/session, never an API key.
    page = render_shop_page('k"><script>x</script>')
    assert "<script>x</script>" not in page and 'name="aisys-key"' not in page


def _app(guard=None, overview=None) -> TestClient:
    app = FastAPI()
    catalogue = build_catalogue(_events())
    install_storefront(app, lambda: catalogue, lambda: "pk_test", guard, overview)
    return TestClient(app)


def test_pages_assets_and_catalogue_are_served():
    client = _app()
    shop = client.get("/shop")
    assert shop.status_code == 200 and "pk_test" not in shop.text  # no key in the page (issue 17)
    assert "script-src 'self'" in shop.headers["content-security-policy"]
    assert client.get("/shop/static/app.js").status_code == 200
    ops = client.get("/ops")
    assert ops.status_code == 200 and "pk_test" not in ops.text  # no key in the operator page
    body = client.get("/catalogue", params={"category": "y"}).json()
    assert [i["item_id"] for i in body["items"]] == ["b"] and body["total"] == 1  # the category's total
    assert client.get("/", follow_redirects=False).headers["location"] == "/shop"


def test_guard_is_asked_for_the_right_scope_per_route():
    asked: list[str] = []

    def guard(scope: str):
        def dependency() -> None:
            asked.append(scope)
            if scope == "admin":
                raise HTTPException(status_code=403, detail="admin only")

        return dependency

    async def overview() -> dict:
        return {"models": {}}

    client = _app(guard, overview)
    assert client.get("/catalogue").status_code == 200
    assert client.get("/admin/overview").status_code == 403
    assert asked == ["storefront", "admin"]


def test_overview_without_a_provider_is_503():
    client = _app()
    assert client.get("/admin/overview").status_code == 503
