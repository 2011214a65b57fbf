"""Recommendation quality on MovieLens-100K: the model that ships per split and seed, what each stage adds.

By default (``python benchmarks/quality.py``) the shipped model -- the default model kind, trained as `aisys train`
does, its lists from the serving Recommender (``benchmarks/quality_shipped.py``, what `aisys evaluate` without
``--model`` runs) -- is evaluated on both splits with seeds 0, 1, 2 (``train.seed``): test metrics mean +- std,
and a per-stage table (each stage's valid NDCG@10 gain recorded at training, and the test NDCG@10 change when it is
dropped from the trained blend). ``--models`` adds rows of the evaluation runner's models (below);
``--no-shipped`` leaves the shipped rows out.

    python benchmarks/quality.py                                   # shipped model, 2 splits x 3 seeds
    python benchmarks/quality.py --splits loo --seeds 0            # one training
    python benchmarks/quality.py --no-shipped --models ease pop    # runner models only

The runner's models run the offline protocol (docs/evaluation.md) through ``aisys.evaluation.runner``:
each model is tuned on its split's valid task with seed 0, then refit on the
test task once per seed with the chosen settings (the deterministic models --
popularity, item-kNN, EASE -- are fit once: their std is 0 by construction).
Prints HR@10, NDCG@10, MRR@10, coverage@10, popularity@10 and the refit's
train seconds (mean +- std), writes ``benchmarks/results/quality.json`` and a
plot of NDCG@10 by segment (gender, age band, activity, target popularity)
as ``benchmarks/results/quality_segments.html`` (plotly, self-contained).

    python benchmarks/quality.py --models ease pop --splits loo --seeds 0
    python benchmarks/quality.py --cache-dir /tmp/mlcache --set train.torch_threads=1

SASRec uses the ML-100K settings of ``aisys.evaluation.runner.ML100K_PRESET`` (and
``ML100K_SPLIT_PRESET[split]``) beneath any ``--set`` override. The sequential model
``sasrec+ease+slit+recentpop`` also reports the SASRec inside it as ``sasrec`` (the
same training, not repeated). ``sasrec+ctx-blend`` is that blend with its own weights
for users whose request comes long after their last interaction (runner's
``_tune_context_blend``); with a fit cache it reuses the same SASRec fits.
``sasrec+ctx-blend+title`` adds the similarity of the movies' titles to the user's
recent items (sequels, franchises; runner's ``_tune_title_weights``).

    python benchmarks/quality.py --models sasrec+ctx-blend --fit-cache out/fits --keep-from \
        benchmarks/results/quality.json           # add one model's rows to an earlier run

    python benchmarks/quality.py --jobs 4     # parallel; SASRec fits kept in benchmarks/results/fits for
                                              # the other blends of the run and for re-runs (--no-fit-cache)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd

from aisys.evaluation.runner import (
    ML100K_PRESET,
    ML100K_SPLIT_PRESET,
    MODEL_NAMES,
    SPLITS,
    evaluate_model,
    load_movielens_interactions,
    ml100k_config,
)
from aisys.quality.segments import demographics_from_table, segment_metrics

from quality_shipped import SHIPPED, print_stage_table, run_shipped, stage_table

DETERMINISTIC = {"pop", "itemknn", "ease", "recentpop", "ease-recency", "slit"}
ORDER = (
    SHIPPED, "pop", "itemknn", "ease", "bpr", "recentpop", "ease-recency", "slit", "sasrec", "sasrec+ease",
    "sasrec+ease+slit+recentpop", "sasrec+ctx-blend", "sasrec+ctx-blend+title",
)
# The runner's models of `--models all`: `sasrec+ease` (the previous blend) is a special case of the recency blend.
ALL_RUNNER_MODELS = (
    "pop", "itemknn", "ease", "bpr", "recentpop", "ease-recency", "slit", "sasrec", "sasrec+ease+slit+recentpop",
    "sasrec+ctx-blend", "sasrec+ctx-blend+title",
)
METRICS = ("hr@10", "ndcg@10", "mrr@10", "coverage@10", "popularity@10")
RESULTS = Path(__file__).resolve().parent / "results"


def units(models, splits, seeds, tune_each_seed: bool) -> list[tuple[str, str, tuple[int, ...]]]:
    """The independent pieces of work: (split, model, seeds run in order, the first tunes)."""
    # A blend reports its SASRec alone too (same training): no need to train `sasrec` again.
    blends = [m for m in models if m.startswith("sasrec+")]
    to_run = [m for m in models if not (m == "sasrec" and blends)]
    out = []
    for split in splits:
        for model in to_run:
            model_seeds = tuple(seeds) if model not in DETERMINISTIC else tuple(seeds[:1])
            if tune_each_seed:
                out += [(split, model, (seed,)) for seed in model_seeds]
            else:
                out.append((split, model, model_seeds))
    return out


def run_unit(unit, models, overrides, fit_cache, log) -> tuple[list[dict], list[dict]]:
    """Evaluate one unit: tune with its first seed, refit with each seed; returns (runs, segments)."""
    split, model, seeds = unit
    data, users = load_movielens_interactions(ml100k_config(None, overrides, "loo"))
    demographics = demographics_from_table(users)
    cfg = ml100k_config(None, overrides, split)
    runs, segments = [], []
    settings = None
    blends = [m for m in models if m.startswith("sasrec+")]
    for seed in seeds:
        started = time.perf_counter()
        result = evaluate_model(
            model, data, split, cfg, seed=seed, log=log, settings=settings, fit_cache=fit_cache
        )
        settings = settings or result.settings  # tuned once (first seed), refit per seed
        wall = time.perf_counter() - started
        # The first blend listed also reports its SASRec alone (the same training).
        own_sasrec = result.component and "sasrec" in models and model == blends[0]
        for part in ([result.component] if own_sasrec else []) + [result]:
            task = part.test_task
            table = segment_metrics(
                part.per_user, task.users, task.histories(), task.targets, demographics, part.item_popularity,
            )
            segments += [{**row, "split": split, "model": part.model, "seed": seed}
                         for row in table.to_dict("records")]
            runs.append({
                "split": split, "model": part.model, "seed": seed, "settings": part.settings,
                "valid": part.valid_metrics, "test": part.test_metrics,
                "train_seconds": part.train_seconds, "tune_seconds": part.tune_seconds,
                "valid_trace": {str(k): v for k, v in part.trace.items()}, "wall_seconds": wall,
            })
            log(f"{split} {part.model} seed {seed}: test ndcg@10 {part.test_metrics['ndcg@10']:.4f} "
                f"(refit {part.train_seconds:.1f}s)")
    return runs, segments


def _print_log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _run_unit_in_worker(unit, models, overrides, fit_cache):
    import torch

    torch.set_num_threads(1)
    return run_unit(unit, models, overrides, fit_cache, _print_log)


def run(models, splits, seeds, overrides, log, jobs: int = 1, tune_each_seed: bool = False,
        fit_cache: str | None = None, shipped: bool = True, ablate: bool = True) -> dict:
    """Evaluate the shipped model (``shipped``) and every runner (split, model, seed); returns the JSON-ready results.

    ``jobs > 1`` runs the runner's units (see :func:`units`) in that many processes.
    """
    work = units(models, splits, seeds, tune_each_seed)
    runs, segments = [], []
    if shipped:
        runs += run_shipped(splits, seeds, overrides, log, ablate)
    if jobs <= 1:
        results = [run_unit(unit, models, overrides, fit_cache, log) for unit in work]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [pool.submit(_run_unit_in_worker, unit, models, overrides, fit_cache) for unit in work]
            results = [future.result() for future in futures]
    for unit_runs, unit_segments in results:
        runs += unit_runs
        segments += unit_segments
    return {
        "protocol": "docs/evaluation.md", "seeds": list(seeds), "tune_each_seed": tune_each_seed,
        "preset": list(ML100K_PRESET), "split_preset": {k: list(v) for k, v in ML100K_SPLIT_PRESET.items()},
        "overrides": list(overrides), "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": runs, "segments": segments, "summary": summarize(runs), "stages": stage_table(runs),
    }


def keep_earlier(results: dict, earlier: dict, source: str) -> dict:
    """``results`` plus the runs and segments of ``earlier`` for the (split, model) pairs not re-run."""
    fresh = {(r["split"], r["model"]) for r in results["runs"]}
    kept = [r for r in earlier["runs"] if (r["split"], r["model"]) not in fresh]
    segments = [s for s in earlier["segments"] if (s["split"], s["model"]) not in fresh]
    runs = kept + results["runs"]
    return {**results, "runs": runs, "segments": segments + results["segments"], "summary": summarize(runs),
            "stages": stage_table(runs), "kept_from": {"path": source, "pairs": sorted({f"{r['split']}/{r['model']}" for r in kept})}}


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and std over seeds per (split, model); deterministic models count as one run."""
    frame = pd.DataFrame([
        {"split": r["split"], "model": r["model"], "train_s": r["train_seconds"], **r["test"]} for r in runs
    ])
    rows = []
    frame["order"] = frame["model"].map({m: i for i, m in enumerate(ORDER)})
    frame = frame.sort_values(["split", "order"], kind="stable")
    for (split, model), group in frame.groupby(["split", "model"], sort=False):
        row = {"split": split, "model": model, "n_seeds": int(len(group))}
        for column in (*METRICS, "train_s"):
            values = group[column].to_numpy(dtype=float)
            row[column] = float(values.mean())
            row[f"{column}_std"] = float(values.std(ddof=0))
        rows.append(row)
    return rows


def print_table(summary: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("split", "model", *(m.upper() for m in METRICS), "train s", "seeds",
                  title="MovieLens-100K test (mean +- std over seeds)")
    for row in summary:
        cells = [f"{row[m]:.4f}+-{row[m + '_std']:.4f}" if m != "popularity@10" else f"{row[m]:.0f}" for m in METRICS]
        table.add_row(row["split"], row["model"], *cells, f"{row['train_s']:.1f}+-{row['train_s_std']:.1f}",
                      str(row["n_seeds"]))
    Console(width=200).print(table)


def write_segment_plot(segments: list[dict], path: Path) -> Path | None:
    """Grouped bars of mean NDCG@10 per segment and model, one panel per split (plotly HTML)."""
    import plotly.express as px

    frame = pd.DataFrame(segments)
    if frame.empty:
        return None
    frame["segment"] = frame["dimension"] + "=" + frame["segment"]
    mean = frame.groupby(["split", "model", "segment"], as_index=False, sort=False)["ndcg@10"].mean()
    figure = px.bar(mean, x="segment", y="ndcg@10", color="model", barmode="group", facet_row="split",
                    title="NDCG@10 by segment (MovieLens-100K test, mean over seeds)", height=800)
    figure.update_yaxes(matches=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.write_html(path, include_plotlyjs=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[], choices=[*MODEL_NAMES, "all"],
                        help="runner models to add as rows ('all': every one of them); default none")
    parser.add_argument("--no-shipped", action="store_true", help="leave out the shipped model's rows")
    parser.add_argument("--no-ablation", action="store_true", help="skip the test NDCG@10 with each stage dropped")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--cache-dir", default=None, help="MovieLens download cache (paths.cache_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for quality.json and the plot")
    parser.add_argument("--jobs", type=int, default=1, help="processes running (split, model[, seed]) units")
    parser.add_argument("--tune-each-seed", action="store_true",
                        help="every seed runs the whole protocol (tunes on valid itself); default: the first tunes")
    parser.add_argument("--fit-cache", default=str(RESULTS / "fits"),
                        help="folder keeping SASRec fits by (settings, seed, data): the sequential models of one run "
                             "share them and a re-run reuses them (default: benchmarks/results/fits, git-ignored)")
    parser.add_argument("--no-fit-cache", action="store_true", help="train every SASRec afresh, keep nothing")
    parser.add_argument("--keep-from", type=Path, default=None,
                        help="an earlier quality.json: its (split, model) rows not re-run here are kept")
    args = parser.parse_args()
    overrides = list(args.overrides) + ([f"paths.cache_dir={args.cache_dir}"] if args.cache_dir else [])
    models = list(ALL_RUNNER_MODELS) if "all" in args.models else args.models
    results = run(models, args.splits, args.seeds, overrides, _print_log, args.jobs, args.tune_each_seed,
                  None if args.no_fit_cache else args.fit_cache, not args.no_shipped, not args.no_ablation)
    if args.keep_from:
        results = keep_earlier(results, json.loads(args.keep_from.read_text()), str(args.keep_from))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(results, indent=1, default=float))
    plot = write_segment_plot(results["segments"], args.out / "quality_segments.html")
    print_table(results["summary"])
    if results["stages"]:
        print_stage_table(results["stages"])
    print(f"results -> {args.out / 'quality.json'}" + (f"; segment plot -> {plot}" if plot else ""))


if __name__ == "__main__":
    main()
