"""Ingest raw event files into a new lake snapshot:
`ray job submit --working-dir . -- python jobs/ingest.py --config configs/local.yaml [FILES...]`.
Without files it generates the configured source's events first."""

import json

from _entry import parse

from aisys import pipeline


def _flags(parser):
    parser.add_argument("paths", nargs="*", help="raw event files; none = generate from the configured source")


if __name__ == "__main__":
    cfg, args = parse(__doc__, _flags)
    paths = list(args.paths) or [pipeline.generate_raw_events(cfg).path]
    manifest = pipeline.ingest(cfg, paths, source="job:ingest")
    print(json.dumps({"snapshot_id": manifest.snapshot_id, "counts": manifest.counts}))
