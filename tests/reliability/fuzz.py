"""A seeded random request generator over an OpenAPI document: the hostile inputs Schemathesis does not make.

:func:`generate_requests` walks every operation of ``app.openapi()`` that takes
parameters or a body and, per request, builds path and query parameters and a
JSON body from the operation's schemas: mostly valid values near the schema's bounds, mixed with hostile ones
(unicode, lone surrogates, NUL, very long strings, negatives, huge numbers,
``NaN``/``Infinity`` tokens, wrong types, missing and unknown fields, broken
JSON, bodies over the size limit). Same seed, same requests.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import quote

HOSTILE_STRINGS = (
    "", " ", "\u0000", "\ud800", "\udfff", "😀", "\u202eevil", "a\nb", "<script>alert(1)</script>", "' OR 1=1 --",
    "../../etc/passwd", "%00", "null", "NaN", "-1", "1e999", "ü" * 129, "x" * 128, "x" * 129, "\t", "日本語",
)
HOSTILE_NUMBERS = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "-0.0", "0", "-1", "9" * 40, "1.5")


@dataclass
class GeneratedRequest:
    method: str
    path: str  # already percent-encoded
    template: str
    body: bytes | None
    headers: dict[str, str]


class _Raw:
    """A JSON token written verbatim (``NaN``, ``Infinity``, ``1e999``)."""

    def __init__(self, token: str) -> None:
        self.token = token


def _dump(value: Any) -> str:
    if isinstance(value, _Raw):
        return value.token
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    return json.dumps(value)


class RequestGenerator:
    """Random requests over ``spec`` (an OpenAPI dict), reproducible from ``seed``."""

    def __init__(self, spec: dict, seed: int, max_body_bytes: int) -> None:
        self.spec = spec
        self.rng = random.Random(seed)
        self.max_body_bytes = max_body_bytes
        # Operations without parameters or a body would only ever get the same request: Schemathesis covers them.
        self.operations = [(m.upper(), p, op) for p, ops in spec["paths"].items() for m, op in ops.items()
                           if op.get("parameters") or op.get("requestBody")]

    # --- values from schemas ------------------------------------------------------------
    def _resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = self.spec["components"]["schemas"][name]
        return schema

    def hostile(self) -> Any:
        r = self.rng.random()
        if r < 0.4:
            return self.rng.choice(HOSTILE_STRINGS)
        if r < 0.7:
            return _Raw(self.rng.choice(HOSTILE_NUMBERS))
        return self.rng.choice([None, True, [], {}, [1, "a"], {"nested": {"deep": [None]}}])

    def value(self, schema: dict, depth: int = 0) -> Any:
        schema = self._resolve(schema)
        if self.rng.random() < 0.15 or depth > 4:
            return self.hostile()
        if "anyOf" in schema:
            return self.value(self.rng.choice(schema["anyOf"]), depth + 1)
        if "enum" in schema:
            return self.rng.choice(schema["enum"]) if self.rng.random() < 0.8 else self.rng.choice(HOSTILE_STRINGS)
        if "const" in schema:
            return schema["const"]
        kind = schema.get("type")
        if kind == "string":
            if schema.get("format") == "date-time":
                return self.rng.choice(["2026-01-02T03:04:05Z", "2026-13-99", "1970-01-01", "9999-12-31T23:59:59",
                                        "0001-01-01T00:00:00Z", "yesterday"])
            lo, hi = schema.get("minLength", 0), schema.get("maxLength", 64)
            n = self.rng.choice([lo, hi, max(lo - 1, 0), hi + 1, self.rng.randint(lo, hi)])
            alphabet = self.rng.choice(["abcxyz019", "üé日本😀", "\u0000\t\n ", "\ud800ab", "%/?#&="])
            return "".join(self.rng.choice(alphabet) for _ in range(n))
        if kind in ("integer", "number"):
            lo = schema.get("minimum", schema.get("exclusiveMinimum", -10))
            hi = schema.get("maximum", schema.get("exclusiveMaximum", 1000))
            pick = self.rng.choice([lo, hi, lo - 1, hi + 1, self.rng.randint(int(lo), int(hi)), -(2**63), 2**64])
            if kind == "number" and self.rng.random() < 0.4:
                return _Raw(self.rng.choice(HOSTILE_NUMBERS))
            return pick
        if kind == "boolean":
            return self.rng.choice([True, False, "yes", 0, 2])
        if kind == "array":
            return [self.value(schema.get("items", {}), depth + 1) for _ in range(self.rng.randint(0, 3))]
        if kind == "object":
            out: dict[str, Any] = {}
            for name, prop in (schema.get("properties") or {}).items():
                required = name in schema.get("required", [])
                if (required and self.rng.random() < 0.93) or (not required and self.rng.random() < 0.5):
                    out[name] = self.value(prop, depth + 1)
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                for _ in range(self.rng.randint(0, 3)):
                    out[self.rng.choice(HOSTILE_STRINGS + ("i1", "i2", "item"))] = self.value(extra, depth + 1)
            if self.rng.random() < 0.05:
                out["unknown_field"] = 1
            return out
        return self.hostile()

    @staticmethod
    def _text(value: Any) -> str:
        if isinstance(value, _Raw):
            return value.token
        if isinstance(value, (dict, list)):
            return _dump(value)
        return "" if value is None else str(value)

    # --- whole requests -----------------------------------------------------------------
    def request(self, headers: dict[str, str]) -> GeneratedRequest:
        method, template, op = self.rng.choice(self.operations)
        path, query = template, []
        for param in op.get("parameters", []):
            text = self._text(self.value(param.get("schema", {})))
            if param["in"] == "path":
                # errors="surrogatepass": a lone surrogate travels as its (invalid) UTF-8 bytes.
                path = path.replace("{" + param["name"] + "}", quote(text.encode("utf-8", "surrogatepass"), safe=""))
            elif param["in"] == "query" and (param.get("required") or self.rng.random() < 0.7):
                query.append(f"{param['name']}={quote(text.encode('utf-8', 'surrogatepass'), safe='')}")
        if query:
            path += "?" + "&".join(query)
        body = None
        content = (op.get("requestBody") or {}).get("content", {}).get("application/json")
        if content is not None:
            r = self.rng.random()
            if r < 0.03:
                body = b"x" * (self.max_body_bytes + 1 + self.rng.randint(0, 1000))  # must be 413
            elif r < 0.08:
                body = self.rng.choice([b"{", b"\xff\xfe", b'{"a":}', b"[" * 500, b"", b"null", b'"s"'])
            else:
                body = _dump(self.value(content["schema"])).encode("utf-8", "surrogatepass")
        sent = dict(headers)
        if body is not None:
            sent["content-type"] = "application/json" if self.rng.random() < 0.95 else "text/plain"
        return GeneratedRequest(method, path, template, body, sent)


def generate_requests(spec: dict, n: int, seed: int, max_body_bytes: int,
                      headers: dict[str, str]) -> Iterator[GeneratedRequest]:
    """``n`` requests over ``spec``, all with ``headers`` (the API key)."""
    generator = RequestGenerator(spec, seed, max_body_bytes)
    for _ in range(n):
        yield generator.request(headers)
