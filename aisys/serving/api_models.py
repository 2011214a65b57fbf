"""Request and response models of the HTTP API (one per resource and direction).

Requests forbid unknown keys, so a misspelt field is a 422 that names it rather
than a silently dropped value.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aisys.schemas import EVENT_TYPES, HOSTILE_ID_CHARS

# Matches the ingest default (cfg.ingest.max_id_length): the collector should
# not accept an id that ingestion would later quarantine.
MAX_ID_LENGTH = 128

EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]


def _encodable(value: str) -> str:
    """Refuse text that is not valid Unicode (a lone surrogate from a JSON ``\\ud800`` escape).

    Such an id could be stored, but never written to a log, a Parquet file or a
    JSON response again: refuse it at the door with a 422 instead.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


_HOSTILE_CHARS = re.compile(HOSTILE_ID_CHARS)  # see aisys.schemas: one rule with batch ingest


def check_id(value: str) -> str:
    """Refuse an id holding a control or bidi-control character, or invalid Unicode (a lone surrogate).

    The message names the character by code point and position, never echoing
    it: the message itself reaches logs and clients.
    """
    _encodable(value)
    found = _HOSTILE_CHARS.search(value)
    if found is not None:
        raise ValueError(
            f"must not contain control or bidirectional-control characters "
            f"(found U+{ord(found.group()):04X} at position {found.start()})"
        )
    return value


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class EventIn(BaseModel):
    """One interaction posted to ``POST /events``."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex,
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="Client-chosen id (makes retries idempotent at ingest); generated when absent.",
    )
    user_id: str = Field(..., min_length=1, max_length=MAX_ID_LENGTH, description="Who interacted.")
    item_id: str = Field(..., min_length=1, max_length=MAX_ID_LENGTH, description="With which item.")
    event_type: EventType = Field(..., description=f"One of {', '.join(EVENT_TYPES)}.")
    value: float = Field(1.0, allow_inf_nan=False, description="Rating or quantity; 1 by default.")
    timestamp: datetime = Field(
        default_factory=_utc_now,
        description="When it happened: ISO 8601 or epoch seconds; naive times are UTC; default now.",
    )
    category: str | None = Field(None, max_length=MAX_ID_LENGTH, description="Item category, when known.")
    price: float | None = Field(None, ge=0, allow_inf_nan=False, description="Item price, when known.")

    @field_validator("event_id", "user_id", "item_id", "category")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("must not be blank")
        return check_id(value)

    @field_validator("timestamp")
    @classmethod
    def _as_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        try:
            return value.astimezone(timezone.utc)
        except OverflowError:  # "0001-01-01T00:00:00+06:00" is a valid datetime whose UTC time is not
            raise ValueError("is out of range once converted to UTC (before year 1 or after 9999)") from None

    def to_raw_event(self) -> dict[str, Any]:
        """The event in the raw-file format ``aisys ingest`` reads (ISO 8601 UTC timestamp)."""
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event_type": self.event_type,
            "value": self.value,
            "timestamp": self.timestamp.isoformat().replace("+00:00", "Z"),
            "category": self.category,
            "price": self.price,
        }


class ScoredItemOut(BaseModel):
    item_id: str
    score: float
    category: str | None = None
    reason: str | None = Field(None, description="Why: 'because you viewed <item>' or 'popular now'.")


class RecommendationsOut(BaseModel):
    """Response of ``GET /recommendations/{user_id}``."""

    user_id: str
    k: int
    items: list[ScoredItemOut]
    fallback: bool = Field(..., description="True when popularity was served instead of the model.")
    fallback_reason: str | None = Field(
        None, description="Why: 'unknown_user', 'no_model', 'model_error' or 'latency_budget'."
    )
    model_version: str | None = Field(None, description="Registry version of the model that served this arm.")
    arm: Literal["champion", "challenger"] = Field("champion", description="Which alias served the user.")


class StockIn(BaseModel):
    """Body of ``PUT /admin/stock``: ``{"items": {"item42": false, "item7": true}}``."""

    model_config = ConfigDict(extra="forbid")

    items: dict[str, bool] = Field(..., min_length=1, description="item_id -> in stock (false = never recommend).")

    @field_validator("items")
    @classmethod
    def _ids_are_valid(cls, value: dict[str, bool]) -> dict[str, bool]:
        for item in value:
            # ascii(): the id is quoted with every non-ASCII character escaped, so a hostile one is never echoed.
            if not item.strip() or len(item) > MAX_ID_LENGTH:
                raise ValueError(f"item id {ascii(item[:40])} must be 1..{MAX_ID_LENGTH} non-blank characters")
            try:
                check_id(item)
            except ValueError as err:
                raise ValueError(f"item id {ascii(item[:40])} {err}") from None
        return value


class StockOut(BaseModel):
    """Response of ``PUT /admin/stock``: every item now out of stock."""

    out_of_stock: list[str]


class EventAccepted(BaseModel):
    """Response of ``POST /events``."""

    event_id: str
    accepted: Literal[True] = True
    known_item: bool = Field(..., description="False when the model does not know the item (logged, not scored).")
    replay: bool = Field(
        False, description="True when this event_id was already applied: the session and the counters ignored it."
    )


class ModelOut(BaseModel):
    """Response of ``GET /model``: what is being served and where it came from."""

    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    snapshot_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def describe(cls, bundle: Any, info: Mapping[str, Any], default_name: str | None = None) -> "ModelOut":
        """Describe a loaded bundle from its lineage plus the registry's ``info`` dict.

        The registry's answer wins where both know a value (name, version,
        alias, run id); the data snapshot comes from the bundle's lineage.
        """
        lineage = dict(bundle.lineage or {})
        version = info.get("version")
        metrics = {k: float(v) for k, v in (bundle.metrics or {}).items() if isinstance(v, (int, float))}
        return cls(
            name=info.get("name") or info.get("model_name") or default_name,
            version=None if version is None else str(version),
            alias=info.get("alias"),
            run_id=info.get("run_id") or lineage.get("run_id"),
            snapshot_id=lineage.get("snapshot_id") or info.get("snapshot_id"),
            metrics=metrics,
            lineage=lineage,
        )


class FieldErrorOut(BaseModel):
    """One field to blame in an error: its dotted location (``body.user_id``, ``query.k``) and why."""

    model_config = ConfigDict(extra="forbid")

    field: str
    message: str


class ErrorDetailOut(BaseModel):
    """What went wrong: a stable code, a message, and the fields to blame."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(..., description="Stable machine-readable code: validation_error, unauthorized, forbidden, ...")
    message: str = Field(..., description="What went wrong, for a human.")
    fields: list[FieldErrorOut] = Field(..., description="The fields to blame (empty when none is).")


class ErrorOut(BaseModel):
    """Every 4xx and 5xx body of the API (``aisys.gateway.errors``): one shape, one parser."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetailOut
    request_id: str = Field(..., description="The request's X-Request-ID (logged server-side too).")


class Health(BaseModel):
    """Response of ``GET /healthz``."""

    status: Literal["ok", "degraded"]
    model_loaded: bool
    model_version: str | None = None
    challenger_version: str | None = None
