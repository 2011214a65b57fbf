"""The notebooks in `notebooks/`: committed without outputs, and executed top to bottom with nbclient on small data.

Each run injects a cell after the notebook's `parameters` cell (as papermill does) that points it at a temporary
workspace, tiny data and a free port. The kernel is this venv's Python (a kernelspec written to a temporary
folder), started in `notebooks/` as Jupyter would. What the notebooks print in their `summary` cell and what they
leave in the workspace are checked, not just the absence of errors.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

from tests.conftest import seed_mlflow_db
from tests.e2e.conftest import free_port
from tests.e2e.test_jobs_more import N_USERS, write_tiny_movielens

pytestmark = pytest.mark.e2e  # the two that execute a notebook are also `slow`

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
EXPECTED = {"01-walkthrough.ipynb", "02-quality.ipynb"}
KERNEL = "aisys-venv"


def _tagged(nb, tag: str) -> list[int]:
    return [i for i, cell in enumerate(nb.cells) if tag in cell.get("metadata", {}).get("tags", [])]


def test_committed_notebooks_are_stripped_and_parameterised():
    # `*-out.ipynb` are local executed copies (notebooks/README.md), never committed.
    found = {path.name for path in NOTEBOOKS.glob("*.ipynb") if not path.stem.endswith("-out")}
    assert found >= EXPECTED, f"missing: {sorted(EXPECTED - found)}"
    for name in sorted(found):
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        for n, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, \
                    f"{name} cell {n} holds outputs: strip them before committing"
        assert len(_tagged(nb, "parameters")) == 1, f"{name} needs exactly one cell tagged 'parameters'"
        assert len(_tagged(nb, "summary")) == 1, f"{name} needs exactly one cell tagged 'summary'"


def execute(name: str, parameters: dict, tmp_path: Path):
    """Run notebook ``name`` with ``parameters`` injected after its parameters cell; return the executed notebook."""
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    at = _tagged(nb, "parameters")[0]
    source = "# Parameters injected by tests/e2e/test_notebooks.py\n" + "\n".join(
        f"{key} = {value!r}" for key, value in parameters.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))

    # A kernelspec naming this interpreter: the kernel must import the venv's aisys, whatever `python` is on PATH.
    spec_dir = tmp_path / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "aisys venv", "language": "python",
    }))
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)
    # The kernel starts its own private Ray: it must not find this test session's Ray through the environment.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                "IPYTHONDIR": str(tmp_path / "ipython"), "MPLBACKEND": "Agg"})
    client = NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=env)
    return nb


def summary_of(nb) -> dict:
    """The JSON the notebook's `summary` cell printed."""
    cell = nb.cells[_tagged(nb, "summary")[0]]
    text = "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")
    return json.loads(text[text.index("{"):])


@pytest.mark.slow
def test_walkthrough_runs_data_to_drift_on_a_tiny_shop(tmp_path, mlflow_db_template):
    workspace = tmp_path / "ws"
    seed_mlflow_db(mlflow_db_template, workspace / "mlflow.db")  # the workspace's default tracking URI
    nb = execute("01-walkthrough.ipynb", {
        "workspace": str(workspace),
        "n_users": 60, "n_items": 40, "n_sessions": 500, "days": 10,
        "shift": {"taste_shift": 0.8, "new_items": 15, "price_change": 0.5},
        "epochs": 2,
        "port": free_port(),
        "extra_overrides": ["model.embedding_dim=16", "model.n_layers=1", "features.max_seq_len=20",
                            "model.stages.refit_sasrec=false",
                            "monitor.enabled=false", "online.follow_alias_every_s=0"],
    }, tmp_path)
    summary = summary_of(nb)

    # Ingest: the injected faults were quarantined, the rest written as the snapshot the model was trained on.
    assert summary["ingest"]["quarantined"] > 0 and summary["ingest"]["written"] > 0
    from aisys.config import load_config
    from aisys.data.lake import Lake

    cfg = load_config(None, [f"paths.workspace={workspace}"], environ={})
    assert Lake.from_config(cfg.paths).latest().snapshot_id == summary["snapshot_id"]
    assert summary["model_version"] == "1" and summary["served_version"] == "1"
    # Served over HTTP without a failed request.
    replay = summary["replay"]
    assert replay["errors"] == 0 and replay["events_posted"] == 60 and replay["requests"] >= 60
    assert 0.0 <= replay["online_hr@10"] <= 1.0
    # Drift: the shifted window is flagged, by the fast statistics and by Evidently, more than the unshifted one.
    assert summary["worst_psi"]["shifted"] > cfg.monitor.psi_threshold
    assert summary["worst_psi"]["shifted"] > summary["worst_psi"]["no shift"]
    assert "item_popularity" in summary["drifted_features"]["shifted"]
    assert summary["evidently_drifted_columns"]["shifted"]
    for path in summary["evidently_reports"].values():
        assert Path(path).is_file() and Path(path).stat().st_size > 10_000
        assert Path(path).is_relative_to(Path(cfg.paths.lake_uri) / "reports" / "drift")


@pytest.mark.slow
def test_quality_notebook_shows_the_committed_table_and_runs_a_live_evaluation(tmp_path):
    quality = REPO / "benchmarks" / "results" / "quality.json"
    assert quality.is_file(), f"{quality} is missing: the notebook shows the committed benchmark table"
    data = write_tiny_movielens(tmp_path / "ml-100k")
    workspace = tmp_path / "ws"
    nb = execute("02-quality.ipynb", {
        "quality_json": str(quality),
        "movielens_path": str(data),
        "workspace": str(workspace),
        "live_models": ["pop", "ease"],
        "live_split": "loo",
    }, tmp_path)
    summary = summary_of(nb)

    committed = json.loads(quality.read_text())["summary"]
    assert summary["table_rows"] == len(committed)
    assert set(summary["table_models"]) == {row["model"] for row in committed}
    assert summary["figures"] >= 3
    live = summary["live"]
    assert set(live) == {"pop", "ease"}
    assert all(live[m]["n_users"] == N_USERS and 0.0 <= live[m]["ndcg@10"] <= 1.0 for m in live)
    import pyarrow.parquet as pq

    export = pq.read_table(summary["export"])
    assert export.column_names == ["user_id", "rank", "item_id"]
    assert len(set(export.column("user_id").to_pylist())) == N_USERS
    assert Path(summary["export"]).is_relative_to(workspace)
