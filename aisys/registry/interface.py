"""The model registry as the rest of aisys uses it: a small interface, an MLflow backend and an in-memory twin.

Like the event log, the session store and the lake, the registry is a backend behind a few operations:
log a trained model's run and register it, move an alias, read what an alias points at, load a version's
bundle, tag a version and its runs, read a run's metrics, and the champion history. The MLflow backend is
:class:`aisys.registry.mlflow_registry.MlflowRegistry` (the only place that imports mlflow: contract
``mlflow-only-in-registry``); :class:`aisys.registry.memory.InMemoryRegistry` is its twin for tests and for
running without a tracking store. Compositions (:func:`aisys.pipeline.train_and_register`) take either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from aisys.models.bundle import ModelBundle


@dataclass
class RegisteredModel:
    """A registered model version: ``uri`` is ``models:/name/version``."""

    name: str
    version: str
    run_id: str
    uri: str


@runtime_checkable
class ModelRegistry(Protocol):
    """What callers do with the registry; versions are strings ("1", "2", ...), aliases names ("champion")."""

    def log_and_register(
        self,
        bundle: "ModelBundle",
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        history: list[dict],
        snapshot_id: str,
        alias: str | None = None,
    ) -> RegisteredModel:
        """Record one run (params, final metrics, per-epoch ``history``) and register ``bundle`` as a new version
        (its lineage gains the run id and snapshot id); move ``alias`` to it when given."""
        ...

    def set_alias(self, alias: str, version: str) -> None:
        """Point ``alias`` at ``version``; the champion alias is recorded in the champion history."""
        ...

    def model_info(self, alias: str) -> dict[str, Any]:
        """Facts about the version behind ``alias`` (name, version, run_id, snapshot_id, ...); LookupError if none."""
        ...

    def load_bundle(self, alias: str | None = None, version: str | None = None) -> tuple["ModelBundle", dict[str, Any]]:
        """A registered bundle and its info: ``version`` if given, else ``alias`` (default: the champion)."""
        ...

    def tag_version(self, version: str | None, tags: Mapping[str, Any], run_ids: Sequence[str] = ()) -> None:
        """Set ``tags`` (as strings) on ``version`` (when given) and on each run of ``run_ids``."""
        ...

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The final metrics of ``run_id``, named as the backend stores them (``test_ndcg_at_10``)."""
        ...

    def champion_history(self) -> list[str]:
        """Versions made champion through this interface, oldest first."""
        ...


def metric_name(key: str) -> str:
    """The stored name of a metric: MLflow forbids ``@`` (``hr@10`` -> ``hr_at_10``); the twin stores the same."""
    return key.replace("@", "_at_")
