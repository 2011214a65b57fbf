"""The ``aisys deploy-config`` verb: the Serve YAMLs and the RayService's serveConfigV2, generated from configs/.

- ``aisys deploy-config --write`` regenerates every checked-in file from its config file
  (:data:`aisys.serving.deploy_config.GENERATED`); ``--config FILE`` limits it to the files made from FILE.
- ``aisys deploy-config --check`` changes nothing: it prints what would change and exits 1, naming each file
  that differs and the command that fixes it (``make test`` runs the same check).
- ``aisys deploy-config [--config FILE] [--set k=v ...]`` prints the Serve YAML for that config on stdout
  (a variant for a deployment of your own; the checked-in files never take ``--set``).

Paths are relative to the current folder: run it from the repository root.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Callable

from aisys.config import DEFAULT_CONFIG_PATH, AppConfig, ConfigError
from aisys.serving import deploy_config


def cmd_deploy_config(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Generate the Serve YAMLs (serve_configs/) and the RayService's serveConfigV2 from the config files."""
    root = Path.cwd()
    if not (args.write or args.check):
        source = args.config or DEFAULT_CONFIG_PATH.as_posix()
        text = deploy_config.render_serve_file(
            root, source, args.overrides, target="<this file>",
            regenerate=deploy_config.command_line(args.config, args.overrides) + " > FILE")
        sys.stdout.write(text)
        return 0
    if args.overrides:
        raise ConfigError("--set does not apply to --write/--check: the checked-in files come from their config "
                          "files alone; put the value in the config file (or print a variant without --write)")
    files = deploy_config.select(args.config)
    if args.write:
        changed = {g.path for g in deploy_config.write(root, files)}
        for generated in files:
            state = "wrote" if generated.path in changed else "up to date:"
            print(f"{state} {generated.path} (from {generated.source})")
        return 0
    stale = deploy_config.stale(root, files)
    for generated, expected in stale:
        current = (root / generated.path).read_text() if (root / generated.path).is_file() else ""
        sys.stdout.writelines(difflib.unified_diff(
            current.splitlines(keepends=True), expected.splitlines(keepends=True),
            fromfile=f"{generated.path} (checked in)", tofile=f"{generated.path} (from {generated.source})"))
    if not stale:
        print(f"up to date: {', '.join(g.path for g in files)}")
        return 0
    fix = deploy_config.WRITE_COMMAND + (f" --config {args.config}" if args.config else "")
    names = ", ".join(f"{g.path} (from {g.source})" for g, _ in stale)
    # A ValueError is exit code 1 with this one line on stderr (aisys.cli.errors), after the diff on stdout.
    raise deploy_config.OutOfDate(f"out of date: {names}; regenerate with `{fix}` and commit the result")


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``deploy-config`` to ``sub``; ``common`` adds ``--config``/``--set``."""
    parser = sub.add_parser("deploy-config", help="generate the Serve YAMLs and the RayService from configs/",
                            description=(cmd_deploy_config.__doc__ or "").strip() + "\n\n" + (__doc__ or ""),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    common(parser)
    parser.set_defaults(func=cmd_deploy_config)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="regenerate the checked-in files from their configs")
    mode.add_argument("--check", action="store_true",
                      help="exit 1 naming each checked-in file that differs from its config (changes nothing)")
