"""Progress for long verbs: a rich bar on a terminal, plain periodic lines anywhere else.

The stages report through plain callbacks (an epoch's row, a trial's result, an ingest phase); this module
turns them into something a person can watch. On a terminal that is a live bar; when stdout is a file, a pipe
or a CI log, a bar would print nothing useful (or control codes), so a line like

    aisys train: epoch 2/5 (40%) loss 4.2509 valid_ndcg@10 0.4913 [0:00:12]

is printed at the first update, at most every ``every_s`` seconds after that, and at the end. A
:class:`Heartbeat` covers stretches with no natural unit of progress (a refit, the gate): it prints
"still working" every ``every_s`` seconds when no line came for that long.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

# Seconds between plain progress lines when stdout is not a terminal (CI logs stay readable).
PLAIN_EVERY_S = 10.0


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_metrics(row: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """``loss 4.2509 valid_ndcg@10 0.4913`` for the ``keys`` present in ``row`` (floats to 4 places)."""
    parts = []
    for key in keys:
        value = row.get(key)
        if value is None:
            continue
        parts.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    return " ".join(parts)


class StageProgress:
    """One counted task (epochs, trials, blocks): a rich bar on a terminal, else plain lines.

    ``label`` names the task (``epoch``), ``total`` its size (None: unknown). :meth:`update` sets the count and
    a note (the latest metrics). Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        console,
        prefix: str,
        label: str,
        total: int | None,
        every_s: float = PLAIN_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> None:
        self.console, self.prefix, self.label, self.total = console, prefix, label, total
        self.every_s, self.clock = every_s, clock
        self.started = clock() if started is None else started  # the verb's start: one clock for all its lines
        self.done, self.note = 0, ""
        self._last_line: float | None = None
        self._printed_state: tuple[int, str] | None = None
        self._bar = None
        self._task = None
        self.heartbeat: Heartbeat | None = None  # told of every line printed, so it stays quiet meanwhile
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn(f"{prefix}: {label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[note]}"), console=console, transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, note="")

    def update(self, done: int, note: str = "", total: int | None = None) -> None:
        """Set the count to ``done`` (and ``total`` when it becomes known) with a short ``note``."""
        self.done, self.note = done, note
        if total is not None:
            self.total = total
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=self.total, note=note)
            return
        now = self.clock()
        finished = self.total is not None and done >= self.total
        if self._last_line is None or finished or now - self._last_line >= self.every_s:
            self._print_line(now)

    def advance(self, note: str = "") -> None:
        self.update(self.done + 1, note)

    def _print_line(self, now: float) -> None:
        if self._printed_state == (self.done, self.note):
            return
        if self.total:
            count = f"{self.done}/{self.total} ({100 * self.done // self.total}%)"
        else:
            count = str(self.done)
        note = f" {self.note}" if self.note else ""
        self.console.print(f"{self.prefix}: {self.label} {count}{note} [{_clock(now - self.started)}]",
                           highlight=False, markup=False, soft_wrap=True)
        self._last_line, self._printed_state = now, (self.done, self.note)
        if self.heartbeat is not None:
            self.heartbeat.touch()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self._last_line is not None:
            self._print_line(self.clock())  # the final count, unless it was the last line printed

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Heartbeat:
    """While a slow step runs with no counter: a spinner on a terminal, "still working" lines elsewhere.

    ``with Heartbeat(console, "aisys evaluate") as beat: beat.step("refit on test") ...``. Off a terminal a
    line is printed when a step starts and then every ``every_s`` seconds of silence, so a CI log shows that
    the command is alive and what it is doing.
    """

    def __init__(self, console, prefix: str, every_s: float = PLAIN_EVERY_S * 3) -> None:
        self.console, self.prefix, self.every_s = console, prefix, every_s
        self.started = time.monotonic()
        self.what = ""
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = None

    def step(self, what: str) -> None:
        """A new step starts: say so now (plain) or show it by the spinner (terminal)."""
        self.what = what
        if self.console.is_terminal:
            if self._status is None:
                self._status = self.console.status("")
                self._status.start()
            self._status.update(f"{self.prefix}: {what} ...")
        else:
            self._say(what)

    def note(self, text: str) -> None:
        """Print ``text`` as a line (kept on a terminal too, above the spinner); it becomes the current step."""
        self.what = text
        if self._status is not None:
            self._status.update(f"{self.prefix}: {text} ...")
        self._say(text)

    def touch(self) -> None:
        """Something else just printed: the next "still working" line can wait."""
        self._last = time.monotonic()

    def _say(self, text: str) -> None:
        self.console.print(f"{self.prefix}: {text} [{_clock(time.monotonic() - self.started)}]",
                           highlight=False, markup=False, soft_wrap=True)
        self.touch()

    def _beat(self) -> None:
        while not self._stop.wait(1.0):
            if time.monotonic() - self._last >= self.every_s:
                self._say(f"still working: {self.what or 'running'}")

    def __enter__(self) -> "Heartbeat":
        if not self.console.is_terminal:
            self._thread = threading.Thread(target=self._beat, name="aisys-heartbeat", daemon=True)
            self._thread.start()
        return self

    def pause(self) -> None:
        """Stop the spinner (a bar or a table is about to be drawn; the next :meth:`step` restarts it)."""
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __exit__(self, *exc) -> None:
        self.pause()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


class PhasedProgress:
    """A verb's progress as a sequence of steps: uncounted ones get the :class:`Heartbeat`, counted ones a bar.

    ``step("evaluating")`` starts a step with no counter; ``count("epoch", done, total, note)`` shows a counted
    one (a new ``label`` closes the previous bar and opens a new one). Safe to call from a helper thread (the
    training run's epoch feed): one lock orders the display.
    """

    def __init__(self, console, prefix: str, every_s: float = PLAIN_EVERY_S) -> None:
        self.console, self.prefix, self.every_s = console, prefix, every_s
        self.heartbeat = Heartbeat(console, prefix, every_s=every_s * 3)
        self.bar: StageProgress | None = None
        self._lock = threading.RLock()

    def __enter__(self) -> "PhasedProgress":
        self.heartbeat.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._close_bar()
            self.heartbeat.__exit__(*exc)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def step(self, what: str) -> None:
        with self._lock:
            self._close_bar()
            self.heartbeat.step(what)

    def note(self, text: str) -> None:
        """A message worth keeping (a tuning result): printed as a line, and it becomes the current step."""
        with self._lock:
            self._close_bar()
            self.heartbeat.note(text)

    def count(self, label: str, done: int, total: int | None, note: str = "") -> None:
        with self._lock:
            if self.bar is None or self.bar.label != label:
                self._close_bar()
                self.heartbeat.pause()
                self.heartbeat.what = label
                self.bar = StageProgress(self.console, self.prefix, label, total, every_s=self.every_s,
                                         started=self.heartbeat.started)
                self.bar.heartbeat = self.heartbeat
            self.bar.update(done, note, total)

    def done(self) -> None:
        """The last step ended: stop the spinner and bars before results are printed."""
        with self._lock:
            self._close_bar()
            self.heartbeat.pause()
