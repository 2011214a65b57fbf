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
