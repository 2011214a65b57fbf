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

# Characters an id must never hold: C0 controls (NUL, tab, newline...), DEL, C1 controls, and the Unicode bidi
# controls: marks (U+200E/200F, U+061C), embeddings and overrides (U+202A-202E), isolates (U+2066-2069). Such a
# character is never data: it corrupts log lines and CSV/TSV exports, and a bidi override makes an id display as
# another ("user\u202egnp.exe" shows as "userexe.png"). One rule, two regex dialects: Python's ``re`` for the
# HTTP collector (aisys.serving.api_models) and RE2 for batch ingest in pyarrow (aisys.data.validate);
# tests/unit/test_id_validation.py checks they agree on every code point up to U+FFFF.
HOSTILE_ID_CHARS = r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
HOSTILE_ID_CHARS_RE2 = r"[\x{0}-\x{1f}\x{7f}-\x{9f}\x{61c}\x{200e}\x{200f}\x{202a}-\x{202e}\x{2066}-\x{2069}]"
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
