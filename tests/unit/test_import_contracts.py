"""The import contracts of pyproject.toml's ``[tool.importlinter]`` hold (`lint-imports`, the venv's binary).

They are static: every import statement counts, inside functions too, so a lazy ``import ray`` in a pure module
breaks its contract even though ``test_import_purity.py`` (which imports the modules and looks at
``sys.modules``) would not see it. That test stays: it also proves importing the package has no side effects.
docs/architecture.md ("Contracts") says what each contract guards.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_every_import_contract_is_kept():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert len(contracts) >= 7, [c["id"] for c in contracts]
    # --no-cache: nothing written into the working tree (grimp would otherwise keep .import_linter_cache/).
    proc = subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", "pyproject.toml"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-6000:]
    assert f"Contracts: {len(contracts)} kept, 0 broken." in report, report[-3000:]


def test_the_package_map_names_every_package_and_excuses_no_arrow():
    """Every package and top-level module of ``aisys`` has a row on the map, and no upward import is ignored: with
    the layers kept (the test above), no two packages import each other, directly or round a longer loop."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    package_map = next(c for c in contracts if c["id"] == "package-map")
    on_map = {name.strip() for row in package_map["layers"] for name in row.replace(":", "|").split("|")}
    assert "ignore_imports" not in package_map, package_map.get("ignore_imports")
    assert all(":" not in row for row in package_map["layers"]), "a ':' row lets two packages import each other"
    root = REPO / "aisys"
    packages = {p.name for p in root.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    assert packages | modules == on_map, {"missing": sorted((packages | modules) - on_map),
                                          "stale": sorted(on_map - (packages | modules))}
