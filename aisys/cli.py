"""The `aisys` command: one verb per stage.

Every verb takes ``--config PATH`` and repeatable ``--set section.key=value``
overrides, builds one :class:`~aisys.config.AppConfig` and hands it to the
stage. Heavy imports (Ray, torch, MLflow) happen inside the verbs, so
``aisys --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from aisys.config import AppConfig, ConfigError, load_config

EVALUATE_MODELS = (
    "sasrec", "pop", "itemknn", "ease", "bpr", "recentpop", "ease-recency", "slit", "sasrec+ease",
    "sasrec+ease+slit+recentpop", "sasrec+ctx-blend", "sasrec+ctx-blend+title",
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="YAML config (default: configs/local.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.epochs=5 (repeatable)",
    )


def _console():
    from rich.console import Console

    return Console()


# --------------------------------------------------------------------------- verbs


def cmd_config(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Print the effective configuration."""
    import yaml

    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return 0


def cmd_data(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Generate (simulator) or fetch (MovieLens) events and write them as a raw event file."""
    from aisys.pipeline import generate_raw_events

    console = _console()
    with console.status(f"generating events from {cfg.data.source} ..."):
        stats = generate_raw_events(
            cfg,
            out=args.out,
            bad_share=args.bad_share,
            duplicate_share=args.duplicate_share,
        )
    console.print(
        f"wrote [bold]{stats.rows:,}[/] rows to {stats.path} "
        f"({stats.bad_rows:,} deliberately broken, {stats.duplicate_rows:,} duplicated)"
    )
    return 0


def cmd_ingest(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Validate raw event files on Ray Data and write a new lake snapshot."""
    from aisys.pipeline import ingest

    paths = [str(p) for p in args.paths] or _default_raw_files(cfg)
    missing = [p for p in paths if "://" not in p and not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"no such event file: {', '.join(missing)}")
    manifest = ingest(cfg, paths, source=args.source)
    _print_manifest(manifest)
    return 0


def cmd_snapshots(cfg: AppConfig, args: argparse.Namespace) -> int:
    """List the lake's snapshots with their counts."""
    from rich.table import Table

    from aisys.data.lake import Lake

    table = Table("snapshot", "parent", "source", "input", "clean", "quarantined", "dupes", "total rows")
    for m in Lake(cfg.paths.lake_uri).list_snapshots():
        c = m.counts
        dupes = c.get("duplicates_in_batch", 0) + c.get("duplicates_in_lake", 0)
        table.add_row(
            m.snapshot_id, m.parent_id or "-", m.source, *(f"{c.get(k, 0):,}" for k in ("input", "clean", "quarantined")),
            f"{dupes:,}", f"{c.get('total_rows', 0):,}",
        )
    _console().print(table)
    return 0


def cmd_train(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Train on a lake snapshot with Ray Train, evaluate against popularity, register the model."""
    from aisys.pipeline import train_from_lake
    from aisys.runtime import init_ray

    init_ray(cfg)
    outcome = train_from_lake(cfg, snapshot_id=args.snapshot)
    _print_training(outcome)
    return 0


def cmd_serve(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Start the Ray Serve application with the champion model (blocks until Ctrl-C)."""
    import time

    from aisys.runtime import init_ray
    from aisys.serving.app import start_serving, stop_serving

    console = _console()
    if cfg.gateway.auth:
        from aisys.gateway.keys import dev_keys_path, ensure_dev_keys

        if ensure_dev_keys(cfg):
            console.print(f"created local dev API keys (admin + storefront) in {dev_keys_path(cfg)}")
    init_ray(cfg)
    url = start_serving(cfg)
    console.print(f"serving on [bold]{url}[/] (Ctrl-C to stop): shop {url}/shop, operator view {url}/ops, "
                  f"API docs {url}/docs")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop_serving(cfg)
    return 0


def cmd_retrain(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Retrain on the latest snapshot (or --snapshot), gate against the champion, promote if it passes."""
    from aisys.loop.retrain import retrain
    from aisys.runtime import init_ray

    init_ray(cfg)
    outcome = retrain(cfg, snapshot_id=args.snapshot, reason=args.reason or "manual retrain", trigger="manual")
    console = _console()
    for key, value in outcome.to_dict().items():
        console.print(f"{key}: {value}")
    return 0 if outcome.promoted else 3


def cmd_evaluate(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Evaluate a model on MovieLens-100K under the offline protocol and export its top-100 lists."""
    from rich.table import Table

    from aisys.evaluation.runner import evaluate_model, load_movielens_interactions, ml100k_config, write_export

    if args.dataset != "ml-100k":
        raise ValueError(f"--dataset {args.dataset!r} is not supported; use ml-100k")
    # The tuned ML-100K settings sit beneath the user's own --set overrides.
    cfg = ml100k_config(args.config, args.overrides, args.split)
    console = _console()
    data, _ = load_movielens_interactions(cfg)
    with console.status(f"evaluating {args.model} on the {args.split} split ..."):
        result = evaluate_model(args.model, data, args.split, cfg, seed=args.seed, log=console.log)
    path = write_export(result, data.item_ids, args.export)

    columns = ("hr@10", "ndcg@10", "mrr@10", "coverage@10", "popularity@10", "n_users")
    table = Table("task", *(c.upper() if "@" in c else c for c in columns),
                  title=f"{args.model} on ml-100k ({args.split} split, seed {args.seed})")
    for task, metrics in (("valid", result.valid_metrics), ("test", result.test_metrics)):
        table.add_row(task, *(f"{metrics.get(c, float('nan')):.4f}" if c != "n_users" else f"{metrics[c]:.0f}"
                              for c in columns))
    console.print(table)
    console.print(f"settings {result.settings}")
    console.print(f"refit {result.train_seconds:.1f}s (tuning {result.tune_seconds:.1f}s); top-100 lists -> {path}")
    return 0


def cmd_demo(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Run the whole loop end to end and print a summary."""
    from aisys.demo import run_demo

    summary = run_demo(cfg, console=_console())
    return 0 if summary.get("ok") else 1


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
    _console().print(table)


def _print_training(outcome) -> None:
    from rich.table import Table

    table = Table("model", "HR@10", "NDCG@10", "MRR@10", title="test metrics (leave-last-one-out)")
    for name, metrics in (("sasrec", outcome.metrics), ("popularity", outcome.baseline_metrics)):
        table.add_row(name, *(f"{metrics.get(k, float('nan')):.4f}" for k in ("hr@10", "ndcg@10", "mrr@10")))
    console = _console()
    console.print(table)
    console.print(f"registered [bold]{outcome.model_name}[/] version {outcome.model_version} (run {outcome.run_id})")


# --------------------------------------------------------------------------- parser

VERBS: dict[str, tuple[Callable[[AppConfig, argparse.Namespace], int], str]] = {
    "config": (cmd_config, "print the effective configuration"),
    "data": (cmd_data, "generate or fetch events and write a raw event file"),
    "ingest": (cmd_ingest, "validate raw event files on Ray Data into a new lake snapshot"),
    "snapshots": (cmd_snapshots, "list lake snapshots"),
    "train": (cmd_train, "train on a lake snapshot (Ray Train), evaluate, register in MLflow"),
    "serve": (cmd_serve, "serve the champion model over HTTP (Ray Serve)"),
    "evaluate": (cmd_evaluate, "evaluate a model on MovieLens-100K (offline protocol) and export top-100 lists"),
    "retrain": (cmd_retrain, "retrain, gate against the champion, and promote if the gate passes"),
    "demo": (cmd_demo, "run everything end to end on the embedded defaults"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aisys", description="A real-time recommendation engine on Ray.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name, (func, help_text) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=(func.__doc__ or help_text).strip())
        _common(p)
        p.set_defaults(func=func)
        if name == "data":
            p.add_argument("--out", default=None, help="output file (default: <data.raw_dir>/events.<raw_format>)")
            p.add_argument("--bad-share", type=float, default=0.0, help="share of deliberately broken rows")
            p.add_argument("--duplicate-share", type=float, default=0.0, help="share of duplicated rows")
        elif name == "ingest":
            p.add_argument("paths", nargs="*", help="event files (JSONL, CSV, Parquet); default: data.raw_dir/*")
            p.add_argument("--source", default=None, help="source name recorded in the manifest")
        elif name == "evaluate":
            p.add_argument("--dataset", default="ml-100k", choices=["ml-100k"], help="the dataset")
            p.add_argument("--split", default="loo", choices=["loo", "temporal"], help="leave-last-one-out or temporal")
            # The names of aisys.evaluation.runner.MODEL_NAMES, spelled out so that building the parser does not
            # import torch (tests/unit/test_cli.py checks the two lists agree).
            p.add_argument("--model", default="sasrec", choices=EVALUATE_MODELS, help="the model to fit and score")
            p.add_argument("--export", required=True, type=Path, help="Parquet file for the test top-100 lists")
            p.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation and sampling")
        elif name in ("train", "retrain"):
            p.add_argument("--snapshot", default=None, help="lake snapshot id (default: latest)")
            if name == "retrain":
                p.add_argument("--reason", default=None, help="why (recorded in MLflow)")
    from aisys.gateway.cli_verbs import register as register_keys
    from aisys.registry.cli_verbs import register as register_registry

    register_registry(sub, _common)  # tune, promote, rollback
    register_keys(sub, _common)  # keys create|list|revoke
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        return args.func(cfg, args)
    except ConfigError as err:
        print(f"aisys: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"aisys {args.verb}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
