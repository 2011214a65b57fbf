"""AppConfig: loading, overrides, and errors that name the key."""

from pathlib import Path

import pytest

from aisys.config import ConfigError, cli_overrides, env_overrides, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_repo_config_loads_and_matches_defaults():
    cfg = load_config("configs/local.yaml", environ={})
    assert cfg.data.source == "simulator"
    assert cfg.train.use_gpu is False
    assert cfg.paths.lake_uri.endswith(".aisys/lake")
    assert Path(cfg.paths.lake_uri).is_absolute()


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, "train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epochz'"):
        load_config(path, environ={})


def test_unknown_section_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trian'"):
        load_config(write(tmp_path, "trian:\n  epochs: 3\n"), environ={})


def test_mistyped_value_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(write(tmp_path, "train:\n  epochs: many\n"), environ={})


def test_cross_field_validation_names_both_fields(tmp_path):
    with pytest.raises(ConfigError, match=r"embedding_dim.*n_heads"):
        load_config(write(tmp_path, "model:\n  embedding_dim: 30\n  n_heads: 4\n"), environ={})


def test_precedence_yaml_then_env_then_cli(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n  lr: 0.1\n  batch_size: 7\n")
    cfg = load_config(
        path,
        overrides=["train.epochs=9"],
        environ={"AISYS__TRAIN__EPOCHS": "5", "AISYS__TRAIN__LR": "0.5"},
    )
    assert cfg.train.epochs == 9  # CLI wins over env
    assert cfg.train.lr == 0.5  # env wins over YAML
    assert cfg.train.batch_size == 7  # YAML wins over defaults


def test_env_override_with_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match=r"unknown key 'serve\.prot'"):
        load_config(None, environ={"AISYS__SERVE__PROT": "1"})


def test_override_parsing():
    assert cli_overrides(["a.b=3", "a.c=true", "d=x"]) == {"a": {"b": 3, "c": True}, "d": "x"}
    assert env_overrides({"AISYS__RAY__NUM_CPUS": "4", "OTHER": "1"}) == {"ray": {"num_cpus": 4}}
    with pytest.raises(ConfigError, match="section.key=value"):
        cli_overrides(["novalue"])


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_paths_derive_from_workspace(tmp_path):
    cfg = load_config(None, overrides=[f"paths.workspace={tmp_path}"], environ={})
    assert cfg.paths.lake_uri == f"{tmp_path}/lake"
    assert cfg.paths.mlflow_tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert cfg.data.raw_dir == f"{tmp_path}/raw"


def test_uris_are_left_alone():
    cfg = load_config(None, overrides=["paths.lake_uri=s3://bucket/lake"], environ={})
    assert cfg.paths.lake_uri == "s3://bucket/lake"


def test_round_trip_through_dict_is_stable(small_config):
    from aisys.config import config_from_dict

    again = config_from_dict(small_config.model_dump())
    assert again == small_config
