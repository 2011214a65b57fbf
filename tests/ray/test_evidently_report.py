"""Evidently drift reports: an HTML file in the lake that names the drifted columns, linked from MLflow.

No Ray here: the report is a plain function the monitor actor calls. It sits
with the Ray tests because importing Evidently and migrating a new MLflow
SQLite store take seconds.
"""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from aisys.config import SimulatorConfig
from aisys.data.simulator import drift_midpoint, simulate_events
from aisys.monitoring.evidently_report import (
    DRIFTED_TAG,
    REPORT_TAG,
    log_report_to_mlflow,
    report_frame,
    write_drift_report,
)
from aisys.monitoring.profile import ReferenceProfile, build_profile
from aisys.registry.mlflow_registry import configure_mlflow

pytestmark = pytest.mark.slow

SIM = dict(n_users=300, n_items=150, n_sessions=2000, days=10, seed=5)
ROWS = 1500  # above 1,000 rows Evidently uses distances (Wasserstein, Jensen-Shannon), not p-values


def reference_and_window(**knobs) -> tuple[ReferenceProfile, pd.DataFrame, pd.DataFrame]:
    """The profile of the simulator's first half, and row samples of both halves, as report frames."""
    cfg = SimulatorConfig(**SIM, **knobs)
    events = simulate_events(cfg).to_pandas()
    mid = pd.Timestamp(drift_midpoint(cfg))
    before, after = events[events["timestamp"] < mid], events[events["timestamp"] >= mid]
    profile = build_profile(before)
    # Rows drawn across each half, not its last sessions: the drift tests assume independent rows.
    # The reference rows come from the later part of the training half, as the monitor's do.
    later = before.iloc[len(before) // 2 :]
    reference = report_frame(later.sample(min(ROWS, len(later)), random_state=0), profile)
    return profile, reference, report_frame(after.sample(ROWS, random_state=1), profile)


def test_report_is_written_into_the_lake_and_names_the_drifted_columns(tmp_path):
    _, reference, current = reference_and_window(price_change=0.6, new_items=40)
    lake = tmp_path / "lake"
    report = write_drift_report(str(lake), reference, current)
    written = list((lake / "reports" / "drift").glob("*.html"))
    assert [str(p) for p in written] == [report.path]
    html = written[0].read_text()
    assert "<html" in html[:1000].lower()
    assert "price" in html and "item_popularity" in html
    assert set(report.columns) == {"price", "category", "event_type", "item_popularity"}
    assert {"price", "item_popularity"} <= set(report.drifted_columns)
    assert "event_type" not in report.drifted_columns  # the knobs do not touch the funnel
    assert (report.n_reference, report.n_current) == (ROWS, ROWS)


def test_a_window_like_its_reference_has_no_drifted_price_popularity_or_funnel(tmp_path):
    # (The simulator's category mix moves between halves with which heavy users shop: not asserted.)
    _, reference, current = reference_and_window()
    report = write_drift_report(str(tmp_path / "lake"), reference, current)
    assert not {"price", "item_popularity", "event_type"} & set(report.drifted_columns)


def test_new_items_count_in_the_tail_bucket_of_the_report():
    profile, _, _ = reference_and_window()
    tail = profile.popularity.bucket_names[-2]
    frame = report_frame(pd.DataFrame({"item_id": ["never-seen"], "category": ["c1"]}), profile)
    assert frame["item_popularity"].tolist() == [tail]


def test_columns_empty_on_one_side_are_left_out_and_nothing_to_compare_is_an_error(tmp_path):
    _, reference, current = reference_and_window()
    report = write_drift_report(str(tmp_path / "lake"), reference, current.assign(price=float("nan")))
    assert "price" not in report.columns and "category" in report.columns
    with pytest.raises(ValueError, match="no column to compare"):
        write_drift_report(str(tmp_path / "lake"), reference[[]], current[[]])


def test_report_is_linked_from_an_mlflow_run_and_a_model_version(small_config, tmp_path):
    _, reference, current = reference_and_window(price_change=0.6)
    report = write_drift_report(small_config.paths.lake_uri, reference, current)
    configure_mlflow(small_config)
    with mlflow.start_run() as run:
        mlflow.log_param("kind", "test")
    client = mlflow.MlflowClient()
    name = small_config.registry.model_name
    client.create_registered_model(name)
    version = client.create_model_version(name, source=str(tmp_path), run_id=run.info.run_id).version

    linked = log_report_to_mlflow(small_config, report.path, run_id=run.info.run_id, model_version=version,
                                  drifted=report.drifted_columns)

    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "monitoring/drift_reports")]
    assert artifacts == [f"monitoring/drift_reports/{report.path.rsplit('/', 1)[1]}"]
    run_tags = client.get_run(run.info.run_id).data.tags
    assert run_tags[REPORT_TAG] == report.path
    assert "price" in run_tags[DRIFTED_TAG].split(",")
    version_tags = client.get_model_version(name, version).tags
    assert version_tags[REPORT_TAG] == report.path
    assert linked["model_version"] == f"models:/{name}/{version}"
    with pytest.raises(ValueError, match="run_id or a model_version"):
        log_report_to_mlflow(small_config, report.path)


def test_the_report_judges_drift_with_the_triggers_psi_and_threshold(tmp_path):
    """Each column's verdict in the report is the monitor's own PSI (reference quantile bins / categories)
    against the trigger's threshold: the report and the retrain trigger cannot disagree."""
    from aisys.monitoring.drift import column_psi
    from aisys.monitoring.evidently_report import NUMERICAL_COLUMNS

    _, reference, current = reference_and_window(price_change=0.6, new_items=40)
    psis = {c: column_psi(reference[c], current[c], numerical=c in NUMERICAL_COLUMNS)
            for c in ("price", "category", "event_type", "item_popularity")}
    threshold = sorted(psis.values())[1] + 1e-9  # two columns above, two below: both verdicts are exercised
    report = write_drift_report(str(tmp_path / "lake"), reference, current, psi_threshold=threshold)
    assert set(report.drifted_columns) == {c for c, v in psis.items() if v > threshold}
    assert len(report.drifted_columns) == 2
    # The HTML names the test and shows the statistic the trigger uses.
    assert "aisys monitor" in (tmp_path / "lake" / "reports" / "drift" / report.path.rsplit("/", 1)[1]).read_text()
    none = write_drift_report(str(tmp_path / "lake"), reference, current, psi_threshold=max(psis.values()) + 1)
    assert none.drifted_columns == []
