"""Schemathesis over the app's own OpenAPI: ~1,000 generated requests in CI (10,000 with ``--schemathesis-full``,
which ``benchmarks/chaos.py`` passes), no server error, every 4xx JSON.

The schema is loaded from the in-process app (``/openapi.json`` over ASGI, no
server, no Ray). Every operation gets valid (``positive``) and invalid
(``negative``: wrong types, missing and unknown fields, out-of-range values,
broken bodies) cases from Hypothesis, derandomized, so a run is reproducible.

- With the admin key (``test_schemathesis_requests_give_no_server_error_...``): no 5xx,
  every 4xx in the one JSON error shape, and every response valid against the
  schema the OpenAPI declares for its status (``4XX`` is :class:`ErrorOut`).
- Without a key, with the key Schemathesis made up, and with a key of the wrong
  scope (``test_generated_requests_without_a_valid_key_...``): 401 or 403 JSON on
  every guarded operation, and nothing reaches the event log.

Bodies over the size limit are not something Schemathesis makes: the seeded
fuzzer in ``test_hostile_input.py`` sends those (413).

Size: the CI run keeps every operation, both generation modes and every check,
with a tenth of the examples (~14 s instead of ~2.5 min on the 2-core box), as
reproducible (derandomized) as the full run. ``pytest --schemathesis-full``
(``python benchmarks/chaos.py``) sends the full 10,000+.
"""

from __future__ import annotations

import collections
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from aisys.gateway.keys import granted_scopes
from tests.reliability.conftest import SCOPE_KEYS, FullApp, assert_error_shape, build_full_app, report_figure
from tests.reliability.test_security import GUARDED

pytestmark = pytest.mark.reliability

KEY_HEADERS = ("authorization", "x-api-key")


@dataclass(frozen=True)
class Budget:
    """Examples per operation and generation mode: operations with parameters or a body get most of the budget;
    the others only vary headers. Hypothesis may stop early on a small input space, so the total is counted and
    must reach ``min_requests``."""

    min_requests: int
    rich_examples: int
    header_only_examples: int


CI_BUDGET = Budget(min_requests=1_000, rich_examples=105, header_only_examples=26)
FULL_BUDGET = Budget(min_requests=10_000, rich_examples=1_050, header_only_examples=260)


@pytest.fixture(scope="module")
def budget(request) -> Budget:
    return FULL_BUDGET if request.config.getoption("schemathesis_full") else CI_BUDGET


@dataclass
class Tally:
    """Requests sent, by (operation, mode, status), and every failure seen (kept, not raised: no shrinking)."""

    statuses: collections.Counter = field(default_factory=collections.Counter)
    failures: list[tuple[str, str, int, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def by_status(self) -> dict[int, int]:
        out: collections.Counter = collections.Counter()
        for (_, _, status), n in self.statuses.items():
            out[status] += n
        return dict(sorted(out.items()))

    def fail(self, case, status: int, why: str) -> None:
        self.failures.append((case.operation.label, repr(case)[:300], status, why[:300]))


class _Plain:
    """A Schemathesis response as ``assert_error_shape`` reads one (headers as single strings, ``json()``)."""

    def __init__(self, response: schemathesis.Response) -> None:
        self.status_code = response.status_code
        self.headers = {name.lower(): values[-1] for name, values in response.headers.items()}
        self.text = response.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.text)


def _settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,  # same cases on every run and every machine
        database=None,  # nothing replayed from an earlier run
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # failures are collected, not raised: nothing to shrink
        suppress_health_check=list(HealthCheck),
    )


def _has_inputs(operation) -> bool:
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))


def run_operation(operation, mode: GenerationMode, max_examples: int,
                  send: Callable[[schemathesis.Case, GenerationMode], None]) -> int:
    """Generate up to ``max_examples`` cases of ``operation`` in ``mode``, ``send(case, mode)`` each; count them."""
    sent = 0

    @_settings(max_examples)
    @given(case=operation.as_strategy(generation_mode=mode))
    def generated(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        send(case, mode)

    try:
        generated()
    except Unsatisfiable:
        # An operation without parameters, body or security has no invalid input to make.
        assert mode is GenerationMode.NEGATIVE and not _has_inputs(operation) and sent == 0, operation.label
    return sent


@pytest.fixture(scope="module")
def app() -> FullApp:
    return build_full_app()


@pytest.fixture(scope="module")
def schema(app: FullApp):
    return schemathesis.openapi.from_asgi("/openapi.json", app.app)


def operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.slow
def test_schemathesis_requests_give_no_server_error_and_json_errors(app: FullApp, schema, budget: Budget):
    admin = app.keys["admin"]
    auth = {"Authorization": f"Bearer {admin}", "X-API-Key": admin}  # replace the keys Schemathesis makes up
    tally = Tally()

    def send(case: schemathesis.Case, mode: GenerationMode) -> None:
        try:
            response = case.call(headers=auth)
        except Exception as err:  # the ASGI client re-raises what the app's 500 handler answered
            tally.statuses[(case.operation.label, mode.value, 500)] += 1
            tally.fail(case, 500, f"server error: {type(err).__name__}: {err}")
            return
        status = response.status_code
        tally.statuses[(case.operation.label, mode.value, status)] += 1
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        except Exception as err:  # schemathesis raises its own failure group; keep the message
            tally.fail(case, status, f"{type(err).__name__}: {err}")
        if 400 <= status < 500:
            try:
                assert_error_shape(_Plain(response))
            except (AssertionError, ValueError, KeyError) as err:
                tally.fail(case, status, f"4xx not in the JSON error shape: {err}")

    started = time.perf_counter()
    per_operation = {}
    for operation in operations(schema):
        examples = budget.rich_examples if _has_inputs(operation) else budget.header_only_examples
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            per_operation[(operation.label, mode.value)] = run_operation(operation, mode, examples, send)
    elapsed = time.perf_counter() - started

    statuses = tally.by_status()
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    print(f"\nschemathesis {schemathesis.__version__}: {tally.total} requests in {elapsed:.0f}s, "
          f"statuses {statuses}, per operation {per_operation}")
    report_figure(f"{tally.total} Schemathesis requests over the OpenAPI ({len(per_operation) // 2} operations, "
                  "positive + negative, derandomized, admin key)",
                  f"statuses {statuses}; {server_errors} 5xx; {len(tally.failures)} check failures "
                  f"(5xx, 4xx not JSON, response not matching its schema); {elapsed:.0f}s",
                  f"{server_errors} 5xx")
    assert tally.failures == [], tally.failures[:10]
    assert tally.total == sum(per_operation.values()) >= budget.min_requests
    # Not vacuous: the run reached the handlers (2xx) and their validation (422) on every operation with inputs.
    assert statuses.get(200, 0) + statuses.get(202, 0) > budget.min_requests // 10
    assert statuses.get(422, 0) > budget.min_requests // 10
    for operation in operations(schema):
        if _has_inputs(operation):
            seen = {s for (label, _, s) in tally.statuses if label == operation.label}
            assert {200, 202} & seen and 422 in seen, (operation.label, seen)


GUARDED_EXAMPLES = 60


def test_generated_requests_without_a_valid_key_are_refused_with_json(app: FullApp, schema):
    """Valid requests to every guarded operation: no key, the keys Schemathesis made up, a key of the wrong scope."""
    guarded = [op for op in operations(schema) if op.definition.raw.get("security")]
    assert len(guarded) >= 8  # the 8 guarded routes of test_security.GUARDED
    events_before = len(app.log.events)
    tally = Tally()

    def wrong_key(case: schemathesis.Case) -> str:
        """The key of a scope that does not grant the one this operation needs (test_security.GUARDED)."""
        needed = GUARDED[(case.operation.method.upper(), case.operation.path)]
        return app.keys[next(s for s in SCOPE_KEYS if needed not in granted_scopes([s]))]

    def send(case: schemathesis.Case, mode: GenerationMode) -> None:
        case.headers = dict(case.headers or {})
        made_up = {k: v for k, v in case.headers.items() if k.lower() in KEY_HEADERS}
        for name, headers in (("made-up", None), ("no key", {}), ("wrong scope", {"X-API-Key": wrong_key(case)})):
            if headers is not None:  # the case's own key headers are dropped, ours (if any) sent
                case.headers = {k: v for k, v in case.headers.items() if k.lower() not in KEY_HEADERS}
                case.headers.update(headers)
            elif not made_up:
                continue  # the case made up no key: "no key" covers it
            response = case.call()
            tally.statuses[(case.operation.label, name, response.status_code)] += 1
            expected = 403 if name == "wrong scope" else 401
            if response.status_code != expected:
                tally.fail(case, response.status_code, f"{name}: expected {expected}, got {response.text[:200]}")
            else:
                try:
                    body = assert_error_shape(_Plain(response))
                    assert body["error"]["code"] == ("forbidden" if expected == 403 else "unauthorized")
                except (AssertionError, ValueError, KeyError) as err:
                    tally.fail(case, response.status_code, f"{name}: error not in the JSON shape: {err}")

    for operation in guarded:
        run_operation(operation, GenerationMode.POSITIVE, GUARDED_EXAMPLES, send)
    statuses = tally.by_status()
    report_figure(f"{tally.total} Schemathesis requests without a valid key ({len(guarded)} guarded operations: "
                  "no key, made-up keys, a key without the scope)",
                  f"statuses {statuses}; {len(tally.failures)} not refused as expected", "0 reached a handler")
    assert tally.failures == [], tally.failures[:10]
    assert len(app.log.events) == events_before  # no refused event was recorded
    assert statuses.get(401, 0) >= statuses.get(403, 0) > 0 and set(statuses) == {401, 403}
