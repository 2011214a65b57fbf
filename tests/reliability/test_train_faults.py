"""A Ray Train worker killed mid-run: the run resumes from its last checkpoint and ends where an unbroken run ends.

The fault comes from outside, as an operator's ``kill -9`` would: a thread watches the run's checkpoint manager
snapshot (``checkpoint_manager_snapshot.json``, written by the Train controller once a checkpoint is registered),
and once epoch ``KILL_AFTER`` is checkpointed it finds the live ``RayTrainWorker`` actor through Ray's state API
and SIGKILLs its process. ``FailureConfig(max_failures=1)`` (``train.max_failures``, default 1) restarts the worker
group from the latest checkpoint; the history rows say which checkpoint each attempt started from.

The same test then re-creates a trainer with the clean run's name and storage but 2 workers and one more epoch: a
DDP run continues the 1-worker run from its latest checkpoint. It rides on the clean run here because every Ray
Train fit costs ~10-12 s of fixed start-up on the 2-core box; a separate 2-worker pair of fits would cost two more.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from aisys.data.simulator import simulate_events
from aisys.features.sequences import build_vocabulary, user_histories
from aisys.models.sasrec import SASRec, SASRecConfig
from aisys.quality.protocol import leave_last_one_out
from aisys.training.loop import evaluate, seed_everything
from aisys.training.ray_train import RESUMED_FROM, train_with_ray
from tests.reliability.conftest import report_figure

# Three Ray Train fits: clean, killed (restarted once), and the clean run continued on 2 DDP workers.
pytestmark = [pytest.mark.reliability, pytest.mark.ray, pytest.mark.slow]

EPOCHS = 8
MORE_EPOCHS = 1  # what the 2-worker continuation of the clean run adds
KILL_AFTER = 2  # the worker dies once this epoch's checkpoint is registered
METRICS = ("valid_ndcg@10", "valid_hr@10")
WORKER_CLASS = "RayTrainWorker"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # ray.train.v2._internal.constants


def latest_checkpointed_epoch(run_dir: Path) -> int:
    """The epoch of the run's latest registered checkpoint, -1 before the first (or mid-write)."""
    try:
        state = json.loads((run_dir / SNAPSHOT_FILE).read_text())
        return int(state["latest_checkpoint_result"]["metrics"]["epoch"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return -1


def live_train_workers() -> list[dict]:
    """The ALIVE Ray Train worker actors of this cluster (class, state, pid), read from the GCS actor table.

    ``ray.util.state.list_actors`` would be the public way, but it asks the dashboard's API server, which the
    test session does not start (and 8265 may be another cluster's on a shared box).
    """
    import ray

    alive = ray._private.state.actors(actor_state_name="ALIVE").values()
    return [actor for actor in alive if actor["ActorClassName"] == WORKER_CLASS]


class WorkerKiller(threading.Thread):
    """SIGKILLs the train worker once ``run_dir`` has a checkpoint of epoch ``after`` (or later)."""

    def __init__(self, run_dir: Path, after: int, timeout_s: float = 120.0):
        super().__init__(daemon=True)
        self.run_dir, self.after, self.timeout_s = run_dir, after, timeout_s
        self.stop = threading.Event()
        self.killed_pid: int | None = None
        self.killed_after_epoch: int | None = None  # the latest checkpointed epoch when the kill was sent
        self.error: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self.stop.is_set() and time.monotonic() < deadline:
            epoch = latest_checkpointed_epoch(self.run_dir)
            if epoch >= self.after:
                workers = live_train_workers()
                if len(workers) != 1:
                    self.error = f"expected 1 live {WORKER_CLASS}, found {len(workers)}"
                    return
                self.killed_after_epoch = epoch
                self.killed_pid = int(workers[0]["Pid"])
                os.kill(self.killed_pid, signal.SIGKILL)
                return
            time.sleep(0.02)
        self.error = f"epoch {self.after} was never checkpointed in {self.run_dir}"


def test_a_killed_train_worker_resumes_from_its_checkpoint_and_ends_within_1_percent(
    ray_session, small_config, tmp_path
):
    torch.set_num_threads(1)
    cfg = small_config
    cfg.train.epochs = EPOCHS
    cfg.train.num_workers = 1
    cfg.train.lr = 3e-3
    assert cfg.model.dropout > 0  # dropout draws random masks: the resume must redraw the same ones
    events = simulate_events(cfg.data.simulator)
    vocab = build_vocabulary(events, cfg.features.event_weights)
    split = leave_last_one_out(user_histories(events, vocab.item_index()))
    storage = tmp_path / "ray_results"

    # The untrained model (the workers' initialisation: same seed, same config) as the floor.
    seed_everything(cfg.train.seed)
    untrained = evaluate(SASRec(SASRecConfig.from_app(cfg, vocab.n_items)), split.valid, cfg.features.max_seq_len)

    started = time.perf_counter()
    clean = train_with_ray(cfg, split.train, split.valid, vocab, str(storage), run_name="clean")
    clean_s = time.perf_counter() - started

    killer = WorkerKiller(storage / "killed", KILL_AFTER)
    killer.start()
    started = time.perf_counter()
    try:
        killed = train_with_ray(cfg, split.train, split.valid, vocab, str(storage), run_name="killed")
    finally:
        killer.stop.set()
        killer.join(timeout=10)
    killed_s = time.perf_counter() - started
    assert killer.error is None, killer.error
    assert killer.killed_pid is not None

    # The clean run never restarted; the killed one did, once, and from the checkpoint it had reached.
    assert {row[RESUMED_FROM] for row in clean.history} == {-1}
    starts = [row[RESUMED_FROM] for row in killed.history]
    assert sorted(set(starts)) == [-1, starts[-1]], f"expected one restart, got attempts starting at {set(starts)}"
    resumed_from = starts[-1]
    assert killer.killed_after_epoch <= resumed_from < EPOCHS - 1, (killer.killed_after_epoch, resumed_from)
    # The epoch counter continued: every epoch once, the first attempt's rows kept, the rest from the resume.
    assert [row["epoch"] for row in killed.history] == list(range(EPOCHS))
    assert starts == [-1] * (resumed_from + 1) + [resumed_from] * (EPOCHS - resumed_from - 1)
    assert killer.killed_pid not in {int(w["Pid"]) for w in live_train_workers()}

    final_clean = {m: clean.history[-1][m] for m in METRICS}
    final_killed = {m: killed.history[-1][m] for m in METRICS}
    rel = {m: abs(final_killed[m] - final_clean[m]) / final_clean[m] for m in METRICS}
    assert all(r <= 0.01 for r in rel.values()), (final_clean, final_killed)
    # Not equal because nothing trained: both runs clearly beat the untrained initialisation.
    for m in METRICS:
        assert final_clean[m] > 1.2 * untrained[m.removeprefix("valid_")], (m, final_clean[m], untrained)
    # Deterministic across the resume (per-epoch seeds, restored optimizer): every epoch's loss, the ones
    # trained after the restart included, is the clean run's.
    assert [row["loss"] for row in killed.history] == pytest.approx([row["loss"] for row in clean.history], rel=1e-5)

    report_figure(
        f"Ray Train worker SIGKILLed after epoch {killer.killed_after_epoch} of {EPOCHS} was checkpointed "
        "(FailureConfig max_failures=1, 1 worker)",
        f"worker group restarted once, resumed from epoch {resumed_from}'s checkpoint, epochs 0..{EPOCHS - 1} each "
        f"once; final valid NDCG@10 {final_killed['valid_ndcg@10']:.4f} vs {final_clean['valid_ndcg@10']:.4f} "
        f"uninterrupted (rel. diff {rel['valid_ndcg@10']:.2%}), HR@10 {final_killed['valid_hr@10']:.4f} vs "
        f"{final_clean['valid_hr@10']:.4f} ({rel['valid_hr@10']:.2%}); untrained NDCG@10 {untrained['ndcg@10']:.4f}; "
        f"run {killed_s:.0f}s vs {clean_s:.0f}s",
        f"0 checkpointed epochs lost; only the unfinished epoch {resumed_from + 1} was redone",
    )

    # A re-created trainer with the clean run's name and storage continues it, here as DDP over 2 workers (the
    # kill above needed exactly one live worker, so this comes after it): the 1-worker checkpoint loads into
    # the DDP-wrapped model, and the result's weights come back without DDP's `module.` prefix.
    cfg.train.num_workers = 2
    cfg.train.epochs = EPOCHS + MORE_EPOCHS
    continued = train_with_ray(cfg, split.train, split.valid, vocab, str(storage), run_name="clean")
    assert [row["epoch"] for row in continued.history] == list(range(EPOCHS + MORE_EPOCHS))
    assert continued.history[:EPOCHS] == clean.history  # carried over from the checkpoint, not retrained
    # The new epochs started from the latest checkpoint (the clean run's last epoch), not from an older one.
    assert [row[RESUMED_FROM] for row in continued.history[EPOCHS:]] == [EPOCHS - 1] * MORE_EPOCHS
    assert not any(key.startswith("module.") for key in continued.state_dict)
