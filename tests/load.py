"""Background HTTP load for tests that change what is served under traffic (a swap, a promotion).

:class:`VersionLoad` runs ``clients`` threads asking ``GET /recommendations/{user}`` at about ``rps`` in total
and keeps every answer's ``(status, model_version)`` per client, in order: a test can then assert that no request
failed across a swap and that each client saw the old version, then the new one, and never went back.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

import httpx


class VersionLoad:
    """Closed-loop clients recording ``(status, model_version)``; a transport error is recorded as status 0."""

    def __init__(
        self, url: str, key: str, users: Sequence[str], rps: float = 20.0, clients: int = 4, k: int = 10,
        stride: int = 1,
    ) -> None:
        self.url, self.key, self.users, self.period, self.k, self.stride = url, key, list(users), clients / rps, k, stride
        self.results: list[list[tuple[int, str | None]]] = [[] for _ in range(clients)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)]

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers={"X-API-Key": self.key}) as client:
            i = 0
            while not self._stop.is_set():
                started = time.perf_counter()
                user = self.users[(n + self.stride * i) % len(self.users)]
                try:
                    resp = client.get(f"/recommendations/{user}", params={"k": self.k})
                    self.results[n].append((resp.status_code, resp.json().get("model_version")
                                            if resp.status_code == 200 else resp.text[:200]))
                except httpx.HTTPError as err:  # a refused or dropped connection is a failed request too
                    self.results[n].append((0, type(err).__name__))
                i += 1
                time.sleep(max(0.0, self.period - (time.perf_counter() - started)))

    def start(self) -> "VersionLoad":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def __enter__(self) -> "VersionLoad":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def all(self) -> list[tuple[int, str | None]]:
        """Every answer of every client."""
        return [r for res in self.results for r in res]

    def latest_versions(self) -> set:
        """The version each client saw last (a swap is complete when this is only the new one)."""
        return {res[-1][1] for res in self.results if res}
