"""The product table: simulator names, MovieLens titles and genres, and its home in the lake (no Ray)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from aisys.config import MovieLensConfig, SimulatorConfig
from aisys.data.lake import Lake
from aisys.data.movielens import read_item_genres, read_item_titles
from aisys.data.products import (
    PRODUCT_SCHEMA, category_name, conform_products, movielens_products, products_path, read_products,
    source_products, write_products,
)
from aisys.data.simulator import simulate_catalogue, simulate_events, simulate_products
from tests.unit.test_movielens import _grouplens, _recbole

SIM = SimulatorConfig(n_users=40, n_items=30, n_categories=5, n_sessions=100, days=4)


def test_simulated_products_are_named_deterministically_and_match_the_events():
    products = simulate_products(SIM)
    assert products.schema.equals(PRODUCT_SCHEMA)
    assert products.equals(simulate_products(SIM))
    rows = products.to_pylist()
    assert len({r["name"] for r in rows}) > len(rows) // 2  # names tell products apart
    assert all(r["name"] and r["brand"] and r["colour"].startswith("#") for r in rows)
    # Ids, categories and prices are the simulator's own: what the events and the model use.
    catalogue = simulate_catalogue(SIM)
    assert products["item_id"].equals(catalogue["item_id"]) and products["category"].equals(catalogue["category"])
    assert products["price"].equals(catalogue["price"])
    assert {r["category_name"] for r in rows} <= {category_name(n) for n in range(SIM.n_categories)}
    events = simulate_events(SIM).to_pylist()
    by_id = {r["item_id"]: r for r in rows}
    assert all(by_id[e["item_id"]]["category"] == e["category"] for e in events)


def test_naming_leaves_the_simulated_events_unchanged():
    before = simulate_events(SIM)
    simulate_products(SIM)
    assert simulate_events(SIM).equals(before)


def test_category_names_stay_distinct_past_the_list():
    names = [category_name(n) for n in range(30)]
    assert names[0] == "Kitchen" and len(set(names)) == 30


@pytest.mark.parametrize("make", [_grouplens, _recbole])
def test_movielens_products_have_titles_and_genres(tmp_path, make):
    folder = make(tmp_path / "ml")
    table = movielens_products(read_item_titles(folder), read_item_genres(folder))
    rows = {r["item_id"]: r for r in table.to_pylist()}
    assert rows["242"]["name"] == "Kolya" and rows["242"]["category"] == "Comedy"
    assert rows["302"]["name"] == "L.A. Confidential"
    assert rows["302"]["tags"].count(",") >= 1  # every genre, not only the first
    assert rows["302"]["price"] is None and rows["302"]["brand"] is None


def test_product_table_round_trips_through_the_lake(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    assert read_products(lake) is None
    path = write_products(lake, simulate_products(SIM))
    assert path == products_path(lake) and path.endswith("products/products.parquet")
    assert read_products(lake).equals(simulate_products(SIM))
    write_products(lake, pa.table({"item_id": ["x"], "name": ["Only"]}))  # replaced, missing columns null
    assert read_products(lake).to_pylist()[0]["name"] == "Only"


def test_bad_product_tables_are_refused_by_name():
    with pytest.raises(ValueError, match="item_id column"):
        conform_products(pa.table({"name": ["a"]}))
    with pytest.raises(ValueError, match="repeated item_id"):
        conform_products(pa.table({"item_id": ["a", "a"]}))


def test_source_products_follows_the_configured_source(tmp_path, small_config):
    assert source_products(small_config).num_rows == small_config.data.simulator.n_items
    folder = _grouplens(tmp_path / "gl")
    cfg = small_config.model_copy(update={"data": small_config.data.model_copy(
        update={"source": "movielens", "movielens": MovieLensConfig(path=str(folder))})})
    assert source_products(cfg).column("name").to_pylist()[0] == "Kolya"


def test_aisys_data_publishes_the_product_table_beside_the_snapshots(small_config):
    from aisys.pipeline import generate_raw_events

    generate_raw_events(small_config)
    products = read_products(Lake.from_config(small_config.paths))
    assert products is not None and products.num_rows == small_config.data.simulator.n_items
