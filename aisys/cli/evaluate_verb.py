"""`aisys evaluate`: the offline protocol on MovieLens-100K, for what ships or for one named model.

Without ``--model`` the default model kind is trained through `aisys train`'s functions and its top-100 lists come
from the serving Recommender (:mod:`aisys.shipped_evaluation`); ``--model NAME`` fits one model of the evaluation
runner (:mod:`aisys.evaluation.runner`, its own tuning grid). Both print valid/test metrics and write the lists.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aisys.cli.console import err, out, quiet_registry, start_ray
from aisys.cli.errors import EXIT_OK
from aisys.config import AppConfig
from aisys.progress import PhasedProgress

COLUMNS = ("hr@10", "ndcg@10", "mrr@10", "coverage@10", "popularity@10", "n_users")


def _row(metrics: dict[str, float]) -> list[str]:
    return [f"{metrics.get(c, float('nan')):.4f}" if c != "n_users" else f"{metrics.get(c, 0):.0f}" for c in COLUMNS]


def _table(title: str):
    from rich.table import Table

    return Table("task", *(c.upper() if "@" in c else c for c in COLUMNS), title=title)


def shipped_config(args: argparse.Namespace) -> AppConfig:
    """The user's config with MovieLens as the source (titles, the lake's product table) beneath their --set
    overrides, and ``--seed`` as ``train.seed`` when given."""
    from aisys.config import load_config

    seed = [] if args.seed is None else [f"train.seed={args.seed}"]
    return load_config(args.config, ["data.source=movielens", *args.overrides, *seed])


def load_ml100k(cfg: AppConfig):
    """MovieLens-100K's events and its catalogue (every id of the item file)."""
    from aisys.data.movielens import load_movielens, movielens_folder, read_item_ids

    folder = movielens_folder(cfg.data.movielens, cfg.paths.cache_dir)
    events = load_movielens(cfg.data.movielens.model_copy(update={"path": str(folder)}), cfg.paths.cache_dir)
    return events, read_item_ids(folder)


def evaluate_shipped_verb(args: argparse.Namespace) -> int:
    """Train the default kind as `aisys train` does, rank every test user through the serving Recommender."""
    import pyarrow.parquet as pq

    from aisys.cli.verbs import train_progress
    from aisys.shipped_evaluation import evaluate_shipped, export_lists

    cfg = shipped_config(args)
    if args.register:
        quiet_registry(args)
    with PhasedProgress(err(), "aisys evaluate") as progress:
        progress.step("loading MovieLens-100K")
        events, catalogue = load_ml100k(cfg)
        progress.step("starting Ray")
        start_ray(cfg, args)
        on_epoch, on_step = train_progress(progress, cfg.train.epochs)

        def step(name: str) -> None:
            if name == "serve":
                progress.step("ranking every test user through the serving Recommender")
            else:
                on_step(name)

        result = evaluate_shipped(cfg, events, catalogue, args.split, register=args.register,
                                  on_step=step, on_epoch=on_epoch)
        progress.step("writing the top-100 lists")
        args.export.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(export_lists(result.lists), args.export)
        progress.done()

    table = _table(f"{result.bundle.model_kind} (what ships) on ml-100k ({args.split} split, "
                   f"train.seed {result.seed}), lists from the serving Recommender")
    table.add_row("test", *_row(result.test_metrics))
    console = out()
    console.print(table)
    gains = {k[len("valid_gain_"):]: v for k, v in result.training_metrics.items() if k.startswith("valid_gain_")}
    if gains:
        console.print("valid NDCG@10 each stage adds (training's blend tuning): "
                      + ", ".join(f"{name} {gain:+.4f}" for name, gain in sorted(gains.items(), key=lambda x: -x[1])))
    own = result.training_metrics.get("test_ndcg@10")
    if own is not None:
        # Under loo the same users and targets: a difference would mean the served path differs from training's.
        console.print(f"training's own test NDCG@10 on its leave-one-out split of what it saw (its scorer): "
                      f"{own:.4f}")
    fallbacks = sum(result.lists.fallback)
    console.print(f"trained {result.train_seconds:.1f}s, ranked {len(result.lists.users)} users in "
                  f"{result.score_seconds:.1f}s ({fallbacks} popularity fallbacks); top-100 lists -> {args.export}")
    if result.registered:
        console.print(f"registered {result.registered['name']} version {result.registered['version']} "
                      f"(run {result.registered['run_id']}, no alias)")
    else:
        console.print("registered nothing (--register to log and register the model)")
    return EXIT_OK


def evaluate_model_verb(args: argparse.Namespace) -> int:
    """Evaluate one runner model (``--model``) on MovieLens-100K under the offline protocol."""
    from aisys.evaluation.runner import evaluate_model, load_movielens_interactions, ml100k_config, write_export

    # The tuned ML-100K settings sit beneath the user's own --set overrides.
    cfg = ml100k_config(args.config, args.overrides, args.split)
    seed = 0 if args.seed is None else args.seed
    with PhasedProgress(err(), "aisys evaluate") as progress:
        progress.step("loading MovieLens-100K")
        data, _ = load_movielens_interactions(cfg)
        progress.step(f"evaluating {args.model} on the {args.split} split")
        # Each tuning message is printed, and a heartbeat line follows a silent refit off a terminal.
        result = evaluate_model(args.model, data, args.split, cfg, seed=seed, log=progress.note)
        progress.step("writing the top-100 lists")
        path = write_export(result, data.item_ids, args.export)
        progress.done()

    table = _table(f"{args.model} on ml-100k ({args.split} split, seed {seed})")
    for task, metrics in (("valid", result.valid_metrics), ("test", result.test_metrics)):
        table.add_row(task, *_row(metrics))
    console = out()
    console.print(table)
    console.print(f"settings {result.settings}")
    console.print(f"refit {result.train_seconds:.1f}s (tuning {result.tune_seconds:.1f}s); top-100 lists -> {path}")
    return EXIT_OK


def add_evaluate_arguments(p: argparse.ArgumentParser, models: tuple[str, ...]) -> None:
    """The flags of `aisys evaluate`."""
    p.add_argument("--dataset", default="ml-100k", choices=["ml-100k"], help="the dataset")
    p.add_argument("--split", default="loo", choices=["loo", "temporal"], help="leave-last-one-out or temporal")
    p.add_argument("--model", default=None, choices=models,
                   help="one runner model to fit and score (default: the model that ships, trained as `aisys "
                        "train` does and ranked through the serving Recommender)")
    p.add_argument("--export", required=True, type=Path, help="Parquet file for the test top-100 lists")
    p.add_argument("--seed", type=int, default=None,
                   help="seed (what ships: train.seed, default the config's; --model: default 0)")
    p.add_argument("--register", action="store_true",
                   help="what ships only: also log and register the trained model (no alias); default off")
