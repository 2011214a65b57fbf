"""The one event schema every source produces and the lake stores.

An event is one interaction of a user with an item. Item attributes
(``category``, ``price``) ride along where the source knows them. The lake adds
``event_date`` (``YYYY-MM-DD``, UTC) as its partition column.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "purchase", "rating")

# Timestamps are UTC microseconds everywhere: raw files may carry ISO strings or
# epoch seconds, and validation normalises them to this type.
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("timestamp", TIMESTAMP_TYPE, nullable=False),
        pa.field("category", pa.string(), nullable=True),
        pa.field("price", pa.float64(), nullable=True),
    ]
)

EVENT_COLUMNS: tuple[str, ...] = tuple(EVENT_SCHEMA.names)
REQUIRED_COLUMNS: tuple[str, ...] = ("event_id", "user_id", "item_id", "event_type", "timestamp")

PARTITION_COLUMN = "event_date"
LAKE_SCHEMA = EVENT_SCHEMA.append(pa.field(PARTITION_COLUMN, pa.string(), nullable=False))

REJECT_REASON_COLUMN = "reject_reason"
# Quarantined rows keep their raw values as strings: a row that failed type
# conversion cannot be stored in the typed schema.
QUARANTINE_SCHEMA = pa.schema(
    [pa.field(name, pa.string(), nullable=True) for name in EVENT_COLUMNS]
    + [pa.field(REJECT_REASON_COLUMN, pa.string(), nullable=False)]
)


def schema_hash(schema: pa.Schema = LAKE_SCHEMA) -> str:
    """A short, stable fingerprint of a schema's field names, types and nullability."""
    text = ";".join(f"{f.name}:{f.type}:{f.nullable}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
