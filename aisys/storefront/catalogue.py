"""The product catalogue the storefront shows (pure pyarrow and Python).

Two sources meet here:

- the operator's **product table** (``aisys.data.products``, ``{lake}/products/products.parquet``):
  each item's name, brand, category and price. It is the truth for what is on sale, so every
  product in it is in the catalogue, bought or not;
- the lake snapshot's **events**: each item's popularity (its event count), which orders the shop.

An item that has events but is missing from the product table (a table that lags, or none at
all) is still shown, with the category and price of its latest event that carried them, so the
shop never hides what shoppers are buying.

``Product.category`` is the category **id** the events and the model use (``c3``); people read
``category_name`` ("Kitchen").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Product:
    """One item as the storefront shows it (``category``/``price`` are what an event on it carries)."""

    item_id: str
    category: str | None
    price: float | None
    popularity: int
    name: str | None = None
    brand: str | None = None
    category_name: str | None = None
    colour: str | None = None
    tags: str | None = None

    @property
    def title(self) -> str:
        """What a shopper reads: the name, else the bare id."""
        return self.name or self.item_id

    def to_dict(self) -> dict:
        return {
            "item_id": self.item_id, "name": self.title, "brand": self.brand, "category": self.category,
            "category_name": self.category_name or self.category, "price": self.price,
            "popularity": self.popularity, "tags": self.tags,
        }


@dataclass(frozen=True)
class Page:
    """One page of products, and where the pages around it start (None: no such page)."""

    items: list[Product]
    total: int
    offset: int
    limit: int

    @property
    def next_offset(self) -> int | None:
        return self.offset + self.limit if self.offset + self.limit < self.total else None

    @property
    def prev_offset(self) -> int | None:
        return max(0, self.offset - self.limit) if self.offset > 0 else None


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
        """The product with this id, or None (the security engineer's event stamping relies on this)."""
        return self._by_id.get(item_id)

    def categories(self) -> list[str]:
        """Distinct category ids, sorted; items without one are left out."""
        return sorted({p.category for p in self.products if p.category})

    def category_list(self) -> list[dict]:
        """``[{id, name, count}]`` per category, sorted by name: what the page's filter shows."""
        names: dict[str, str] = {}
        counts: dict[str, int] = {}
        for p in self.products:
            if p.category:
                names.setdefault(p.category, p.category_name or p.category)
                counts[p.category] = counts.get(p.category, 0) + 1
        return [{"id": c, "name": names[c], "count": counts[c]} for c in sorted(names, key=lambda c: (names[c], c))]

    def page(self, category: str | None = None, limit: int = 48, offset: int = 0) -> list[Product]:
        """Products of ``category`` (all when None), most popular first."""
        return self.paged(category, limit, offset).items

    def paged(self, category: str | None = None, limit: int = 48, offset: int = 0) -> Page:
        """A :class:`Page` of ``category`` (all when None) with the total, for prev/next links."""
        if limit < 1 or offset < 0:
            raise ValueError(f"limit must be >= 1 and offset >= 0; got limit={limit}, offset={offset}")
        chosen = [p for p in self.products if category is None or p.category == category]
        return Page(chosen[offset : offset + limit], len(chosen), offset, limit)


def _latest_values(events: pa.Table) -> tuple[dict[str, int], dict[str, str], dict[str, float]]:
    """Per item: event count, and the category and price of its latest event that carried them."""
    ordered = events.sort_by([("timestamp", "ascending")])
    items = ordered.column("item_id").to_pylist()
    categories = ordered.column("category").to_pylist() if "category" in events.column_names else [None] * len(items)
    prices = ordered.column("price").to_pylist() if "price" in events.column_names else [None] * len(items)
    counts: dict[str, int] = {}
    latest_category: dict[str, str] = {}
    latest_price: dict[str, float] = {}
    for item, category, price in zip(items, categories, prices):
        counts[item] = counts.get(item, 0) + 1
        if category is not None:
            latest_category[item] = category
        if price is not None:
            latest_price[item] = float(price)
    return counts, latest_category, latest_price


def build_catalogue(events: pa.Table, products: pa.Table | None = None, n_sample_users: int = 12) -> Catalogue:
    """Build the catalogue from an events table (``aisys.schemas.EVENT_SCHEMA`` columns) and,
    when given, the product table (``aisys.data.products.PRODUCT_SCHEMA`` columns).

    Products come from ``products`` (every row); popularity is each item's number of events;
    items only the events know keep their latest event's category and price. Order: most popular
    first, then by id (numeric ids as numbers). Sample users are the most active ones.
    """
    for column in ("user_id", "item_id", "timestamp"):
        if column not in events.column_names:
            raise ValueError(f"events table has no {column!r} column")
    counts, latest_category, latest_price = _latest_values(events) if events.num_rows else ({}, {}, {})
    rows = products.to_pylist() if products is not None else []
    listed: dict[str, Product] = {}
    for row in rows:
        item = row["item_id"]
        listed[item] = Product(
            item, row.get("category"), row.get("price"), counts.get(item, 0), name=row.get("name"),
            brand=row.get("brand"), category_name=row.get("category_name"), colour=row.get("colour"),
            tags=row.get("tags"),
        )
    for item, n in counts.items():
        if item not in listed:
            listed[item] = Product(item, latest_category.get(item), latest_price.get(item), n)
    ordered = sorted(listed.values(), key=lambda p: (-p.popularity, *_id_key(p.item_id)))
    sample_users: list[str] = []
    if events.num_rows:
        activity = pc.value_counts(events.column("user_id")).to_pylist()
        activity.sort(key=lambda row: (-row["counts"], row["values"]))
        sample_users = [row["values"] for row in activity[:n_sample_users]]
    return Catalogue(ordered, sample_users)


def _id_key(item_id: str) -> tuple[str, int, str]:
    """Sort "i2" before "i10" and "2" before "10": the prefix, then the trailing number."""
    digits = len(item_id) - len(item_id.rstrip("0123456789"))
    if digits:
        return item_id[:-digits], int(item_id[-digits:]), item_id
    return item_id, -1, item_id
