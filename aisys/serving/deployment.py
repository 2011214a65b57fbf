"""The Ray Serve deployment: one replica = an :class:`OnlineService` behind the FastAPI routes.

On start a replica:

1. opens the session store: the shared named actor (``cfg.online.session_store="actor"``)
   or a per-process dict (``"memory"``);
2. loads the registered champion (and the challenger, when that alias exists);
   the first replica to see a model's lake snapshot seeds the store with its
   users' sessions (``sessions_from_events``, built on ``user_histories``, the
   code training used); the others find the snapshot loaded and skip the lake;
3. starts an :class:`~aisys.serving.follow.AliasFollower` that swaps in new
   versions of the aliases in the background (``cfg.online.follow_alias_every_s``);
4. builds the FastAPI app around the service (late-bound ingress, below), behind
   the API gateway (a gateway that fails to build fails the replica: never an open app), plus the storefront and
   operator pages (``aisys.storefront``) over the champion snapshot's catalogue;
5. records its metrics and, with ``cfg.monitor.enabled``, feeds the drift monitor
   actor in the background (:mod:`aisys.serving.telemetry`).

Model scoring goes through a ``@serve.batch`` method, so concurrent requests
share one forward pass; the forward pass runs in a worker thread, which keeps
the event loop free for the latency budget's timer and for other requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from ray import serve

from aisys.config import AppConfig, config_from_dict
from aisys.serving.api_models import ModelOut
from aisys.serving.canary import CHALLENGER, CHAMPION
from aisys.serving.collector_store import open_event_log
from aisys.serving.follow import AliasFollower
from aisys.serving.heap import freeze_long_lived_heap
from aisys.serving.recommender import Recommendation, Recommender, ScoreRequest, retrieval_options
from aisys.serving.routes import build_fastapi_app
from aisys.serving.rules import Inventory, JsonFileInventory
from aisys.serving.service import OnlineService, ServedModel
from aisys.serving.session_store import InMemorySessionStore, SessionStore, sessions_from_events
from aisys.serving.telemetry import ServingTelemetry, gateway_key_tier, install_request_metrics
from aisys.serving.ops_view import latest_report_path, monitor_status, overview
from aisys.storefront.provider import load_catalogue
from aisys.storefront.routes import install_storefront

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "RecommenderService"
# Batching pays off for real models (STACK.md: neutral for a 25 us one); a
# short wait keeps single-request latency low when traffic is light.
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.005


def stock_path(cfg: AppConfig) -> Path:
    """The shared out-of-stock file: ``cfg.online.stock_file`` (relative to the workspace) or the default."""
    path = Path(cfg.online.stock_file or "online/stock.json").expanduser()
    return path if path.is_absolute() else Path(cfg.paths.workspace) / path


def open_inventory(cfg: AppConfig) -> Inventory:
    """The stock ``cfg.online.stock_backend`` names: the host's file, or the cluster's actor (Ray is up)."""
    if cfg.online.stock_backend == "actor":
        from aisys.serving.stock_actor import actor_inventory

        return actor_inventory(cfg)
    return JsonFileInventory(stock_path(cfg))


def open_session_store(cfg: AppConfig) -> SessionStore:
    """The store ``cfg.online.session_store`` names (the actor needs Ray, which a replica has)."""
    if cfg.online.session_store == "actor":
        from aisys.serving.session_actor import actor_session_store

        return actor_session_store(cfg)
    return InMemorySessionStore(cfg.online.max_history, cfg.online.max_sessions)


async def seed_sessions(cfg: AppConfig, store: SessionStore, bundle, snapshot_id: str | None) -> int:
    """Load the snapshot's sessions into ``store`` unless some replica already did; return users seeded."""
    if not snapshot_id:
        logger.warning("the served model has no lineage.snapshot_id: users start with empty sessions")
        return 0
    if await store.has_snapshot(snapshot_id):
        return 0
    from aisys.data.lake import Lake

    try:
        events = await asyncio.to_thread(Lake.from_config(cfg.paths).read_events, snapshot_id)
    except Exception as err:  # name what is missing; the replica then fails to start
        raise RuntimeError(
            f"cannot read lake snapshot {snapshot_id!r} (bundle.lineage.snapshot_id) "
            f"from paths.lake_uri={cfg.paths.lake_uri!r}: {err}"
        ) from err
    sessions = await asyncio.to_thread(sessions_from_events, events, bundle.item_index())
    seeded = await store.bulk_load(sessions, snapshot_id)
    logger.info("snapshot %s: %d users seeded into the session store", snapshot_id, seeded)
    return seeded


# A replica that reads the alias and the history while a promotion writes them (history first, then the alias)
# can see one moved and not the other: it looks again before refusing.
RECORDED_CHECK_TRIES = 3
RECORDED_CHECK_WAIT_S = 0.25


def gated_alias(cfg: AppConfig, alias: str | None, model_uri: str | None) -> str | None:
    """The champion alias when this load serves it (by name, or as ``models:/<name>@<champion>``), else None."""
    champion = cfg.registry.champion_alias
    if alias == champion or (alias is None and model_uri and model_uri.endswith(f"@{champion}")):
        return champion
    return None


async def check_promotion_recorded(cfg: AppConfig, alias: str | None, version: str | None,
                                   model_uri: str | None = None) -> None:
    """With ``serve.require_recorded_promotion`` (the default), refuse a champion our code did not record.

    The champion alias must point at the last version of the registered-model tag ``aisys.champion_history``
    (:func:`aisys.registry.champion.is_recorded_champion`), which the gate's promotions, ``aisys rollback`` and
    every registration with ``alias=champion`` write before they move the alias. A version that the alias reached
    any other way (the MLflow UI, ``MlflowClient.set_registered_model_alias``) raises PermissionError: a starting
    replica fails; the alias follower keeps the current model, logs and counts it. ``version`` is the version the
    caller resolved (the follower's), else the alias is read. Checked before the download: a refusal costs two
    registry reads, not a model load. Only the champion is gated: the challenger is the canary's experiment.
    """
    if not cfg.serve.require_recorded_promotion or gated_alias(cfg, alias, model_uri) is None:
        return
    from aisys.registry.champion import champion_state, is_recorded_champion

    for attempt in range(RECORDED_CHECK_TRIES):
        current, history = await asyncio.to_thread(champion_state, cfg)
        if current is None and version is None:
            return  # no champion at all: the load that follows says so (LookupError naming the alias)
        candidate = current if version is None else str(version)
        if is_recorded_champion(candidate, history):
            return
        if attempt + 1 < RECORDED_CHECK_TRIES:
            await asyncio.sleep(RECORDED_CHECK_WAIT_S)
    raise PermissionError(unrecorded_champion_message(cfg, candidate, history))


def unrecorded_champion_message(cfg: AppConfig, version: str | None, history: list[str]) -> str:
    """Why a champion is refused, and the command that fixes it (one line)."""
    name, alias = cfg.registry.model_name, cfg.registry.champion_alias
    head = (f"version {version} of {name!r} holds alias {alias!r} but was not made champion by aisys "
            "(registered-model tag aisys.champion_history")
    if history:
        fix = (f" ends with version {history[-1]}): the alias was moved by hand, so it is not served. "
               f"`aisys rollback` points it back at version {history[-1]}; to serve version {version}, gate it "
               f"after that with `aisys promote --version {version}`")
    else:
        fix = (" is empty: a registry from before this rule, or an alias set by hand). Delete the alias and run "
               f"`aisys promote --version {version}`")
    return head + fix + "; or set serve.require_recorded_promotion: false"


async def load_served_model(cfg: AppConfig, store: SessionStore, alias: str | None, version: str | None = None,
                            model_uri: str | None = None) -> ServedModel:
    """Download a registered version, seed the store from its snapshot, build its recommender.

    A champion whose promotion the gate did not record is refused first (``serve.require_recorded_promotion``).
    """
    from aisys.registry.mlflow_registry import load_bundle

    await check_promotion_recorded(cfg, alias, version, model_uri)

    bundle, info = await asyncio.to_thread(load_bundle, cfg, alias, version, model_uri)
    info["alias"] = alias or info.get("alias")
    await seed_sessions(cfg, store, bundle, bundle.lineage.get("snapshot_id") or info.get("snapshot_id"))
    recommender = await asyncio.to_thread(
        lambda: Recommender(bundle, torch_threads=cfg.train.torch_threads, **retrieval_options(cfg.online))
    )
    model = ModelOut.describe(bundle, info, default_name=cfg.registry.model_name)
    logger.info("loaded %s version %s (alias %s)", model.name, model.version, alias)
    return ServedModel(recommender=recommender, info=model)


async def resolve_alias(cfg: AppConfig, alias: str) -> str | None:
    """The version ``alias`` points at, or ``None`` when the alias does not exist."""
    from aisys.registry.mlflow_registry import alias_version

    try:
        return await asyncio.to_thread(alias_version, cfg, alias)
    except LookupError:
        return None


def make_gateway(cfg: AppConfig):
    """``aisys.gateway.Gateway.from_config(cfg)``; any failure propagates and the replica does not start.

    There is deliberately no fallback: an app without its gateway would serve
    every route, admin ones included, to anyone (fail closed, issue 17).
    """
    from aisys.gateway import Gateway

    return Gateway.from_config(cfg)


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class RecommenderService:
    """Ray Serve replica serving the aisys HTTP API.

    ``config`` is ``AppConfig.model_dump()``: a plain dict travels to replicas
    and in Serve YAML ``args``; it is validated again here.
    """

    async def __init__(self, config: dict[str, Any]) -> None:
        cfg = self._cfg = config_from_dict(config, "RecommenderService config")
        self._scoring = 0  # requests being scored now (see `score`)
        store = open_session_store(cfg)
        champion = await load_served_model(cfg, store, None if cfg.serve.model_uri else cfg.registry.champion_alias,
                                           model_uri=cfg.serve.model_uri)
        challenger = None
        challenger_version = await resolve_alias(cfg, cfg.online.challenger_alias)
        if challenger_version is not None:
            challenger = await load_served_model(cfg, store, cfg.online.challenger_alias, challenger_version)
        self.telemetry = ServingTelemetry.for_replica(cfg)
        self.service = OnlineService(
            store=store,
            event_log=open_event_log(cfg),  # paths.collector_uri: the host's folder or object storage
            inventory=open_inventory(cfg),
            online=cfg.online,
            champion=champion,
            challenger=challenger,
            scorer=self.score,
            telemetry=self.telemetry,
            catalogue=lambda: getattr(self, "catalogue", None),  # events take their attributes from it
        )
        aliases = {CHALLENGER: cfg.online.challenger_alias}
        if not cfg.serve.model_uri:  # a pinned version is not followed
            aliases[CHAMPION] = cfg.registry.champion_alias
        self.follower = AliasFollower(
            self.service,
            aliases=aliases,
            resolve=lambda alias: resolve_alias(cfg, alias),
            load=lambda alias, version: load_served_model(cfg, store, alias, version),
            every_s=cfg.online.follow_alias_every_s,
            after_swap=freeze_long_lived_heap if cfg.serve.freeze_heap else None,  # the new model, out of them too
        )
        self.follower.start()
        self.catalogue = await asyncio.to_thread(load_catalogue, cfg, champion.info.snapshot_id)
        prime = getattr(store, "prime", None)
        if callable(prime):  # the replica-local session copy: take its warm users now, not on the first request
            await prime()

    def __serve_build_asgi_app__(self):
        """Called by Serve after ``__init__``: the routes bound to this replica's service, and the pages."""
        cfg = self._cfg
        gateway = make_gateway(cfg)  # raises rather than serve an unguarded app
        gateway.listeners.append(self.telemetry.rate_limit_listener(gateway_key_tier(gateway)))
        if hasattr(gateway.limiter, "on_degraded"):  # the shared limiter: count requests limited without it
            gateway.limiter.on_degraded = self.telemetry.rate_limiter_degraded
        app = build_fastapi_app(self.service, default_k=cfg.serve.default_k, max_k=cfg.serve.max_k, gateway=gateway,
                                freeze_heap=cfg.serve.freeze_heap)

        async def latest_report():
            return latest_report_path(await monitor_status(cfg))

        install_storefront(
            app,
            catalogue=lambda: self.catalogue,
            storefront_key=lambda: None,  # the page embeds no key: it gets a shopper session
            guard=gateway.require,
            overview=lambda: overview(cfg, self.service),
            latest_report=latest_report,
            recommend=self.service.recommend,  # the shelf route (aisys.storefront.shelf) filters its answer
        )
        install_request_metrics(app)  # last: outermost, so it sees every answer, refusals included
        return app

    def counters(self) -> dict[str, Any]:
        """This replica's serving counters (for a metrics exporter or a handle call)."""
        return self.service.counters.snapshot()

    def telemetry_stats(self) -> dict[str, Any]:
        """This replica's id (the ``replica`` label of its metrics), its monitor feed's and session copy's counters."""
        store_stats = getattr(self.service.store, "stats", None)
        sessions = {"session_copy": store_stats()} if callable(store_stats) else {}
        return {"replica": serve.get_replica_context().replica_tag, **self.telemetry.stats(), **sessions}

    def __del__(self) -> None:
        # Serve calls this when it stops the replica: send what is still buffered.
        telemetry = getattr(self, "telemetry", None)
        if telemetry is not None:
            telemetry.close()
        stop_sync = getattr(getattr(getattr(self, "service", None), "store", None), "stop", None)
        if callable(stop_sync):  # the replica-local session copy's background sync (aisys.serving.session_cache)
            stop_sync()

    async def score(self, served: ServedModel, request: ScoreRequest) -> Recommendation:
        """One request's answer, scored together with whatever else is in flight.

        A request alone in the replica is scored at once: a batch would only wait
        ``batch_wait_timeout_s`` for company that is not coming (the 5 ms wait was
        most of the measured median overhead over the bare handler at 1 client).
        """
        self._scoring += 1
        try:
            if self._scoring == 1:
                recs = await asyncio.to_thread(served.recommender.recommend_many, [request])
                return recs[0]
            return await self.score_batched((served, request))
        finally:
            self._scoring -= 1

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S)
    async def score_batched(self, batch: list[tuple[ServedModel, ScoreRequest]]) -> list[Recommendation]:
        """Score a batch in one forward pass per model version (a swap or canary may mix versions)."""
        groups: dict[int, list[int]] = defaultdict(list)
        for n, (served, _) in enumerate(batch):
            groups[id(served)].append(n)
        answers: list[Recommendation | None] = [None] * len(batch)
        for positions in groups.values():
            served = batch[positions[0]][0]
            recs = await asyncio.to_thread(served.recommender.recommend_many, [batch[n][1] for n in positions])
            for n, rec in zip(positions, recs):
                answers[n] = rec
        return answers  # type: ignore[return-value]

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live-tune batching: ``{max_batch_size: int, batch_wait_timeout_s: float}``."""
        unknown = set(user_config) - {"max_batch_size", "batch_wait_timeout_s"}
        if unknown:
            raise ValueError(f"unknown user_config key(s) {sorted(unknown)}; "
                             "allowed: max_batch_size, batch_wait_timeout_s")
        if "max_batch_size" in user_config:
            self.score_batched.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self.score_batched.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
