"""Keep Python's full garbage collections off the request path: a server's start-up heap is frozen.

A replica's heap after start-up (torch, MLflow, pandas, Ray, the model, the catalogue, the warm session copy)
holds a few million objects that live as long as the process. CPython's cyclic collector walks all of them
on every generation-2 collection, with the GIL held: measured on the project's 2-core box, 480-570 ms per full
collection in a server of the shipped champion, during which every request in flight waits. That pause, not
the queue, was the 64-client p99 (docs/serving.md, "Full collections"). :func:`gc.freeze` moves the objects alive
now into a permanent generation the collector no longer walks; later allocations are collected as before, and
the frozen objects are still freed by reference counting when nothing refers to them.
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger(__name__)


def freeze_long_lived_heap() -> dict[str, float]:
    """Collect everything once, then freeze what is left (:func:`gc.freeze`); returns what it did.

    Call it when a server has built what it keeps (its model, catalogue, sessions) and again after a model
    swap: the call first unfreezes, so a swapped-out model held in a reference cycle is collected with the
    rest rather than kept forever. The one collection here pauses the process once (about as long as one
    full collection would have), at start-up or after a swap instead of under load at random.
    """
    started = time.perf_counter()
    gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    done = {"collected": float(collected), "frozen": float(gc.get_freeze_count()),
            "seconds": round(time.perf_counter() - started, 3)}
    logger.info("heap frozen: %(frozen).0f objects kept out of full collections (%(collected).0f collected, "
                "%(seconds).3f s)", done)
    return done
