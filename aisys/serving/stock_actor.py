"""Stock shared by every replica of a cluster through one named Ray actor (``cfg.online.stock_backend="actor"``).

The one-machine default (:class:`~aisys.serving.rules.JsonFileInventory`) shares stock through a file on the
host's disk, which replicas on another node never see. Here the out-of-stock set lives in one detached actor:

- **On the head node** (the ``node:__internal_head__`` resource): a worker node that dies takes replicas with
  it, never the stock. The set is also kept in ``<lake_uri>/online/stock.json`` (object storage on a cluster),
  so an actor that is restarted, or a new head, starts from the last change.
- **Reads cost nothing on the request path.** Each replica's :class:`ActorInventory` holds the set locally and
  keeps it fresh with a long poll (``wait_for_change``): the actor answers the moment the set changes, so a
  change reaches every replica within one round trip (about a millisecond), with no call per request.
- **Writes go through the actor** (``PUT /admin/stock``), which applies them one at a time, stores the set,
  then wakes the pollers; the replica that wrote sees its change at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Mapping

import ray

from aisys.serving.placement import head_node_resources
from aisys.serving.rules import Inventory, _updated

if TYPE_CHECKING:
    from aisys.config import AppConfig, PathsConfig

logger = logging.getLogger(__name__)

NAMESPACE = "aisys"
LONG_POLL_S = 10.0  # how long the actor holds a poll with no change before answering "unchanged"


def stock_actor_name(cfg: "AppConfig") -> str:
    """``aisys-stock-<hash of the workspace>``: one stock per deployment, as for the session store."""
    return f"aisys-stock-{hashlib.sha256(cfg.paths.workspace.encode()).hexdigest()[:10]}"


def stock_state_uri(cfg: "AppConfig") -> str:
    """Where the actor keeps the set: ``<lake_uri>/online/stock.json``."""
    return f"{cfg.paths.lake_uri.rstrip('/')}/online/stock.json"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class StockActor:
    """The out-of-stock set and its version; ``wait_for_change`` answers when the version moves."""

    def __init__(self, state_uri: str | None = None, paths: "PathsConfig | None" = None) -> None:
        self._state_uri, self._paths = state_uri, paths
        self._gone: frozenset[str] = frozenset(self._load())
        # From the clock, so a restarted actor's versions are newer than any its replicas hold.
        self._version = time.time_ns()
        self._changed = asyncio.Condition()

    def _load(self) -> list[str]:
        if not self._state_uri:
            return []
        from aisys.data.lake import filesystem_for

        fs, path = filesystem_for(self._state_uri, self._paths)
        try:
            with fs.open_input_stream(path) as source:
                return list(json.loads(source.read().decode())["out_of_stock"])
        except FileNotFoundError:
            return []

    def _store(self) -> None:
        if not self._state_uri:
            return
        import pyarrow.fs as pafs

        from aisys.data.lake import filesystem_for

        fs, path = filesystem_for(self._state_uri, self._paths)
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as out:
            out.write(json.dumps({"out_of_stock": sorted(self._gone)}).encode())

    async def snapshot(self) -> tuple[list[str], int]:
        return sorted(self._gone), self._version

    async def set_stock(self, updates: Mapping[str, bool]) -> tuple[list[str], int]:
        async with self._changed:
            gone = _updated(self._gone, updates)
            if gone != self._gone:
                previous, self._gone = self._gone, gone
                try:
                    await asyncio.to_thread(self._store)
                except BaseException:
                    self._gone = previous  # not stored: not applied, and the caller hears why
                    raise
                self._version += 1
                self._changed.notify_all()
            return sorted(self._gone), self._version

    async def wait_for_change(self, known_version: int, timeout_s: float = LONG_POLL_S) -> tuple[list[str], int]:
        """The set once its version differs from ``known_version`` (or after ``timeout_s``, unchanged)."""
        async with self._changed:
            if self._version == known_version:
                try:
                    await asyncio.wait_for(self._changed.wait_for(lambda: self._version != known_version),
                                           timeout_s)
                except asyncio.TimeoutError:
                    pass
            return sorted(self._gone), self._version


def get_or_create_stock_actor(cfg: "AppConfig"):
    """The deployment's stock actor, created on the head node on first use (race-free: ``get_if_exists``)."""
    return StockActor.options(
        name=stock_actor_name(cfg), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        resources=head_node_resources(),  # a worker node's loss must not take the stock with it
    ).remote(stock_state_uri(cfg), cfg.paths)


class ActorInventory(Inventory):
    """An :class:`Inventory` over the stock actor: reads are local, a background long poll keeps them fresh."""

    def __init__(self, handle, poll_timeout_s: float = LONG_POLL_S) -> None:
        self.handle = handle
        self.poll_timeout_s = poll_timeout_s
        gone, version = ray.get(handle.snapshot.remote())
        self._state = (frozenset(gone), version)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._follow, name="stock-long-poll", daemon=True)
        self._poller.start()

    def out_of_stock(self) -> frozenset[str]:
        return self._state[0]

    def set_stock(self, updates: Mapping[str, bool]) -> frozenset[str]:
        gone, version = ray.get(self.handle.set_stock.remote(dict(updates)))
        self._adopt(gone, version)
        return frozenset(gone)

    def _adopt(self, gone: list[str], version: int) -> None:
        with self._lock:  # a slow poll's answer must not undo a newer write's
            if version >= self._state[1]:
                self._state = (frozenset(gone), version)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                gone, version = ray.get(self.handle.wait_for_change.remote(self._state[1], self.poll_timeout_s))
                self._adopt(gone, version)
            except Exception as err:  # noqa: BLE001 - the actor restarting: keep the last set, ask again
                if self._stop.is_set():
                    return
                logger.warning("stock actor unreachable (%s); keeping the last known stock", err)
                time.sleep(0.5)

    def close(self) -> None:
        """Stop following and wait for the poll in flight (it ends within ``poll_timeout_s``): a thread still
        inside ``ray.get`` when the process shuts Ray down can crash the interpreter on exit."""
        self._stop.set()
        if self._poller.is_alive() and self._poller is not threading.current_thread():
            self._poller.join(timeout=self.poll_timeout_s + 5)


def actor_inventory(cfg: "AppConfig") -> ActorInventory:
    """An :class:`Inventory` backed by the deployment's shared stock actor (Ray must be up)."""
    return ActorInventory(get_or_create_stock_actor(cfg))


def drop_stock_actor(cfg: "AppConfig") -> bool:
    """Kill the deployment's stock actor; ``False`` when there was none."""
    from aisys.runtime import kill_named_actor

    return kill_named_actor(stock_actor_name(cfg), NAMESPACE)
