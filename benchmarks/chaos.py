"""Chaos figures: run the reliability suite's fault injections and print the figures table.

Each fault lives in one test of ``tests/reliability`` (so CI checks what this prints); every such test prints
one ``CHAOS|fault|observed|lost`` line (``tests.reliability.conftest.report_figure``). This script runs those
tests in a child pytest (``-s``, so the lines reach stdout), collects the lines and prints a Markdown table:
fault injected, what was observed, requests/rows lost. It exits non-zero when any test failed.

It passes ``--schemathesis-full``: Schemathesis sends its full 10,000+ requests here (~2.5 min), where CI
(`make test`) sends ~1,000, derandomized too (``tests/reliability/test_schemathesis.py``).

    python benchmarks/chaos.py                 # every fault, Schemathesis at full size (~2.5 min of it)
    python benchmarks/chaos.py --no-ray        # only the faults that need no Ray (the fuzz)
    python benchmarks/chaos.py --json out.json # also write the rows as JSON
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAULT_TESTS = [
    "tests/reliability/test_hostile_input.py::test_fuzzed_oversized_and_broken_bodies_give_no_server_error",
    "tests/reliability/test_schemathesis.py",
    "tests/reliability/test_ray_auth.py",
    "tests/reliability/test_ingest_faults.py",
    "tests/reliability/test_serving_faults.py",
    "tests/reliability/test_train_faults.py",
    "tests/reliability/test_registry_faults.py",
    "tests/reliability/test_replica_kill.py",
    "tests/reliability/test_rate_limit_http.py",
]
NEEDS_RAY = {"tests/reliability/test_ingest_faults.py", "tests/reliability/test_serving_faults.py",
             "tests/reliability/test_train_faults.py", "tests/reliability/test_ray_auth.py",
             "tests/reliability/test_replica_kill.py", "tests/reliability/test_rate_limit_http.py"}


def parse_figures(output: str) -> list[dict[str, str]]:
    """The ``CHAOS|fault|observed|lost`` lines of a pytest run, in order."""
    rows = []
    for line in output.splitlines():
        start = line.find("CHAOS|")
        if start < 0:
            continue
        parts = line[start:].split("|")
        if len(parts) == 4:
            rows.append({"fault": parts[1], "observed": parts[2], "lost": parts[3]})
    return rows


def markdown_table(rows: list[dict[str, str]]) -> str:
    """The figures as a Markdown table."""
    lines = ["| fault injected | observed | lost |", "|---|---|---|"]
    lines += [f"| {r['fault']} | {r['observed']} | {r['lost']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-ray", action="store_true", help="skip the faults that need Ray")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    tests = [t for t in FAULT_TESTS if not (args.no_ray and t.split("::")[0] in NEEDS_RAY)]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                           "--schemathesis-full", *tests],
                          cwd=ROOT, capture_output=True, text=True)
    rows = parse_figures(proc.stdout + proc.stderr)
    print(markdown_table(rows))
    print(f"\n{len(rows)} faults, {time.perf_counter() - started:.0f}s, pytest exit code {proc.returncode}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if proc.returncode != 0:
        print(proc.stdout[-4000:], file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
