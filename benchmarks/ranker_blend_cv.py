"""Blend vs learned ranker on valid, both out of sample: a 2-fold cross-fit on the same halves of the valid users.

The blend's weights are tuned (the runner's own tuning) on one half and score the other; the rankers are trained
on one half (early-stopped on 20% of it) and score the other. Needs the valid SASRec fit in the fit cache
(``benchmarks/ranker.py`` or ``quality.py`` put it there) and the blend settings of ``benchmarks/results/quality.json``.

    python benchmarks/ranker_blend_cv.py temporal /tmp/ranker/fits /tmp/mlcache     # ~40 min on a busy 2-core box
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ranker as rb  # noqa: E402  (benchmarks/ranker.py)
from aisys.evaluation import runner as R  # noqa: E402
from aisys.models.ranker import RankerSettings  # noqa: E402
from aisys.quality.protocol import EvalTask, split_tasks  # noqa: E402


def main(split: str, fit_cache: str, cache_dir: str) -> None:
    cfg = R.ml100k_config(None, [f"paths.cache_dir={cache_dir}", "train.torch_threads=1"], split)
    data, _ = R.load_movielens_interactions(cfg)
    titles = R.load_item_titles(cfg, data.item_ids); genres = rb.item_genre_matrix(cfg, data.item_ids)
    valid, test = split_tasks(data, split)
    runs = json.loads((Path(__file__).resolve().parent / "results" / "quality.json").read_text())["runs"]
    tuned = next(r["settings"] for r in runs if r["split"] == split and r["model"] == "sasrec+ctx-blend+title" and r["seed"] == 0)
    sasrec = R.CachedSASRec(R.sequential_settings(cfg, 0), fit_cache, valid.name)
    sasrec.fit(valid.train, valid.n_items, validate=lambda m: 0.0); assert sasrec.from_cache
    times = R.task_times(data, valid); gaps = R.task_request_gaps(data, valid)
    fold_of = np.random.default_rng(7).permutation(len(valid)) % 2
    oof_blend = np.full((len(valid), valid.n_items + 1), -np.inf)
    log = lambda m: None
    for f in (0, 1):
        tr = np.nonzero(fold_of != f)[0]; te = np.nonzero(fold_of == f)[0]
        sub = EvalTask(valid.name, valid.n_items, valid.train, [valid.users[i] for i in tr], [valid.targets[i] for i in tr])
        t = time.perf_counter()
        ctx, _, _ = R._tune_context_blend(sasrec, sub, times, gaps[tr], log)
        title, _, _ = R._tune_title_weights(sasrec, ctx, titles, sub, times, gaps[tr], log)
        chosen = {**ctx, **title}
        scores, _ = rb.generator_scores(valid, sasrec, chosen, titles, times, gaps)
        oof_blend[te] = scores["blend"][te]
        print("fold", f, "tuned in", round(time.perf_counter() - t), {k: chosen[k] for k in ("blend_weight", "recent_weight", "sasrec_weight", "ctx_gap_seconds", "title_weight")}, flush=True)
    print("blend 2-fold oof", rb.ndcg(valid, oof_blend)["ndcg@10"], flush=True)
    full, _ = rb.generator_scores(valid, sasrec, tuned, titles, times, gaps)
    print("blend in sample", rb.ndcg(valid, full["blend"])["ndcg@10"], flush=True)
    features, labels, recall = rb.task_features(data, valid, full, genres, 50)
    for name, base in (("ranker", None), ("ranker-residual", "blend_score")):
        oof = np.full((len(valid), valid.n_items + 1), -np.inf)
        for f in (0, 1):
            tr = np.nonzero(fold_of != f)[0]; te = np.nonzero(fold_of == f)[0]
            r = rb.train_shipped_ranker(features.take_users(tr), labels[np.isin(features.rows, tr)], RankerSettings(), 0.2, f, base)
            oof[te] = rb.rank_candidates(r, features.take_users(te), valid.n_items)
        print(name, "2-fold oof", rb.ndcg(valid, oof)["ndcg@10"], flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
