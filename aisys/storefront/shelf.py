"""What a shop shows beside a product: the shelf rule (pure, no Ray, no HTTP).

The serving layer ranks items for a shopper from their session. On a product page that list
is wrong in two ways a shopper notices at once: it can contain the very product they are looking
at ("because you viewed Kettle" under the Kettle), and things already in their basket. The rule:

- **never** the product being viewed;
- **never** an item already in the basket;
- otherwise the model's order, cut to ``k``.

The storefront route asks the serving layer for ``k + len(exclusions)`` items (the list has no
repeats, so at least ``k`` survive when the catalogue is big enough) and applies
:func:`product_shelf` to the answer. Reasons are rewritten to name products, not ids.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol, Sequence

VIEWED_PREFIX = "because you viewed "
SHELF_HEADINGS = {"product": "Customers also viewed", "browse": "Recommended for you"}
MAX_BASKET = 50  # a basket longer than this is not a shopper's (and would blow up the over-fetch)


class Named(Protocol):
    """What :func:`readable_reason` needs of a catalogue."""

    def get(self, item_id: str) -> Any: ...


def shelf_exclusions(viewing: str | None, basket: Iterable[str] = ()) -> frozenset[str]:
    """Item ids the shelf beside ``viewing`` must never show: the viewed item and the basket."""
    excluded = {item for item in basket if item}
    if viewing:
        excluded.add(viewing)
    return frozenset(excluded)


def fetch_size(k: int, exclusions: frozenset[str]) -> int:
    """How many items to ask the ranker for so that ``k`` remain after the exclusions."""
    return k + len(exclusions)


def product_shelf(items: Sequence[Mapping[str, Any]], k: int, viewing: str | None = None,
                  basket: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The first ``k`` of ``items`` (ranked dicts with ``item_id``) that are neither the viewed
    product nor in the basket, in the ranker's order."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    excluded = shelf_exclusions(viewing, basket)
    return [dict(item) for item in items if item.get("item_id") not in excluded][:k]


def readable_reason(reason: str | None, catalogue: Named | None) -> str | None:
    """``"because you viewed i16"`` -> ``"because you viewed Compact Teal Kettle"`` (other reasons unchanged)."""
    if not reason or catalogue is None or not reason.startswith(VIEWED_PREFIX):
        return reason
    product = catalogue.get(reason[len(VIEWED_PREFIX):])
    return reason if product is None else VIEWED_PREFIX + product.title
