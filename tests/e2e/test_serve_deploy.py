"""`serve deploy` to a running `ray start --head` cluster (token auth on), then real HTTP, then `serve shutdown`.

What it proves: the Serve YAML in ``serve_configs/local.yaml`` (only its port, config file and overrides changed)
deploys through Serve's REST API to a separate cluster, its replicas load the registered champion and the lake
snapshot it was trained on, and the API answers; `serve shutdown` takes the application down. The Serve YAMLs
(and the RayService's embedded copy), and what `aisys deploy-config` generates with autoscaling on, also
validate against Serve's own deploy schema.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from aisys.config import config_from_dict
from aisys.data.lake import Lake
from aisys.serving.deploy_config import render_serve_file
from tests.conftest import seed_mlflow_db, small_config_dict
from tests.e2e.cluster_helpers import BIN, REPO, commit_events, free_port, tiny_events, train_tiny_champion, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def serve_cli(url: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "serve"), *args, f"--address={url}"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def app_status(url: str, env: dict) -> str | None:
    """The aisys application's status, from the Serve REST API that `serve status` reads (what the CLI prints).

    Read over HTTP, not by running `serve status`: each CLI run is a new Python importing Ray (~2 s of CPU), and
    polling with it every 2 s competed on the 2-core box with the deploy being waited on.
    """
    got = httpx.get(f"{url}/api/serve/applications/", headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"},
                    timeout=30)
    got.raise_for_status()
    apps = got.json().get("applications") or {}
    return (apps.get("aisys") or {}).get("status")


def test_serve_configs_validate_against_serves_deploy_schema():
    from ray.serve.schema import ServeDeploySchema

    for name in ("local.yaml", "cluster.yaml"):
        config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "serve_configs" / name).read_text()))
        assert [app.import_path for app in config.applications] == ["aisys.serving.app:build_app"], name
    service = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    # Every option the generator can write, in the form Serve's schema takes (the checked-in files use a subset).
    every_option = ["serve.autoscaling=true", "serve.replica_memory_mb=512", "serve.downscaling_factor=0.5",
                    "serve.max_queued_requests=8"]
    variant = render_serve_file(REPO, "configs/local.yaml", every_option, target="variant.yaml")
    (deployment,) = ServeDeploySchema.model_validate(yaml.safe_load(variant)).applications[0].deployments
    assert deployment.autoscaling_config["downscaling_factor"] == 0.5 and deployment.max_queued_requests == 8


def test_serve_deploy_to_a_running_cluster_serves_the_champion(tmp_path: Path, token_head, mlflow_db_template):
    seed_mlflow_db(mlflow_db_template, tmp_path / "mlflow.db")  # small_config_dict's tracking URI, already migrated
    data = small_config_dict(tmp_path)
    cfg = config_from_dict(data, "test_serve_deploy")
    events = tiny_events()
    snapshot_id = commit_events(Lake(cfg.paths.lake_uri), events)
    registered = train_tiny_champion(cfg, events, snapshot_id, epochs=1)
    config_file = tmp_path / "app.yaml"
    config_file.write_text(yaml.safe_dump(data))

    port = free_port()
    serve_config = yaml.safe_load((REPO / "serve_configs" / "local.yaml").read_text())
    serve_config["http_options"]["port"] = port
    app = serve_config["applications"][0]
    app["args"] = {"config_path": str(config_file),
                   # The gateway's API keys are not what this test is about.
                   "overrides": [f"serve.port={port}", "gateway.auth=false"]}
    serve_file = tmp_path / "serve.yaml"
    serve_file.write_text(yaml.safe_dump(serve_config))

    url, env, _ = token_head
    deployed = serve_cli(url, env, "deploy", str(serve_file))
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
    try:
        wait_until(lambda: app_status(url, env) == "RUNNING", timeout=120, what="the aisys application", every=0.5)
        base = f"http://127.0.0.1:{port}"
        health = httpx.get(f"{base}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["model_loaded"] is True
        assert health.json()["model_version"] == registered.version

        user = events.column("user_id")[0].as_py()
        got = httpx.get(f"{base}/recommendations/{user}", params={"k": 5}, timeout=30)
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["user_id"] == user and len(body["items"]) == 5
        assert body["fallback"] is False  # a known user, scored by the deployed model
        catalogue = set(events.column("item_id").to_pylist())
        assert {item["item_id"] for item in body["items"]} <= catalogue
    finally:
        stopped = serve_cli(url, env, "shutdown", "-y")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    wait_until(lambda: app_status(url, env) is None, timeout=60, what="serve shutdown", every=0.5)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/healthz", timeout=5)
