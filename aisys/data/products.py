"""The operator-owned product table: what a shop knows about each item (name, brand, category, price).

Events say what shoppers did; this table says what is on sale. It lives in the
lake, beside the event snapshots, as one Parquet file::

    {lake}/products/products.parquet

written by ``aisys data`` (:func:`publish_source_products`, for the simulator and
MovieLens) or by an operator's own export (any table with :data:`PRODUCT_SCHEMA`'s
columns). The storefront's :class:`~aisys.storefront.catalogue.Catalogue` reads it:
an item's name, category and price come from here, not from events.

Ids stay what the model knows: ``item_id`` is the events' item id and ``category``
is the events' category id (``c3`` for the simulator), so features and training do
not change; ``category_name`` ("Kitchen") is for people.

The naming here is pure and seeded (no network, no files): the same simulator
config always names the same items the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from aisys.config import AppConfig
    from aisys.data.lake import Lake

PRODUCT_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("category", pa.string()),  # the id events carry (model vocabulary)
        pa.field("category_name", pa.string()),  # what a shopper reads
        pa.field("price", pa.float64()),
        pa.field("colour", pa.string()),  # "#rrggbb": the product image's colour
        pa.field("tags", pa.string()),  # e.g. every MovieLens genre, comma-separated
    ]
)
PRODUCTS_FILE = "products/products.parquet"

# A shop's departments and, per department, what it sells. Category c<n> is
# CATEGORY_NAMES[n] (numbered again past the list), so a config with more
# categories still gets distinct names.
DEPARTMENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Kitchen", ("Kettle", "Chef's Knife", "Frying Pan", "Blender", "Cutting Board", "Teapot", "Toaster")),
    ("Garden", ("Watering Can", "Trowel", "Planter", "Hose Reel", "Pruning Shears", "Bird Feeder")),
    ("Books", ("Cookbook", "Travel Guide", "Novel", "Atlas", "Poetry Collection", "Field Guide")),
    ("Toys", ("Building Blocks", "Puzzle", "Kite", "Toy Train", "Plush Bear", "Board Game")),
    ("Electronics", ("Headphones", "Speaker", "Charger", "Desk Lamp", "Keyboard", "Webcam")),
    ("Sports", ("Yoga Mat", "Water Bottle", "Running Cap", "Dumbbell", "Tennis Racket", "Bike Light")),
    ("Beauty", ("Face Cream", "Hair Brush", "Soap Bar", "Lip Balm", "Perfume", "Shaving Kit")),
    ("Office", ("Notebook", "Fountain Pen", "Desk Organiser", "Stapler", "Planner", "Backpack")),
    ("Pets", ("Dog Bowl", "Cat Toy", "Pet Bed", "Leash", "Scratching Post", "Treat Jar")),
    ("Fashion", ("Scarf", "Sneakers", "Wallet", "Sunglasses", "Rain Jacket", "Beanie")),
    ("Home", ("Throw Blanket", "Cushion", "Candle", "Wall Clock", "Vase", "Picture Frame")),
    ("Outdoor", ("Tent", "Sleeping Bag", "Lantern", "Camping Stove", "Compass", "Hammock")),
)
ADJECTIVES = ("Classic", "Compact", "Deluxe", "Everyday", "Pro", "Eco", "Travel", "Premium", "Smart", "Mini")
COLOURS: tuple[tuple[str, str], ...] = (
    ("Red", "#c0392b"), ("Blue", "#2e6fba"), ("Green", "#2f8f4e"), ("Black", "#2b2b2b"), ("White", "#b8bcc4"),
    ("Teal", "#14857f"), ("Orange", "#d9731a"), ("Grey", "#6b7280"), ("Yellow", "#c9a400"), ("Purple", "#7d4fb0"),
)
BRANDS = ("Northwind", "Acme", "Lumen", "Fjord", "Bramble", "Orbit", "Kestrel", "Juniper", "Halcyon", "Tandem",
          "Vireo", "Cobalt")


def category_name(index: int) -> str:
    """The department name of category ``c<index>`` ("Kitchen"; "Kitchen 2" once the list wraps)."""
    name = DEPARTMENTS[index % len(DEPARTMENTS)][0]
    return name if index < len(DEPARTMENTS) else f"{name} {index // len(DEPARTMENTS) + 1}"


def _digest(seed: int, item_index: int) -> int:
    # A hash, not the simulator's generator: naming must never shift the simulated events.
    return int.from_bytes(hashlib.sha256(f"{seed}:{item_index}".encode()).digest()[:8], "big")


def product_name(seed: int, item_index: int, category_index: int) -> tuple[str, str, str]:
    """``(name, brand, colour hex)`` of a simulated item: "Compact Teal Kettle" by "Lumen"."""
    h = _digest(seed, item_index)
    nouns = DEPARTMENTS[category_index % len(DEPARTMENTS)][1]
    adjective = ADJECTIVES[h % len(ADJECTIVES)]
    colour, hex_value = COLOURS[(h >> 8) % len(COLOURS)]
    noun = nouns[(h >> 16) % len(nouns)]
    brand = BRANDS[(h >> 24) % len(BRANDS)]
    return f"{adjective} {colour} {noun}", brand, hex_value


def simulator_products(item_category: list[int], prices: list[float], seed: int) -> pa.Table:
    """The product table of a simulated shop: item ``i<n>`` in category ``c<item_category[n]>``."""
    names, brands, colours = [], [], []
    for n, cat in enumerate(item_category):
        name, brand, colour = product_name(seed, n, int(cat))
        names.append(name)
        brands.append(brand)
        colours.append(colour)
    return pa.Table.from_arrays(
        [
            pa.array([f"i{n}" for n in range(len(item_category))], pa.string()),
            pa.array(names, pa.string()),
            pa.array(brands, pa.string()),
            pa.array([f"c{int(c)}" for c in item_category], pa.string()),
            pa.array([category_name(int(c)) for c in item_category], pa.string()),
            pa.array([float(p) for p in prices], pa.float64()),
            pa.array(colours, pa.string()),
            pa.nulls(len(item_category), pa.string()),
        ],
        schema=PRODUCT_SCHEMA,
    )


def movielens_products(titles: dict[str, str], genres: dict[str, list[str]]) -> pa.Table:
    """The product table of MovieLens: title as name, first genre as category (as the events carry it),
    every genre as tags; no brand and no price (the data has none)."""
    ids = sorted(set(titles) | set(genres), key=lambda i: (not i.isdigit(), int(i) if i.isdigit() else 0, i))
    first = [(genres.get(i) or [None])[0] for i in ids]
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.string()),
            pa.array([titles.get(i) or f"Movie {i}" for i in ids], pa.string()),
            pa.nulls(len(ids), pa.string()),
            pa.array(first, pa.string()),
            pa.array(first, pa.string()),
            pa.nulls(len(ids), pa.float64()),
            pa.nulls(len(ids), pa.string()),
            pa.array([", ".join(genres.get(i) or []) or None for i in ids], pa.string()),
        ],
        schema=PRODUCT_SCHEMA,
    )


def conform_products(table: pa.Table) -> pa.Table:
    """``table`` with exactly :data:`PRODUCT_SCHEMA`'s columns (missing optional ones become nulls).

    Raises ``ValueError`` naming the problem when ``item_id`` is missing or repeated.
    """
    if "item_id" not in table.column_names:
        raise ValueError(f"a product table needs an item_id column; it has {table.column_names}")
    columns = []
    for field in PRODUCT_SCHEMA:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    out = pa.Table.from_arrays(columns, schema=PRODUCT_SCHEMA)
    ids = out.column("item_id").to_pylist()
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"a product table lists each item once; repeated item_id(s): {dupes}")
    return out


def products_path(lake: "Lake") -> str:
    """Where the lake keeps its product table (see the module docstring)."""
    return f"{lake.root}/{PRODUCTS_FILE}"


def write_products(lake: "Lake", table: pa.Table) -> str:
    """Replace the lake's product table with ``table`` (written aside, then moved in); returns its path."""
    import pyarrow.parquet as pq

    table = conform_products(table)
    path = products_path(lake)
    folder = path.rsplit("/", 1)[0]
    lake.fs.create_dir(folder, recursive=True)
    staging = f"{folder}/.products-{hashlib.sha256(path.encode()).hexdigest()[:8]}.parquet"
    pq.write_table(table, staging, filesystem=lake.fs)
    # A reader sees the old table or the new one, never half a file (a move is atomic on a local disk).
    lake.fs.move(staging, path)
    return path


def read_products(lake: "Lake") -> pa.Table | None:
    """The lake's product table, or None when nobody has written one yet."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    path = products_path(lake)
    if lake.fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    return conform_products(pq.read_table(path, filesystem=lake.fs))


def source_products(cfg: "AppConfig") -> pa.Table:
    """The product table of the configured source (the simulator's shop, or MovieLens titles and genres)."""
    if cfg.data.source == "movielens":
        from aisys.data.movielens import movielens_folder, read_item_genres, read_item_titles

        folder: Path = movielens_folder(cfg.data.movielens, cfg.paths.cache_dir)
        return movielens_products(read_item_titles(folder), read_item_genres(folder))
    from aisys.data.simulator import simulate_products

    return simulate_products(cfg.data.simulator)


def publish_source_products(cfg: "AppConfig") -> str:
    """Write the configured source's product table into the lake (``aisys data`` does); returns its path."""
    from aisys.data.lake import Lake

    return write_products(Lake.from_config(cfg.paths), source_products(cfg))
