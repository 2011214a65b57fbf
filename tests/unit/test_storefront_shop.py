"""The shop's catalogue, paging, pictures and shelf rule (pure, and the routes on a bare FastAPI app)."""

from __future__ import annotations

from urllib.parse import unquote

import pyarrow as pa
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from aisys.config import SimulatorConfig
from aisys.data.simulator import simulate_events, simulate_products
from aisys.gateway.errors import install_error_handlers
from aisys.storefront.catalogue import build_catalogue
from aisys.storefront.images import initials, product_image, product_svg
from aisys.storefront.routes import install_storefront
from aisys.storefront.shelf import fetch_size, product_shelf, readable_reason, shelf_exclusions

SIM = SimulatorConfig(n_users=30, n_items=50, n_categories=4, n_sessions=120, days=3)


@pytest.fixture(scope="module")
def shop_catalogue():
    return build_catalogue(simulate_events(SIM), simulate_products(SIM))


def test_catalogue_lists_every_product_of_the_table_with_names_not_ids(shop_catalogue):
    assert len(shop_catalogue) == SIM.n_items  # items nobody touched are on sale too
    first = shop_catalogue.products[0]
    assert first.name and first.name != first.item_id and first.brand
    assert first.category.startswith("c") and not first.category_name.startswith("c")  # id for the model, name for people
    pops = [p.popularity for p in shop_catalogue.products]
    assert pops == sorted(pops, reverse=True)
    names = {c["name"] for c in shop_catalogue.category_list()}
    assert names <= {"Kitchen", "Garden", "Books", "Toys"} and len(names) == 4


def test_product_table_wins_over_events_and_unknown_items_still_show():
    events = pa.table({
        "user_id": ["u1", "u2"], "item_id": ["a", "zz"],
        "timestamp": pa.array([1, 2], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "category": ["event-cat", "c9"], "price": [1.0, 9.0],
    })
    products = pa.table({"item_id": ["a", "b"], "name": ["Apple", "Banana"], "category": ["c1", "c1"],
                         "category_name": ["Fruit", "Fruit"], "price": [2.5, 3.0]})
    cat = build_catalogue(events, products)
    assert (cat.get("a").category, cat.get("a").price, cat.get("a").title) == ("c1", 2.5, "Apple")
    assert cat.get("b").popularity == 0  # on sale, never touched
    assert (cat.get("zz").category, cat.get("zz").price, cat.get("zz").title) == ("c9", 9.0, "zz")


def test_paging_walks_the_whole_catalogue_once(shop_catalogue):
    seen, offset = [], 0
    while offset is not None:
        page = shop_catalogue.paged(None, 12, offset)
        seen += [p.item_id for p in page.items]
        offset = page.next_offset
    assert sorted(seen) == sorted(p.item_id for p in shop_catalogue.products) and len(seen) == len(set(seen))
    last = shop_catalogue.paged(None, 12, 48)
    assert last.next_offset is None and last.prev_offset == 36 and len(last.items) == 2
    assert shop_catalogue.paged(None, 12, 0).prev_offset is None


def test_picture_is_deterministic_escaped_svg_without_anything_external():
    svg = product_svg("i1", "Compact <Teal> Kettle", "c0", "#14857f")
    assert svg == product_svg("i1", "Compact <Teal> Kettle", "c0", "#14857f")
    assert svg.startswith("<svg") and 'fill="#14857f"' in svg and "<Teal>" not in svg
    assert "href" not in svg and "script" not in svg  # nothing to fetch, nothing to run
    uri = product_image("i1", "Compact Teal Kettle", "c0", "#14857f")
    assert uri.startswith("data:image/svg+xml") and "#" not in uri  # '#' would cut the URI at a fragment
    assert unquote(uri.split(",", 1)[1]) == product_svg("i1", "Compact Teal Kettle", "c0", "#14857f")
    assert product_svg("i1", "x", "c0", "javascript:1") != product_svg("i1", "x", "c0", "#123456")
    assert initials("Compact Teal Kettle") == "CT" and initials("i16") == "I1"


def test_shelf_never_shows_the_viewed_item_or_the_basket():
    ranked = [{"item_id": i} for i in ["i16", "i3", "i7", "i9", "i2"]]
    assert [i["item_id"] for i in product_shelf(ranked, 3, viewing="i16", basket=["i7"])] == ["i3", "i9", "i2"]
    assert [i["item_id"] for i in product_shelf(ranked, 2)] == ["i16", "i3"]  # browsing: no product on screen
    excluded = shelf_exclusions("i16", ["i7", "i7", ""])
    assert excluded == {"i16", "i7"} and fetch_size(3, excluded) == 5
    with pytest.raises(ValueError, match="k must be"):
        product_shelf(ranked, 0)


def test_reasons_name_products(shop_catalogue):
    product = shop_catalogue.products[0]
    assert readable_reason(f"because you viewed {product.item_id}", shop_catalogue) == f"because you viewed {product.name}"
    assert readable_reason("popular now", shop_catalogue) == "popular now"
    assert readable_reason("because you viewed nope", shop_catalogue) == "because you viewed nope"


def _client(catalogue, recommend=None) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    install_storefront(app, lambda: catalogue, lambda: None, recommend=recommend)
    return TestClient(app)


def test_catalogue_route_pages_with_total_and_names_bad_fields(shop_catalogue):
    client = _client(shop_catalogue)
    body = client.get("/catalogue", params={"limit": 20, "offset": 40}).json()
    assert (body["total"], body["next_offset"], body["prev_offset"], len(body["items"])) == (50, None, 20, 10)
    assert body["items"][0]["image"].startswith("data:image/svg+xml") and body["items"][0]["name"]
    assert {"id", "name", "count"} <= set(body["categories"][0])
    for params, field in (({"offset": 500}, "query.offset"), ({"category": "nope"}, "query.category"),
                          ({"limit": 0}, "query.limit")):
        answer = client.get("/catalogue", params=params)
        assert answer.status_code == 422
        assert [f["field"] for f in answer.json()["error"]["fields"]] == [field]


def test_shelf_route_overfetches_filters_and_names(shop_catalogue):
    asked = []
    ids = [p.item_id for p in shop_catalogue.products]

    async def recommend(user_id: str, k: int) -> dict:
        asked.append((user_id, k))
        # A ranker that puts the viewed item first, "because you viewed" itself: the bug to guard against.
        return {"user_id": user_id, "k": k, "fallback": False, "model_version": "3", "arm": "champion",
                "items": [{"item_id": i, "score": 1.0, "category": None, "reason": f"because you viewed {ids[0]}"}
                          for i in ids[:k]]}

    client = _client(shop_catalogue, recommend)
    body = client.get("/shop/recommendations/u1", params={"k": 4, "viewing": ids[0], "basket": [ids[1]]}).json()
    assert asked == [("u1", 6)]
    assert [i["item_id"] for i in body["items"]] == ids[2:6]
    assert body["heading"] == "Customers also viewed" and body["model_version"] == "3"
    assert body["items"][0]["reason"] == f"because you viewed {shop_catalogue.products[0].name}"
    assert body["items"][0]["image"].startswith("data:")
    assert _client(shop_catalogue).get("/shop/recommendations/u1").status_code == 503
    too_many = client.get("/shop/recommendations/u1", params={"basket": [f"i{n}" for n in range(60)]})
    assert too_many.status_code == 422


def test_shelf_route_serves_a_shopper_session_only_its_own_user(shop_catalogue):
    class Shopper:  # what the gateway's guard returns for a shopper session bound to u1
        def may_act_for(self, user_id: str) -> bool:
            return user_id == "u1"

    def guard(scope: str):
        def dependency() -> Shopper:
            return Shopper()

        return dependency

    async def recommend(user_id: str, k: int) -> dict:
        return {"items": [{"item_id": p.item_id, "score": 1.0} for p in shop_catalogue.products[:k]]}

    app = FastAPI()
    install_error_handlers(app)
    install_storefront(app, lambda: shop_catalogue, lambda: None, guard=guard, recommend=recommend)
    client = TestClient(app)
    assert client.get("/shop/recommendations/u1").status_code == 200
    other = client.get("/shop/recommendations/u2")
    assert other.status_code == 403 and "path.user_id" in other.json()["error"]["message"]
