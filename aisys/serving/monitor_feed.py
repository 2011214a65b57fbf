"""The drift monitor's live feed from a serving replica: a buffering forwarder and the Ray client it sends with.

- :class:`MonitorForwarder` buffers in the replica and hands batches to the
  monitor in a background thread (every :data:`FLUSH_EVERY_ITEMS` items or
  :data:`FLUSH_EVERY_S` seconds), oldest first and in arrival order, so a served
  list always reaches the monitor before the events that judge it. When the
  buffer is full (the monitor is slow or gone) new items are dropped and
  counted, never waited for.
- :class:`RayMonitorClient` sends with fire-and-forget ``.remote()`` calls to the
  workspace's :class:`~aisys.monitoring.monitor_actor.DriftMonitor` and stops
  sending while :data:`MAX_IN_FLIGHT` calls are still queued at the actor.

:class:`aisys.serving.telemetry.ServingTelemetry` owns one forwarder per replica.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Protocol

if TYPE_CHECKING:
    from aisys.config import AppConfig

logger = logging.getLogger(__name__)

FLUSH_EVERY_ITEMS = 100  # a batch this big is sent at once ...
FLUSH_EVERY_S = 1.0  # ... else whatever is buffered goes after this long
MAX_BUFFERED = 10_000  # items held while the monitor lags; newer ones are dropped and counted
MAX_IN_FLIGHT = 8  # monitor calls not yet finished before the forwarder holds back

Kind = Literal["events", "lists"]


# --- the monitor feed ------------------------------------------------------------------------


class MonitorClient(Protocol):
    """Where the forwarder hands its batches (the monitor actor, or a fake in tests)."""

    def ready(self) -> bool:
        """Whether a batch may be sent now (False: hold it, e.g. too many calls in flight)."""
        ...

    def send(self, kind: Kind, batch: list[dict[str, Any]]) -> None:
        """Hand over one batch without waiting for it to be processed."""
        ...


def _runs(items: Iterable[tuple[Kind, dict[str, Any]]], max_len: int) -> list[tuple[Kind, list[dict[str, Any]]]]:
    """Consecutive items of one kind, at most ``max_len`` each, in order."""
    runs: list[tuple[Kind, list[dict[str, Any]]]] = []
    for kind, item in items:
        if runs and runs[-1][0] == kind and len(runs[-1][1]) < max_len:
            runs[-1][1].append(item)
        else:
            runs.append((kind, [item]))
    return runs


class MonitorForwarder:
    """Buffers live events and served lists; a background thread sends them in batches.

    :meth:`add_event` and :meth:`add_list` take a lock and append: they never
    block on the monitor and never raise. :meth:`flush` sends what is buffered,
    in arrival order, as runs of one kind of at most ``batch_size`` items;
    while the client is not ready the items stay buffered, and once
    ``max_buffered`` are held new ones are dropped and counted.
    """

    def __init__(
        self,
        client: MonitorClient,
        *,
        batch_size: int = FLUSH_EVERY_ITEMS,
        flush_every_s: float = FLUSH_EVERY_S,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not flush_every_s > 0:
            raise ValueError(f"flush_every_s must be > 0, got {flush_every_s}")
        if max_buffered < batch_size:
            raise ValueError(f"max_buffered ({max_buffered}) must be >= batch_size ({batch_size})")
        self.client = client
        self.batch_size = batch_size
        self.flush_every_s = flush_every_s
        self.max_buffered = max_buffered
        self._buffer: deque[tuple[Kind, dict[str, Any]]] = deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time keeps the order
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent: Counter = Counter()  # kind -> items handed to the client
        self.dropped: Counter = Counter()  # kind -> items dropped (buffer full, or the send failed)
        self.batches = 0
        self.send_errors = 0
        self.held_back = 0  # flushes that found the client not ready

    # --- the request path ------------------------------------------------------------------

    def add_event(self, event: dict[str, Any]) -> bool:
        """Buffer one live event; False when it was dropped (buffer full)."""
        return self._add("events", event)

    def add_list(self, served: dict[str, Any]) -> bool:
        """Buffer one served list; False when it was dropped (buffer full)."""
        return self._add("lists", served)

    def _add(self, kind: Kind, item: dict[str, Any]) -> bool:
        with self._lock:
            if len(self._buffer) >= self.max_buffered:
                self.dropped[kind] += 1
                return False
            self._buffer.append((kind, item))
            full = len(self._buffer) >= self.batch_size
        if full:
            self._wake.set()
        return True

    # --- the background side -----------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Items waiting to be sent."""
        with self._lock:
            return len(self._buffer)

    def flush(self) -> int:
        """Send what is buffered now (see the class docstring); return how many items were handed over."""
        with self._flush_lock:
            with self._lock:
                items = list(self._buffer)
                self._buffer.clear()
            handed = 0
            runs = _runs(items, self.batch_size)
            for n, (kind, batch) in enumerate(runs):
                try:
                    ready = self.client.ready()
                except Exception:
                    logger.warning("the monitor client failed to say whether it is ready", exc_info=True)
                    ready = False
                if not ready:
                    self.held_back += 1
                    self._put_back(runs[n:])
                    break
                try:
                    self.client.send(kind, batch)
                except Exception as err:
                    # A batch that cannot be sent (unpicklable, actor gone) is dropped, not retried forever.
                    self.send_errors += 1
                    self.dropped[kind] += len(batch)
                    logger.warning("forwarding %d %s to the monitor failed: %s: %s",
                                   len(batch), kind, type(err).__name__, err)
                    continue
                self.sent[kind] += len(batch)
                self.batches += 1
                handed += len(batch)
            return handed

    def _put_back(self, runs: list[tuple[Kind, list[dict[str, Any]]]]) -> None:
        """Return unsent runs to the front of the buffer (older than anything added meanwhile)."""
        unsent = [(kind, item) for kind, batch in runs for item in batch]
        with self._lock:
            newer = list(self._buffer)
            keep = unsent + newer
            overflow = len(keep) - self.max_buffered
            if overflow > 0:  # the newest items go, as if they had arrived at a full buffer
                for kind, _ in keep[-overflow:]:
                    self.dropped[kind] += 1
                keep = keep[:-overflow]
            self._buffer.clear()
            self._buffer.extend(keep)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # keep the thread alive whatever happens
                logger.exception("monitor forwarder flush failed")
        self.flush()

    def start(self) -> "MonitorForwarder":
        """Start the background thread (a daemon: it never holds a replica's shutdown)."""
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="aisys-monitor-forwarder", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the thread after a last flush."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            self._wake.set()
            thread.join(timeout_s)

    def stats(self) -> dict[str, Any]:
        """Counters for operators and tests (plain JSON)."""
        return {
            "buffered": self.buffered,
            "sent": dict(self.sent),
            "dropped": dict(self.dropped),
            "batches": self.batches,
            "send_errors": self.send_errors,
            "held_back": self.held_back,
        }


class RayMonitorClient:
    """Sends batches to the drift monitor actor with fire-and-forget ``.remote()`` calls.

    The actor handle comes from ``get_handle`` (by default
    :func:`aisys.monitoring.monitor_actor.get_or_create`), asked for lazily on
    the forwarder's thread and again ``retry_after_s`` after a failure or after
    the actor died. Finished calls are checked without waiting; their errors are
    counted in ``monitor_errors``.
    """

    def __init__(
        self,
        get_handle: Callable[[], Any],
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        retry_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.get_handle = get_handle
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self.clock = clock
        self._handle: Any = None
        self._failed_at: float | None = None
        self._in_flight: list[Any] = []
        self.monitor_errors = 0
        self.last_error: str | None = None

    @classmethod
    def for_config(cls, cfg: "AppConfig") -> "RayMonitorClient":
        """A client for the workspace's monitor actor (created on first use)."""

        def get_handle() -> Any:
            from aisys.monitoring.monitor_actor import get_or_create

            return get_or_create(cfg)

        return cls(get_handle)

    def _actor(self) -> Any:
        if self._handle is None:
            if self._failed_at is not None and self.clock() - self._failed_at < self.retry_after_s:
                return None
            try:
                self._handle = self.get_handle()
                self._failed_at = None
            except Exception as err:
                self._failed_at = self.clock()
                self.last_error = f"{type(err).__name__}: {err}"
                logger.warning("the drift monitor is unreachable (%s); retrying in %.0f s",
                               self.last_error, self.retry_after_s)
        return self._handle

    def _prune(self) -> None:
        if not self._in_flight:
            return
        import ray

        done, self._in_flight = ray.wait(self._in_flight, num_returns=len(self._in_flight), timeout=0)
        for ref in done:
            try:
                ray.get(ref, timeout=0)
            except Exception as err:
                self.monitor_errors += 1
                self.last_error = f"{type(err).__name__}: {err}"
                if isinstance(err, ray.exceptions.RayActorError):  # gone: find or create it again
                    self._handle = None
                    self._failed_at = self.clock()

    def ready(self) -> bool:
        self._prune()
        return self._actor() is not None and len(self._in_flight) < self.max_in_flight

    def send(self, kind: Kind, batch: list[dict[str, Any]]) -> None:
        actor = self._actor()
        if actor is None:
            raise ConnectionError(f"the drift monitor is unreachable: {self.last_error}")
        method = actor.observe_events if kind == "events" else actor.observe_recommendation_lists
        self._in_flight.append(method.remote(batch))

    def stats(self) -> dict[str, Any]:
        return {"in_flight": len(self._in_flight), "monitor_errors": self.monitor_errors,
                "connected": self._handle is not None, "last_error": self.last_error}
