"""Replay recent events through the live HTTP API of a running aisys app and measure it: before each event, GET
that user's recommendations (was the item the user then touched among them? the online HR@10), then POST the
event. `ray job submit --working-dir . -- python jobs/replay.py --config configs/local.yaml --url
http://HOST:8000 --events 200` (the API key from --api-key or AISYS_API_KEY; locally the workspace's dev admin
key is used when neither is given).

--source lake (default) replays the newest events of the lake's latest (or --snapshot) snapshot; --source
movielens the newest of MovieLens-100K (`data.movielens.path`, or the cache). Every request counts against the
key's rate limit: a 429 is an error here, so use a key whose limit covers the replay. Prints one JSON line
(requests, events posted, errors, fallbacks, online HR@10, p50/p90/p99 ms, the served model); exits 1 when a
request failed."""

import json
import math
import os
import sys

from _entry import parse

from aisys.demo import replay_live_traffic, split_live_tail

API_KEY_ENV = "AISYS_API_KEY"


def _flags(parser) -> None:
    parser.add_argument("--url", default=None, help="the app's base URL (default: http://serve.host:serve.port)")
    parser.add_argument("--api-key", default=None,
                        help=f"API key with the recommend and events scopes (default: ${API_KEY_ENV})")
    parser.add_argument("--events", type=int, default=200, help="how many of the newest events to replay")
    parser.add_argument("--requests", type=int, default=0,
                        help="extra recommendation requests after the replay (every fifth for an unknown visitor)")
    parser.add_argument("--source", choices=["lake", "movielens"], default="lake", help="where the events come from")
    parser.add_argument("--snapshot", default=None, help="lake snapshot (default: latest)")
    parser.add_argument("--k", type=int, default=10, help="list length asked for (the hit-rate is HR@k)")


def newest_events(cfg, source: str, n: int, snapshot_id: str | None = None):
    """The ``n`` newest events (time order) of the lake snapshot or of MovieLens-100K."""
    if source == "movielens":
        from aisys.data.movielens import load_movielens

        events = load_movielens(cfg.data.movielens, cfg.paths.cache_dir)
    else:
        from aisys.data.lake import Lake
        from aisys.schemas import EVENT_SCHEMA

        lake = Lake.from_config(cfg.paths)
        if (lake.get(snapshot_id) if snapshot_id else lake.latest()) is None:
            raise SystemExit(f"the lake at {cfg.paths.lake_uri} has no snapshot to replay: ingest first")
        events = lake.read_events(snapshot_id, columns=list(EVENT_SCHEMA.names))
    if events.num_rows == 0:
        raise SystemExit(f"no events to replay from {source}")
    # split_live_tail keeps at least one row of history: replaying the whole table takes n = rows - 1.
    return split_live_tail(events, n)[1]


def api_key(cfg, given: str | None) -> str | None:
    """--api-key, else $AISYS_API_KEY, else the workspace's local dev admin key (None when there is none)."""
    if given or os.environ.get(API_KEY_ENV):
        return given or os.environ[API_KEY_ENV]
    from aisys.gateway import read_dev_keys

    return read_dev_keys(cfg).get("dev-admin")


def _json_ready(value):
    # JSON has no NaN: an unmeasured figure (no request scored) is null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    cfg, args = parse(__doc__, _flags)
    if args.events < 1:
        raise SystemExit("--events must be at least 1")
    key = api_key(cfg, args.api_key)
    if key is None and cfg.gateway.auth:
        raise SystemExit(f"no API key: pass --api-key or set {API_KEY_ENV} (or --set gateway.auth=false "
                         "for an app that runs without auth)")
    from aisys.serving.app import base_url

    url = (args.url or base_url(cfg)).rstrip("/")
    live = newest_events(cfg, args.source, args.events, args.snapshot)
    import httpx

    from rich.console import Console

    from aisys.progress import StageProgress

    total = 2 * live.num_rows + args.requests + 2  # per event a GET and a POST, the extra GETs, /model, /healthz

    class CountingClient(httpx.Client):
        """Counts requests for the progress lines on stderr (a bar on a terminal); answers are untouched."""

        def __init__(self, bar: StageProgress, **kwargs) -> None:
            super().__init__(**kwargs)
            self.bar = bar

        def request(self, method, url, **kwargs):
            response = super().request(method, url, **kwargs)
            self.bar.advance(f"last {method} {str(url).split('?')[0]} -> {response.status_code}")
            return response

    try:
        with StageProgress(Console(stderr=True), "replay", "requests", total) as bar, \
                CountingClient(bar, base_url=url, timeout=30.0) as client:
            summary = replay_live_traffic(url, live, args.requests, k=args.k, api_key=key, client=client)
    except httpx.HTTPError as err:  # refused, timed out, dropped: the app is not reachable at that URL
        raise SystemExit(f"replay against {url} failed: {type(err).__name__}: {err}") from None
    print(json.dumps(_json_ready({"url": url, "source": args.source, **summary}), default=str), flush=True)
    sys.exit(1 if summary["errors"] else 0)
