"""Train on the latest (or a given) lake snapshot, register the new version and gate it against the champion
(the first model of a workspace is promoted when its guardrails pass):
`ray job submit --working-dir . -- python jobs/train.py --config configs/local.yaml`. Prints one JSON line
(version, run, metrics, the gate's verdict and reasons); exits 3 when the gate refuses, as `aisys train` does."""

import json
import sys

from _entry import parse

from aisys import pipeline

if __name__ == "__main__":
    cfg, args = parse(__doc__, lambda p: p.add_argument("--snapshot", default=None))
    outcome = pipeline.train_from_lake(cfg, args.snapshot)
    gated = outcome.promotion
    print(json.dumps({"model": outcome.model_name, "version": outcome.model_version, "run_id": outcome.run_id,
                      "metrics": outcome.metrics, "popularity": outcome.baseline_metrics,
                      "promoted": gated.promoted, "champion_before": gated.champion_version,
                      "gate_run_id": gated.run_id, "reasons": list(gated.decision.reasons)}, default=str))
    sys.exit(0 if gated.promoted else 3)
