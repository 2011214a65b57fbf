"""What the multi-stage model costs per request in the serving Recommender, against SASRec alone, same run.

``multistage+ranker`` is the same multi-stage bundle with the learned ranking stage on (``multistage-v2``): the
union of every score matrix's top 50 items, their ``ranker-v2`` features (item activity as of the request) and a
LightGBM LambdaRank model at the settings' cap (500 rounds of 4-leaf trees, no early stopping: the slowest ranker
training can ship).

Both bundles have ML-100K's shape (1,682 items, SASRec 64-d, 2 layers, windows of 50); the multi-stage one adds
the default generators (EASE, SLIT, title similarity: 1,683 x 1,683 float32 matrices; two recent popularities) at
non-zero weights in two gap buckets, so every generator is scored. ``Recommender.recommend_many`` is timed for a
single request and for a batch of 16 (what ``@serve.batch`` hands a replica under load), 1 torch thread. Prints the
median and p99 milliseconds per call and per request, and the multistage/sasrec ratio. Timings on a shared box are
noisy: compare the ratio, not the absolute numbers, across machines.

    python benchmarks/multistage_latency.py [--calls 200] [--items 1682] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from aisys.models.blend_tuning import BlendChoice
from aisys.models.bundle import MULTISTAGE_FEATURE_SET_VERSION, MULTISTAGE_RANKER_FEATURE_SET_VERSION, ModelBundle
from aisys.models.sasrec import SASRec, SASRecConfig, cpu_state_dict
from aisys.models.stages import StageSpec
from aisys.serving.recommender import Recommender, ScoreRequest
from aisys.serving.session_store import UserSession

LENGTH, DIM = 50, 64


def make_bundles(n_items: int) -> dict[str, ModelBundle]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = SASRecConfig(n_items=n_items, max_seq_len=LENGTH, embedding_dim=DIM, n_layers=2, n_heads=2)
    state = cpu_state_dict(SASRec(config))
    item_ids = [""] + [f"item{i:05d}" for i in range(n_items)]
    popularity = [0.0] + [1.0] * n_items
    sasrec = ModelBundle("sasrec", config.to_dict(), item_ids, popularity, state, max_seq_len=LENGTH)
    v = n_items + 1
    specs = [StageSpec("ease", "ease", {"l2": 300.0, "input_decay": 1.0, "half_life_days": None}),
             StageSpec("slit", "slit", {"l2": 100.0, "window": 40}),
             StageSpec("recentpop_1d", "recentpop", {"half_life_days": 1.0}),
             StageSpec("recentpop_3d", "recentpop", {"half_life_days": 3.0}),
             StageSpec("title", "title", {"window": 20, "decay": 0.9})]
    arrays = {s.name: (rng.random((v, v), dtype=np.float32) if s.kind != "recentpop" else rng.random(v, np.float32))
              for s in specs}
    names = ["sasrec", *arrays]
    blend = BlendChoice(names, [[1.0, 0.5, 0.25, 0.5, 0.5, 0.1], [1.0, 0.5, 0.0, 1.0, 1.0, 0.0]], [3_600.0])
    multistage = ModelBundle(
        "multistage", {"sasrec": config.to_dict(), "stages": [s.to_dict() for s in specs], "blend": blend.to_dict()},
        item_ids, popularity, state, max_seq_len=LENGTH, feature_set_version=MULTISTAGE_FEATURE_SET_VERSION,
        arrays=arrays,
    )
    return {"sasrec": sasrec, "multistage": multistage, "multistage+ranker": with_ranker(multistage, rng)}


def with_ranker(bundle: ModelBundle, rng: np.random.Generator, rounds: int = 500) -> ModelBundle:
    """``bundle`` plus a ranking stage: a ranker of ``rounds`` trees over its features and a seeded item activity."""
    import dataclasses

    import lightgbm

    from aisys.features.activity import ACTIVITY_FEATURE_NAMES, ItemActivity
    from aisys.features.candidates import feature_names
    from aisys.models.multistage import build_scorer, ranker_generators
    from aisys.models.ranker import ONLINE_RANKER_FEATURE_SET, LearnedRanker, RankerSettings, ranker_document

    names = feature_names(ranker_generators(build_scorer(bundle).active), ACTIVITY_FEATURE_NAMES)
    settings = RankerSettings(max_rounds=rounds)
    groups = np.full(200, 150)  # 200 users x 150 candidates of random features: the trees' shape is what costs
    values = rng.normal(size=(int(groups.sum()), len(names)))
    labels = (values[:, 0] + rng.normal(size=values.shape[0]) > 2.0).astype(float)
    params = {**settings.lightgbm_params(), "min_data_in_leaf": 20}
    booster = lightgbm.train(params, lightgbm.Dataset(values, label=labels, group=groups, feature_name=list(names)),
                             num_boost_round=rounds)
    ranker = LearnedRanker(booster, ONLINE_RANKER_FEATURE_SET, names, 0, settings)
    activity = ItemActivity(bundle.n_items)
    activity.observe_many(rng.integers(1, bundle.n_items + 1, 100_000), rng.uniform(0, 1_000.0, 100_000))
    config = {**bundle.model_config, "ranking": {"depth": 50, "chosen": "lgbm"}}
    return dataclasses.replace(bundle, model_config=config, feature_set_version=MULTISTAGE_RANKER_FEATURE_SET_VERSION,
                               ranker=ranker_document(ranker), activity=activity.to_arrays())


def time_calls(rec: Recommender, batch: int, calls: int, rng: np.random.Generator, n_items: int) -> list[float]:
    seconds = []
    for _ in range(calls):
        requests = []
        for _ in range(batch):
            items = tuple(f"item{i:05d}" for i in rng.integers(0, n_items, int(rng.integers(5, 120))))
            session = UserSession(items=items, last_event_time=1_000.0)
            requests.append(ScoreRequest(session, 10, now=1_000.0 + float(rng.choice([60.0, 86_400.0]))))
        started = time.perf_counter()
        rec.recommend_many(requests)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    recs = {kind: Recommender(bundle, torch_threads=1) for kind, bundle in make_bundles(args.items).items()}
    rows = []
    for batch in (1, 16):
        for kind, rec in recs.items():
            time_calls(rec, batch, 10, np.random.default_rng(1), args.items)  # warm-up
            ms = np.asarray(time_calls(rec, batch, args.calls, np.random.default_rng(2), args.items)) * 1000
            rows.append({"kind": kind, "batch": batch, "p50_ms": float(np.median(ms)),
                         "p99_ms": float(np.percentile(ms, 99)), "p50_ms_per_request": float(np.median(ms)) / batch})
            print(f"{kind:>17} batch {batch:>2}: p50 {rows[-1]['p50_ms']:7.2f} ms  p99 {rows[-1]['p99_ms']:7.2f} ms  "
                  f"per request {rows[-1]['p50_ms_per_request']:6.2f} ms")
        sasrec, multi, ranked = rows[-3:]
        print(f"{'':>17} batch {batch:>2}: multistage / sasrec p50 = {multi['p50_ms'] / sasrec['p50_ms']:.2f}x, "
              f"+ranker / multistage p50 = {ranked['p50_ms'] / multi['p50_ms']:.2f}x")
    print(json.dumps(rows))
    if args.out:
        with open(args.out, "w") as out:
            json.dump({"calls": args.calls, "items": args.items, "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
