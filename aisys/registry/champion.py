"""The champion alias and its recorded history: the one place our code moves ``champion``.

Every champion change aisys makes (the gate's :func:`aisys.registry.promotion.promote`, :func:`make_champion`,
:func:`aisys.registry.promotion.rollback`, and ``log_and_register(alias=champion)`` /
``set_alias(cfg, champion, v)``, which call :func:`make_champion`) writes the registered-model tag
``aisys.champion_history`` (a JSON list of versions, oldest first) *before* it moves the alias, under
:func:`promotion_lock`. The rule serving enforces (``serve.require_recorded_promotion``, on by default) is
:func:`is_recorded_champion`: the alias must point at the **last** version of that history. So a champion alias moved
by hand (the MLflow UI, ``MlflowClient.set_registered_model_alias``) is refused, including a hand move back to an
older champion (use ``aisys rollback``, which records). This module imports no gate, holdout or training code, so the
request path (serving) may read it.

What it does not protect against: someone with write access to the MLflow registry can also rewrite the tag. The
rule stops accidental and UI alias moves and makes every change of ours leave a trace; keeping hostile writers out
of the registry is MLflow's access control (docs/gateway.md, threat model).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from aisys.config import AppConfig
from aisys.registry.lock import DEFAULT_TIMEOUT_S, file_lock, registry_lock_path

HISTORY_TAG = "aisys.champion_history"
CHAMPION_SINCE_TAG = "aisys.champion_since"
HISTORY_KEEP = 50  # keeps the tag value far below MLflow's length limit


def now_iso() -> str:
    """The current UTC time, ISO 8601 (the value of the ``aisys.champion_since``-style tags)."""
    return datetime.now(timezone.utc).isoformat()


def is_recorded_champion(version: str | int | None, history: list[str]) -> bool:
    """Whether ``version`` is the champion the history says it should be: its last entry (pure)."""
    return version is not None and bool(history) and str(history[-1]) == str(version)


def registry_client(cfg: AppConfig):
    """``(MlflowClient, experiment_id)`` for ``cfg``'s registry (configures MLflow first)."""
    import mlflow

    from aisys.registry.mlflow_registry import configure_mlflow

    experiment_id = configure_mlflow(cfg)
    return mlflow.MlflowClient(), experiment_id


def alias_version(client, cfg: AppConfig, alias: str) -> str | None:
    """The version ``alias`` of ``cfg.registry.model_name`` points at, or None when no version has it."""
    import mlflow

    try:
        return str(client.get_model_version_by_alias(cfg.registry.model_name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def read_history(client, name: str) -> list[str]:
    """The champion history of registered model ``name``, oldest first (empty when none was recorded)."""
    tags = client.get_registered_model(name).tags or {}
    return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]


def champion_history(cfg: AppConfig) -> list[str]:
    """Versions our code made champion, oldest first; a rollback drops the versions it rolled back from."""
    client, _ = registry_client(cfg)
    return read_history(client, cfg.registry.model_name)


def champion_state(cfg: AppConfig) -> tuple[str | None, list[str]]:
    """``(version behind the champion alias or None, champion history)``: what serving checks."""
    import mlflow

    client, _ = registry_client(cfg)
    try:
        history = read_history(client, cfg.registry.model_name)
    except mlflow.exceptions.MlflowException:  # no such registered model yet: no champion either
        return None, []
    return alias_version(client, cfg, cfg.registry.champion_alias), history


def promotion_lock(cfg: AppConfig, timeout_s: float = DEFAULT_TIMEOUT_S):
    """The lock serialising champion changes of ``cfg.registry.model_name`` (threads and processes of a host).

    A context manager; see :mod:`aisys.registry.lock` for what it covers and what a multi-host setup needs.
    """
    path = registry_lock_path(cfg.paths.mlflow_tracking_uri, cfg.paths.workspace, cfg.registry.model_name)
    return file_lock(path, timeout_s)


def make_champion(cfg: AppConfig, version: str | int) -> None:
    """Record ``version`` as champion in the history, then move the champion alias to it (under the lock).

    The alias moves last: a failure before it leaves the old champion serving (its history entry then names a
    version that never served, which a later change or rollback overwrites).
    """
    client, _ = registry_client(cfg)
    with promotion_lock(cfg):
        record_champion(client, cfg, str(version))


def record_champion(client, cfg: AppConfig, version: str) -> None:
    """Append ``version`` to the history and move the alias; the caller holds :func:`promotion_lock`.

    A champion that is not the history's last entry (moved by hand) is deliberately **not** recorded here: the
    history holds only what our code chose, so a rollback never brings back a hand-moved version.
    """
    name = cfg.registry.model_name
    history = read_history(client, name)
    if not history or history[-1] != version:
        history.append(version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_KEEP:]))
    client.set_model_version_tag(name, version, CHAMPION_SINCE_TAG, now_iso())
    client.set_registered_model_alias(name, cfg.registry.champion_alias, version)
