"""`aisys train` registers, then gates: the first model is promoted, a worse one stays registered but not champion.

Real Ray Train, real MLflow on SQLite, a real lake snapshot; the verb is called as the command line calls it.
"""

import mlflow
import pytest
import yaml

from aisys.cli import main
from aisys.data.lake import Lake
from aisys.data.simulator import simulate_events
from aisys.registry.mlflow_registry import get_model_info
from aisys.registry.champion import champion_history
from tests.conftest import small_config_dict
from tests.e2e.cluster_helpers import commit_events

pytestmark = pytest.mark.ray

# Ray Train's PlacementGroupCleaner actor looks its controller up through Ray's state API, which finds "the" local
# Ray by scanning the machine's GCS processes: with another Ray on the host (the second test worker's) it logs
# "Found multiple active Ray instances" with a traceback from inside Ray. That one is Ray's, not ours.
RAY_NEIGHBOUR_NOISE = "Found multiple active Ray instances"


def unexpected_tracebacks(err: str) -> list[str]:
    """The tracebacks in ``err`` other than Ray's neighbour noise (each up to the next traceback)."""
    return [block[:500] for block in err.split("Traceback")[1:] if RAY_NEIGHBOUR_NOISE not in block]


@pytest.mark.slow
def test_train_twice_promotes_the_first_and_refuses_a_worse_second(ray_session, small_config, tmp_path, capsys):
    cfg = small_config
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(small_config_dict(tmp_path)))
    commit_events(Lake.from_config(cfg.paths), simulate_events(cfg.data.simulator))

    assert main(["train", "--config", str(config_file)]) == 0
    first = capsys.readouterr()
    assert "no champion yet: promoted v1 without a comparison" in first.out
    assert get_model_info(cfg, "champion")["version"] == "1"
    # Epochs reached the driver while the run went on: one plain line per epoch here (stderr is not a terminal).
    assert "aisys train: epoch 3/3 (100%) loss " in first.err
    assert unexpected_tracebacks(first.err) == []

    # A barely trained model: the gate must refuse it and say why; it stays registered.
    code = main(["train", "--config", str(config_file), "--set", "train.epochs=1", "--set", "train.lr=0.000001"])
    second = capsys.readouterr()
    assert code == 3, second.out + second.err
    assert "refused" in second.out and "v2 stays registered" in second.out and "still v1" in second.out
    assert "ndcg@10" in second.out and "needs >=" in second.out  # the failing check, with its threshold
    assert get_model_info(cfg, "champion")["version"] == "1"
    assert champion_history(cfg) == ["1"]

    client = mlflow.MlflowClient()
    v1, v2 = (client.get_model_version(cfg.registry.model_name, v) for v in ("1", "2"))
    assert v1.tags["aisys.gate_decision"] == "promote" and v2.tags["aisys.gate_decision"] == "refuse"
    assert client.get_run(v2.tags["aisys.gate_run_id"]).data.tags["aisys.decision"] == "refuse"
    assert "challenger" not in (v2.aliases or [])  # registered with no alias: only the gate moves `champion`
