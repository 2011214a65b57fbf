"""Run the closed loop: poll the drift monitor, and on each retrain request ingest the collected events and
retrain behind the gate: `ray job submit --working-dir . -- python jobs/retrain_loop.py --config
configs/local.yaml [--poll-s 5] [--max-iterations N] [--submit auto|inline|job]`. Stops on SIGTERM/SIGINT
(`ray job stop`) after the current step. Prints one JSON line per handled request."""

import json
import signal

from _entry import parse

from aisys.loop.controller import RetrainController


def _flags(parser) -> None:
    parser.add_argument("--poll-s", type=float, default=5.0, help="seconds between two polls of the monitor")
    parser.add_argument("--max-iterations", type=int, default=None, help="stop after this many polls")
    parser.add_argument("--submit", choices=["auto", "inline", "job"], default="auto",
                        help="inline, as a Ray job, or auto (a job when ray.address is set)")
    parser.add_argument("--job-address", default=None, help="dashboard URL for job submission (default: found)")
    parser.add_argument("--no-ingest", action="store_true", help="do not ingest the collector's files first")


if __name__ == "__main__":
    cfg, args = parse(__doc__, _flags)
    controller = RetrainController(cfg, submit=args.submit, ingest=not args.no_ingest, job_address=args.job_address)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: controller.stop())
    print(json.dumps({"loop": "started", "mode": controller.mode, "poll_s": args.poll_s}), flush=True)
    controller.run(max_iterations=args.max_iterations, poll_s=args.poll_s,
                   on_record=lambda record: print(json.dumps(record.to_dict(), default=str), flush=True))
    print(json.dumps({"loop": "stopped", "handled": len(controller.records),
                      "promoted": sum(r.promoted for r in controller.records)}), flush=True)
