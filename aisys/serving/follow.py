"""Follow the registry's aliases: load a new version in the background, then swap it in atomically.

Every ``cfg.online.follow_alias_every_s`` a replica asks the registry which
version each alias (``champion``, ``challenger``) points at. When that differs
from what the arm serves, the new version is loaded off the event loop while
the old one keeps answering, and only then handed to
:meth:`aisys.serving.service.OnlineService.set_model`, one reference swap. A
load that fails leaves the old version serving and is retried next period.
A champion the registry did not record (moved by hand: ``serve.require_recorded_promotion``) is refused the
same way, logged and counted once per version (``/admin/counters`` ``champion_refusals``,
``aisys_champion_refused_total``).
An alias that disappears removes the challenger arm; the champion is never
removed (the last good model keeps serving).

Rollback is the same move seen from here: ``aisys rollback`` points
``champion`` back at the previous version, and replicas follow.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Awaitable, Callable, Mapping

from aisys.monitoring.metrics import record_champion_refused
from aisys.serving.canary import CHAMPION, Arm
from aisys.serving.service import OnlineService, ServedModel

logger = logging.getLogger(__name__)

ResolveFn = Callable[[str], Awaitable[str | None]]  # alias -> version (None: no such alias)
LoadFn = Callable[[str, str], Awaitable[ServedModel]]  # (alias, version) -> loaded model


class AliasFollower:
    """Polls ``aliases`` (arm -> registry alias) and swaps models into ``service``."""

    def __init__(
        self,
        service: OnlineService,
        *,
        aliases: Mapping[Arm, str],
        resolve: ResolveFn,
        load: LoadFn,
        every_s: float,
        after_swap: Callable[[], object] | None = None,
    ) -> None:
        self.service = service
        self.after_swap = after_swap  # run (in a worker thread) once a check changed an arm
        self.aliases = dict(aliases)
        self.resolve = resolve
        self.load = load
        self.every_s = every_s
        self.refused: dict[str, str] = {}  # alias -> the version last refused as an unrecorded champion
        self._task: asyncio.Task | None = None

    async def check_once(self) -> list[Arm]:
        """Bring every arm up to its alias; return the arms that changed."""
        changed: list[Arm] = []
        for arm, alias in self.aliases.items():
            try:
                version = await self.resolve(alias)
                current = self.service.models.get(arm)
                if version is None:
                    if current is not None and arm != CHAMPION:
                        self.service.set_model(arm, None)
                        changed.append(arm)
                        logger.info("alias %r is gone: arm %s removed", alias, arm)
                    continue
                if current is not None and current.version == version:
                    self.refused.pop(alias, None)  # back on what it serves: a later hand move is news again
                    continue
                served = await self.load(alias, version)
                self.service.set_model(arm, served)
                changed.append(arm)
                logger.info("arm %s now serves version %s (alias %r; was %s)",
                            arm, version, alias, current.version if current else None)
            except PermissionError as refusal:  # not recorded as champion (serve.require_recorded_promotion)
                if self.refused.get(alias) != version:  # log and count each hand move once, not every period
                    self.refused[alias] = version
                    self.service.counters.champion_refusals += 1
                    record_champion_refused(str(version))
                    logger.warning("alias %r moved to version %s, refused; the current model keeps serving: %s",
                                   alias, version, refusal)
            except Exception:
                logger.exception("following alias %r failed; the current model keeps serving", alias)
        return changed

    async def run(self) -> None:
        """Check forever, every ``every_s`` seconds, the first time at a random point of the first period.

        Replicas start together; without the random phase they all asked the registry at the same instant.
        """
        await asyncio.sleep(random.uniform(0, self.every_s))
        while True:
            if await self.check_once() and self.after_swap is not None:
                try:
                    await asyncio.to_thread(self.after_swap)
                except Exception:
                    logger.exception("after-swap hook failed; the new model serves anyway")
            await asyncio.sleep(self.every_s)

    def start(self) -> asyncio.Task | None:
        """Start :meth:`run` on the running loop (not when ``every_s`` is 0); return the task."""
        if self.every_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="aisys-alias-follower")
        return self._task

    def stop(self) -> None:
        """Cancel the background task."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
