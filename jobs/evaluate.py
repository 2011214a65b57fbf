"""Evaluate one model on MovieLens-100K under the offline protocol (docs/evaluation.md) and export its top-100
lists: `ray job submit --working-dir . -- python jobs/evaluate.py --config configs/local.yaml --dataset ml-100k
--split loo --model ease --export /abs/path/top100.parquet`. The same as `aisys evaluate`: the tuned ML-100K
settings sit beneath the job's own --set overrides. The data comes from `data.movielens.path` or, when unset,
the download cache. The job runs from an uploaded copy of the repo: give --export as an absolute path.
Prints one JSON line: the chosen settings, valid and test metrics, timings and the export's path and rows."""

import json
import math

from _entry import parse

from aisys.evaluation.runner import (
    MODEL_NAMES,
    SPLITS,
    evaluate_model,
    load_movielens_interactions,
    ml100k_config,
    write_export,
)


def _flags(parser) -> None:
    parser.add_argument("--dataset", default="ml-100k", choices=["ml-100k"], help="the dataset")
    parser.add_argument("--split", default="loo", choices=list(SPLITS), help="leave-last-one-out or temporal")
    parser.add_argument("--model", default="sasrec", choices=list(MODEL_NAMES))
    parser.add_argument("--export", required=True, help="Parquet file for the test top-100 lists (absolute path)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation and sampling")


def _finite(metrics: dict) -> dict:
    # JSON has no NaN: a metric that could not be computed is null.
    return {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in metrics.items()}


if __name__ == "__main__":
    _, args = parse(__doc__, _flags)
    # Rebuilt with the presets beneath the overrides (what `aisys evaluate` does); parse() validated them once.
    cfg = ml100k_config(args.config, args.overrides, args.split)
    data, _ = load_movielens_interactions(cfg)
    result = evaluate_model(args.model, data, args.split, cfg, seed=args.seed, log=lambda m: print(m, flush=True))
    path = write_export(result, data.item_ids, args.export)
    print(json.dumps({
        "dataset": args.dataset, "split": args.split, "model": args.model, "seed": args.seed,
        "settings": result.settings, "valid": _finite(result.valid_metrics), "test": _finite(result.test_metrics),
        "train_seconds": round(result.train_seconds, 3), "tune_seconds": round(result.tune_seconds, 3),
        "export": str(path), "export_users": len(result.test_task.users),
    }, default=str), flush=True)
