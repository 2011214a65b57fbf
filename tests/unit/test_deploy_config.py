"""`aisys deploy-config`: the Serve YAMLs and the RayService's serveConfigV2 are generated from configs/.

The first test is the CI check: every checked-in file must be exactly what its config generates, so a value
edited by hand in serve_configs/ (or a config change not regenerated) fails `make test`. The others show that a
config value reaches every output, that `aisys serve` runs with the options the YAML states, and that the
generated text means what the generator meant.
"""

from __future__ import annotations

import difflib
import shutil
import sys
import types
from pathlib import Path

import pytest
import yaml

from aisys.cli.app import main
from aisys.config import AppConfig, cli_overrides, config_from_dict
from aisys.serving import deploy_config
from aisys.serving.serve_yaml import (
    APP_NAME,
    DEPLOYMENT_NAME,
    NICENESS_ENV, USER_CODE_THREAD_ENV,
    config_overrides,
    deployment_options,
    render_rayservice,
    serve_document,
    yaml_scalar,
)

REPO = Path(__file__).resolve().parents[2]


def short_diff(current: str, expected: str) -> str:
    lines = difflib.unified_diff(current.splitlines(), expected.splitlines(), "checked in", "generated", lineterm="")
    return "\n".join(list(lines)[:40])


@pytest.mark.parametrize("generated", deploy_config.GENERATED, ids=lambda g: g.path)
def test_every_checked_in_file_is_what_its_config_generates(generated):
    expected = deploy_config.render_generated(REPO, generated)
    current = (REPO / generated.path).read_text()
    assert current == expected, (
        f"{generated.path} differs from what {generated.source} generates: run `aisys deploy-config --write` "
        f"(values belong in {generated.source})\n{short_diff(current, expected)}")


@pytest.fixture
def repo_copy(tmp_path, monkeypatch) -> Path:
    """The config files and generated files in a folder of their own, as the current folder."""
    for relative in {g.source for g in deploy_config.GENERATED} | {g.path for g in deploy_config.GENERATED}:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / relative, tmp_path / relative)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def deployment_of(serve_yaml_text: str) -> dict:
    (application,) = yaml.safe_load(serve_yaml_text)["applications"]
    (deployment,) = application["deployments"]
    return deployment


def test_a_changed_config_value_reaches_every_file_made_from_it(repo_copy, capsys):
    cluster = repo_copy / "configs" / "cluster.yaml"
    cluster.write_text(cluster.read_text().replace("max_replicas: 16", "max_replicas: 24"))

    assert main(["deploy-config", "--check"]) == 1
    captured = capsys.readouterr()
    assert "serve_configs/cluster.yaml" in captured.err and "cluster/kuberay/rayservice.yaml" in captured.err
    assert "serve_configs/local.yaml" not in captured.err  # made from another config: still up to date
    assert "aisys deploy-config --write" in captured.err and "-max_replicas:16" in captured.out.replace(" ", "")

    assert main(["deploy-config", "--write"]) == 0
    serve_text = (repo_copy / "serve_configs" / "cluster.yaml").read_text()
    assert deployment_of(serve_text)["autoscaling_config"]["max_replicas"] == 24
    (application,) = yaml.safe_load(serve_text)["applications"]
    assert "serve.max_replicas=24" in application["args"]["overrides"]  # the replicas' config says the same
    manifest = yaml.safe_load((repo_copy / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    assert manifest["spec"]["serveConfigV2"] == serve_text
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"  # the hand-written part is kept
    assert main(["deploy-config", "--check"]) == 0


def test_check_names_a_hand_edited_file_and_write_restores_it(repo_copy, capsys):
    local = repo_copy / "serve_configs" / "local.yaml"
    local.write_text(local.read_text().replace("max_ongoing_requests: 64", "max_ongoing_requests: 5"))
    assert main(["deploy-config", "--check", "--config", "configs/local.yaml"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "serve_configs/local.yaml (from configs/local.yaml)" in err
    assert main(["deploy-config", "--write", "--config", "configs/local.yaml"]) == 0
    assert deployment_of(local.read_text())["max_ongoing_requests"] == 64


@pytest.mark.parametrize("argv,fragment", [
    (["--check", "--set", "serve.port=9000"], "--set does not apply to --write/--check"),
    (["--write", "--config", "configs/other.yaml"], "no checked-in file is generated from configs/other.yaml"),
    (["--set", "serve.max_replicas=0"], "serve.max_replicas"),
])
def test_usage_errors_are_one_line_and_exit_2(repo_copy, capsys, argv, fragment):
    (repo_copy / "configs" / "other.yaml").write_text("serve: {port: 9000}\n")
    before = {g.path: (repo_copy / g.path).read_text() for g in deploy_config.GENERATED}
    assert main(["deploy-config", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and err.count("\n") == 0
    assert before == {g.path: (repo_copy / g.path).read_text() for g in deploy_config.GENERATED}


def test_printing_a_variant_changes_no_file(repo_copy, capsys):
    before = {g.path: (repo_copy / g.path).read_text() for g in deploy_config.GENERATED}
    assert main(["deploy-config", "--set", "serve.autoscaling=true", "--set", "serve.max_replicas=3"]) == 0
    printed = capsys.readouterr().out
    assert deployment_of(printed)["autoscaling_config"]["max_replicas"] == 3
    (application,) = yaml.safe_load(printed)["applications"]
    assert application["args"]["overrides"] == ["serve.autoscaling=true", "serve.max_replicas=3"]
    assert before == {g.path: (repo_copy / g.path).read_text() for g in deploy_config.GENERATED}


def test_the_environment_does_not_leak_into_a_generated_file(repo_copy, monkeypatch):
    monkeypatch.setenv("AISYS__SERVE__MAX_ONGOING_REQUESTS", "7")
    for generated in deploy_config.GENERATED:
        assert "max_ongoing_requests: 64" in deploy_config.render_generated(repo_copy, generated)


@pytest.mark.parametrize("source", sorted({g.source for g in deploy_config.GENERATED}))
@pytest.mark.parametrize("extra", [(), ("serve.autoscaling=true", "serve.replica_memory_mb=512",
                                        "serve.downscaling_factor=0.25", "serve.access_log=false")])
def test_the_text_parses_to_the_options_aisys_serve_runs_with(source, extra):
    settings, cfg = deploy_config.read_settings(REPO / source, extra)
    text = deploy_config.render_serve_file(REPO, source, extra, target="x.yaml")
    parsed = yaml.safe_load(text)
    on_cluster = cfg.ray.address is not None
    expected = serve_document(cfg, None if on_cluster else source,
                              config_overrides(settings) if on_cluster else list(extra))
    assert parsed == expected
    deployment = deployment_of(text)
    assert deployment.pop("name") == DEPLOYMENT_NAME and deployment == deployment_options(cfg)
    if "serve.replica_memory_mb=512" in extra:
        assert deployment["ray_actor_options"]["memory"] == 512 * 1024 * 1024
        assert deployment["autoscaling_config"]["downscaling_factor"] == 0.25


def test_aisys_serve_deploys_with_the_generated_options(monkeypatch):
    """build_application (what `aisys serve` and `serve run` call) passes exactly the YAML's deployment options."""
    from aisys.serving import app

    seen = {}

    class FakeDeployment:
        @staticmethod
        def options(**options):
            seen.update(options)
            return types.SimpleNamespace(bind=lambda config: ("bound", config))

    # The real module imports Ray Serve; only its deployment class is needed here.
    monkeypatch.setitem(sys.modules, "aisys.serving.deployment",
                        types.SimpleNamespace(RecommenderService=FakeDeployment))
    _, cfg = deploy_config.read_settings(REPO / "configs" / "cluster.yaml")
    assert app.build_application(cfg)[0] == "bound"
    generated = deployment_of((REPO / "serve_configs" / "cluster.yaml").read_text())
    assert generated.pop("name") == DEPLOYMENT_NAME
    assert seen == generated
    assert app.APP_NAME == APP_NAME


def auto_config(**sections) -> "AppConfig":
    return config_from_dict({"ray": {"num_cpus": 2}, **sections}, "test")


def test_auto_replicas_are_one_per_cpu_sharing_the_cpu_one_replica_reserved():
    """The default: as many replicas as the local Ray has CPUs (uvicorn's worker per core), reserving together
    the one CPU the old single replica reserved, so a retrain or an ingest beside serving still gets scheduled."""
    cfg = auto_config()
    assert (cfg.serve.num_replicas, cfg.serve.replica_cpus) == ("auto", "auto")
    options = deployment_options(cfg)
    assert options["num_replicas"] == 2 and options["ray_actor_options"]["num_cpus"] == 0.5
    four = deployment_options(auto_config(ray={"num_cpus": 4}))
    assert four["num_replicas"] == 4 and four["ray_actor_options"]["num_cpus"] == 0.25
    text = deploy_config.render_serve_file(REPO, "configs/local.yaml", ["serve.num_replicas=auto"], target="x.yaml")
    assert deployment_of(text)["num_replicas"] == 2
    assert "serve.num_replicas: auto" in text


@pytest.mark.parametrize("held", [{"online": {"session_store": "memory"}},
                                  {"gateway": {"rate_limit_backend": "memory"}}])
def test_auto_is_one_replica_while_a_replica_keeps_state_the_others_would_not_see(held):
    """Per-process sessions or rate limits on two replicas would be two stores or two limits: auto stays at 1."""
    options = deployment_options(auto_config(**held))
    assert options["num_replicas"] == 1 and options["ray_actor_options"]["num_cpus"] == 1.0


def test_an_explicit_count_or_autoscaling_reserves_a_cpu_per_replica():
    explicit = deployment_options(auto_config(serve={"num_replicas": 3}))
    assert explicit["num_replicas"] == 3 and explicit["ray_actor_options"]["num_cpus"] == 1.0
    scaled = deployment_options(auto_config(serve={"autoscaling": True}))
    assert "num_replicas" not in scaled and scaled["ray_actor_options"]["num_cpus"] == 1.0
    chosen = deployment_options(auto_config(serve={"replica_cpus": 0.75}))
    assert chosen["num_replicas"] == 2 and chosen["ray_actor_options"]["num_cpus"] == 0.75


def test_the_cluster_overrides_rebuild_the_cluster_config():
    """What the replicas load on the nodes (no file, only overrides) is the config the YAML was made from."""
    settings, cfg = deploy_config.read_settings(REPO / "configs" / "cluster.yaml")
    (application,) = yaml.safe_load((REPO / "serve_configs" / "cluster.yaml").read_text())["applications"]
    assert application["args"]["config_path"] is None
    assert config_from_dict(cli_overrides(application["args"]["overrides"])) == cfg
    assert cfg.gateway.api_docs is False and cfg.ray.address == "auto"


@pytest.mark.parametrize("value", [
    "plain", "s3://bucket/lake", "a: b", "has # hash", " padded ", "", "1.0", "true", "null", "[x]", "*star",
    1, 0.005, 1e-05, True, None, ["https://a.example", "http://b:3000"], [], {"view": 1.0},
])
def test_a_value_survives_the_trip_through_yaml_and_set(value):
    assert yaml.safe_load(f"key: {yaml_scalar(value)}")["key"] == value
    (pair,) = config_overrides({"section": {"key": value}})
    assert cli_overrides([pair]) == {"section": {"key": value}}


@pytest.mark.parametrize("ingress,variable", [("proxy", None), ("direct", "RAY_SERVE_THROUGHPUT_OPTIMIZED=1"),
                                              ("haproxy", "RAY_SERVE_ENABLE_HA_PROXY=1")])
def test_the_header_says_how_to_get_the_configured_ingress(ingress, variable):
    text = deploy_config.render_serve_file(REPO, "configs/local.yaml", [f"serve.ingress={ingress}"],
                                           target="serve_configs/local.yaml")
    header = text.split("\n\n", 3)[:3]
    said = "\n".join(header)
    assert f"serve.ingress is `{ingress}`" in said
    if variable is None:
        assert "RAY_SERVE_" not in said and "needs no variable" in said
    else:
        assert f"#     {variable} \\" in said and "#     serve run serve_configs/local.yaml" in said
    if ingress == "haproxy":  # the shim that buffers request bodies, as aisys serve installs it
        assert "write_haproxy_shim" in said


def test_render_rayservice_replaces_only_the_block():
    manifest = "a: 1\nspec:\n  serveConfigV2: |\n    old: 1\n\n    more: 2\n  other: kept\n"
    assert render_rayservice(manifest, "new: 3\n\nx: 4\n") == (
        "a: 1\nspec:\n  serveConfigV2: |\n    new: 3\n\n    x: 4\n  other: kept\n")
    with pytest.raises(ValueError, match="serveConfigV2"):
        render_rayservice("spec: {}\n", "new: 3\n")


def test_the_replicas_run_the_app_on_their_own_loop_unless_told_otherwise():
    """serve.user_code_thread reaches the replicas as an env var of their runtime_env (Serve reads it when a
    replica's process starts), so `aisys serve` and every generated Serve YAML carry it."""
    def env_of(cfg):
        return deployment_options(cfg)["ray_actor_options"]["runtime_env"]["env_vars"]

    assert env_of(auto_config())[USER_CODE_THREAD_ENV] == "0"
    assert env_of(auto_config(serve={"user_code_thread": True}))[USER_CODE_THREAD_ENV] == "1"
    text = deploy_config.render_serve_file(REPO, "configs/local.yaml", target="x.yaml")
    assert deployment_of(text)["ray_actor_options"]["runtime_env"]["env_vars"] == env_of(auto_config())


def test_the_replicas_run_at_normal_priority_unless_told_otherwise():
    """serve.replica_niceness reaches the replicas as RAY_worker_niceness (Ray's workers start at nice 15);
    None leaves Ray's default. tests/e2e/test_serve_stop.py checks the running replicas' niceness."""
    def env_of(cfg):
        return deployment_options(cfg)["ray_actor_options"]["runtime_env"]["env_vars"]

    assert env_of(auto_config())[NICENESS_ENV] == "0"
    assert env_of(auto_config(serve={"replica_niceness": 10}))[NICENESS_ENV] == "10"
    assert NICENESS_ENV not in env_of(auto_config(serve={"replica_niceness": None}))
    text = deploy_config.render_serve_file(REPO, "configs/cluster.yaml", target="x.yaml")
    assert deployment_of(text)["ray_actor_options"]["runtime_env"]["env_vars"][NICENESS_ENV] == "0"
