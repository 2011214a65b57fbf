"""The product catalogue the storefront shows, derived from a lake snapshot's events (pure pyarrow).

The lake holds events, not a product table, so an item's category and price are
the ones on its most recent event that carried them, and its popularity is its
event count. A shop with a real product service would implement the same
:class:`Catalogue` from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Product:
    """One item as the storefront shows it."""

    item_id: str
    category: str | None
    price: float | None
    popularity: int

    def to_dict(self) -> dict:
        return {"item_id": self.item_id, "category": self.category, "price": self.price, "popularity": self.popularity}


@dataclass
class Catalogue:
    """Products, most popular first, and a few sample users to pick from."""

    products: list[Product] = field(default_factory=list)
    sample_users: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_id = {p.item_id: p for p in self.products}

    def __len__(self) -> int:
        return len(self.products)

    def get(self, item_id: str) -> Product | None:
        return self._by_id.get(item_id)

    def categories(self) -> list[str]:
        """Distinct categories, sorted; items without one are left out."""
        return sorted({p.category for p in self.products if p.category})

    def page(self, category: str | None = None, limit: int = 48, offset: int = 0) -> list[Product]:
        """Products of ``category`` (all when None), most popular first."""
        chosen = [p for p in self.products if category is None or p.category == category]
        return chosen[offset : offset + limit]


def build_catalogue(events: pa.Table, n_sample_users: int = 12) -> Catalogue:
    """Build the catalogue from an events table (``aisys.schemas.EVENT_SCHEMA`` columns).

    Category and price come from each item's latest event that has them; popularity
    is the item's number of events. Sample users are the most active ones.
    """
    for column in ("user_id", "item_id", "timestamp"):
        if column not in events.column_names:
            raise ValueError(f"events table has no {column!r} column")
    if events.num_rows == 0:
        return Catalogue()
    ordered = events.sort_by([("timestamp", "ascending")])
    items = ordered.column("item_id").to_pylist()
    categories = ordered.column("category").to_pylist() if "category" in events.column_names else [None] * len(items)
    prices = ordered.column("price").to_pylist() if "price" in events.column_names else [None] * len(items)
    latest_category: dict[str, str | None] = {}
    latest_price: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for item, category, price in zip(items, categories, prices):
        counts[item] = counts.get(item, 0) + 1
        if category is not None:
            latest_category[item] = category
        if price is not None:
            latest_price[item] = float(price)
    products = [
        Product(item, latest_category.get(item), latest_price.get(item), n)
        for item, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    activity = pc.value_counts(events.column("user_id")).to_pylist()
    activity.sort(key=lambda row: (-row["counts"], row["values"]))
    return Catalogue(products, [row["values"] for row in activity[:n_sample_users]])
