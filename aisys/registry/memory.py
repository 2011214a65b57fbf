"""The in-memory twin of the MLflow registry (:class:`InMemoryRegistry`): the same operations, held in dicts.

It keeps what the MLflow backend keeps and answers the same way (string versions from "1", metric names without
``@``, a LookupError for an alias no version has, the champion history), so a composition tested against it
behaves as it does against MLflow. Bundles are copied in and out: a caller mutating one changes no stored version.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from aisys.registry.interface import RegisteredModel, metric_name

if TYPE_CHECKING:
    from aisys.models.bundle import ModelBundle

SNAPSHOT_TAG = "lake.snapshot_id"  # the tag names of the MLflow backend (aisys.registry.mlflow_registry)
CODE_VERSION_TAG = "code_version"
TAG_VALUE_LIMIT = 5000  # MLflow caps tag values; the twin cuts them the same way


@dataclass
class _Version:
    bundle: "ModelBundle"
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class _Run:
    params: dict[str, str]
    metrics: dict[str, float]
    history: list[dict]
    tags: dict[str, str] = field(default_factory=dict)


def _latest_metrics(final: Mapping[str, float], history: list[dict]) -> dict[str, float]:
    """Each metric's value at its latest step, as MLflow reports a run's metrics: the final ones are logged at
    step 0, each history row at its ``epoch``, so a per-epoch series shows its last epoch's value."""
    latest: dict[str, tuple[int, float]] = {metric_name(k): (0, float(v)) for k, v in final.items()}
    for n, row in enumerate(history):
        step = int(row.get("epoch", n))
        for key, value in row.items():
            name = metric_name(key)
            if key != "epoch" and (name not in latest or step >= latest[name][0]):
                latest[name] = (step, float(value))
    return {name: value for name, (_, value) in latest.items()}


class InMemoryRegistry:
    """A :class:`~aisys.registry.interface.ModelRegistry` in this process's memory (tests, a registry-less run)."""

    def __init__(self, model_name: str = "aisys-recommender", champion_alias: str = "champion") -> None:
        self.model_name = model_name
        self.champion_alias = champion_alias
        self.versions: dict[str, _Version] = {}
        self.runs: dict[str, _Run] = {}
        self.aliases: dict[str, str] = {}
        self._history: list[str] = []

    @classmethod
    def from_config(cls, cfg) -> "InMemoryRegistry":
        """Named as ``cfg.registry`` names the model and its champion alias."""
        return cls(cfg.registry.model_name, cfg.registry.champion_alias)

    def log_and_register(
        self,
        bundle: "ModelBundle",
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        history: list[dict],
        snapshot_id: str,
        alias: str | None = None,
    ) -> RegisteredModel:
        run_id = uuid.uuid4().hex
        bundle.lineage = {**bundle.lineage, "run_id": run_id, "snapshot_id": snapshot_id}
        code_version = str(bundle.lineage.get("code_version") or "unknown")
        self.runs[run_id] = _Run(
            params={k: str(v) for k, v in params.items()},
            metrics=_latest_metrics(metrics, history),
            history=[dict(row) for row in history],
            tags={SNAPSHOT_TAG: snapshot_id, CODE_VERSION_TAG: code_version},
        )
        version = str(len(self.versions) + 1)
        self.versions[version] = _Version(
            copy.deepcopy(bundle), run_id, {SNAPSHOT_TAG: snapshot_id, CODE_VERSION_TAG: code_version}
        )
        if alias:
            self.set_alias(alias, version)
        return RegisteredModel(self.model_name, version, run_id, f"models:/{self.model_name}/{version}")

    def set_alias(self, alias: str, version: str) -> None:
        version = str(version)
        if version not in self.versions:
            raise LookupError(f"model {self.model_name!r} has no version {version}")
        if alias == self.champion_alias:
            self._history.append(version)  # as make_champion records it before the alias moves
        self.aliases[alias] = version

    def _info(self, version: str, alias: str | None) -> dict[str, Any]:
        stored = self.versions[version]
        return {
            "name": self.model_name,
            "version": version,
            "run_id": stored.run_id,
            "alias": alias,
            "aliases": sorted(a for a, v in self.aliases.items() if v == version),
            "snapshot_id": stored.tags.get(SNAPSHOT_TAG),
            "code_version": stored.tags.get(CODE_VERSION_TAG),
            "model_uri": f"models:/{self.model_name}/{version}",
            "source": f"memory://{self.model_name}/{version}",
        }

    def model_info(self, alias: str) -> dict[str, Any]:
        if alias not in self.aliases:
            raise LookupError(
                f"no version of model {self.model_name!r} has alias {alias!r}: train and register one first"
            )
        return self._info(self.aliases[alias], alias)

    def load_bundle(self, alias: str | None = None, version: str | None = None) -> tuple["ModelBundle", dict[str, Any]]:
        if version is None:
            info = self.model_info(alias or self.champion_alias)
            version = info["version"]
            alias = info["alias"]
        elif str(version) not in self.versions:
            raise LookupError(f"model {self.model_name!r} has no version {version}")
        else:
            alias = None  # as MLflow answers a version lookup: no alias
        version = str(version)
        return copy.deepcopy(self.versions[version].bundle), self._info(version, alias)

    def tag_version(self, version: str | None, tags: Mapping[str, Any], run_ids: Sequence[str] = ()) -> None:
        for key, value in tags.items():
            text = str(value)[:TAG_VALUE_LIMIT]
            if version is not None:
                self.versions[str(version)].tags[key] = text
            for run_id in run_ids:
                self.runs[run_id].tags[key] = text

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.runs[run_id].metrics)

    def champion_history(self) -> list[str]:
        return list(self._history)
