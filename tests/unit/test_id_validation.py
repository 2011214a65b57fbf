"""Ids with control or bidi-control characters are refused by the API models (no Ray, no HTTP).

``EventIn`` (every id-like field) and ``StockIn`` (its item ids) refuse C0/C1
controls, NUL, DEL and the Unicode bidi controls with an error naming the field
and the code point, never echoing the character itself.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from aisys.serving.api_models import EventIn, StockIn, check_id

HOSTILE = {
    "NUL": "\x00",
    "tab": "\t",
    "newline": "\n",
    "carriage return": "\r",
    "escape (ANSI sequences)": "\x1b",
    "unit separator (last C0)": "\x1f",
    "DEL": "\x7f",
    "first C1": "\x80",
    "NEL (C1)": "\x85",
    "last C1": "\x9f",
    "left-to-right mark": "\u200e",
    "right-to-left mark": "\u200f",
    "arabic letter mark": "\u061c",
    "LR embedding": "\u202a",
    "RL embedding": "\u202b",
    "pop directional formatting": "\u202c",
    "LR override": "\u202d",
    "RL override": "\u202e",
    "LR isolate": "\u2066",
    "RL isolate": "\u2067",
    "first strong isolate": "\u2068",
    "pop directional isolate": "\u2069",
}
# Look odd, are fine: printable non-ASCII letters, emoji, a right-to-left script, a plain space inside.
ACCEPTED = ["\u00e9l\u00e8ve", "\u65e5\u672c", "\U0001f600", "\u05e9\u05dc\u05d5\u05dd", "a b", "\u00a0x", "x" * 128,
            "\u200bzero-width-space"]
EVENT_ID_FIELDS = ("event_id", "user_id", "item_id", "category")


def event(**fields) -> dict:
    return {"user_id": "alice", "item_id": "i1", "event_type": "view", **fields}


@pytest.mark.parametrize("char", list(HOSTILE.values()), ids=list(HOSTILE))
@pytest.mark.parametrize("field", EVENT_ID_FIELDS)
def test_an_event_id_with_a_control_or_bidi_character_is_refused_naming_the_field(field, char):
    with pytest.raises(ValidationError) as caught:
        EventIn.model_validate(event(**{field: f"ab{char}cd"}))
    errors = caught.value.errors()
    assert [e["loc"] for e in errors] == [(field,)]
    message = errors[0]["msg"]
    assert f"U+{ord(char):04X} at position 2" in message
    assert char not in message  # named by code point, never echoed


@pytest.mark.parametrize("value", ACCEPTED)
@pytest.mark.parametrize("field", EVENT_ID_FIELDS)
def test_printable_unicode_ids_are_accepted(field, value):
    assert getattr(EventIn.model_validate(event(**{field: value})), field) == value


def test_only_the_bad_fields_are_named():
    with pytest.raises(ValidationError) as caught:
        EventIn.model_validate(event(user_id="u\u202e", item_id="fine", event_id="e\x00"))
    assert sorted(e["loc"] for e in caught.value.errors()) == [("event_id",), ("user_id",)]


@pytest.mark.parametrize("char", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_stock_item_id_with_a_control_or_bidi_character_is_refused(char):
    with pytest.raises(ValidationError) as caught:
        StockIn.model_validate({"items": {"i1": True, f"i{char}2": False}})
    (error,) = caught.value.errors()
    assert error["loc"] == ("items",)
    assert f"U+{ord(char):04X} at position 1" in error["msg"]
    assert ascii(f"i{char}2") in error["msg"]  # the id, quoted with its escapes
    assert char not in error["msg"]


def test_stock_accepts_printable_unicode_ids():
    items = {value: True for value in ACCEPTED}
    assert StockIn.model_validate({"items": items}).items == items


def test_check_id_refuses_a_lone_surrogate_and_returns_good_ids_unchanged():
    with pytest.raises(ValueError, match="lone surrogate"):
        check_id("a\ud800")
    assert check_id("\u00e9\U0001f600") == "\u00e9\U0001f600"
    # Every character of the ranges, and only those (spot-checked at both edges of each range).
    refused = [c for c in map(chr, range(0x3000)) if _refused(c)]
    expected = [*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)), "\u061c", "\u200e", "\u200f",
                *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))]
    assert refused == expected


def _refused(char: str) -> bool:
    try:
        check_id(char)
        return False
    except ValueError:
        return True


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+06:11", "9999-12-31T23:59:59-01:00"])
def test_a_timestamp_whose_utc_time_is_out_of_range_is_refused_not_a_crash(timestamp):
    # Found by Schemathesis: converting these to UTC raised OverflowError, a 500 at POST /events.
    with pytest.raises(ValidationError) as caught:
        EventIn.model_validate(event(timestamp=timestamp))
    (error,) = caught.value.errors()
    assert error["loc"] == ("timestamp",) and "out of range" in error["msg"]
    assert EventIn.model_validate(event(timestamp="0001-01-01T00:00:00-06:00")).timestamp.year == 1


def test_the_collector_and_batch_ingest_apply_one_rule_on_every_code_point():
    """aisys.schemas holds the rule in Python's and RE2's dialects; they must agree on every BMP code point."""
    import re

    import pyarrow as pa
    import pyarrow.compute as pc

    from aisys.schemas import HOSTILE_ID_CHARS, HOSTILE_ID_CHARS_RE2

    chars = [chr(c) for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF]
    python = [re.search(HOSTILE_ID_CHARS, f"a{c}b") is not None for c in chars]
    re2 = pc.match_substring_regex(pa.array([f"a{c}b" for c in chars]), HOSTILE_ID_CHARS_RE2).to_pylist()
    assert python == re2
    assert sum(python) == 32 + 1 + 32 + 1 + 2 + 5 + 4  # C0, DEL, C1, U+061C, U+200E/F, U+202A-E, U+2066-9
