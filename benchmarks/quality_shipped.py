"""The shipped model's rows of benchmarks/quality.py: per split and seed, and what each stage adds.

Each (split, seed) trains the default model kind as `aisys train` does and ranks every test user through the
serving Recommender (:func:`aisys.shipped_evaluation.evaluate_shipped`, what `aisys evaluate` without ``--model``
runs). Per stage, two figures: the valid NDCG@10 the blend tuning recorded for it at training
(``valid_gain_<stage>``: what removing it from the tuned blend cost on valid), and the test NDCG@10 lost when it is
dropped from the trained blend (its weight 0 in every gap bucket, the rest unchanged, no re-tuning), through the
same Recommender (:func:`aisys.shipped_evaluation.stage_ablation`).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from aisys.config import AppConfig, load_config
from aisys.quality.protocol import interactions_from_events, split_tasks

SHIPPED = "shipped"
METRICS = ("hr@10", "ndcg@10", "mrr@10", "coverage@10", "popularity@10")


def shipped_config(overrides: list[str], seed: int) -> AppConfig:
    """The default config (what `aisys train` uses) on MovieLens, ``train.seed`` = ``seed``."""
    return load_config(None, ["data.source=movielens", *overrides, f"train.seed={seed}"])


def run_shipped(splits, seeds, overrides: list[str], log: Callable[[str], None], ablate: bool = True) -> list[dict]:
    """One row per (split, seed): test metrics through the serving path, training's valid gains, the ablation."""
    from aisys.cli.evaluate_verb import load_ml100k
    from aisys.runtime import init_ray
    from aisys.shipped_evaluation import evaluate_shipped, events_after_training, stage_ablation

    rows = []
    for split in splits:
        for seed in seeds:
            cfg = shipped_config(overrides, seed)
            events, catalogue = load_ml100k(cfg)
            init_ray(cfg)
            started = time.perf_counter()
            result = evaluate_shipped(cfg, events, catalogue, split, on_step=lambda name: log(f"{split} seed {seed}: {name}"))
            wall = time.perf_counter() - started
            test = result.test_metrics
            log(f"{split} {SHIPPED} seed {seed}: test ndcg@10 {test['ndcg@10']:.4f} (train {result.train_seconds:.0f}s)")
            ablation = {}
            if ablate:
                data = interactions_from_events(events, catalogue)
                ablation = stage_ablation(cfg, result.bundle, data, split_tasks(data, split)[1],
                                          live=events_after_training(data, split))
                for name, metrics in ablation.items():
                    log(f"{split} seed {seed}: {name} test ndcg@10 {metrics['ndcg@10']:.4f} "
                        f"({metrics['ndcg@10'] - test['ndcg@10']:+.4f})")
            rows.append({
                "split": split, "model": SHIPPED, "kind": result.bundle.model_kind, "seed": seed, "test": test,
                "valid": {}, "settings": {"blend": result.bundle.model_config.get("blend")},
                "training": result.training_metrics, "ablation": ablation,
                "train_seconds": result.train_seconds, "score_seconds": result.score_seconds, "tune_seconds": 0.0,
                "wall_seconds": wall, "fallbacks": int(sum(result.lists.fallback)), "valid_trace": {},
            })
    return rows


def stage_table(rows: list[dict]) -> list[dict]:
    """Per (split, stage): mean +- std over seeds of the valid gain at training and of the test NDCG@10 change
    when the stage is dropped (negative: the stage helps on test)."""
    out = []
    for split in dict.fromkeys(r["split"] for r in rows):
        group = [r for r in rows if r["split"] == split and r["model"] == SHIPPED]
        stages = dict.fromkeys(
            [k[len("valid_gain_"):] for r in group for k in r["training"] if k.startswith("valid_gain_")]
            + [name.removeprefix("without ") for r in group for name in r["ablation"]]
        )
        for stage in stages:
            gains = [r["training"][f"valid_gain_{stage}"] for r in group if f"valid_gain_{stage}" in r["training"]]
            key = f"without {stage}"
            drops = [r["ablation"][key]["ndcg@10"] - r["test"]["ndcg@10"] for r in group if key in r["ablation"]]
            out.append({
                "split": split, "stage": stage, "n_seeds": len(group),
                "valid_gain": float(np.mean(gains)) if gains else None,
                "valid_gain_std": float(np.std(gains)) if gains else None,
                "test_ndcg_change_when_dropped": float(np.mean(drops)) if drops else None,
                "test_ndcg_change_when_dropped_std": float(np.std(drops)) if drops else None,
            })
    return out


def print_stage_table(stages: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    def cell(mean, std):
        return "-" if mean is None else f"{mean:+.4f}+-{std:.4f}"

    table = Table("split", "stage", "valid NDCG@10 gain (training)", "test NDCG@10 when dropped", "seeds",
                  title="What each stage of the shipped model adds (mean +- std over seeds)")
    for row in stages:
        table.add_row(row["split"], row["stage"], cell(row["valid_gain"], row["valid_gain_std"]),
                      cell(row["test_ndcg_change_when_dropped"], row["test_ndcg_change_when_dropped_std"]),
                      str(row["n_seeds"]))
    Console(width=200).print(table)
