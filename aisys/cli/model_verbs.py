"""CLI verbs for the sweep, the promotion gate and rollback: ``aisys tune | promote | rollback``.

``aisys.cli`` wires them with :func:`register`. Heavy imports (Ray, torch, MLflow) happen inside the verbs.
Exit codes (the whole table: :mod:`aisys.cli.errors`): 0 done (for ``promote``: promoted), 3 the gate refused
(so scripts and CI can branch on it), 4 nothing to promote or roll back, 6 another promotion holds the lock.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from typing import Callable, Iterator

from aisys.config import AppConfig

EXIT_REFUSED = 3  # aisys.cli.errors.EXIT_REFUSED (LookupError -> 4, LockTimeout -> 6 are mapped there)


def cmd_tune(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Ray Tune sweep (ASHA) over SASRec settings on a lake snapshot; register the best as challenger."""
    from aisys.cli.console import err, is_verbose, quiet_registry, start_ray
    from aisys.progress import PhasedProgress
    from aisys.tuning.sweep import run_sweep

    quiet_registry(args)
    total = cfg.tune.num_samples
    metric = f"valid_{cfg.tune.metric}"
    best: dict[str, float] = {}
    with PhasedProgress(err(), "aisys tune") as progress:
        progress.step("starting Ray")
        start_ray(cfg, args)
        progress.count("trials done", 0, total, f"{total} trials, {cfg.tune.max_concurrent} at a time")

        def on_trial(event: dict) -> None:
            score = event.get(metric)
            if isinstance(score, float) and score > best.get("score", float("-inf")):
                best.update(score=score, trial=event["trial_id"])
            where = f"trial {event['trial_id']} epoch {event['epoch']}" if event["event"] == "result" else (
                f"trial {event['trial_id']} {'ended' if event['event'] == 'complete' else 'failed'}")
            lead = f"; best {metric} {best['score']:.4f} ({best['trial']})" if best else ""
            progress.count("trials done", event["finished"], total, where + lead)

        # Tune prints its experiment table to stdout even at verbose=0: quiet, that goes nowhere (results follow).
        with contextlib.nullcontext() if is_verbose(args) else _stdout_to_devnull():
            outcome = run_sweep(cfg, snapshot_id=args.snapshot, verbose=1 if is_verbose(args) else 0,
                                on_trial=on_trial)
        progress.done()
    _print_sweep(outcome)
    return 0


@contextlib.contextmanager
def _stdout_to_devnull() -> Iterator[None]:
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def cmd_promote(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Gate a registered version (default: the challenger) against the champion; promote it if it passes."""
    from aisys.cli.console import err, quiet_registry
    from aisys.progress import PhasedProgress
    from aisys.registry.promotion import promote

    quiet_registry(args)
    with PhasedProgress(err(), "aisys promote") as progress:
        progress.step("evaluating the candidate and the champion on the snapshot's holdout")
        outcome = promote(cfg, version=args.version, snapshot_id=args.snapshot)
        progress.done()
    _print_decision(outcome)
    return 0 if outcome.promoted else EXIT_REFUSED


def cmd_rollback(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Make the previous champion current again."""
    from aisys.cli.console import quiet_registry
    from aisys.registry.promotion import rollback

    quiet_registry(args)
    from_version, to_version = rollback(cfg)
    print(f"{cfg.registry.model_name}: {cfg.registry.champion_alias!r} rolled back from version "
          f"{from_version} to version {to_version}")
    return 0


VERBS: dict[str, tuple[Callable[[AppConfig, argparse.Namespace], int], str]] = {
    "tune": (cmd_tune, "Ray Tune sweep over the model's settings; the best is registered as challenger"),
    "promote": (cmd_promote, "gate a version against the champion on the same holdout; promote if it passes"),
    "rollback": (cmd_rollback, "make the previous champion current again"),
}


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``tune``, ``promote`` and ``rollback`` to ``sub``; ``common`` adds ``--config``/``--set``."""
    for name, (func, help_text) in VERBS.items():
        parser = sub.add_parser(name, help=help_text, description=(func.__doc__ or help_text).strip())
        common(parser)
        parser.set_defaults(func=func)
        if name in ("tune", "promote"):
            parser.add_argument("--snapshot", default=None, help="lake snapshot id (default: latest)")
        if name == "promote":
            parser.add_argument(
                "--version", default=None, help="candidate model version (default: the challenger alias)"
            )


def _print_sweep(outcome) -> None:
    from rich.table import Table

    from aisys.cli.console import out

    table = Table("trial", "status", "epochs", "best valid", *outcome.best_config, title="sweep (ASHA)")
    metric_key = next((k for k in (outcome.trials[0] if outcome.trials else {}) if k.startswith("best_valid_")), "")
    for trial in sorted(outcome.trials, key=lambda t: -t.get(metric_key, float("-inf"))):
        table.add_row(
            trial["trial_id"], trial["status"], str(trial["epochs"]), f"{trial.get(metric_key, float('nan')):.4f}",
            *(_short(trial["config"].get(k)) for k in outcome.best_config),
        )
    console = out()
    console.print(table)
    console.print(
        f"best: {json.dumps({k: _short(v) for k, v in outcome.best_config.items()})}\n"
        f"test metrics: {json.dumps({k: round(v, 4) for k, v in outcome.best_metrics.items()})}\n"
        f"registered version {outcome.model_version} as challenger; sweep run {outcome.parent_run_id}; "
        f"{outcome.wall_s:.0f} s"
    )


def _print_decision(outcome) -> None:
    from aisys.cli.console import out

    console = out()
    verdict = "[bold green]PROMOTED[/]" if outcome.promoted else "[bold red]REFUSED[/]"
    console.print(
        f"candidate version {outcome.candidate_version} vs champion version {outcome.champion_version or '(none)'} "
        f"on holdout {outcome.holdout_id}: {verdict}"
    )
    print_checks(outcome, console)
    for reason in outcome.decision.reasons:
        console.print(f"- {reason}")
    console.print(f"decision logged in MLflow run {outcome.run_id}")


def print_checks(outcome, console) -> None:
    """The gate's checks of a :class:`~aisys.registry.promotion.PromotionOutcome` as a table (none: nothing)."""
    from rich.table import Table

    if outcome.decision.checks:
        table = Table("check", "ok", "candidate", "champion", "threshold")
        for check in outcome.decision.checks:
            table.add_row(check.name, "yes" if check.passed else "[red]no[/]",
                          *(_short(v) for v in (check.candidate, check.champion, check.threshold)))
        console.print(table)


def _short(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
