"""Train on the latest (or a given) lake snapshot and register the model as champion:
`ray job submit --working-dir . -- python jobs/train.py --config configs/local.yaml`."""

import json

from _entry import parse

from aisys import pipeline

if __name__ == "__main__":
    cfg, args = parse(__doc__, lambda p: p.add_argument("--snapshot", default=None))
    outcome = pipeline.train_from_lake(cfg, args.snapshot)
    print(json.dumps({"model": outcome.model_name, "version": outcome.model_version, "run_id": outcome.run_id,
                      "metrics": outcome.metrics, "popularity": outcome.baseline_metrics}))
