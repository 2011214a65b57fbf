"""Ray's token auth stays on outside local development (static checks, no Ray).

- Every cluster config under ``cluster/`` is found by walking the folder (a new
  file nobody classified fails), and each turns token auth on: the `ray up`
  launchers prefix every ``ray start`` (head and workers) with
  ``RAY_AUTH_MODE=token`` and ship the token file to every node; every KubeRay
  manifest sets ``authOptions.mode: token`` and no container, start parameter
  or command turns it off.
- :func:`aisys.runtime.init_ray` disables auth only for the private Ray it
  starts itself, never when it joins an address (``ray.address`` or the
  ``RAY_ADDRESS`` a job gets): checked by behaviour, with ``ray`` replaced by a
  recorder at the edge.
"""

from __future__ import annotations

import shlex
import sys
import types
from pathlib import Path

import pytest
import yaml

from aisys.config import config_from_dict
from aisys.runtime import QUIET_ENV, init_ray

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
RAY_UP = {"aws.yaml", "gcp.yaml"}
KUBERAY = {"kuberay/raycluster.yaml": "RayCluster", "kuberay/rayjob-train.yaml": "RayJob",
           "kuberay/rayservice.yaml": "RayService"}
AUTH_ENV = "RAY_AUTH_MODE"


def cluster_configs() -> set[str]:
    """Every YAML under cluster/ except the vendored CRDs, relative to cluster/."""
    return {str(p.relative_to(CLUSTER)) for p in CLUSTER.rglob("*.y*ml") if "crds" not in p.parts}


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_every_cluster_config_is_checked_here():
    assert cluster_configs() == RAY_UP | set(KUBERAY), "classify the new cluster config in test_cluster_auth.py"


def test_no_cluster_file_turns_auth_off():
    for path in CLUSTER.rglob("*"):
        if path.is_file() and "crds" not in path.parts:
            text = path.read_text()
            for bad in ("RAY_AUTH_MODE=disabled", "mode: disabled", "RAY_AUTH_MODE: disabled"):
                assert bad not in text, f"{path.relative_to(REPO)} turns Ray's token auth off ({bad})"


# --- `ray up` launchers ------------------------------------------------------------------------------


def ray_start_commands(config: dict, key: str) -> list[list[str]]:
    """The ``ray start`` invocations of ``config[key]``, each as shell words (env assignments first)."""
    found = []
    for command in config[key]:
        for part in command.replace("&&", ";").split(";"):
            words = shlex.split(part)
            if "ray" in words and words[words.index("ray") + 1: words.index("ray") + 2] == ["start"]:
                found.append(words)
    return found


def env_prefix(words: list[str]) -> dict[str, str]:
    """The ``NAME=value`` assignments before the command word (what the shell puts in its environment)."""
    env = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not name.isidentifier():
            break
        env[name] = value
    return env


@pytest.mark.parametrize("name", sorted(RAY_UP))
@pytest.mark.parametrize("role", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_ray_up_starts_every_node_with_token_auth(name, role):
    config = load(name)
    starts = ray_start_commands(config, role)
    assert starts, f"{name}: no `ray start` in {role}"
    for words in starts:
        assert env_prefix(words).get(AUTH_ENV) == "token", f"{name}: {' '.join(words)[:120]}"
        assert ("--head" in words) == (role == "head_start_ray_commands")


@pytest.mark.parametrize("name", sorted(RAY_UP))
def test_ray_up_ships_the_token_to_every_node(name):
    # file_mounts reach the head and every worker; Ray reads ~/.ray/auth_token when no RAY_AUTH_TOKEN is set.
    mounts = load(name)["file_mounts"]
    assert any(target.endswith("/.ray/auth_token") and source.endswith(".ray/auth_token")
               for target, source in mounts.items()), mounts
    assert not any("RAY_AUTH_TOKEN=" in cmd for cmd in load(name)["head_start_ray_commands"])  # not in the YAML


# --- KubeRay ------------------------------------------------------------------------------------------


def ray_cluster_spec(manifest: dict) -> dict:
    return {"RayCluster": lambda m: m["spec"], "RayJob": lambda m: m["spec"]["rayClusterSpec"],
            "RayService": lambda m: m["spec"]["rayClusterConfig"]}[manifest["kind"]](manifest)


def pod_templates(manifest: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod the manifest creates: head, workers, and a RayJob's submitter."""
    spec = ray_cluster_spec(manifest)
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(f"worker {g['groupName']}", g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]
    submitter = manifest["spec"].get("submitterPodTemplate")
    if submitter:
        pods.append(("submitter", submitter["spec"]))
    return pods


@pytest.mark.parametrize("name", sorted(KUBERAY))
def test_kuberay_sets_token_auth_and_nothing_overrides_it(name):
    manifest = load(name)
    assert manifest["kind"] == KUBERAY[name]
    spec = ray_cluster_spec(manifest)
    assert spec["authOptions"] == {"mode": "token"}, f"{name}: authOptions must be token"
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    for group in groups:
        params = {str(k): str(v) for k, v in (group.get("rayStartParams") or {}).items()}
        assert not any("auth" in k.lower() or "auth" in v.lower() for k, v in params.items()), (name, params)
    for where, pod in pod_templates(manifest):
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            env = {e["name"]: e for e in container.get("env", [])}
            assert env.get(AUTH_ENV, {}).get("value", "token") == "token", f"{name} {where}: {container['name']}"
            # A token, if a manifest names one, comes from a Secret, never as plain text in the YAML.
            assert "value" not in env.get("RAY_AUTH_TOKEN", {}), f"{name} {where}: token in plain text"
            command = " ".join(map(str, container.get("command", []) + container.get("args", [])))
            assert f"{AUTH_ENV}=" not in command or f"{AUTH_ENV}=token" in command, (name, where, command)


# --- init_ray -----------------------------------------------------------------------------------------


class FakeRay(types.ModuleType):
    """Stands in for ``ray`` at the edge: records each ``init`` call and the auth mode it would have seen."""

    def __init__(self) -> None:
        super().__init__("ray")
        self.calls: list[tuple[dict, str | None]] = []

    def is_initialized(self) -> bool:
        return bool(self.calls)

    def init(self, **kwargs):
        import os

        self.calls.append((kwargs, os.environ.get(AUTH_ENV)))


@pytest.fixture
def fake_ray(monkeypatch) -> FakeRay:
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    # setenv then delenv: monkeypatch then restores whatever init_ray writes to these variables.
    for name in (AUTH_ENV, "RAY_ADDRESS", *QUIET_ENV):
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    return fake


def test_a_private_ray_started_by_init_ray_runs_without_auth(fake_ray):
    assert init_ray(config_from_dict({}, "test")) is fake_ray
    ((kwargs, mode),) = fake_ray.calls
    assert "address" not in kwargs and kwargs["num_cpus"] >= 1  # it started its own Ray
    assert mode == "disabled"


@pytest.mark.parametrize("address", ["auto", "ray://head.example:10001", "10.0.0.5:6379"])
def test_init_ray_never_disables_auth_when_joining_an_address(fake_ray, address):
    init_ray(config_from_dict({"ray": {"address": address}}, "test"))
    ((kwargs, mode),) = fake_ray.calls
    assert kwargs == {"address": address}
    assert mode is None  # left to the cluster (and the token the caller holds)


def test_init_ray_inside_a_submitted_job_joins_with_auth_untouched(fake_ray, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # what `ray job submit` gives the entrypoint
    monkeypatch.setenv(AUTH_ENV, "token")
    init_ray(config_from_dict({}, "test"))
    ((kwargs, mode),) = fake_ray.calls
    assert kwargs == {"address": "http://127.0.0.1:8265"} and mode == "token"


def test_an_explicit_token_mode_is_kept_even_for_a_private_ray(fake_ray, monkeypatch):
    monkeypatch.setenv(AUTH_ENV, "token")
    init_ray(config_from_dict({}, "test"))
    ((_, mode),) = fake_ray.calls
    assert mode == "token"


def test_init_ray_is_a_no_op_when_ray_is_up(fake_ray):
    fake_ray.calls.append(({"address": "already"}, None))
    init_ray(config_from_dict({}, "test"))
    assert len(fake_ray.calls) == 1
