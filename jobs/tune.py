"""Sweep SASRec settings with Ray Tune (ASHA) on the latest (or a given) lake snapshot; register the best as
challenger: `ray job submit --working-dir . -- python jobs/tune.py --config configs/local.yaml`."""

import json

from _entry import parse

from aisys.runtime import init_ray
from aisys.tuning.sweep import run_sweep

if __name__ == "__main__":
    cfg, args = parse(__doc__, lambda p: p.add_argument("--snapshot", default=None))
    init_ray(cfg)
    outcome = run_sweep(cfg, args.snapshot)
    print(json.dumps({"version": outcome.model_version, "parent_run_id": outcome.parent_run_id,
                      "best_config": outcome.best_config, "best_metrics": outcome.best_metrics,
                      "trials": len(outcome.trials), "wall_s": round(outcome.wall_s, 1)}))
