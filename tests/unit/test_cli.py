"""The `aisys` command: help for every verb, and config errors as CLI messages, not tracebacks."""

import subprocess
import sys

import pytest

from aisys.cli import VERBS, build_parser, main


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([verb, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--set" in out


def test_required_verbs_exist():
    assert {"data", "ingest", "train", "serve", "demo"} <= set(VERBS)


def test_bad_override_is_a_message_naming_the_key(capsys):
    assert main(["config", "--set", "train.epochz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.epochz'" in err
    assert "Traceback" not in err


def test_missing_event_file_is_a_message(tmp_path, capsys):
    code = main(["ingest", str(tmp_path / "missing.jsonl"), "--set", f"paths.workspace={tmp_path}"])
    assert code == 1
    assert "no such event file" in capsys.readouterr().err


def test_console_script_runs():
    exe = [sys.executable, "-m", "aisys.cli", "--help"]
    out = subprocess.run(exe, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "demo" in out.stdout


def test_evaluate_offers_every_model_the_runner_knows():
    from aisys.cli import EVALUATE_MODELS
    from aisys.evaluation.runner import MODEL_NAMES

    assert tuple(EVALUATE_MODELS) == tuple(MODEL_NAMES)


# --------------------------------------------------------------------------- the first ten minutes (issue 16)

import io  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

from rich.console import Console  # noqa: E402

from aisys.cli.errors import EXIT_CODES, classify  # noqa: E402
from aisys.cli.verbs import train_progress  # noqa: E402
from aisys.progress import Heartbeat, PhasedProgress, StageProgress  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
AISYS = [sys.executable, "-m", "aisys.cli"]


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*AISYS, *args], capture_output=True, text=True, timeout=120, cwd=REPO, **kwargs)


def test_version_names_aisys_and_its_stack():
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("aisys 0.1.0 (ray ") and "mlflow " in out.stdout


def test_help_documents_every_exit_code():
    out = run_cli("--help")
    for code, meaning in EXIT_CODES:
        assert f"{code:>3}  {meaning}" in out.stdout


def test_config_piped_into_head_ends_quietly():
    """`aisys config | head -1` in a real shell pipeline: the first line, no traceback."""
    bash = shutil.which("bash")
    assert bash
    cmd = f"set -o pipefail; {' '.join(AISYS)} config | head -1"
    out = subprocess.run([bash, "-c", cmd], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.stdout == "paths:\n"
    assert out.stderr == "", out.stderr
    assert out.returncode in (0, 141)


def test_a_reader_that_closes_first_gets_exit_141_and_no_traceback():
    """The reader has gone before aisys writes (as `| head -0` would): a real EPIPE on the first write."""
    proc = subprocess.Popen([*AISYS, "config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.close()  # nobody will ever read: the child's write fails with EPIPE
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert stderr == "", stderr


class MlflowException(Exception):
    """Stands in for mlflow.exceptions.MlflowException: recognised by class name, without importing MLflow."""


@pytest.mark.parametrize("error, code, words", [
    (__import__("aisys.registry.lock", fromlist=["LockTimeout"]).LockTimeout("lock /x/y.lock held for 30 s"), 6,
     "retry"),
    (MlflowException("RESOURCE_DOES_NOT_EXIST: Registered Model with name=m not found\ndetails"), 5, "MLflow: "),
    (MlflowException("API request to http://127.0.0.1:5000/api failed: Connection refused"), 7, "cannot connect"),
    (ConnectionRefusedError(111, "Connection refused"), 7, "cannot connect"),
    (ConnectionError("Could not find any running Ray instance"), 7, "Ray instance"),
    (LookupError("model 'm' has no 'champion' alias: nothing to roll back"), 4, "nothing to roll back"),
    (FileNotFoundError("the lake at /x has no snapshot yet: run `aisys ingest` first"), 1, "aisys ingest"),
    (ValueError("snapshot 's': no user has the 3 interactions"), 1, "3 interactions"),
    (RuntimeError("Ray Train run failed: worker died"), 1, "worker died"),
    (RuntimeError("something nobody expected"), 70, "-v for the traceback"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_known_failures_map_to_one_line_and_a_documented_code(error, code, words):
    got_code, message = classify(error)
    assert got_code == code
    assert words in message and "\n" not in message
    assert code in {c for c, _ in EXIT_CODES}


def test_the_config_error_lists_every_problem_on_one_line():
    from aisys.config import load_config

    with pytest.raises(Exception) as info:
        load_config(None, ["train.epochz=3", "train.epochs=x"])
    code, message = classify(info.value)
    assert code == 2 and "\n" not in message
    assert "unknown key 'train.epochz'" in message and "train.epochs" in message


@pytest.mark.parametrize("error, code", [
    (__import__("aisys.registry.lock", fromlist=["LockTimeout"]).LockTimeout("held"), 6),
    (MlflowException("INVALID_PARAMETER_VALUE: bad"), 5),
    (KeyboardInterrupt(), 130),
    (BrokenPipeError(), 141),
])
def test_main_turns_a_failing_verb_into_its_exit_code_without_a_traceback(monkeypatch, capsys, error, code):
    from aisys.cli import VERBS

    def failing(cfg, args):
        raise error

    monkeypatch.setitem(VERBS, "config", (failing, "fails"))
    assert main(["config"]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= 1


def test_verbose_shows_the_traceback(monkeypatch, capsys):
    from aisys.cli import VERBS

    def failing(cfg, args):
        raise RuntimeError("deep inside")

    monkeypatch.setitem(VERBS, "config", (failing, "fails"))
    assert main(["config", "-v"]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "deep inside" in err


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


def test_off_a_terminal_progress_is_plain_periodic_lines():
    console, buffer = plain_console()
    clock = FakeClock()
    with StageProgress(console, "aisys train", "epoch", 30, every_s=10, clock=clock) as bar:
        for epoch in range(1, 31):
            clock.now = epoch * 1.0  # one epoch a second
            bar.update(epoch, f"loss {1 / epoch:.4f}")
    lines = buffer.getvalue().splitlines()
    # The first epoch, then one line per 10 s, and the last: not 30 lines, not none.
    assert lines[0] == "aisys train: epoch 1/30 (3%) loss 1.0000 [0:00:01]"
    assert lines[-1] == "aisys train: epoch 30/30 (100%) loss 0.0333 [0:00:30]"
    assert 3 <= len(lines) <= 5, lines
    assert "\x1b[" not in buffer.getvalue()  # no control codes in a log file


def test_training_callbacks_print_epochs_with_their_metrics():
    console, buffer = plain_console()
    with PhasedProgress(console, "aisys train", every_s=0) as progress:
        on_epoch, on_step = train_progress(progress, epochs=2)
        on_step("train")
        on_epoch({"epoch": 0, "loss": 4.3263, "valid_ndcg@10": 0.4104, "epoch_s": 0.1})
        on_epoch({"epoch": 1, "loss": 4.2509, "valid_ndcg@10": 0.4913, "epoch_s": 0.1})
        on_step("choose")
        on_step("refit")
        on_step("gate")
    text = buffer.getvalue()
    assert "aisys train: epoch 0/2 (0%) starting Ray Train workers" in text
    assert "aisys train: epoch 1/2 (50%) loss 4.3263 valid_ndcg@10 0.4104" in text
    assert "aisys train: epoch 2/2 (100%) loss 4.2509 valid_ndcg@10 0.4913" in text
    assert "aisys train: fitting the generators, tuning the blend and choosing the ranking stage on valid" in text
    assert "aisys train: refitting SASRec on train + valid" in text
    assert "aisys train: gating the new version against the champion" in text


def test_heartbeat_says_still_working_when_nothing_else_printed():
    console, buffer = plain_console()
    import time

    with Heartbeat(console, "aisys evaluate", every_s=0.5) as beat:
        beat.step("refit on the test task")
        time.sleep(2.2)
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("aisys evaluate: refit on the test task [")
    assert any("still working: refit on the test task" in line for line in lines[1:]), lines


def test_a_verb_run_into_a_file_prints_progress_lines(tmp_path):
    """`aisys data > file 2>&1`: the step is announced as a line (a spinner would print nothing there)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths: {{workspace: {tmp_path / 'ws'}}}\ndata: {{raw_dir: {tmp_path / 'raw'}, "
                   "simulator: {n_users: 20, n_items: 10, n_sessions: 40, days: 2}}\n")
    out = run_cli("data", "--config", str(cfg), env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "aisys data: generating events from simulator [0:00:00]" in out.stderr
    assert "wrote" in out.stdout and "rows to" in out.stdout


def test_an_empty_registry_is_exit_4_with_what_to_do(tmp_path, capsys):
    """No champion, no challenger: serve, promote and rollback say so in one line (MLflow on SQLite, no Ray)."""
    sets = ["--set", f"paths.workspace={tmp_path / 'ws'}", "--set",
            f"paths.mlflow_tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "--set",
            f"paths.mlflow_artifact_uri={tmp_path / 'art'}"]
    for verb, words in (("serve", "run `aisys train` first"), ("promote", "challenger"),
                        ("rollback", "nothing to roll back")):
        assert main([verb, *sets]) == 4, verb
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # a progress line ("evaluating ...") may come first
        assert last.startswith(f"aisys {verb}: ") and words in last, err
        assert "Traceback" not in err


def test_evaluate_off_a_terminal_prints_its_epochs_and_steps(tmp_path, capsys):
    """`aisys evaluate > log` used to print nothing for minutes: now each validation and each step is a line."""
    from tests.unit.test_evaluate_cli import write_grouplens

    data = write_grouplens(tmp_path / "ml")
    code = main([
        "evaluate", "--model", "sasrec", "--export", str(tmp_path / "top.parquet"),
        "--set", f"data.movielens.path={data}", "--set", f"paths.workspace={tmp_path / 'ws'}",
        "--set", "train.epochs=2", "--set", "train.eval_every=1", "--set", "model.embedding_dim=16",
    ])
    assert code == 0
    err = capsys.readouterr().err
    assert "aisys evaluate: sasrec loo: fitting on the valid task's train, up to 2 epochs [" in err
    assert "aisys evaluate: sasrec loo: epoch 1/2 valid ndcg@10 " in err
    assert "aisys evaluate: sasrec loo: epoch 2/2 valid ndcg@10 " in err
    assert "aisys evaluate: sasrec loo: refit on the test task's train" in err
    assert "\x1b[" not in err


def test_tune_progress_callback_forwards_trials_and_survives_tunes_pickling():
    import threading
    from types import SimpleNamespace

    import cloudpickle

    from aisys.tuning.sweep import _trial_callback

    events, lock = [], threading.RLock()  # a display holds locks: Tune must still be able to pickle the callback

    def on_trial(event):
        with lock:
            events.append(event)

    callback = _trial_callback(on_trial, "valid_ndcg@10", total=2)
    trial = SimpleNamespace(trial_id="t1")
    callback.on_trial_result(1, [], trial, {"epoch": 0, "valid_ndcg@10": 0.25})
    callback.on_trial_complete(2, [], trial)
    assert events == [
        {"event": "result", "trial_id": "t1", "epoch": 0, "valid_ndcg@10": 0.25, "finished": 0, "total": 2},
        {"event": "complete", "trial_id": "t1", "epoch": None, "valid_ndcg@10": None, "finished": 1, "total": 2},
    ]
    restored = cloudpickle.loads(cloudpickle.dumps(callback))
    restored.on_trial_complete(3, [], SimpleNamespace(trial_id="t2"))  # a restored sweep reports to no one
    assert len(events) == 2


def test_the_readme_documents_the_same_exit_codes_as_the_cli():
    import re

    section = (REPO / "README.md").read_text().split("**Exit codes.**", 1)[1].split("\n\n", 2)[1]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    assert documented == {code for code, _ in EXIT_CODES}
