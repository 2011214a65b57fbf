"""Where the CLI writes, and how verbs start Ray and MLflow quietly.

Results (tables, the effective config, a created key) go to **stdout**; progress (bars, spinners, periodic
lines) and errors go to **stderr**, so ``aisys train > result.txt`` keeps a clean result file and still
shows progress, and a pipe gets only results. Whether progress is a bar or plain lines follows whether stderr
is a terminal.
"""

from __future__ import annotations

import argparse
import os
import sys

from aisys.config import AppConfig

# Off a terminal rich would assume 80 columns and cut table cells ("20261204T1…") in a log or a file.
PLAIN_WIDTH = 160


def _width(stream) -> int | None:
    if os.environ.get("COLUMNS") or stream.isatty():
        return None  # rich's own detection
    return PLAIN_WIDTH


def out():
    """A rich console on stdout (results). Long lines are left to the terminal to wrap (soft wrap): in a file
    or a log a sentence stays on one line."""
    from rich.console import Console

    return Console(soft_wrap=True, width=_width(sys.stdout))


def err():
    """A rich console on stderr (progress and notes)."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, width=_width(sys.stderr))


def is_verbose(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "verbose", False))


def start_ray(cfg: AppConfig, args: argparse.Namespace):
    """Start or join Ray for a verb: without ``-v`` worker logs stay in Ray's log files, not the console."""
    from aisys.runtime import init_ray, quiet_ray_data

    verbose = is_verbose(args)
    ray = init_ray(cfg, log_to_driver=verbose)
    if not verbose:
        quiet_ray_data()
    return ray


def quiet_registry(args: argparse.Namespace) -> None:
    """Without ``-v``, MLflow's direct prints ("Successfully registered model ...") are silenced."""
    if not is_verbose(args):
        from aisys.registry.mlflow_registry import quiet_mlflow

        quiet_mlflow()
