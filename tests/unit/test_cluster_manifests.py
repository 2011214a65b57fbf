"""The cluster configs: KubeRay manifests validate against the real CRD schemas, token auth stays on, the
RayService serves exactly ``serve_configs/cluster.yaml`` and its pods start Ray with the ingress
``configs/cluster.yaml`` names, and the `ray up` YAMLs have a head and an autoscaling GPU worker group.

Both Serve texts are generated from ``configs/cluster.yaml`` by ``aisys deploy-config --write``;
tests/unit/test_deploy_config.py checks that they are what it generates.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import pytest
import yaml

from aisys.config import load_config
from aisys.runtime.ingress import INGRESS_ENV, ingress_environment

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "cluster" / "kuberay"
CRDS = REPO / "cluster" / "crds"
SERVE_CLUSTER = REPO / "serve_configs" / "cluster.yaml"
RAYSERVICE = KUBERAY / "rayservice.yaml"
MANIFESTS = {  # file -> (kind, CRD file)
    "raycluster.yaml": ("RayCluster", "ray.io_rayclusters.yaml"),
    "rayjob-train.yaml": ("RayJob", "ray.io_rayjobs.yaml"),
    "rayservice.yaml": ("RayService", "ray.io_rayservices.yaml"),
}
RAY_UP = {"aws": REPO / "cluster" / "aws.yaml", "gcp": REPO / "cluster" / "gcp.yaml"}


@functools.lru_cache(maxsize=None)
def crd_schema(crd_file: str, version: str) -> dict:
    """``spec.versions[name=version].schema.openAPIV3Schema`` of a CRD in ``cluster/crds``."""
    # The CRDs are ~1 MB each: libyaml's loader reads them in a fraction of the pure-Python time.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRDS / crd_file).read_text(), Loader=loader)
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"{crd_file} has no version {version!r}")


def validate(manifest: dict, crd_file: str) -> None:
    """Validate ``manifest`` against its CRD's schema (raises ``jsonschema.ValidationError``)."""
    version = manifest["apiVersion"].split("/", 1)[1]
    # KubeRay's schemas are OpenAPI v3 (a JSON-schema draft-4 dialect); x-kubernetes-* keys are ignored.
    jsonschema.Draft4Validator(crd_schema(crd_file, version)).validate(manifest)


def load(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


def containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec.get("workerGroupSpecs", [])]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def cluster_spec(name: str) -> dict:
    manifest = load(name)
    kind = manifest["kind"]
    return {"RayCluster": lambda m: m["spec"], "RayJob": lambda m: m["spec"]["rayClusterSpec"],
            "RayService": lambda m: m["spec"]["rayClusterConfig"]}[kind](manifest)


# --- KubeRay -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_validates_against_its_crd(name):
    kind, crd_file = MANIFESTS[name]
    manifest = load(name)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind
    assert manifest["metadata"]["name"]
    validate(manifest, crd_file)


@pytest.mark.parametrize("breakage", ["container without a name", "replicas as text", "unknown auth mode"])
def test_a_broken_manifest_fails_validation(breakage):
    """The validator is real: each of these mistakes is one `kubectl apply` would reject."""
    manifest = copy.deepcopy(load("raycluster.yaml"))
    if breakage == "container without a name":
        del manifest["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]
    elif breakage == "replicas as text":
        manifest["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    else:
        manifest["spec"]["authOptions"]["mode"] = "password"
    with pytest.raises(jsonschema.ValidationError):
        validate(manifest, "ray.io_rayclusters.yaml")


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_token_auth_is_on_and_ray_is_pinned(name):
    spec = cluster_spec(name)
    assert spec["authOptions"]["mode"] == "token", f"{name}: token auth must stay on"
    assert spec["rayVersion"] == "2.60.0"  # authOptions needs Ray >= 2.52; the image matches the lock
    for container in containers(spec):
        assert "2.60.0" in container["image"], f"{name}: {container['name']} runs another Ray"
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", "token") == "token", f"{name}: {container['name']} disables auth"


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-train.yaml"])
def test_gpu_worker_group_autoscales(name):
    spec = cluster_spec(name)
    assert spec["enableInTreeAutoscaling"] is True
    gpu = [g for g in spec["workerGroupSpecs"] if any(
        "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in g["template"]["spec"]["containers"])]
    assert gpu, f"{name}: no worker group asks for nvidia.com/gpu"
    for group in gpu:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"] and group["maxReplicas"] >= 1


def test_rayjob_runs_the_train_entrypoint_and_cleans_up():
    job = load("rayjob-train.yaml")["spec"]
    assert "jobs/train.py" in job["entrypoint"] and "ray.address=auto" in job["entrypoint"]
    assert "train.use_gpu=true" in job["entrypoint"]
    assert job["shutdownAfterJobFinishes"] is True


def test_rayservice_embeds_the_cluster_serve_config():
    service = load("rayservice.yaml")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load(SERVE_CLUSTER.read_text()), (
        "rayservice.yaml's serveConfigV2 differs from serve_configs/cluster.yaml: run `aisys deploy-config --write`")
    app = embedded["applications"][0]
    assert app["import_path"] == "aisys.serving.app:build_app"
    # The same application the laptop config deploys, with its deployment name.
    local = yaml.safe_load((REPO / "serve_configs" / "local.yaml").read_text())["applications"][0]
    assert (app["name"], app["import_path"]) == (local["name"], local["import_path"])
    assert [d["name"] for d in app["deployments"]] == [d["name"] for d in local["deployments"]]


def test_cluster_serve_config_autoscales_within_bounds():
    deployment = yaml.safe_load(SERVE_CLUSTER.read_text())["applications"][0]["deployments"][0]
    scaling = deployment["autoscaling_config"]
    assert "num_replicas" not in deployment  # a fixed count would switch the autoscaler off
    assert 2 <= scaling["min_replicas"] <= scaling["max_replicas"]  # one replica lost must not take the API down
    assert 0 < scaling["target_ongoing_requests"] <= deployment["max_ongoing_requests"]
    working_dir = (yaml.safe_load(SERVE_CLUSTER.read_text())["applications"][0].get("runtime_env") or {}).get(
        "working_dir")
    assert working_dir is None or "://" in working_dir  # Serve YAMLs need a URI here


def test_rayservice_pods_start_ray_with_the_configured_ingress():
    """Serve reads the ingress from the environment of `ray start`: the pods' env must select serve.ingress."""
    ingress = load_config(REPO / "configs" / "cluster.yaml", environ={}).serve.ingress
    wanted = ingress_environment(ingress)
    every_ingress_variable = {key for variables in INGRESS_ENV.values() for key in variables}
    spec = cluster_spec("rayservice.yaml")
    for container in containers(spec):
        env = {e["name"]: e.get("value") for e in container.get("env", []) if e["name"] in every_ingress_variable}
        assert env == wanted, (f"{container['name']} starts Ray with {env or 'no ingress variables'}, but "
                               f"configs/cluster.yaml says serve.ingress={ingress} ({wanted or 'none'})")
    ports = {p["containerPort"] for c in containers(spec) for p in c.get("ports", []) if p.get("name") == "serve"}
    assert ports == {load_config(REPO / "configs" / "cluster.yaml", environ={}).serve.port}


# --- ray up ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cloud", sorted(RAY_UP))
def test_ray_up_config_has_head_and_autoscaling_gpu_workers(cloud):
    config = yaml.safe_load(RAY_UP[cloud].read_text())
    assert config["provider"]["type"] == cloud
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu, f"{cloud}: no node type offers GPUs"
    for name, node in gpu.items():
        assert 0 <= node["min_workers"] < node["max_workers"] <= config["max_workers"], name
    assert config["idle_timeout_minutes"] > 0
    # Token auth on every node, with one token shipped to all of them.
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in starts if "ray start" in cmd)
    assert any(target.endswith(".ray/auth_token") for target in config["file_mounts"])
    # The repo and its pinned dependencies are installed the way `make venv` does it.
    setup = "\n".join(config["setup_commands"])
    assert "-c requirements.lock" in setup and "pip install" in setup

