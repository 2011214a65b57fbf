"""The shipped ranking stage (``model.stages.ranking``) on MovieLens-100K: blend vs ranker, both splits, the
code `aisys train` runs (no Ray: the evaluation protocol's tasks instead of the lake).

For each split and seed, with `aisys train`'s own settings (the defaults, or ``--set``):

1. SASRec (``aisys.evaluation.runner.CachedSASRec``, ``--fit-cache``) and the default generators
   (``aisys.models.stages``) are fit on the **valid** task's train; the blend is tuned on the valid users
   (``tune_blend``); ``choose_ranking("auto")`` scores blend and ranker **out of fold** on the same folds
   (``aisys.models.ranking_choice``: each fold's blend re-tuned and ranker retrained on the other folds);
2. the final blend (all valid users) and the ranker that ships (``fit_final_ranker``) score the **test** task
   with the generators refit on its train and the same SASRec (as `aisys train`'s bundle: SASRec is not refit),
   through ``MultistageScorer`` / ``RankedMultistageScorer`` (the serving scorers), each request at its time,
   the ranker's item activity replayed from the test task's train events.

The blend's tuning, the ranker's labels and both out-of-fold figures use every target of a valid user (a temporal
user's several), as training does, and so does test (docs/evaluation.md's metrics).

    python benchmarks/ranker_stage.py --splits loo temporal --seeds 0 --cache-dir /tmp/mlcache \\
        --fit-cache /tmp/ranker-stage/fits --out benchmarks/results/ranker_stage.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from aisys.config import load_config
from aisys.quality.protocol import EvalTask, item_popularity, split_tasks
from aisys.quality.ranking import summarize, user_metrics
from aisys.evaluation.runner import (
    CachedSASRec,
    load_item_titles,
    load_movielens_interactions,
    sequential_settings,
    task_request_gaps,
    task_times,
)
from aisys.features.activity import PointInTimeActivity, activity_from_events, category_matrix
from aisys.models.baselines import standardize_rows
from aisys.models.blend_tuning import tune_blend
from aisys.models.multistage import SASREC_STAGE, MultistageScorer, RankedMultistageScorer, SASRecScorer
from aisys.models.ranking_choice import ValidTask, choose_ranking, fit_final_ranker
from aisys.models.stages import fit_stage, score_stage, stage_specs

K = 10
RESULTS = Path(__file__).resolve().parent / "results"


def item_categories(cfg, item_ids: list[str]) -> list[str | None]:
    """Each item's first genre (what `aisys data` puts in an event's ``category`` for MovieLens)."""
    from aisys.data.movielens import movielens_folder, read_item_genres

    genres = read_item_genres(movielens_folder(cfg.data.movielens, cfg.paths.cache_dir))
    return [(genres.get(i) or [None])[0] if i else None for i in item_ids]


def events_of(task: EvalTask, times: dict[str, list[int]]) -> tuple[list[int], list[float]]:
    return [i for u in task.train for i in task.train[u]], [float(t) for u in task.train for t in times[u]]


def request_times(task: EvalTask, times: dict[str, list[int]], gaps: np.ndarray) -> np.ndarray:
    """Each user's request time: their newest train event's time plus the gap to their first target."""
    return np.array([times[u][-1] for u in task.users], dtype=np.float64) + gaps


def fit_generators(cfg, task: EvalTask, times, titles):
    specs = stage_specs(cfg.model.stages, task.n_items, titles is not None)
    arrays = {s.name: fit_stage(s, task.train, times, task.n_items, titles) for s in specs}
    return specs, arrays


def protocol_metrics(task: EvalTask, scores: np.ndarray) -> dict[str, float]:
    return summarize(user_metrics(scores, task.targets, task.histories(), K), task.n_items, K, item_popularity(task))


def run_split(split: str, seed: int, overrides: list[str], fit_cache: str, log) -> dict:
    cfg = load_config(None, [*overrides, f"train.seed={seed}"])
    data, _ = load_movielens_interactions(cfg)
    titles = load_item_titles(cfg, data.item_ids) if cfg.model.stages.title else None
    categories = category_matrix(item_categories(cfg, data.item_ids))
    valid, test = split_tasks(data, split)
    stages = cfg.model.stages
    started = time.perf_counter()
    sasrec_fit = CachedSASRec(sequential_settings(cfg, seed), fit_cache, valid.name).fit(valid.train, valid.n_items)
    sasrec = SASRecScorer(sasrec_fit.model, cfg.features.max_seq_len)
    sasrec_seconds = time.perf_counter() - started
    log(f"{split} seed {seed}: SASRec {'from cache' if sasrec_fit.from_cache else 'fit'} ({sasrec_seconds:.0f} s)")

    valid_times = task_times(data, valid)
    specs, train_arrays = fit_generators(cfg, valid, valid_times, titles)
    histories = valid.histories()
    targets = np.array([t[0] for t in valid.targets], dtype=np.int64)
    gaps = task_request_gaps(data, valid)
    raw = {SASREC_STAGE: sasrec.score_sessions(histories)}
    raw.update({s.name: score_stage(s, train_arrays[s.name], histories) for s in specs})
    z = {n: standardize_rows(m) for n, m in raw.items()}
    tune_options = {"weight_grid": stages.weight_grid, "base_weight_grid": stages.sasrec_weight_grid,
                    "gap_thresholds": stages.gap_thresholds_s, "min_gain": stages.min_gain}
    task = ValidTask(
        raw=raw, histories=histories, targets=targets, gaps=gaps,
        request_times=request_times(valid, valid_times, gaps),
        activity=PointInTimeActivity(valid.n_items, *events_of(valid, valid_times)), categories=categories,
        tune=lambda rows: tune_blend({n: m[rows] for n, m in z.items()}, targets[rows],
                                     [histories[i] for i in rows], gaps[rows],
                                     all_targets=[valid.targets[i] for i in rows], **tune_options),
        blend_for=lambda choice, scores, g: MultistageScorer(sasrec, specs, train_arrays, choice).blend_scores(
            scores, g),
        depth=stages.ranker_depth, all_targets=valid.targets,
    )
    started = time.perf_counter()
    decision = choose_ranking("auto", task, folds=stages.ranker_folds, min_gain=stages.ranker_min_gain,
                              min_z=stages.ranker_min_z, seed=seed)
    choice_seconds = time.perf_counter() - started
    blend = task.tune(np.arange(len(targets)))
    started = time.perf_counter()
    ranker = fit_final_ranker(task, blend, seed=seed)
    ranker_seconds = time.perf_counter() - started
    log(f"{split} seed {seed}: {decision.reason} ({choice_seconds:.0f} s); shipped ranker "
        f"{ranker.best_iteration} rounds ({ranker_seconds:.0f} s)")

    test_times = task_times(data, test)
    _, test_arrays = fit_generators(cfg, test, test_times, titles)
    test_gaps = task_request_gaps(data, test)
    now = request_times(test, test_times, test_gaps)
    active = {n: test_arrays[n] for n in blend.active_stages() if n != SASREC_STAGE}
    blend_scorer = MultistageScorer(sasrec, [s for s in specs if s.name in active], active, blend)
    activity = activity_from_events(test.n_items, *events_of(test, test_times))
    ranked = RankedMultistageScorer(blend_scorer, ranker, activity, categories, stages.ranker_depth)
    test_histories = test.histories()
    blend_test = protocol_metrics(test, blend_scorer.score_sessions(test_histories, test_gaps))
    ranker_test = protocol_metrics(test, ranked.score_sessions(test_histories, test_gaps, now))
    log(f"{split} seed {seed} test ndcg@10: blend {blend_test['ndcg@10']:.4f}, ranker {ranker_test['ndcg@10']:.4f}")
    return {
        "split": split, "seed": seed, "decision": decision.to_dict(), "blend_valid_in_sample": blend.valid_ndcg,
        "blend_active": blend.active_stages(), "ranker_best_iteration": ranker.best_iteration,
        "blend_test": blend_test, "ranker_test": ranker_test,
        "seconds": {"sasrec": sasrec_seconds, "choice": choice_seconds, "ranker_fit": ranker_seconds},
        "sasrec_from_cache": sasrec_fit.from_cache,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", nargs="+", default=["loo", "temporal"], choices=["loo", "temporal"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--cache-dir", default=None, help="MovieLens download cache (paths.cache_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--fit-cache", default=str(RESULTS / "fits"), help="SASRec fit cache")
    parser.add_argument("--out", type=Path, default=RESULTS / "ranker_stage.json")
    args = parser.parse_args()
    overrides = ["data.source=movielens", *args.overrides]
    overrides += [f"paths.cache_dir={args.cache_dir}"] if args.cache_dir else []
    log = lambda message: print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)  # noqa: E731
    rows = [run_split(split, seed, overrides, args.fit_cache, log) for split in args.splits for seed in args.seeds]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "overrides": overrides, "seeds": args.seeds, "machine": {"cpus": os.cpu_count(),
                                                                 "python": platform.python_version()},
        "rows": rows,
    }, indent=1, default=float))
    for split in args.splits:
        part = [r for r in rows if r["split"] == split]
        for name, key in (("blend", "blend_test"), ("ranker", "ranker_test")):
            valid = [r["decision"][f"{name}_valid_ndcg"] for r in part]
            tests = [r[key]["ndcg@10"] for r in part]
            print(f"{split:8} {name:6} valid (out of fold) {np.mean(valid):.4f}  test {np.mean(tests):.4f} "
                  f"+- {np.std(tests):.4f} ({len(tests)} seeds)")
    print(f"results -> {args.out}")


if __name__ == "__main__":
    main()
