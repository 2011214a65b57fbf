"""The ranking stage on MovieLens-100K: the context blend vs a learned LambdaRank ranker, on the same generator fits.

For each split (docs/evaluation.md's protocol):

1. ``sasrec+ctx-blend+title`` through the evaluation runner (``evaluate_model``): tuned
   on the valid task with the first seed, refit on the test task per seed; its SASRec
   fits go to the fit cache (``--fit-cache``), so everything below reuses them.
2. The generators -- that SASRec, EASE with recency, SLIT, recent popularity, title
   similarity, with the settings the blend chose -- are fit on the valid task's train;
   each user's candidates are the union of their top ``--depth`` items; features come
   from :func:`aisys.features.candidates.candidate_features`, labels are the valid targets.
3. The ranker's valid figure is **out of fold**: ``--folds`` folds of the valid users,
   each scored by a ranker trained on the others (early-stopped on a slice of them).
   The blend's valid figure is in sample (its weights were tuned on all valid users),
   so the comparison favours the blend.
4. The ranker that ships is trained on the valid users, early-stopped on a held-out
   ``--stop-share`` of them, then scores the generators refit on the test task's train
   (for every seed: the seed's SASRec refit, ranker and blend settings from the first seed).

Two rankers (``VARIANTS``): LambdaRank over every feature (the blend's score, z-score and
rank among them), and the same started from the blend's score (``ranker-residual``).

    python benchmarks/ranker.py --splits loo temporal --seeds 0 1 2 --cache-dir /tmp/mlcache \
        --set train.torch_threads=1
    python benchmarks/ranker.py --splits temporal --seeds 1 --blend-settings-from benchmarks/results/quality.json
        # the blend's settings as quality.py tuned them (its valid SASRec fit must be in --fit-cache)
    python benchmarks/ranker.py --splits loo --valid-only --blend-settings-from benchmarks/results/quality.json
        # the valid comparison only (no SASRec test refit)

Prints a table (valid and test NDCG@10 of both, candidate recall, fit times) and writes
``--out`` (default ``benchmarks/results/ranker.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from aisys.quality.protocol import EvalTask, item_popularity, split_tasks
from aisys.quality.ranking import summarize, user_metrics
from aisys.evaluation.runner import (
    SPLITS,
    CachedSASRec,
    _blend_around,
    evaluate_model,
    load_item_titles,
    load_movielens_interactions,
    ml100k_config,
    sequential_settings,
    task_request_gaps,
    task_times,
)
from aisys.evaluation.sequential import SequentialSettings
from aisys.features.candidates import CandidateFeatures, ItemEventIndex, candidate_features
from aisys.models.baselines import EASE, RecentPopularity, SequentialLinear, fit_model
from aisys.models.blend_tuning import TITLE_DECAY, TITLE_WINDOW
from aisys.models.item_features import TitleSimilarity
from aisys.models.ranker import (
    RANKER_BASE_FEATURE,
    RANKER_GENERATORS,
    LearnedRanker,
    RankerSettings,
    candidate_labels,
    fit_ranker,
    rank_candidates,
)

BLEND_MODEL = "sasrec+ctx-blend+title"
K = 10
RESULTS = Path(__file__).resolve().parent / "results"


def item_genre_matrix(cfg, item_ids: list[str]) -> np.ndarray:
    """(n_items + 1, G) 0/1 genres of the catalogue's items (row 0, the padding, all 0)."""
    from aisys.data.movielens import movielens_folder, read_item_genres

    genres = read_item_genres(movielens_folder(cfg.data.movielens, cfg.paths.cache_dir))
    names = sorted({g for item_genres in genres.values() for g in item_genres})
    column = {g: j for j, g in enumerate(names)}
    matrix = np.zeros((len(item_ids), len(names)))
    for i, item in enumerate(item_ids):
        for g in genres.get(item, []) if item else []:
            matrix[i, column[g]] = 1.0
    return matrix


def generator_scores(
    task: EvalTask, sasrec: Any, blend: dict[str, Any], titles: list[str], times: dict[str, list[int]],
    gaps: np.ndarray,
) -> tuple[dict[str, np.ndarray], float]:
    """The blend's and each generator's (U, n_items + 1) scores on ``task`` (fit on its train; ``sasrec``
    already fit), and the seconds the closed-form fits took. Settings are those the blend chose (``blend``)."""
    context = _blend_around(sasrec, blend, titles)  # the runner's own sasrec+ctx-blend+title
    for model in context.models[1:]:
        fit_model(model, task.train, task.n_items, times)
    models = {
        "ease": EASE(l2=blend["ease_l2"], input_decay=blend.get("ease_input_decay", 1.0),
                     half_life_days=blend.get("ease_half_life_days")),
        "slit": SequentialLinear(),
        "recentpop": RecentPopularity(blend["recent_half_life_days"]),
        "title": TitleSimilarity(
            titles, blend.get("title_window", TITLE_WINDOW), blend.get("title_decay", TITLE_DECAY)
        ),
    }
    started = time.perf_counter()
    for model in models.values():
        fit_model(model, task.train, task.n_items, times)
    seconds = time.perf_counter() - started
    histories = task.histories()
    scores = {"blend": context.score(task.users, histories, gaps=gaps), "sasrec": sasrec.score(task.users, histories)}
    scores.update({name: model.score(task.users, histories) for name, model in models.items()})
    return {name: scores[name] for name in RANKER_GENERATORS}, seconds


def task_features(
    data, task: EvalTask, scores: dict[str, np.ndarray], genres: np.ndarray, depth: int
) -> tuple[CandidateFeatures, np.ndarray, float]:
    """The task's candidates, their features and labels (the task's targets), and the candidate recall."""
    times = task_times(data, task)
    gaps = task_request_gaps(data, task)
    request_times = np.array([times[u][-1] for u in task.users], dtype=np.float64) + gaps
    items = [i for u in task.train for i in task.train[u]]
    stamps = [t for u in task.train for t in times[u]]
    events = ItemEventIndex.from_events(items, stamps)
    features = candidate_features(scores, task.histories(), request_times, gaps, events, genres, depth)
    labels = candidate_labels(features, task.targets)
    found = np.bincount(features.rows, weights=labels, minlength=len(task))
    recall = float(np.mean(found / np.array([len(set(t)) for t in task.targets])))
    return features, labels, recall


def ndcg(task: EvalTask, scores: np.ndarray) -> dict[str, float]:
    """The protocol's metrics of ``scores`` on ``task`` (full ranking; non-candidates at -inf rank last)."""
    histories = task.histories()
    return summarize(user_metrics(scores, task.targets, histories, K), task.n_items, K, item_popularity(task))


def train_shipped_ranker(
    features: CandidateFeatures, labels: np.ndarray, settings: RankerSettings, stop_share: float, seed: int,
    base_feature: str | None = None,
) -> LearnedRanker:
    """The ranker on the valid users, early-stopped on a random ``stop_share`` of them."""
    order = np.random.default_rng(seed).permutation(features.n_users)
    n_stop = max(1, int(round(stop_share * order.size)))
    stop, train = np.sort(order[:n_stop]), np.sort(order[n_stop:])
    return fit_ranker(features.take_users(train), labels[np.isin(features.rows, train)],
                      features.take_users(stop), labels[np.isin(features.rows, stop)], settings,
                      base_feature=base_feature)


def out_of_fold_scores(
    features: CandidateFeatures, labels: np.ndarray, n_items: int, settings: RankerSettings, folds: int,
    stop_share: float, seed: int, base_feature: str | None = None,
) -> tuple[np.ndarray, list[int]]:
    """(U, n_items + 1) scores where each user is scored by a ranker trained without them; best iterations."""
    scores = np.full((features.n_users, n_items + 1), -np.inf)
    fold_of = np.random.default_rng(seed + 1).permutation(features.n_users) % folds
    iterations = []
    for fold in range(folds):
        held, rest = np.nonzero(fold_of == fold)[0], np.nonzero(fold_of != fold)[0]
        rest_features = features.take_users(rest)
        ranker = train_shipped_ranker(rest_features, labels[np.isin(features.rows, rest)], settings, stop_share,
                                      seed + fold, base_feature)
        iterations.append(ranker.best_iteration)
        scores[held] = rank_candidates(ranker, features.take_users(held), n_items)
    return scores, iterations


# The rankers compared with the blend: LambdaRank over every feature ("ranker"), and the same started from the
# blend's score so that the trees only learn corrections to it ("ranker-residual").
VARIANTS: dict[str, dict[str, Any]] = {
    "ranker": {"base_feature": None},
    "ranker-residual": {"base_feature": RANKER_BASE_FEATURE},
}


def valid_generators(data, cfg, valid: EvalTask, tuned: dict[str, Any], seed: int, fit_cache: str, titles):
    """The generators' scores on the valid task, with the SASRec the blend was tuned with (from the cache)."""
    sasrec = CachedSASRec(sequential_settings(cfg, seed), fit_cache, valid.name)
    if not sasrec._path(valid.train, valid.n_items, validated=True).exists():
        raise RuntimeError("the valid SASRec fit is not in the fit cache that evaluate_model wrote to: "
                           "run with one --fit-cache and the same --set overrides")
    sasrec.fit(valid.train, valid.n_items, validate=lambda model: 0.0)  # loads (never trains) this fit
    return generator_scores(valid, sasrec, tuned, titles, task_times(data, valid), task_request_gaps(data, valid))


def fit_variants(
    valid: EvalTask, features: CandidateFeatures, labels: np.ndarray, settings: RankerSettings, folds: int,
    stop_share: float, seed: int, log: Callable[[str], None],
) -> tuple[dict[str, LearnedRanker], dict[str, dict[str, Any]]]:
    """Each variant's out-of-fold valid metrics and its shipped ranker (trained on every valid user)."""
    rankers, report = {}, {}
    for name, options in VARIANTS.items():
        started = time.perf_counter()
        oof, iterations = out_of_fold_scores(features, labels, valid.n_items, settings, folds, stop_share, seed,
                                             **options)
        cv_seconds = time.perf_counter() - started
        started = time.perf_counter()
        rankers[name] = train_shipped_ranker(features, labels, settings, stop_share, seed, **options)
        report[name] = {
            "valid_oof": ndcg(valid, oof), "fold_best_iterations": iterations, "cv_seconds": cv_seconds,
            "fit_seconds": time.perf_counter() - started, "best_iteration": rankers[name].best_iteration,
            "importance": _importance(rankers[name]),
        }
        log(f"{valid.name} {name}: out-of-fold valid ndcg@10 {report[name]['valid_oof']['ndcg@10']:.4f} "
            f"(fold rounds {iterations}; fit {report[name]['fit_seconds']:.1f}s)")
    return rankers, report


def compare_split(
    split: str, seeds: list[int], overrides: list[str], fit_cache: str, depth: int, settings: RankerSettings,
    folds: int, stop_share: float, log: Callable[[str], None], blend_settings: dict[str, Any] | None = None,
    valid_only: bool = False,
) -> list[dict[str, Any]]:
    """Blend vs rankers on ``split`` for every seed (the first tunes all); one JSON-ready row per seed.

    ``blend_settings`` (the blend's settings as an earlier run tuned them, with the first seed) skip the
    blend's tuning; the valid SASRec fit must then be in the fit cache already. ``valid_only`` (with
    ``blend_settings``) stops after the valid comparison: no test refit.
    """
    if valid_only and blend_settings is None:
        raise ValueError("valid_only needs the blend's settings (--blend-settings-from)")
    cfg = ml100k_config(None, overrides, split)
    data, _ = load_movielens_interactions(cfg)
    titles = load_item_titles(cfg, data.item_ids)
    genres = item_genre_matrix(cfg, data.item_ids)
    valid, test = split_tasks(data, split)
    rows, tuned, rankers, valid_row = [], blend_settings, {}, {}
    for seed in seeds:
        if valid_only:
            blend = None
        else:
            blend = evaluate_model(BLEND_MODEL, data, split, cfg, seed=seed, log=log, settings=tuned,
                                   fit_cache=fit_cache)
        if seed == seeds[0]:
            tuned = blend.settings if blend_settings is None else blend_settings
            # The seed the blend was tuned with: its valid SASRec fit trains the rankers too (whatever --seeds).
            tune_seed = int(tuned.get("seed", seed))
            scores, _ = valid_generators(data, cfg, valid, tuned, tune_seed, fit_cache, titles)
            started = time.perf_counter()
            features, labels, recall = task_features(data, valid, scores, genres, depth)
            feature_seconds = time.perf_counter() - started
            rankers, report = fit_variants(valid, features, labels, settings, folds, stop_share, tune_seed, log)
            valid_row = {
                "blend_valid": blend.valid_metrics if blend else {},
                "blend_valid_recomputed": ndcg(valid, scores["blend"]),
                "valid_candidate_recall": recall, "valid_candidates_per_user": features.rows.size / len(valid),
                "feature_seconds": feature_seconds, "variants": report,
            }
            log(f"{split} valid: blend ndcg@10 {valid_row['blend_valid_recomputed']['ndcg@10']:.4f} (in sample), "
                f"candidate recall {recall:.3f}")
        if blend is None:
            return [{"split": split, "seed": seed, "blend_settings": tuned, **valid_row}]
        sasrec_test = CachedSASRec(_refit_settings(tuned, seed), fit_cache, test.name)
        sasrec_test.fit(test.train, test.n_items)
        scores, _ = generator_scores(test, sasrec_test, tuned, titles, task_times(data, test),
                                     task_request_gaps(data, test))
        features, _, recall = task_features(data, test, scores, genres, depth)
        tests = {name: ndcg(test, rank_candidates(r, features, test.n_items)) for name, r in rankers.items()}
        rows.append({
            "split": split, "seed": seed, "blend_test": blend.test_metrics,
            "blend_test_recomputed": ndcg(test, scores["blend"]), "ranker_test": tests,
            "test_candidate_recall": recall, "blend_settings": tuned,
            "sasrec_refit_from_cache": sasrec_test.from_cache, **valid_row,
        })
        log(f"{split} seed {seed} test: blend ndcg@10 {blend.test_metrics['ndcg@10']:.4f}, "
            + ", ".join(f"{n} {m['ndcg@10']:.4f}" for n, m in tests.items()) + f", candidate recall {recall:.3f}")
    return rows


def _refit_settings(tuned: dict[str, Any], seed: int) -> SequentialSettings:
    """The SASRec settings of the runner's test refit (the tuned settings' SASRec part, with ``seed``)."""
    names = {f.name for f in fields(SequentialSettings)}
    return SequentialSettings(**{**{k: v for k, v in tuned.items() if k in names}, "seed": seed})


def _importance(ranker: LearnedRanker) -> dict[str, float]:
    gains = ranker.booster.feature_importance(importance_type="gain")
    total = float(gains.sum()) or 1.0
    return {name: round(float(g) / total, 4) for name, g in sorted(zip(ranker.names, gains), key=lambda p: -p[1])}


def print_table(rows: list[dict[str, Any]]) -> None:
    """Per split: valid (blend in sample, rankers out of fold) and test NDCG@10 per seed, then test means."""
    for split in dict.fromkeys(r["split"] for r in rows):
        part = [r for r in rows if r["split"] == split]
        first = part[0]
        part = [r for r in part if "blend_test" in r]  # valid-only runs have no test figures
        print(f"{split}: candidate recall valid {first['valid_candidate_recall']:.3f} test "
              f"{np.mean([r['test_candidate_recall'] for r in part]) if part else float('nan'):.3f} "
              f"({first['valid_candidates_per_user']:.0f} candidates per user)")
        seed_columns = " ".join(f"{'seed ' + str(r['seed']):>8}" for r in part)
        print(f"  {'model':16} {'valid ndcg@10':>13} {'fit s':>6}  {seed_columns} {'test mean':>10}")
        lines = [("blend", first["blend_valid_recomputed"]["ndcg@10"], float("nan"),
                  [r["blend_test"]["ndcg@10"] for r in part])]
        for name, variant in first["variants"].items():
            lines.append((name, variant["valid_oof"]["ndcg@10"], variant["fit_seconds"],
                          [r["ranker_test"][name]["ndcg@10"] for r in part]))
        for name, valid_ndcg, fit_seconds, tests in lines:
            mean = f" {np.mean(tests):>6.4f}+-{np.std(tests):.4f}" if tests else ""
            print(f"  {name:16} {valid_ndcg:>13.4f} {fit_seconds:>6.1f}  " + " ".join(f"{t:>8.4f}" for t in tests)
                  + mean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--depth", type=int, default=50, help="candidates per generator (their union is ranked)")
    parser.add_argument("--folds", type=int, default=5, help="folds of the valid users for the out-of-fold figure")
    parser.add_argument("--stop-share", type=float, default=0.2, help="share of users held out for early stopping")
    parser.add_argument("--cache-dir", default=None, help="MovieLens download cache (paths.cache_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--fit-cache", default=str(RESULTS / "fits"), help="SASRec fit cache (shared with quality.py)")
    parser.add_argument("--out", type=Path, default=RESULTS / "ranker.json")
    parser.add_argument("--valid-only", action="store_true",
                        help="stop after the valid comparison (no test refit; needs --blend-settings-from)")
    parser.add_argument("--blend-settings-from", type=Path, default=None,
                        help="a quality.json whose sasrec+ctx-blend+title settings (the tuning seed's) to use "
                             "instead of tuning the blend again (its valid SASRec fit must be in --fit-cache)")
    args = parser.parse_args()
    overrides = list(args.overrides) + ([f"paths.cache_dir={args.cache_dir}"] if args.cache_dir else [])
    settings = RankerSettings()
    log = lambda message: print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)  # noqa: E731
    rows = []
    earlier = json.loads(args.blend_settings_from.read_text())["runs"] if args.blend_settings_from else None
    for split in args.splits:
        blend_settings = None
        if earlier is not None:
            # The settings of the seed that tuned them (the earlier run's first), not a refit seed's copy.
            blend_settings = next(r["settings"] for r in earlier if r["split"] == split and r["model"] == BLEND_MODEL
                                  and r.get("valid"))
        rows += compare_split(split, args.seeds, overrides, args.fit_cache, args.depth, settings, args.folds,
                              args.stop_share, log, blend_settings, args.valid_only)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "protocol": "docs/evaluation.md", "blend_model": BLEND_MODEL, "seeds": args.seeds, "depth": args.depth,
        "folds": args.folds, "stop_share": args.stop_share, "ranker_settings": asdict(settings),
        "blend_settings_from": str(args.blend_settings_from) if args.blend_settings_from else None,
        "overrides": overrides, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rows": rows,
    }, indent=1, default=float))
    print_table(rows)
    print(f"results -> {args.out}")


if __name__ == "__main__":
    main()
