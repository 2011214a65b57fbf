"""The parser and :func:`main`: global flags, one config for every verb, failures as one line and an exit code.

Every verb takes ``--config PATH`` and repeatable ``--set section.key=value`` overrides, builds one
:class:`~aisys.config.AppConfig` and hands it to the stage. ``-v/--verbose`` (before or after the verb) brings
back Ray's and MLflow's own console output and prints tracebacks; ``--version`` prints the versions.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Sequence

from aisys.cli.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, classify, exit_code_table
from aisys.cli.verbs import EVALUATE_MODELS, VERBS, add_verb_arguments
from aisys.config import load_config

__all__ = ["EVALUATE_MODELS", "VERBS", "build_parser", "main", "version_text"]

EPILOG = f"""\
exit codes:
{exit_code_table()}

Progress goes to stderr (a bar on a terminal, a line every few seconds otherwise); results go to stdout.
Docs: README.md ("The CLI") and docs/operations.md.
"""


def version_text() -> str:
    """``aisys 0.1.0 (ray 2.60.0, mlflow 3.17.2, torch 2.13.0, python 3.11.9)``, without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    try:
        own = version("aisys")
    except PackageNotFoundError:
        from aisys import __version__ as own
    parts = ", ".join(f"{name} {installed(name)}" for name in ("ray", "mlflow", "torch"))
    return f"aisys {own} ({parts}, python {sys.version.split()[0]})"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="YAML config (default: configs/local.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.epochs=5 (repeatable)",
    )
    # SUPPRESS: given after the verb it sets the flag; absent, the top-level -v's value stands.
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show Ray's and MLflow's own logs and warnings, and tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aisys", description="A real-time recommendation engine on Ray.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument("-v", "--verbose", action="store_true", default=False,
                        help="show Ray's and MLflow's own logs and warnings, and tracebacks")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name, (func, help_text) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=(func.__doc__ or help_text).strip(), epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(p)
        p.set_defaults(func=func)
        add_verb_arguments(name, p)
    from aisys.cli.access_verbs import register as register_keys
    from aisys.cli.model_verbs import register as register_registry

    register_registry(sub, _common)  # tune, promote, rollback
    register_keys(sub, _common)  # keys create|list|revoke, sessions revoke|list
    from aisys.serving.cli_verbs import register as register_deploy_config

    register_deploy_config(sub, _common)  # deploy-config --write|--check
    return parser


def _detach_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture it): nothing to detach
        pass


def _say(verb: str, message: str) -> None:
    try:
        print(f"aisys {verb}: {message}", file=sys.stderr)
    except (OSError, ValueError):  # stderr is gone too: the exit code is all that is left
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    from aisys.runtime import quiet_console

    quiet_console(verbose)
    verb = args.verb
    try:
        cfg = load_config(args.config, args.overrides)
        code = args.func(cfg, args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler, not at interpreter exit
        return code
    except BrokenPipeError:
        _detach_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _say(verb, "interrupted")
        return EXIT_INTERRUPTED
    except Exception as err:  # every failure ends as one line and a documented code (aisys.cli.errors)
        code, message = classify(err)
        if code == EXIT_BROKEN_PIPE:
            _detach_stdout()
            return code
        if verbose:
            traceback.print_exc()
        _say(verb, message)
        return code
