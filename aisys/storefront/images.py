"""Product pictures drawn offline: a small deterministic SVG per product (pure string building).

A shop without a photo studio still needs something to look at. Each product gets a tile in its
own colour (the product table's ``colour``, else one derived from the category, so a department
looks alike) with a department glyph and the product's initials. The page shows it as a
``data:`` URI, which the pages' Content-Security-Policy allows (``img-src 'self' data:``); no
network, no files, the same picture for the same product every time.
"""

from __future__ import annotations

import hashlib
from html import escape
from urllib.parse import quote

# Muted colours that keep white text readable (contrast >= 4.5:1 against #fff).
PALETTE = ("#2e6fba", "#2f8f4e", "#c0392b", "#7d4fb0", "#14857f", "#b35900", "#6b7280", "#a3326b", "#3b5b8c")
# One simple glyph per department, drawn in a 40x40 box centred at (60, 48); paths only, no fonts.
GLYPHS = (
    "M40 40h40v24a8 8 0 0 1-8 8H48a8 8 0 0 1-8-8z M80 46h6a6 6 0 0 1 0 12h-6",  # a mug
    "M60 72V44 M60 52c-10-12-20-8-20 0 8 0 14 0 20 0 M60 48c10-12 20-8 20 0-8 0-14 0-20 0",  # a sprout
    "M38 34h20a4 4 0 0 1 4 4v34a4 4 0 0 0-4-4H38z M82 34H64a4 4 0 0 0-4 4v34a4 4 0 0 1 4-4h18z",  # a book
    "M42 42h16v16H42z M62 42h16v16H62z M52 62h16v12H52z",  # blocks
    "M40 38h40v26H40z M52 70h16 M60 64v6",  # a screen
    "M60 32a16 16 0 1 0 0.1 0z M44 48h32 M60 32v32",  # a ball
    "M54 32h12v8H54z M50 40h20v32H50z",  # a bottle
    "M42 36h36v36H42z M48 46h24 M48 54h24 M48 62h14",  # a page
    "M60 70c-14-8-18-18-12-24 4-4 10-2 12 3 2-5 8-7 12-3 6 6 2 16-12 24z",  # a heart
    "M40 44l10-8h20l10 8-6 6-4-3v25H50V47l-4 3z",  # a shirt
    "M38 52l22-18 22 18 M44 48v24h32V48",  # a house
    "M36 72l24-36 24 36z M60 36v36",  # a tent
)


def _pick(key: str, options: tuple[str, ...]) -> str:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def initials(title: str) -> str:
    """Up to two initials of a title's words ("Compact Teal Kettle" -> "CT"; "i16" -> "I1")."""
    words = [w for w in title.replace("-", " ").split() if w[:1].isalnum()]
    if len(words) >= 2:
        return (words[0][0] + words[1][0]).upper()
    return (words[0][:2] if words else "?").upper()


def _colour(colour: str | None, category: str | None, item_id: str) -> str:
    if colour and len(colour) == 7 and colour.startswith("#") and all(c in "0123456789abcdefABCDEF" for c in colour[1:]):
        return colour
    return _pick(category or item_id, PALETTE)


def product_svg(item_id: str, title: str, category: str | None = None, colour: str | None = None) -> str:
    """The product's picture as SVG markup (120x96): colour tile, department glyph, initials."""
    fill = _colour(colour, category, item_id)
    glyph = _pick(category or item_id, GLYPHS)
    label = escape(initials(title))
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 120 96" width="120" height="96" role="img">'
        f'<rect width="120" height="96" rx="8" fill="{fill}"/>'
        f'<path d="{glyph}" fill="none" stroke="#fff" stroke-width="3" stroke-linecap="round" '
        'stroke-linejoin="round" opacity="0.9"/>'
        f'<text x="112" y="88" text-anchor="end" font-family="sans-serif" font-size="14" font-weight="700" '
        f'fill="#fff">{label}</text></svg>'
    )


def svg_data_uri(svg: str) -> str:
    """A ``data:image/svg+xml`` URI of ``svg`` (percent-encoded, "#" included: it would start a fragment)."""
    return "data:image/svg+xml;charset=utf-8," + quote(svg, safe="=:/',.-")


def product_image(item_id: str, title: str, category: str | None = None, colour: str | None = None) -> str:
    """The ``data:`` URI the page puts in an ``<img src>``."""
    return svg_data_uri(product_svg(item_id, title, category, colour))
