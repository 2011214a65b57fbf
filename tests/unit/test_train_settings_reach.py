"""Every ``train.*`` setting reaches every caller of the one SASRec fit (no Ray started).

The config sets every ``TrainConfig`` field to a value that is not its default; each caller's settings, built the
way the caller builds them, must carry each field's value, unless the field is listed below for that caller with
the reason it does not apply. A new ``train.*`` field fails this test until every caller carries it (or the
exemption says why not).
"""

from __future__ import annotations

from dataclasses import fields

import pytest

from aisys.config import AppConfig, TrainConfig
from aisys.training.fit import FitSettings

# Fields that are not the fit's: they shape Ray Train's workers and restarts, or name the MLflow experiment.
_RAY_TRAIN_ONLY = {
    "num_workers": "Ray Train's worker count (ScalingConfig); other callers train in one process",
    "use_gpu": "Ray Train's ScalingConfig; other callers train on the CPU of their own process",
    "cpus_per_worker": "Ray Train's resources per worker; a Tune trial takes tune.cpus_per_trial",
    "max_failures": "Ray Train's FailureConfig (restart from the checkpoint); nothing else restarts workers",
}
_EXPERIMENT = {"experiment": "the MLflow experiment the pipeline and the sweep log to, not a training setting"}

NOT_APPLICABLE: dict[str, dict[str, str]] = {
    "ray_train": {**_EXPERIMENT},
    "tune_trial": {
        **_RAY_TRAIN_ONLY, **_EXPERIMENT,
        "epochs": "a trial runs up to tune.max_epochs (ASHA's max_t)",
        "lr": "searched over tune.lr",
        "eval_every": "ASHA compares trials at every epoch, so a trial validates every epoch",
    },
    "evaluation_runner": {
        **_RAY_TRAIN_ONLY, **_EXPERIMENT,
        "seed": "evaluate_model's seed argument: the quality benchmark repeats every model over its seeds",
    },
}


def _non_default(name: str, default: object) -> object:
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 3
    if isinstance(default, float):
        return default * 1.5 + 0.25
    if isinstance(default, str):
        return f"{default}-changed"
    raise AssertionError(f"give train.{name} (default {default!r}) a non-default value in this test")


@pytest.fixture(scope="module")
def cfg() -> AppConfig:
    values = {name: _non_default(name, info.default) for name, info in TrainConfig.model_fields.items()}
    cfg = AppConfig.model_validate({"train": values})
    for name, info in TrainConfig.model_fields.items():
        assert getattr(cfg.train, name) != info.default, name
    return cfg


def _ray_train(cfg: AppConfig) -> dict[str, object]:
    from aisys.training.ray_train import loop_config, scaling_settings

    scaling = scaling_settings(cfg)
    return {
        **loop_config(cfg, {})["fit"],
        "num_workers": scaling["num_workers"],
        "use_gpu": scaling["use_gpu"],
        "cpus_per_worker": scaling["resources_per_worker"]["CPU"],
        "max_failures": scaling["max_failures"],
    }


def _tune_trial(cfg: AppConfig) -> dict[str, object]:
    from aisys.tuning.sweep import trial_fit_settings, trial_settings

    # What a trial's params hold: the shared settings plus one point of the search space.
    params = {**trial_settings(cfg), "lr": 0.0123, "embedding_dim": 8, "n_layers": 1, "n_heads": 1,
              "max_seq_len": 5, "dropout": 0.0}
    return trial_fit_settings(params).to_dict()


def _evaluation_runner(cfg: AppConfig) -> dict[str, object]:
    from aisys.evaluation.runner import sequential_settings

    return sequential_settings(cfg, seed=7).fit_settings().to_dict()


CALLERS = {"ray_train": _ray_train, "tune_trial": _tune_trial, "evaluation_runner": _evaluation_runner}


@pytest.mark.parametrize("caller", sorted(CALLERS))
def test_every_train_setting_reaches_the_caller(cfg, caller):
    carried = CALLERS[caller](cfg)
    exempt = NOT_APPLICABLE[caller]
    stale = set(exempt) - set(TrainConfig.model_fields)
    assert not stale, f"exemptions for fields TrainConfig no longer has: {stale}"
    missing = {}
    for name in TrainConfig.model_fields:
        if name in exempt:
            continue
        if carried.get(name, "<absent>") != getattr(cfg.train, name):
            missing[name] = (getattr(cfg.train, name), carried.get(name, "<absent>"))
    assert not missing, (
        f"train.* settings that do not reach {caller} (config value, what it carries): {missing}; pass them, or "
        "list the field in NOT_APPLICABLE with the reason"
    )


def test_the_callers_own_values_replace_the_exempt_ones(cfg):
    trial = _tune_trial(cfg)
    assert (trial["epochs"], trial["lr"], trial["eval_every"]) == (cfg.tune.max_epochs, 0.0123, 1)
    assert _evaluation_runner(cfg)["seed"] == 7


def test_fit_settings_are_named_after_train_config_fields():
    assert {f.name for f in fields(FitSettings)} <= set(TrainConfig.model_fields)
