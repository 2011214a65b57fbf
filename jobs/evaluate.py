"""Evaluate on MovieLens-100K under the offline protocol (docs/evaluation.md) and export the top-100 lists:
`ray job submit --working-dir . -- python jobs/evaluate.py --config configs/local.yaml --dataset ml-100k
--split loo --export /abs/path/top100.parquet`. The same as `aisys evaluate`:

- without --model, what ships: the default model kind trained as `aisys train` trains it (MovieLens as the source
  beneath the job's --set overrides; --seed sets train.seed), every test user's list from the serving Recommender,
  nothing registered unless --register;
- --model NAME, one of the evaluation runner's models (the baselines), tuned on valid with the ML-100K settings
  beneath the job's --set overrides (--seed default 0).

The data comes from `data.movielens.path` or, when unset, the download cache. The job runs from an uploaded copy of
the repo: give --export as an absolute path. Prints one JSON line: the model, the metrics, timings and the export's
path and rows (with --model also the chosen settings and valid metrics)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from _entry import parse

from aisys.evaluation.runner_settings import MODEL_NAMES, SPLITS

SHIPPED = "shipped"


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="ml-100k", choices=["ml-100k"], help="the dataset")
    parser.add_argument("--split", default="loo", choices=list(SPLITS), help="leave-last-one-out or temporal")
    parser.add_argument("--model", default=None, choices=list(MODEL_NAMES),
                        help="one runner model (a baseline); default: the model that ships, trained as `aisys train` "
                             "does and ranked through the serving Recommender")
    parser.add_argument("--export", required=True, type=Path,
                        help="Parquet file for the test top-100 lists (absolute path)")
    parser.add_argument("--seed", type=int, default=None,
                        help="what ships: train.seed (default the config's); --model: the model's seed (default 0)")
    parser.add_argument("--register", action="store_true",
                        help="what ships only: also log and register the trained model (no alias)")


def _finite(metrics: dict) -> dict:
    # JSON has no NaN: a metric that could not be computed is null.
    return {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in metrics.items()}


def evaluate_shipped_job(args: argparse.Namespace) -> dict[str, Any]:
    """What ships (the path of `aisys evaluate` without --model); the printed JSON line's fields."""
    import pyarrow.parquet as pq

    from aisys.cli.evaluate_verb import load_ml100k, shipped_config
    from aisys.runtime import init_ray
    from aisys.shipped_evaluation import evaluate_shipped, export_lists

    cfg = shipped_config(args)
    events, catalogue = load_ml100k(cfg)
    init_ray(cfg)
    result = evaluate_shipped(cfg, events, catalogue, args.split, register=args.register,
                              on_step=lambda name: print(f"step: {name}", flush=True))
    args.export.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(export_lists(result.lists), args.export)
    return {
        "dataset": args.dataset, "split": args.split, "model": SHIPPED, "kind": result.bundle.model_kind,
        "seed": result.seed, "test": _finite(result.test_metrics),
        "training": _finite(result.training_metrics), "train_seconds": round(result.train_seconds, 3),
        "score_seconds": round(result.score_seconds, 3), "fallbacks": int(sum(result.lists.fallback)),
        "registered": result.registered or None, "export": str(args.export),
        "export_users": len(result.lists.users),
    }


def evaluate_runner_job(args: argparse.Namespace) -> dict[str, Any]:
    """One runner model (``--model``): tuned on valid, refit, scored on test; the printed JSON line's fields."""
    from aisys.evaluation.runner import evaluate_model, load_movielens_interactions, ml100k_config, write_export

    # Rebuilt with the presets beneath the overrides (what `aisys evaluate --model` does).
    cfg = ml100k_config(args.config, args.overrides, args.split)
    seed = 0 if args.seed is None else args.seed
    data, _ = load_movielens_interactions(cfg)
    result = evaluate_model(args.model, data, args.split, cfg, seed=seed, log=lambda m: print(m, flush=True))
    path = write_export(result, data.item_ids, args.export)
    return {
        "dataset": args.dataset, "split": args.split, "model": args.model, "seed": seed,
        "settings": result.settings, "valid": _finite(result.valid_metrics), "test": _finite(result.test_metrics),
        "train_seconds": round(result.train_seconds, 3), "tune_seconds": round(result.tune_seconds, 3),
        "export": str(path), "export_users": len(result.test_task.users),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """What ships without ``--model``, else the named runner model."""
    if args.model is not None and args.register:
        raise SystemExit("--register applies to what ships only (drop --model)")
    return evaluate_shipped_job(args) if args.model is None else evaluate_runner_job(args)


if __name__ == "__main__":
    _, parsed = parse(__doc__, _flags)  # parse() validated the config and overrides once
    print(json.dumps(run(parsed), default=str), flush=True)
