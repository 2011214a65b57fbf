"""The MLflow registry: log a training run, register its bundle, alias it, load it back.

This is the only module that imports mlflow. Nothing is configured at import:
:func:`configure_mlflow` points MLflow at ``cfg.paths.mlflow_tracking_uri`` and
every public function here calls it first.

A registered version is an MLflow pyfunc model whose ``artifacts/bundle``
folder is a :class:`~aisys.models.bundle.ModelBundle`. Serving downloads that
folder (:func:`load_bundle`) rather than going through ``mlflow.pyfunc.load_model``;
the pyfunc form exists so generic MLflow tooling can load and call it.

MLflow metric names may not contain ``@``: ``hr@10`` is logged as ``hr_at_10``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd

from aisys.config import AppConfig
from aisys.models.bundle import ModelBundle
from aisys.registry.interface import RegisteredModel, metric_name

MODEL_ARTIFACT_NAME = "model"
BUNDLE_ARTIFACT_KEY = "bundle"
SNAPSHOT_TAG = "lake.snapshot_id"
CODE_VERSION_TAG = "code_version"
# MLflow 3 caps tag values at 8,000 characters; reasons are sentences, so this cut rarely bites.
TAG_VALUE_LIMIT = 5000
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")
_PYFUNC_REQUIREMENTS = ("torch", "numpy", "scipy", "pandas", "pyarrow", "pydantic", "pyyaml")


class BundlePyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper: rebuilds the bundle and its scorer (any model kind), recommends top-k item ids.

    Input: a DataFrame with a ``history`` column (each row a list of item ids,
    oldest first). Params: ``k`` (default 10). Output: a DataFrame with
    ``item_ids`` and ``scores`` lists per row. Items the user has seen are not
    recommended; an empty history gets the most popular items.
    """

    def load_context(self, context) -> None:
        import torch

        from aisys.models.multistage import build_scorer

        torch.set_num_threads(1)
        # The whole bundle folder is the artifact: weights, generator arrays (stages.npz) and bundle.json.
        self.bundle = ModelBundle.load(context.artifacts[BUNDLE_ARTIFACT_KEY])
        self.scorer = build_scorer(self.bundle)
        self.index = self.bundle.item_index()

    def predict(self, context, model_input, params=None):
        k = int((params or {}).get("k", 10))
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "history" not in frame.columns:
            raise ValueError(f"model input needs a 'history' column of item-id lists; got {list(frame.columns)}")
        histories = [[self.index[i] for i in (row if row is not None else []) if i in self.index] for row in frame["history"]]
        # No request time reaches a pyfunc: the gap is unknown (the blend's default bucket).
        scores = self.scorer.score_sessions(histories, np.full(len(histories), np.nan))
        popularity = self.bundle.popularity_scores()
        out_ids, out_scores = [], []
        for row, history in enumerate(histories):
            row_scores = scores[row] if history else popularity.copy()
            row_scores[list(history)] = -np.inf
            row_scores[0] = -np.inf
            top = np.argsort(-row_scores, kind="stable")[:k]
            top = top[np.isfinite(row_scores[top])]
            out_ids.append([self.bundle.item_ids[i] for i in top])
            out_scores.append([float(row_scores[i]) for i in top])
        return pd.DataFrame({"item_ids": out_ids, "scores": out_scores})


def _local_uri(value: str) -> str:
    """A ``file://`` URI for a local path; URIs (s3://, file://) pass through."""
    if "://" in value:
        return value
    return Path(value).expanduser().resolve().as_uri()


def _ensure_sqlite_folder(tracking_uri: str) -> None:
    # SQLite creates the DB file but not its folder.
    if tracking_uri.startswith("sqlite:///"):
        db_path = Path(tracking_uri[len("sqlite:///") :])
        db_path.expanduser().parent.mkdir(parents=True, exist_ok=True)


def configure_mlflow(cfg: AppConfig) -> str:
    """Point MLflow at the config's tracking/registry store and experiment; return the experiment id.

    The experiment ``cfg.train.experiment`` is created when missing, with its
    artifacts under ``cfg.paths.mlflow_artifact_uri`` (a local path becomes a
    ``file://`` URI).
    """
    tracking_uri = cfg.paths.mlflow_tracking_uri
    if cfg.paths.s3_endpoint_url:
        # MLflow's S3 artifact client (boto3) takes a custom endpoint (MinIO, moto) only from this variable.
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = cfg.paths.s3_endpoint_url
    _ensure_sqlite_folder(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(cfg.train.experiment)
    if experiment is None:
        experiment_id = mlflow.create_experiment(
            cfg.train.experiment, artifact_location=_local_uri(cfg.paths.mlflow_artifact_uri)
        )
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def quiet_mlflow() -> None:
    """Silence MLflow's direct prints ("Successfully registered model ...", "Created version ...") and warnings.

    Plain ``disable_logging()`` does not last: MLflow re-enables its stream when one of its own internal
    "quiet" sections ends. Its counted switch (``MlflowEventsAndWarningsBehaviorGlobally``) is entered here
    for the rest of the process, so those sections nest inside it. Errors still raise.
    """
    from mlflow.utils.autologging_utils import MlflowEventsAndWarningsBehaviorGlobally

    MlflowEventsAndWarningsBehaviorGlobally(
        disable_event_logs=True, disable_warnings=True, reroute_warnings=False
    ).__enter__()


def mlflow_metric_name(key: str) -> str:
    """MLflow forbids ``@`` in metric names: ``hr@10`` -> ``hr_at_10``."""
    return metric_name(key)


_MAX_METRICS_PER_BATCH = 1000  # the tracking API's limit per log_batch call


def _log_history(run_id: str, history: list[dict]) -> None:
    """Every epoch's figures in one ``log_batch`` (one store transaction, not one per epoch), each at its epoch."""
    from mlflow.entities import Metric

    now_ms = int(time.time() * 1000)
    metrics = [
        Metric(mlflow_metric_name(key), float(value), now_ms, int(row.get("epoch", n)))
        for n, row in enumerate(history)
        for key, value in row.items()
        if key != "epoch"
    ]
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + _MAX_METRICS_PER_BATCH])


def _log_training_curve(history: list[dict]) -> None:
    """Log loss and validation NDCG per epoch as a PNG (skipped without matplotlib)."""
    if not history:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers
        import matplotlib.pyplot as plt
    except ImportError:
        return
    epochs = [row.get("epoch", n) for n, row in enumerate(history)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [row.get("loss", np.nan) for row in history], marker="o")
    left.set(title="training loss", xlabel="epoch")
    for key in ("valid_hr@10", "valid_ndcg@10"):
        right.plot(epochs, [row.get(key, np.nan) for row in history], marker="o", label=key)
    right.set(title="validation", xlabel="epoch")
    right.legend()
    fig.tight_layout()
    mlflow.log_figure(fig, "training_curve.png")
    plt.close(fig)


def _pip_requirements() -> list[str]:
    pins = []
    for package in _PYFUNC_REQUIREMENTS:
        try:
            pins.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(package)
    return pins


def _pyfunc_signature():
    """history (list of item ids) -> item_ids/scores lists, with ``k`` as an inference-time param."""
    from mlflow.models import infer_signature

    return infer_signature(
        pd.DataFrame({"history": [["item-a", "item-b"]]}),
        pd.DataFrame({"item_ids": [["item-c"]], "scores": [[1.0]]}),
        params={"k": 10},
    )


def log_and_register(
    cfg: AppConfig,
    bundle: ModelBundle,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    history: list[dict],
    snapshot_id: str,
    alias: str | None = "champion",
) -> RegisteredModel:
    """Log one MLflow run for a trained bundle and register it under ``cfg.registry.model_name``.

    The run holds ``params``, final ``metrics``, the per-epoch ``history`` as
    metric steps, tags ``lake.snapshot_id`` and ``code_version``, a training
    curve PNG and the bundle as a pyfunc model. ``bundle.lineage`` gains the
    run id and snapshot id before it is saved. ``alias`` (when not None) is
    moved to the new version with :func:`set_alias`: the champion alias through
    :func:`aisys.registry.champion.make_champion`, which records it.
    """
    experiment_id = configure_mlflow(cfg)
    name = cfg.registry.model_name
    with mlflow.start_run(experiment_id=experiment_id) as run:
        run_id = run.info.run_id
        bundle.lineage = {**bundle.lineage, "run_id": run_id, "snapshot_id": snapshot_id}
        code_version = str(bundle.lineage.get("code_version") or "unknown")
        mlflow.set_tags(
            {
                SNAPSHOT_TAG: snapshot_id,
                CODE_VERSION_TAG: code_version,
                "feature_set_version": bundle.feature_set_version,
                "model_kind": bundle.model_kind,
            }
        )
        mlflow.log_params({key: str(value) for key, value in params.items()})
        mlflow.log_metrics({mlflow_metric_name(k): float(v) for k, v in metrics.items()})
        _log_history(run_id, history)
        _log_training_curve(history)
        with tempfile.TemporaryDirectory() as tmp:
            folder = bundle.save(Path(tmp) / BUNDLE_ARTIFACT_KEY)
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT_NAME,
                python_model=BundlePyfunc(),
                artifacts={BUNDLE_ARTIFACT_KEY: str(folder)},
                # Explicit pins skip MLflow's slow requirement inference (it loads the model in a subprocess).
                pip_requirements=_pip_requirements(),
                signature=_pyfunc_signature(),
                registered_model_name=name,
            )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    client.set_model_version_tag(name, version, SNAPSHOT_TAG, snapshot_id)
    client.set_model_version_tag(name, version, CODE_VERSION_TAG, code_version)
    if alias:
        set_alias(cfg, alias, version)  # the champion alias is recorded in its history (serving refuses it otherwise)
    return RegisteredModel(name=name, version=version, run_id=run_id, uri=f"models:/{name}/{version}")


def _model_version(cfg: AppConfig, alias: str | None, version: str | None, model_uri: str | None):
    client = mlflow.MlflowClient()
    name = cfg.registry.model_name
    if model_uri:
        match = _MODELS_URI.match(model_uri)
        if not match:
            raise ValueError(f"model_uri {model_uri!r} must look like models:/<name>/<version> or models:/<name>@<alias>")
        name, version, alias = match["name"], match["version"], match["alias"]
    if version is not None:
        return client.get_model_version(name, str(version)), None
    alias = alias or cfg.registry.champion_alias
    try:
        return client.get_model_version_by_alias(name, alias), alias
    except mlflow.exceptions.MlflowException as err:
        raise LookupError(f"no version of model {name!r} has alias {alias!r}: train and register one first") from err


def _info(model_version, alias: str | None) -> dict[str, Any]:
    return {
        "name": model_version.name,
        "version": str(model_version.version),
        "run_id": model_version.run_id,
        "alias": alias,
        "aliases": list(model_version.aliases or []),
        "snapshot_id": (model_version.tags or {}).get(SNAPSHOT_TAG),
        "code_version": (model_version.tags or {}).get(CODE_VERSION_TAG),
        "model_uri": f"models:/{model_version.name}/{model_version.version}",
        "source": model_version.source,
    }


def get_model_info(cfg: AppConfig, alias: str) -> dict[str, Any]:
    """Registry facts about the version behind ``alias`` (no download): name, version, run_id, snapshot_id, ..."""
    configure_mlflow(cfg)
    model_version, alias = _model_version(cfg, alias, None, None)
    return _info(model_version, alias)


def alias_version(cfg: AppConfig, alias: str) -> str:
    """The version ``alias`` of ``cfg.registry.model_name`` points at (``LookupError`` when it has none).

    One registry read on a client bound to the config's store, for pollers: a serving replica asks every
    ``online.follow_alias_every_s`` per alias. It leaves MLflow's process-wide state alone (no
    :func:`configure_mlflow`, whose experiment lookup and set cost twice the read: 5.7 ms of CPU per call
    against 2.1, measured).
    """
    uri = cfg.paths.mlflow_tracking_uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        return str(client.get_model_version_by_alias(cfg.registry.model_name, alias).version)
    except mlflow.exceptions.MlflowException as err:
        raise LookupError(f"no version of model {cfg.registry.model_name!r} has alias {alias!r}") from err


def run_metrics(cfg: AppConfig, run_id: str) -> dict[str, float]:
    """The final metrics MLflow holds for ``run_id``, named as logged (``test_ndcg_at_10``); the operator view reads them."""
    configure_mlflow(cfg)
    return dict(mlflow.MlflowClient().get_run(run_id).data.metrics)


def set_alias(cfg: AppConfig, alias: str, version: str) -> None:
    """Point ``alias`` of ``cfg.registry.model_name`` at ``version``.

    The champion alias goes through :func:`aisys.registry.champion.make_champion` (recorded in the champion
    history, under the promotion lock): serving refuses a champion that history does not end with. Other aliases
    (``challenger``) move directly.
    """
    if alias == cfg.registry.champion_alias:
        from aisys.registry.champion import make_champion  # the one writer of the champion alias

        make_champion(cfg, str(version))
        return
    configure_mlflow(cfg)
    mlflow.MlflowClient().set_registered_model_alias(cfg.registry.model_name, alias, str(version))


def tag_version(cfg: AppConfig, version: str | None, tags: dict[str, Any], run_ids: Sequence[str] = ()) -> None:
    """Set ``tags`` on registered ``version`` of ``cfg.registry.model_name`` (when given) and on each run.

    Values become strings, cut to ``TAG_VALUE_LIMIT`` characters (MLflow caps tag values).
    """
    configure_mlflow(cfg)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        text = str(value)[:TAG_VALUE_LIMIT]
        if version is not None:
            client.set_model_version_tag(cfg.registry.model_name, str(version), key, text)
        for run_id in run_ids:
            client.set_tag(run_id, key, text)


def log_run_artifact(cfg: AppConfig, run_id: str, path: str, artifact_path: str) -> str:
    """Upload the local file ``path`` into ``run_id``'s artifacts under ``artifact_path``; returns its runs:/ URI."""
    configure_mlflow(cfg)
    mlflow.MlflowClient().log_artifact(run_id, path, artifact_path=artifact_path)
    return f"runs:/{run_id}/{artifact_path}/{Path(path).name}"


def load_bundle(
    cfg: AppConfig, alias: str | None = None, version: str | None = None, model_uri: str | None = None
) -> tuple[ModelBundle, dict[str, Any]]:
    """Download a registered bundle; return it with its model info.

    Precedence: ``model_uri`` (``models:/name/version`` or ``models:/name@alias``),
    then ``version``, then ``alias`` (default ``cfg.registry.champion_alias``).
    """
    configure_mlflow(cfg)
    model_version, alias = _model_version(cfg, alias, version, model_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model_version.name}/{model_version.version}", dst_path=tmp
        )
        bundle = ModelBundle.load(Path(local) / "artifacts" / BUNDLE_ARTIFACT_KEY)
    info = _info(model_version, alias)
    info["snapshot_id"] = info["snapshot_id"] or bundle.lineage.get("snapshot_id")
    return bundle, info


class MlflowRegistry:
    """The MLflow backend of :class:`~aisys.registry.interface.ModelRegistry`: the functions above, bound to ``cfg``."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg

    def log_and_register(self, bundle, params, metrics, history, snapshot_id, alias=None) -> RegisteredModel:
        return log_and_register(self.cfg, bundle, params, metrics, history, snapshot_id, alias=alias)

    def set_alias(self, alias: str, version: str) -> None:
        set_alias(self.cfg, alias, version)

    def model_info(self, alias: str) -> dict[str, Any]:
        return get_model_info(self.cfg, alias)

    def load_bundle(self, alias: str | None = None, version: str | None = None) -> tuple[ModelBundle, dict[str, Any]]:
        return load_bundle(self.cfg, alias=alias, version=version)

    def tag_version(self, version: str | None, tags: Mapping[str, Any], run_ids: Sequence[str] = ()) -> None:
        tag_version(self.cfg, version, dict(tags), run_ids)

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return run_metrics(self.cfg, run_id)

    def champion_history(self) -> list[str]:
        from aisys.registry.champion import champion_history

        return champion_history(self.cfg)
