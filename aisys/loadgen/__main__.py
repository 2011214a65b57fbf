"""``python -m aisys.loadgen``: one load cell against a server, in this (separate) process; prints one JSON line.

    python -m aisys.loadgen --url http://127.0.0.1:8000 --paths-file paths.txt --concurrency 16 --duration 8
    python -m aisys.loadgen --url http://127.0.0.1:8000 --paths-file paths.txt --rate 200 --duration 8

``--paths-file`` holds one request path per line (``/recommendations/user1?k=10``); ``--header`` adds
``Name: value`` headers (an API key). uvloop is used when installed, to keep the client's own CPU small.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from aisys.loadgen.http import closed_loop, open_loop


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m aisys.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", action="append", required=True, help="base URL (repeat: clients share them)")
    parser.add_argument("--paths-file", type=Path, required=True, help="one request path per line")
    shape = parser.add_mutually_exclusive_group(required=True)
    shape.add_argument("--concurrency", type=int, help="closed loop: this many clients")
    shape.add_argument("--rate", type=float, help="open loop: requests per second")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load sent first, not measured")
    parser.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.paths = [line.strip() for line in args.paths_file.read_text().splitlines() if line.strip()]
    if not args.paths:
        parser.error(f"--paths-file {args.paths_file}: no paths in it; write one request path per line")
    try:
        args.headers = dict((part.strip() for part in h.split(":", 1)) for h in args.header)
    except ValueError:
        parser.error("--header: use 'Name: value'")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    common = dict(urls=args.url, paths=args.paths, duration_s=args.duration, warmup_s=args.warmup,
                  headers=args.headers, seed=args.seed)
    if args.concurrency is not None:
        result = asyncio.run(closed_loop(concurrency=args.concurrency, **common))
    else:
        result = asyncio.run(open_loop(rate=args.rate, **common))
    print(json.dumps({**result.to_dict(), "client_cpu_s": round(time.process_time(), 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
