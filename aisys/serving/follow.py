"""Follow the registry's aliases: load a new version in the background, then swap it in atomically.

Every ``cfg.online.follow_alias_every_s`` a replica asks the registry which
version each alias (``champion``, ``challenger``) points at. When that differs
from what the arm serves, the new version is loaded off the event loop while
the old one keeps answering, and only then handed to
:meth:`aisys.serving.service.OnlineService.set_model`, one reference swap. A
load that fails leaves the old version serving and is retried next period.
An alias that disappears removes the challenger arm; the champion is never
removed (the last good model keeps serving).

Rollback is the same move seen from here: ``aisys rollback`` points
``champion`` back at the previous version, and replicas follow.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Mapping

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
    ) -> None:
        self.service = service
        self.aliases = dict(aliases)
        self.resolve = resolve
        self.load = load
        self.every_s = every_s
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
                    continue
                served = await self.load(alias, version)
                self.service.set_model(arm, served)
                changed.append(arm)
                logger.info("arm %s now serves version %s (alias %r; was %s)",
                            arm, version, alias, current.version if current else None)
            except Exception:
                logger.exception("following alias %r failed; the current model keeps serving", alias)
        return changed

    async def run(self) -> None:
        """Check forever, every ``every_s`` seconds."""
        while True:
            await asyncio.sleep(self.every_s)
            await self.check_once()

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
