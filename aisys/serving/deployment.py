"""The Ray Serve deployment: one replica = one recommender behind the FastAPI routes.

On start a replica loads the registered champion (``aisys.registry``), rebuilds
every user's history from the lake snapshot the model was trained on (the same
``user_histories`` code training used), and serves :mod:`aisys.serving.routes`.

The FastAPI app is *late-bound* (``@serve.ingress()`` with
``__serve_build_asgi_app__``): Serve builds it inside the replica after
``__init__``, so the routes close over this replica's recommender instead of
reaching for a module global. Model scoring goes through a ``@serve.batch``
method, so concurrent requests share one forward pass.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray import serve

from aisys.config import AppConfig, config_from_dict
from aisys.features.sequences import user_histories
from aisys.serving.api_models import ModelOut
from aisys.serving.event_log import JsonlEventLog
from aisys.serving.recommender import Recommendation, Recommender
from aisys.serving.routes import ServingState, build_fastapi_app

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "RecommenderService"
# Batching pays off for real models (STACK.md: neutral for a 25 us one); a
# short wait keeps single-request latency low when traffic is light.
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.005


def collector_folder(cfg: AppConfig) -> Path:
    """Where the HTTP collector writes accepted events: ``{workspace}/collector``."""
    return Path(cfg.paths.workspace) / "collector"


def load_serving_state(cfg: AppConfig) -> ServingState:
    """Load the champion and its snapshot's histories into a :class:`ServingState`.

    ``cfg.serve.model_uri`` (``models:/name/version``) overrides the champion alias.
    """
    from aisys.data.lake import Lake
    from aisys.registry.mlflow_registry import load_bundle

    bundle, info = load_bundle(cfg, model_uri=cfg.serve.model_uri)
    snapshot_id = bundle.lineage.get("snapshot_id")
    histories: dict[str, list[int]] = {}
    if snapshot_id:
        try:
            events = Lake(cfg.paths.lake_uri).read_events(snapshot_id)
        except Exception as err:  # name what is missing; the replica then fails to start
            raise RuntimeError(
                f"cannot read lake snapshot {snapshot_id!r} (bundle.lineage.snapshot_id) "
                f"from paths.lake_uri={cfg.paths.lake_uri!r}: {err}"
            ) from err
        histories = user_histories(events, bundle.item_index())
    else:
        logger.warning("the served model has no lineage.snapshot_id: every user starts with an empty history")
    recommender = Recommender(bundle, histories, torch_threads=cfg.train.torch_threads)
    model = ModelOut.describe(bundle, info, default_name=cfg.registry.model_name)
    logger.info("serving %s version %s (snapshot %s, %d users with history)",
                model.name, model.version, snapshot_id, len(histories))
    return ServingState(recommender=recommender, event_log=JsonlEventLog(collector_folder(cfg)), model=model)


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class RecommenderService:
    """Ray Serve replica serving the aisys HTTP API.

    ``config`` is ``AppConfig.model_dump()``: a plain dict travels to replicas
    and in Serve YAML ``args``; it is validated again here.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self._cfg = config_from_dict(config, "RecommenderService config")
        self._state = load_serving_state(self._cfg)

    def __serve_build_asgi_app__(self):
        """Called by Serve after ``__init__``: the routes bound to this replica's state."""
        self._state.recommend = self.recommend
        return build_fastapi_app(self._state, default_k=self._cfg.serve.default_k, max_k=self._cfg.serve.max_k)

    async def recommend(self, user_id: str, k: int) -> Recommendation:
        """One request's answer, scored together with whatever else is in flight."""
        return await self.recommend_batched((user_id, k))

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S)
    async def recommend_batched(self, requests: list[tuple[str, int]]) -> list[Recommendation]:
        """Score a batch of ``(user_id, k)`` requests in one forward pass.

        The batch is scored at its largest k and each answer cut to its own k
        (a top-K list cut to k is the top-k list).
        """
        recommender: Recommender = self._state.recommender  # type: ignore[assignment]
        largest_k = max(k for _, k in requests)
        recs = recommender.recommend_many([user for user, _ in requests], largest_k)
        return [rec.truncated(k) for rec, (_, k) in zip(recs, requests)]

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live-tune batching: ``{max_batch_size: int, batch_wait_timeout_s: float}``."""
        unknown = set(user_config) - {"max_batch_size", "batch_wait_timeout_s"}
        if unknown:
            raise ValueError(f"unknown user_config key(s) {sorted(unknown)}; "
                             "allowed: max_batch_size, batch_wait_timeout_s")
        if "max_batch_size" in user_config:
            self.recommend_batched.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self.recommend_batched.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
