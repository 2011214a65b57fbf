"""Validation and deduplication of raw event batches (pure pyarrow, vectorised).

A raw batch may come from CSV (all strings), JSON (numbers, strings, nulls),
Parquet (typed) or anything else: each column is cast or parsed on its own, and a
row whose value cannot be converted is quarantined with a reason that names the
field, e.g. ``timestamp: unparseable '2026-13-99'``, instead of raising.

Rules (docs/ingest.md): required columns present; ids non-empty and at most
``max_id_length`` characters; ``event_type`` in ``EVENT_TYPES``; ``value`` a finite
number (a missing ``value`` column means 1.0 for every row: sources without a
strength signal); ``timestamp`` parseable (ISO 8601 with or without offset, naive
= UTC; or epoch seconds) and within ``[min_timestamp, max_timestamp]``; ``price``
null or a finite number >= 0. A row that breaks several rules gets every reason,
joined by ``'; '``. Invariant: ``len(clean) + len(quarantine) == len(batch)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Union

import pyarrow as pa
import pyarrow.compute as pc

from aisys.config import IngestConfig
from aisys.schemas import (
    EVENT_COLUMNS,
    EVENT_SCHEMA,
    EVENT_TYPES,
    HOSTILE_ID_CHARS_RE2,
    QUARANTINE_SCHEMA,
    REJECT_REASON_COLUMN,
    REQUIRED_COLUMNS,
    TIMESTAMP_TYPE,
)

ID_COLUMNS = ("event_id", "user_id", "item_id")
_NUMBER_RE = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"
_EPOCH_RE = r"^\s*[+-]?\d+(\.\d+)?\s*$"
_ISO_RE = r"^\s*\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)?\s*$"
_OFFSET_RE = r"\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)\s*$"  # an offset after a time
_SHOWN_CHARS = 40  # raw values are quoted in reasons, cut to this length


@dataclass(frozen=True)
class ValidationRules:
    """The limits a clean event must respect."""

    min_timestamp: datetime
    max_timestamp: datetime
    max_id_length: int = 128

    @classmethod
    def from_config(cls, cfg: IngestConfig, now: datetime | None = None) -> "ValidationRules":
        """Rules from the ingest config; ``max_timestamp = now + max_future_seconds``."""
        now = now or datetime.now(timezone.utc)
        if now.tzinfo is None:
            now = now.replace(tzinfo=timezone.utc)
        min_ts = datetime.fromisoformat(cfg.min_timestamp.replace("Z", "+00:00"))
        if min_ts.tzinfo is None:
            min_ts = min_ts.replace(tzinfo=timezone.utc)
        return cls(
            min_timestamp=min_ts,
            max_timestamp=now + timedelta(seconds=cfg.max_future_seconds),
            max_id_length=cfg.max_id_length,
        )


# --- casting helpers -----------------------------------------------------------------


def _as_string(arr: pa.Array) -> pa.Array:
    """The raw value as text (for reasons and the quarantine)."""
    if pa.types.is_string(arr.type):
        return arr
    if pa.types.is_large_string(arr.type) or pa.types.is_dictionary(arr.type):
        return arr.cast(pa.string())
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        return pc.cast(arr, pa.string(), safe=False)
    try:
        return arr.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Nested values (lists, structs): keep their repr rather than fail the batch.
        return pa.array([None if v is None else str(v) for v in arr.to_pylist()], pa.string())


def _safe_cast(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """Cast, turning values that fail into nulls.

    Arrow casts a whole array or nothing; bisecting isolates the failing values
    with O(bad * log n) vectorised casts instead of a Python loop over rows.
    """
    try:
        return pc.cast(arr, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(arr) <= 1:
            return pa.nulls(len(arr), target)
        mid = len(arr) // 2
        return pa.concat_arrays([_safe_cast(arr.slice(0, mid), target), _safe_cast(arr.slice(mid), target)])


def _only_where(arr: pa.Array, mask: pa.Array) -> pa.Array:
    return pc.if_else(mask, arr, pa.scalar(None, arr.type))


def _parse_number(arr: pa.Array) -> pa.Array:
    """A float64 array with null where the value is not a number (nulls stay null)."""
    if pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_decimal(arr.type):
        return pc.cast(arr, pa.float64())
    if pa.types.is_boolean(arr.type) or pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.float64())
    text = _as_string(arr)
    looks_numeric = pc.match_substring_regex(text, _NUMBER_RE)
    return _safe_cast(pc.utf8_trim_whitespace(_only_where(text, looks_numeric)), pa.float64())


def _epoch_seconds_to_ts(seconds: pa.Array) -> pa.Array:
    micros = pc.round(pc.multiply(pc.cast(seconds, pa.float64()), 1_000_000.0))
    # Out-of-range epochs would overflow int64 microseconds: treat as unparseable.
    micros = _only_where(micros, pc.less(pc.abs(micros), 9.2e18))
    return pc.cast(pc.cast(micros, pa.int64()), TIMESTAMP_TYPE)


def _parse_timestamp(arr: pa.Array) -> pa.Array:
    """UTC microsecond timestamps; null where unparseable (nulls stay null)."""
    if pa.types.is_timestamp(arr.type):
        if arr.type.tz is None:
            return pc.cast(arr.cast(pa.timestamp("us")), TIMESTAMP_TYPE)  # naive = UTC
        return arr.cast(TIMESTAMP_TYPE)
    if pa.types.is_date(arr.type):
        return pc.cast(arr.cast(pa.timestamp("us")), TIMESTAMP_TYPE)
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        return _epoch_seconds_to_ts(arr)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return pa.nulls(len(arr), TIMESTAMP_TYPE)
    text = pc.utf8_trim_whitespace(_as_string(arr))
    is_epoch = pc.match_substring_regex(text, _EPOCH_RE)
    is_iso = pc.match_substring_regex(text, _ISO_RE)
    has_offset = pc.and_kleene(is_iso, pc.match_substring_regex(text, _OFFSET_RE))
    naive = pc.and_kleene(is_iso, pc.invert(has_offset))
    # The shapes are checked by regex; a value like 2026-13-99 passes the regex and
    # fails the cast, which _safe_cast turns into null.
    with_offset = _safe_cast(_only_where(text, has_offset), TIMESTAMP_TYPE)
    without = _safe_cast(_only_where(pc.replace_substring(text, " ", "T"), naive), pa.timestamp("us"))
    epoch = _epoch_seconds_to_ts(_safe_cast(_only_where(text, is_epoch), pa.float64()))
    return pc.coalesce(with_offset, pc.cast(without, TIMESTAMP_TYPE), epoch)


# --- the rules -----------------------------------------------------------------------


def _quote(text: pa.Array) -> pa.Array:
    shown = pc.utf8_slice_codeunits(pc.fill_null(text, ""), 0, _SHOWN_CHARS)
    return pc.binary_join_element_wise("'", shown, "'", "")


def _is_text(arr: pa.Array) -> bool:
    return pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)


# A message is fixed text, or a function of the rejected rows' selection that
# quotes their raw values: quoting only rejected rows keeps clean batches cheap.
Message = Union[str, Callable[[pa.Array], pa.Array]]
Reason = tuple[pa.Array, Message]


def _quoting(prefix: str, col: pa.Array) -> Message:
    return lambda selected: pc.binary_join_element_wise(prefix, _quote(col.filter(selected)), "")


def _not_a_number(field: str, col: pa.Array) -> Message:
    if _is_text(col):
        return _quoting(f"{field}: not a number ", col)
    return f"{field}: not a number ({col.type})"


def _reason(mask: pa.Array, message: Message) -> Reason:
    """A rule's verdict: the rows it rejects (null = not rejected) and why."""
    return pc.fill_null(mask, False), message


def _join_reasons(reasons: list[Reason], n: int) -> tuple[pa.Array, pa.Array]:
    """(rejected mask over all rows, '; '-joined reasons for the rejected rows only)."""
    if not reasons:
        return pa.array([False] * n, pa.bool_()), pa.array([], pa.string())
    rejected = reasons[0][0]
    for mask, _ in reasons[1:]:
        rejected = pc.or_(rejected, mask)
    parts = []
    for mask, message in reasons:
        hit = mask.filter(rejected)
        text = message(rejected) if callable(message) else pa.scalar(message)
        # Each reason becomes "reason; " or ""; the trailing separator is cut below.
        # (null_handling="skip" returned a short array for all-null rows in pyarrow 25.)
        parts.append(pc.if_else(hit, pc.binary_join_element_wise(text, "; ", ""), ""))
    joined = pc.binary_join_element_wise(*parts, "") if len(parts) > 1 else parts[0]
    return rejected, pc.utf8_rtrim(joined, characters="; ")


def _column(batch: pa.Table, name: str) -> pa.Array | None:
    if name not in batch.column_names:
        return None
    return batch.column(name).combine_chunks()


def _check(
    batch: pa.Table, rules: ValidationRules
) -> tuple[dict[str, pa.Array], dict[str, pa.Array], pa.Array, pa.Array]:
    """Return (typed columns, raw columns, rejected mask, reasons of the rejected rows)."""
    n = batch.num_rows
    typed: dict[str, pa.Array] = {}
    raw: dict[str, pa.Array] = {}
    reasons: list[Reason] = []
    missing_string = pa.nulls(n, pa.string())

    for name in REQUIRED_COLUMNS:
        if _column(batch, name) is None:
            reasons.append((pa.array([True] * n, pa.bool_()), f"{name}: missing column"))

    for name in ID_COLUMNS:
        col = _column(batch, name)
        text = missing_string if col is None else _as_string(col)
        raw[name] = text
        typed[name] = text
        if col is not None:
            length = pc.utf8_length(pc.utf8_trim_whitespace(text))
            reasons.append(_reason(pc.or_kleene(pc.is_null(text), pc.equal(length, 0)), f"{name}: empty"))
            reasons.append(
                _reason(pc.greater(pc.utf8_length(text), rules.max_id_length),
                        f"{name}: longer than {rules.max_id_length} characters")
            )
            reasons.append(
                _reason(pc.match_substring_regex(text, HOSTILE_ID_CHARS_RE2),
                        f"{name}: holds a control or bidirectional-control character")
            )

    col = _column(batch, "event_type")
    text = missing_string if col is None else _as_string(col)
    raw["event_type"], typed["event_type"] = text, text
    if col is not None:
        unknown = pc.invert(pc.fill_null(pc.is_in(text, value_set=pa.array(EVENT_TYPES)), False))
        reasons.append(_reason(unknown, _quoting("event_type: unknown ", text)))

    col = _column(batch, "value")
    if col is None:
        raw["value"] = missing_string
        typed["value"] = pa.array([1.0] * n, pa.float64()) if n else pa.array([], pa.float64())
    else:
        raw["value"] = col
        value = _parse_number(col)
        typed["value"] = value
        bad = pc.is_null(value)
        reasons.append(_reason(pc.and_kleene(bad, pc.is_null(col)), "value: missing"))
        reasons.append(_reason(pc.and_kleene(bad, pc.is_valid(col)), _not_a_number("value", col)))
        reasons.append(_reason(pc.invert(pc.is_finite(value)), "value: not finite"))

    col = _column(batch, "timestamp")
    if col is None:
        raw["timestamp"] = missing_string
        typed["timestamp"] = pa.nulls(n, TIMESTAMP_TYPE)
    else:
        raw["timestamp"] = col
        ts = _parse_timestamp(col)
        typed["timestamp"] = ts
        reasons.append(_reason(pc.is_null(col), "timestamp: missing"))
        unparseable = (_quoting("timestamp: unparseable ", col) if _is_text(col)
                       else f"timestamp: unparseable {col.type}")
        reasons.append(_reason(pc.and_kleene(pc.is_null(ts), pc.is_valid(col)), unparseable))
        low = pa.scalar(rules.min_timestamp, TIMESTAMP_TYPE)
        high = pa.scalar(rules.max_timestamp, TIMESTAMP_TYPE)
        reasons.append(_reason(pc.less(ts, low), f"timestamp: before {rules.min_timestamp.isoformat()}"))
        reasons.append(_reason(pc.greater(ts, high), f"timestamp: after {rules.max_timestamp.isoformat()}"))

    col = _column(batch, "category")
    text = missing_string if col is None else _as_string(col)
    raw["category"] = text
    # An empty category from CSV means "unknown", like null.
    typed["category"] = _only_where(text, pc.fill_null(pc.greater(pc.utf8_length(text), 0), False))

    col = _column(batch, "price")
    if col is None:
        raw["price"] = missing_string
        typed["price"] = pa.nulls(n, pa.float64())
    else:
        raw["price"] = col
        price = _parse_number(col)
        typed["price"] = price
        # An empty price from CSV means "unknown", like null.
        present = pc.greater(pc.utf8_length(col), 0) if _is_text(col) else pc.is_valid(col)
        reasons.append(_reason(pc.and_kleene(present, pc.is_null(price)), _not_a_number("price", col)))
        reasons.append(_reason(pc.or_kleene(pc.less(price, 0.0), pc.invert(pc.is_finite(price))),
                               "price: negative or not finite"))

    rejected, why = _join_reasons(reasons, n)
    return typed, raw, rejected, why


def validate_events(batch: pa.Table, rules: ValidationRules) -> tuple[pa.Table, pa.Table]:
    """Split a raw batch into ``(clean, quarantine)``.

    ``clean`` has exactly ``EVENT_SCHEMA``; ``quarantine`` has ``QUARANTINE_SCHEMA``
    (raw values as text plus ``reject_reason`` naming every failing field).
    """
    typed, raw, bad, why = _check(batch, rules)
    good = pc.invert(bad)
    clean = pa.Table.from_arrays([typed[name] for name in EVENT_COLUMNS], names=list(EVENT_COLUMNS))
    clean = clean.filter(good).cast(EVENT_SCHEMA)
    # Raw values become text only for the (few) quarantined rows.
    quarantine = pa.Table.from_arrays(
        [_as_string(raw[name].filter(bad)) for name in EVENT_COLUMNS] + [why],
        names=list(EVENT_COLUMNS) + [REJECT_REASON_COLUMN],
    ).cast(QUARANTINE_SCHEMA)
    return clean, quarantine


def dedupe_events(table: pa.Table, existing_ids: pa.Array | None = None) -> tuple[pa.Table, int, int]:
    """Drop repeated ``event_id``s: returns ``(unique rows, n_duplicates_in_batch, n_already_in_lake)``.

    Within the batch the row with the earliest timestamp wins, ties going to the
    earlier row; then rows whose id is already in ``existing_ids`` are dropped.
    Surviving rows keep their original relative order.
    """
    n = table.num_rows
    if n == 0:
        return table, 0, 0
    position = pa.array(range(n), pa.int64())
    keys = pa.table({"event_id": table.column("event_id"), "timestamp": table.column("timestamp"), "pos": position})
    order = pc.sort_indices(keys, sort_keys=[("event_id", "ascending"), ("timestamp", "ascending"),
                                             ("pos", "ascending")])
    sorted_ids = pc.take(keys.column("event_id"), order).combine_chunks()
    # A row is first of its id when its id differs from the previous row's id.
    first = pc.not_equal(sorted_ids.slice(1), sorted_ids.slice(0, n - 1))
    first = pa.concat_arrays([pa.array([True]), pc.fill_null(first, True)])
    keep_positions = pc.sort_indices(pc.filter(order, first))  # back to original order
    keep = pc.take(pc.filter(order, first), keep_positions)
    unique = table.take(keep)
    n_in_batch = n - unique.num_rows
    n_in_lake = 0
    if existing_ids is not None and len(existing_ids):
        in_lake = pc.fill_null(pc.is_in(unique.column("event_id"), value_set=existing_ids), False)
        n_in_lake = int(pc.sum(in_lake).as_py() or 0)
        unique = unique.filter(pc.invert(in_lake))
    return unique, n_in_batch, n_in_lake
