"""Gate a registered version (default: the challenger) against the champion on a lake snapshot's holdout and
promote it if it passes; `--rollback` restores the previous champion instead:
`ray job submit --working-dir . -- python jobs/promote.py --config configs/local.yaml [--version N]`.
Exits 3 when the gate refuses."""

import json
import sys

from _entry import parse

from aisys.registry.promotion import promote, rollback


def _flags(parser) -> None:
    parser.add_argument("--version", default=None, help="candidate version (default: the challenger alias)")
    parser.add_argument("--snapshot", default=None, help="lake snapshot for the holdout (default: latest)")
    parser.add_argument("--rollback", action="store_true", help="make the previous champion current instead")


if __name__ == "__main__":
    cfg, args = parse(__doc__, _flags)
    if args.rollback:
        from_version, to_version = rollback(cfg)
        print(json.dumps({"rolled_back_from": from_version, "to": to_version}))
        sys.exit(0)
    outcome = promote(cfg, version=args.version, snapshot_id=args.snapshot)
    print(json.dumps({"promoted": outcome.promoted, "candidate": outcome.candidate_version,
                      "champion": outcome.champion_version, "holdout_id": outcome.holdout_id,
                      "reasons": outcome.decision.reasons, "run_id": outcome.run_id}))
    sys.exit(0 if outcome.promoted else 3)
