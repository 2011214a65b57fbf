"""What a failure means to a shell: one line on stderr and a documented exit code.

:data:`EXIT_CODES` is the table the CLI's ``--help`` epilog, README.md and docs/operations.md show.
:func:`classify` maps an exception to ``(exit code, one-line message)`` without importing MLflow or Ray
(their exceptions are recognised by class name), so it is pure and cheap to test.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a known failure of the input or the stage: missing file or snapshot, invalid data, a failed run
EXIT_USAGE = 2  # bad command line or configuration (argparse also exits 2)
EXIT_REFUSED = 3  # the promotion gate refused the candidate: it stays registered, not champion
EXIT_NOT_FOUND = 4  # the registry lacks what was asked for: no champion, no challenger, no such version
EXIT_REGISTRY = 5  # MLflow (tracking or registry) failed
EXIT_BUSY = 6  # another process held the promotion lock past the timeout: retry later
EXIT_UNREACHABLE = 7  # a service refused the connection (Ray, an MLflow server, the HTTP API)
EXIT_INTERNAL = 70  # an unexpected error (a bug): -v shows the traceback
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
EXIT_BROKEN_PIPE = 141  # stdout's reader went away (`aisys config | head -1`): stop quietly, 128 + SIGPIPE

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "done (train, promote, retrain: the new version is champion)"),
    (EXIT_FAILED, "failed: missing file or lake snapshot, invalid data, a failed training run"),
    (EXIT_USAGE, "usage or configuration error (unknown key, bad value, bad flag)"),
    (EXIT_REFUSED, "the gate refused the new version: it stays registered, the champion is unchanged"),
    (EXIT_NOT_FOUND, "not in the registry: no champion, no challenger, no such version, nothing to roll back"),
    (EXIT_REGISTRY, "MLflow error (tracking store or registry)"),
    (EXIT_BUSY, "another promotion holds the registry lock: retry later"),
    (EXIT_UNREACHABLE, "connection refused (Ray cluster, MLflow server, HTTP API)"),
    (EXIT_INTERNAL, "unexpected error, a bug: run with -v for the traceback"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
    (EXIT_BROKEN_PIPE, "stdout was closed by its reader (e.g. `| head`): stopped quietly"),
)

_MAX_MESSAGE = 400


def exit_code_table(indent: str = "  ") -> str:
    """The exit codes as aligned text lines (the ``--help`` epilog)."""
    return "\n".join(f"{indent}{code:>3}  {meaning}" for code, meaning in EXIT_CODES)


def _class_names(err: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(err).__mro__}


def one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    """The first non-empty line of ``text``, cut to ``limit`` characters."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def joined(text: str, limit: int = 2 * _MAX_MESSAGE) -> str:
    """All lines of ``text`` on one line: ``head item; item`` (a config error lists one problem a line)."""
    lines = [part.strip().removeprefix("- ") for part in str(text).splitlines() if part.strip()]
    if not lines:
        return ""
    line = lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _refused(err: BaseException) -> bool:
    names = _class_names(err)
    if isinstance(err, ConnectionError) or names & {"ConnectionRefusedError", "ConnectError", "NewConnectionError"}:
        return True
    text = str(err)
    return "Connection refused" in text or "Failed to establish a new connection" in text


def classify(err: BaseException) -> tuple[int, str]:
    """``(exit code, one-line message)`` for an exception raised by a verb (see :data:`EXIT_CODES`)."""
    from aisys.config import ConfigError
    from aisys.registry.lock import LockTimeout

    names = _class_names(err)
    message = one_line(str(err)) or type(err).__name__
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(err, BrokenPipeError):
        return EXIT_BROKEN_PIPE, ""
    if isinstance(err, ConfigError) or "ValidationError" in names:
        return EXIT_USAGE, joined(str(err))
    if isinstance(err, LockTimeout):
        return EXIT_BUSY, f"{message} (another promotion or rollback is running: retry when it ends)"
    if _refused(err):
        return EXIT_UNREACHABLE, f"cannot connect: {message}"
    if "MlflowException" in names:
        return EXIT_REGISTRY, f"MLflow: {message}"
    if isinstance(err, LookupError) and not isinstance(err, (KeyError, IndexError)):
        return EXIT_NOT_FOUND, message
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return EXIT_FAILED, message
    if isinstance(err, (ValueError, KeyError, OSError)) or names & {"ReconciliationError", "TrainingFailedError"}:
        return EXIT_FAILED, message
    if isinstance(err, RuntimeError) and message.startswith(("Ray Train run failed", "every trial")):
        return EXIT_FAILED, message
    return EXIT_INTERNAL, f"unexpected {type(err).__name__}: {message} (run with -v for the traceback)"
