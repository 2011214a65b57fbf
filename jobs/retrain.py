"""Retrain on the latest (or a given) lake snapshot's window, gate the new version against the champion, and
promote it if it passes: `ray job submit --working-dir . -- python jobs/retrain.py --config configs/local.yaml
[--snapshot ID] [--reason TEXT]`. The retrain loop's controller submits this same file with the config and the
monitor's request as JSON in the job's environment. Prints `AISYS_RETRAIN_OUTCOME {json}`; exits 3 when the
gate refuses."""

import json
import sys

from _entry import parse

from aisys.loop.controller import OUTCOME_MARKER, job_config_from_environment
from aisys.loop.retrain import describe_request, retrain


def _flags(parser) -> None:
    parser.add_argument("--snapshot", default=None, help="lake snapshot to train on (default: latest)")
    parser.add_argument("--reason", default=None, help="why (recorded in MLflow); default: the monitor's reasons")
    parser.add_argument("--trigger", default=None, help="what triggered it (default: manual, or the monitor's)")


if __name__ == "__main__":
    cfg, args = parse(__doc__, _flags)
    job_cfg, request = job_config_from_environment()
    cfg = job_cfg or cfg  # a controller's config wins over the file: it is what the loop runs with
    reason, trigger = describe_request(request)
    reason, trigger = args.reason or reason, args.trigger or trigger
    if request is None:
        # By hand: audit it as a manual retrain, so the loop counts it against the cooldown and the budget
        # (a controller reads the audit table's last 24 hours when it starts; a decision was audited already).
        from aisys.loop.decider import RetrainDecider

        RetrainDecider.from_config(cfg).record_retrain(reason)
    outcome = retrain(cfg, snapshot_id=args.snapshot, reason=reason, trigger=trigger)
    print(OUTCOME_MARKER + json.dumps(outcome.to_dict(), default=str), flush=True)
    sys.exit(0 if outcome.promoted else 3)
