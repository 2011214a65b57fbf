"""Shared argument parsing for the `ray job submit` entrypoints in this folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# `ray job submit --working-dir .` runs from a copy of the repo: make the copy's
# package importable even where aisys is not installed in the job's Python.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aisys.config import AppConfig, load_config  # noqa: E402


def parse(description: str, extra=None) -> tuple[AppConfig, argparse.Namespace]:
    """Parse ``--config`` and ``--set`` (plus any job-specific flags) into one AppConfig."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="configs/local.yaml", help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    if extra:
        extra(parser)
    args = parser.parse_args()
    return load_config(args.config, args.overrides), args
