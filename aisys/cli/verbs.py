"""The stage verbs: config, data, ingest, snapshots, train, serve, evaluate, retrain, demo.

Each is ``cmd_NAME(cfg, args) -> exit code``; failures are raised and :func:`aisys.cli.app.main` maps them
(:mod:`aisys.cli.errors`). Results go to stdout, progress to stderr (:mod:`aisys.cli.console`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from aisys.cli.console import err, out, quiet_registry, start_ray
from aisys.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_REFUSED
from aisys.config import AppConfig
from aisys.progress import PhasedProgress, format_metrics

EVALUATE_MODELS = (
    "sasrec", "pop", "itemknn", "ease", "bpr", "recentpop", "ease-recency", "slit", "sasrec+ease",
    "sasrec+ease+slit+recentpop", "sasrec+ctx-blend", "sasrec+ctx-blend+title",
)
EPOCH_KEYS = ("loss", "valid_ndcg@10", "valid_hr@10")
INGEST_PHASES = {"validate": "read + validate", "keys": "dedupe keys", "write": "write", "commit": "commit"}


def cmd_config(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Print the effective configuration."""
    import yaml

    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return EXIT_OK


def cmd_data(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Generate (simulator) or fetch (MovieLens) events and write them as a raw event file."""
    from aisys.pipeline import generate_raw_events

    with PhasedProgress(err(), "aisys data") as progress:
        progress.step(f"generating events from {cfg.data.source}")
        stats = generate_raw_events(
            cfg,
            out=args.out,
            bad_share=args.bad_share,
            duplicate_share=args.duplicate_share,
        )
        progress.done()
    out().print(
        f"wrote [bold]{stats.rows:,}[/] rows to {stats.path} "
        f"({stats.bad_rows:,} deliberately broken, {stats.duplicate_rows:,} duplicated)"
    )
    return EXIT_OK


def cmd_ingest(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Validate raw event files on Ray Data and write a new lake snapshot."""
    from aisys.pipeline import ingest

    paths = [str(p) for p in args.paths] or _default_raw_files(cfg)
    missing = [p for p in paths if "://" not in p and not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"no such event file: {', '.join(missing)}")
    with PhasedProgress(err(), "aisys ingest") as progress:
        progress.step("starting Ray")
        start_ray(cfg, args)
        progress.step(f"reading and validating {len(paths)} file(s) on Ray Data")

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase == "validate":
                return  # announced above; Ray Data reads and validates in one pass with no count to show
            if phase == "commit":
                progress.step("committing the snapshot")
            else:
                progress.count(INGEST_PHASES.get(phase, phase), done, total, "blocks" if phase == "keys" else "tasks")

        manifest = ingest(cfg, paths, source=args.source, on_progress=on_progress)
        progress.done()
    _print_manifest(manifest)
    return EXIT_OK


def cmd_snapshots(cfg: AppConfig, args: argparse.Namespace) -> int:
    """List the lake's snapshots with their counts."""
    from rich.table import Table

    from aisys.data.lake import Lake

    table = Table("snapshot", "parent", "source", "input", "clean", "quarantined", "dupes", "total rows")
    for m in Lake.from_config(cfg.paths).list_snapshots():
        c = m.counts
        dupes = c.get("duplicates_in_batch", 0) + c.get("duplicates_in_lake", 0)
        table.add_row(
            m.snapshot_id, m.parent_id or "-", m.source, *(f"{c.get(k, 0):,}" for k in ("input", "clean", "quarantined")),
            f"{dupes:,}", f"{c.get('total_rows', 0):,}",
        )
    out().print(table)
    return EXIT_OK


TRAIN_STEPS = {
    "train": None,  # the epoch bar
    "choose": "fitting the generators, tuning the blend and choosing the ranking stage on valid",
    "refit": "refitting SASRec on train + valid for the best number of epochs",
    "evaluate": "evaluating the model and popularity on the test split",
    "register": "logging the run and registering the model in MLflow",
    "gate": "gating the new version against the champion on the snapshot's holdout",
}


def train_progress(progress: PhasedProgress, epochs: int) -> tuple[Callable[[dict], None], Callable[[str], None]]:
    """``(on_epoch, on_step)`` callbacks that draw a training run on ``progress``."""

    def on_step(name: str) -> None:
        if name == "train":
            progress.count("epoch", 0, epochs, "starting Ray Train workers")
        else:
            progress.step(TRAIN_STEPS.get(name) or name)

    def on_epoch(row: dict) -> None:
        progress.count("epoch", int(row.get("epoch", 0)) + 1, epochs, format_metrics(row, EPOCH_KEYS))

    return on_epoch, on_step


def cmd_train(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Train on a lake snapshot with Ray Train, register the new version, and gate it against the champion.

    The first model of a workspace (no champion yet) is promoted when its guardrails pass; later ones become
    champion only if they beat it on the same holdout. A refused version stays registered (exit code 3).
    """
    from aisys.pipeline import train_from_lake

    quiet_registry(args)
    with PhasedProgress(err(), "aisys train") as progress:
        progress.step("starting Ray")
        start_ray(cfg, args)
        progress.step("reading the lake snapshot")
        on_epoch, on_step = train_progress(progress, cfg.train.epochs)
        outcome = train_from_lake(cfg, snapshot_id=args.snapshot, on_epoch=on_epoch, on_step=on_step)
        progress.done()
    _print_training(outcome)
    return print_train_verdict(outcome, cfg)


def print_train_verdict(outcome, cfg: AppConfig) -> int:
    """Say what the gate did with a freshly trained version; return the exit code (0 promoted, 3 refused)."""
    console = out()
    gated = outcome.promotion
    version = outcome.model_version
    if gated.promoted and gated.champion_version is None:
        console.print(f"no champion yet: promoted v{version} without a comparison "
                      f"(guardrails pass; gate run {gated.run_id})")
        return EXIT_OK
    if gated.promoted:
        console.print(f"[bold green]promoted[/] v{version} to {cfg.registry.champion_alias!r}: it beats "
                      f"v{gated.champion_version} on holdout {gated.holdout_id} (gate run {gated.run_id})")
        for reason in gated.decision.reasons:
            console.print(f"- {reason}")
        return EXIT_OK
    console.print(f"[bold red]refused[/]: v{version} stays registered; {cfg.registry.champion_alias!r} is still "
                  f"v{gated.champion_version} (gate run {gated.run_id}). Failing checks:")
    for reason in gated.decision.reasons:
        console.print(f"- {reason}")
    console.print(f"every check: aisys promote --version {version} (runs the gate again and prints its table)")
    return EXIT_REFUSED


def cmd_serve(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Start the Ray Serve application with the champion model (blocks until Ctrl-C)."""
    import time

    from aisys.runtime import init_ray
    from aisys.serving.app import start_serving

    console = err()
    if not cfg.serve.model_uri:
        from aisys.registry.mlflow_registry import get_model_info

        quiet_registry(args)
        try:  # replicas would fail to start, over and over, without one: say so now (exit code 4)
            get_model_info(cfg, cfg.registry.champion_alias)
        except LookupError as missing:
            raise LookupError(f"no {cfg.registry.champion_alias!r} model to serve ({missing}): "
                              "run `aisys train` first") from missing
        import asyncio

        from aisys.serving.deployment import check_promotion_recorded

        # Likewise a champion aisys did not record (an alias moved by hand): one line now, exit 1.
        asyncio.run(check_promotion_recorded(cfg, cfg.registry.champion_alias, None))
    if cfg.gateway.auth:
        from aisys.gateway.dev_keys import dev_keys_path, ensure_dev_keys

        if ensure_dev_keys(cfg):
            console.print(f"created local dev API keys (admin + storefront) in {dev_keys_path(cfg)}")
    # A clean stop, and a clean start after an unclean one (aisys/serving/lifecycle.py): what a killed
    # `aisys serve` of this workspace left running is reaped, a taken port is named with the fix, SIGTERM stops
    # like Ctrl-C, and every process this run started is gone when it returns.
    from aisys.serving.lifecycle import ServeRun, clean_up_stale_run, require_free_port, sigterm_as_interrupt

    reaped = clean_up_stale_run(cfg.paths.workspace)
    if reaped:
        console.print(f"stopped {len(reaped)} processes left by an earlier `aisys serve` of this workspace")
    require_free_port(cfg.serve.host, cfg.serve.port)
    sigterm_as_interrupt()
    with ServeRun(cfg.paths.workspace, cfg.serve.port) as run:
        try:
            init_ray(cfg)  # worker logs stay on: replicas' access logs are what `aisys serve` shows
            sigterm_as_interrupt()  # again: ray.init installs its own SIGTERM handler (it aborts the process)
            url = start_serving(cfg)
            out().print(f"serving on [bold]{url}[/] (Ctrl-C to stop): shop {url}/shop, operator view {url}/ops, "
                        f"API docs {url}/docs")
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            console.print("stopping ...")
        finally:
            _stop_everything(cfg, run)
    return EXIT_OK


def _stop_everything(cfg: AppConfig, run) -> None:
    """Serve, then Ray, then whatever Ray left of this run (agents, HAProxy): a second Ctrl-C cannot cut it short."""
    import signal

    import ray

    from aisys.serving.app import stop_serving

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        if ray.is_initialized():
            stop_serving(cfg)
    finally:
        ray.shutdown()
        left = run.reap_leftovers()
        if left:
            err().print(f"stopped {len(left)} Ray processes that outlived ray.shutdown()")


def cmd_retrain(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Retrain on the latest snapshot (or --snapshot), gate against the champion, promote if it passes."""
    from aisys.loop.retrain import retrain

    quiet_registry(args)
    with PhasedProgress(err(), "aisys retrain") as progress:
        progress.step("starting Ray")
        start_ray(cfg, args)
        progress.step("reading the snapshot, training, gating (see MLflow for the runs)")
        outcome = retrain(cfg, snapshot_id=args.snapshot, reason=args.reason or "manual retrain", trigger="manual")
        progress.done()
    console = out()
    for key, value in outcome.to_dict().items():
        console.print(f"{key}: {value}")
    return EXIT_OK if outcome.promoted else EXIT_REFUSED


def cmd_evaluate(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Evaluate on MovieLens-100K under the offline protocol and export the test top-100 lists.

    Without --model: the model that ships, trained as `aisys train` does, its lists from the serving Recommender
    (registers nothing unless --register). With --model NAME: one model of the evaluation runner.
    """
    from aisys.cli.evaluate_verb import evaluate_model_verb, evaluate_shipped_verb

    if args.dataset != "ml-100k":
        raise ValueError(f"--dataset {args.dataset!r} is not supported; use ml-100k")
    if args.model is None:
        return evaluate_shipped_verb(args)
    if args.register:
        raise ValueError("--register applies to the model that ships (no --model): a runner model is never registered")
    return evaluate_model_verb(args)


def cmd_demo(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Run the whole loop end to end and print a summary."""
    from aisys.demo import run_demo

    quiet_registry(args)
    start_ray(cfg, args)
    summary = run_demo(cfg, console=out())
    return EXIT_OK if summary.get("ok") else EXIT_FAILED


# --------------------------------------------------------------------------- output


def _default_raw_files(cfg: AppConfig) -> list[str]:
    raw = Path(cfg.data.raw_dir)
    files = sorted(str(p) for p in raw.glob("*") if p.suffix in {".jsonl", ".json", ".csv", ".parquet"})
    if not files:
        raise FileNotFoundError(f"no event files given and none in {raw}: run `aisys data` first")
    return files


def _print_manifest(manifest) -> None:
    from rich.table import Table

    c = manifest.counts
    table = Table("snapshot", "input", "clean", "quarantined", "duplicates", "written", "total rows", title="ingest")
    dupes = c.get("duplicates_in_batch", 0) + c.get("duplicates_in_lake", 0)
    table.add_row(
        manifest.snapshot_id, *(f"{c.get(k, 0):,}" for k in ("input", "clean", "quarantined")), f"{dupes:,}",
        f"{c.get('written', 0):,}", f"{c.get('total_rows', 0):,}",
    )
    out().print(table)


def _print_training(outcome) -> None:
    from rich.table import Table

    table = Table("model", "HR@10", "NDCG@10", "MRR@10", title="test metrics (leave-last-one-out)")
    for name, metrics in ((outcome.bundle.model_kind, outcome.metrics), ("popularity", outcome.baseline_metrics)):
        table.add_row(name, *(f"{metrics.get(k, float('nan')):.4f}" for k in ("hr@10", "ndcg@10", "mrr@10")))
    console = out()
    console.print(table)
    console.print(f"registered [bold]{outcome.model_name}[/] version {outcome.model_version} (run {outcome.run_id})")


# --------------------------------------------------------------------------- parser

VERBS: dict[str, tuple[Callable[[AppConfig, argparse.Namespace], int], str]] = {
    "config": (cmd_config, "print the effective configuration"),
    "data": (cmd_data, "generate or fetch events and write a raw event file"),
    "ingest": (cmd_ingest, "validate raw event files on Ray Data into a new lake snapshot"),
    "snapshots": (cmd_snapshots, "list lake snapshots"),
    "train": (cmd_train, "train on a lake snapshot (Ray Train), register, gate against the champion"),
    "serve": (cmd_serve, "serve the champion model over HTTP (Ray Serve)"),
    "evaluate": (cmd_evaluate, "evaluate what ships (or --model) on MovieLens-100K and export top-100 lists"),
    "retrain": (cmd_retrain, "retrain, gate against the champion, and promote if the gate passes"),
    "demo": (cmd_demo, "run everything end to end on the embedded defaults"),
}


def add_verb_arguments(name: str, p: argparse.ArgumentParser) -> None:
    """The verb's own flags (``--config``/``--set``/``-v`` are added by the caller)."""
    if name == "data":
        p.add_argument("--out", default=None, help="output file (default: <data.raw_dir>/events.<raw_format>)")
        p.add_argument("--bad-share", type=float, default=0.0, help="share of deliberately broken rows")
        p.add_argument("--duplicate-share", type=float, default=0.0, help="share of duplicated rows")
    elif name == "ingest":
        p.add_argument("paths", nargs="*", help="event files (JSONL, CSV, Parquet); default: data.raw_dir/*")
        p.add_argument("--source", default=None, help="source name recorded in the manifest")
    elif name == "evaluate":
        from aisys.cli.evaluate_verb import add_evaluate_arguments

        # The names of aisys.evaluation.runner.MODEL_NAMES, spelled out so that building the parser does not
        # import torch (tests/unit/test_cli.py checks the two lists agree).
        add_evaluate_arguments(p, EVALUATE_MODELS)
    elif name in ("train", "retrain"):
        p.add_argument("--snapshot", default=None, help="lake snapshot id (default: latest)")
        if name == "retrain":
            p.add_argument("--reason", default=None, help="why (recorded in MLflow)")


__all__ = ["EVALUATE_MODELS", "VERBS", "add_verb_arguments"]
