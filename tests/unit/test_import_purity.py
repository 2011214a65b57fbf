"""The pure core imports no Ray, and importing anything in the package has no side effects."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PURE_MODULES = [
    "aisys.config",
    "aisys.schemas",
    "aisys.data.validate",
    "aisys.data.simulator",
    "aisys.features.sequences",
    "aisys.quality.ranking",
    "aisys.quality.protocol",
    "aisys.quality.segments",
    "aisys.models.bundle",
    "aisys.serving.recommender",
    "aisys.serving.api_models",
    "aisys.registry.gate",
    "aisys.monitoring.metrics",
    "aisys.monitoring.drift",
    "aisys.monitoring.profile",
    "aisys.monitoring.online_quality",
    "aisys.monitoring.audit",
    "aisys.monitoring.findings",
    "aisys.loop.policy",
    "aisys.gateway.keys",
    "aisys.gateway.cache",
    "aisys.storefront.catalogue",
    "aisys.retrieval.index",
]


def run_python(code: str, cwd: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pure_core_does_not_import_ray(tmp_path):
    code = (
        "import importlib, json, sys\n"
        f"for m in {PURE_MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.') or m == 'mlflow')))"
    )
    assert run_python(code, tmp_path) == []


def test_importing_every_module_has_no_side_effects(tmp_path):
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "aisys").rglob("*.py")
        if p.name != "__main__.py"
    )
    code = (
        "import importlib, json, os\n"
        f"for m in {modules!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
        "import ray\n"
        "print(json.dumps({'ray_up': ray.is_initialized(), 'files': sorted(os.listdir('.'))}))"
    )
    result = run_python(code, tmp_path)
    assert result == {"ray_up": False, "files": []}
