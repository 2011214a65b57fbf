"""The closed loop's driver: decide on the monitor's findings, ingest what was collected, retrain behind the gate.

:class:`RetrainController` polls the workspace's drift monitor actor for the findings of its checks
(:meth:`~aisys.monitoring.monitor_actor.DriftMonitor.take_findings`) and decides on each with its
:class:`~aisys.loop.decider.RetrainDecider` (the retrain policy, the cooldown, the daily budget, the audit
table). For each retrain decision it

1. ingests the events the HTTP collector wrote since the last time (``<workspace>/collector/*.jsonl``) into a
   new lake snapshot, so the retrain sees the traffic that drifted (files are claimed by renaming them into
   ``collector/claimed/`` first, and moved to ``collector/ingested/`` once the snapshot is committed);
2. runs :func:`aisys.loop.retrain.retrain` on the latest snapshot: **inline** in this process (a laptop, a
   test), or as a **Ray job** (``jobs/retrain.py``, submitted with ``JobSubmissionClient``) when
   ``cfg.ray.address`` points at a cluster, and waits for it;
3. records what happened (:class:`LoopRecord`, also appended to ``<workspace>/loop/retrains.jsonl``).

The decider counts a retrain decision against the cooldown and daily budget when it makes it; a retrain
asked for by hand (:meth:`RetrainController.request_retrain`) is counted (and audited) as it starts.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

from aisys.config import AppConfig
from aisys.loop.decider import RetrainDecider
from aisys.loop.retrain import RetrainOutcome, describe_request
from aisys.serving.collector_store import collector_folder

logger = logging.getLogger(__name__)

SubmitMode = Literal["auto", "inline", "job"]
# (cfg, request) -> outcome: how a retrain runs; the controller's modes are two of these.
SubmitFn = Callable[[AppConfig, "dict[str, Any] | None"], RetrainOutcome]

CONFIG_ENV = "AISYS_LOOP_CONFIG_JSON"  # the job's AppConfig, as JSON (no shared config file needed)
REQUEST_ENV = "AISYS_LOOP_REQUEST_JSON"  # the decision (request) the job answers
OUTCOME_MARKER = "AISYS_RETRAIN_OUTCOME "  # prefix of the job's result line in its logs
CLAIMED, INGESTED = "claimed", "ingested"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LoopRecord:
    """One handled request: what asked, what was ingested, what the retrain did (or the error)."""

    request: dict[str, Any] | None
    started_at: str
    finished_at: str = ""
    mode: str = ""
    ingested_snapshot: str | None = None
    ingested_rows: int = 0
    ingested_files: int = 0
    outcome: dict[str, Any] | None = None
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return bool(self.outcome and self.outcome.get("promoted"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _utcnow_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


# --------------------------------------------------------------------------- collected events


def claim_collected_files(folder: Path, token: str | None = None) -> list[Path]:
    """Move the collector's ``*.jsonl`` files into ``folder/claimed`` and return every claimed file.

    A rename is atomic: the collector's next append creates a fresh file, so nothing is read twice or lost.
    Files claimed earlier but never ingested (a failed ingest) are returned again.
    """
    claimed_dir = folder / CLAIMED
    token = token or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    if folder.is_dir():
        for path in sorted(folder.glob("*.jsonl")):
            claimed_dir.mkdir(parents=True, exist_ok=True)
            path.rename(claimed_dir / f"{path.stem}.{token}.jsonl")
    return sorted(claimed_dir.glob("*.jsonl")) if claimed_dir.is_dir() else []


def ingest_collected(cfg: AppConfig, grace_s: float = 0.5):
    """Ingest the collector's files into a new lake snapshot; ``None`` when nothing was collected.

    ``grace_s``: an append that opened a file just before it was claimed still lands in it; waiting a moment
    before reading lets such writes finish (they take microseconds).
    """
    from aisys import pipeline

    if cfg.paths.collector_uri:  # batch objects on shared storage (a cluster): no grace needed, they are whole
        return ingest_collected_objects(cfg)
    folder = collector_folder(cfg)
    files = [p for p in claim_collected_files(folder) if p.stat().st_size > 0]
    if not files:
        return None, 0
    time.sleep(grace_s)
    manifest = pipeline.ingest(cfg, [str(p) for p in files], source="collector")
    done = folder / INGESTED
    done.mkdir(parents=True, exist_ok=True)
    for path in files:
        path.rename(done / path.name)
    return manifest, len(files)


def ingest_collected_objects(cfg: AppConfig):
    """:func:`ingest_collected` for ``paths.collector_uri``: claim the batch objects, ingest local copies.

    The copies go to ``<workspace>/collector-staging/<token>/`` on the node running the loop (ingest reads local
    files; the objects stay the record) and are deleted afterwards; the objects move to ``ingested/``.
    """
    import shutil

    from aisys import pipeline
    from aisys.serving.collector_store import claim_collected_objects, mark_ingested, stage_for_ingest

    objects = claim_collected_objects(cfg.paths.collector_uri, cfg.paths)
    if not objects:
        return None, 0
    token = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    staging = Path(cfg.paths.workspace) / "collector-staging" / token
    try:
        files = stage_for_ingest(cfg.paths.collector_uri, objects, staging, cfg.paths)
        manifest = pipeline.ingest(cfg, [str(p) for p in files], source="collector") if files else None
        mark_ingested(cfg.paths.collector_uri, objects, cfg.paths)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest, len(objects)


# --------------------------------------------------------------------------- how a retrain runs


def run_inline(cfg: AppConfig, request: dict[str, Any] | None, monitor: Any = "auto") -> RetrainOutcome:
    """Retrain in this process (Ray Train still runs the training on the Ray it joins)."""
    from aisys.loop.retrain import retrain

    reason, trigger = describe_request(request)
    return retrain(cfg, reason=reason, trigger=trigger, monitor=monitor)


def parse_outcome(logs: str) -> RetrainOutcome:
    """The outcome a ``jobs/retrain.py`` run printed (its last ``AISYS_RETRAIN_OUTCOME {json}`` line)."""
    for line in reversed(logs.splitlines()):
        at = line.find(OUTCOME_MARKER)
        if at >= 0:
            return RetrainOutcome.from_dict(json.loads(line[at + len(OUTCOME_MARKER):]))
    raise ValueError(f"the retrain job's logs hold no {OUTCOME_MARKER.strip()} line; last lines:\n{logs[-2000:]}")


def submit_retrain_job(
    cfg: AppConfig,
    request: dict[str, Any] | None,
    address: str | None = None,
    working_dir: str | None = None,
    timeout_s: float = 3600.0,
    poll_s: float = 2.0,
    headers: dict[str, str] | None = None,
) -> RetrainOutcome:
    """Run ``jobs/retrain.py`` as a Ray job and wait for its outcome.

    ``address``: the cluster's dashboard (``http://head:8265``); ``None`` lets Ray find it (``RAY_ADDRESS``,
    or the running local cluster). A cluster with token auth needs ``RAY_AUTH_MODE=token`` and
    ``RAY_AUTH_TOKEN`` (or ``~/.ray/auth_token``) in this process, or ``headers={"Authorization": "Bearer
    <token>"}``. The config and the request travel as JSON in the job's
    environment, so the job needs no config file; the stores it names (lake, MLflow) must be reachable
    from the cluster.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    working_dir = working_dir or str(REPO_ROOT)
    if not (Path(working_dir) / "jobs" / "retrain.py").exists():
        raise FileNotFoundError(f"{working_dir}/jobs/retrain.py not found: pass working_dir=<the aisys repo root>")
    client = JobSubmissionClient(address, headers=headers)
    reason, trigger = describe_request(request)
    job_id = client.submit_job(
        entrypoint="python jobs/retrain.py",
        runtime_env={
            "working_dir": working_dir,
            "env_vars": {CONFIG_ENV: cfg.model_dump_json(), REQUEST_ENV: json.dumps(request or {}, default=str)},
        },
        metadata={"aisys.kind": "retrain", "aisys.trigger": trigger[:200], "aisys.reason": reason[:200]},
    )
    logger.info("submitted retrain job %s (trigger %s)", job_id, trigger)
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise TimeoutError(f"retrain job {job_id} still {status} after {timeout_s:.0f} s: stopped it")
        time.sleep(poll_s)
    logs = client.get_job_logs(job_id)
    try:
        return parse_outcome(logs)  # a refused candidate ends the job with exit 3, an outcome all the same
    except ValueError:
        raise RuntimeError(f"retrain job {job_id} ended {status} without an outcome; last log lines:\n"
                           f"{logs[-3000:]}") from None


# --------------------------------------------------------------------------- the controller


class RetrainController:
    """Decides on the monitor's findings and answers each retrain decision with ingest + retrain; see the module
    docstring.

    ``submit``: ``"inline"``, ``"job"``, ``"auto"`` (a job when ``cfg.ray.address`` is set, else inline), or a
    function ``(cfg, request) -> RetrainOutcome``. ``monitor``: the monitor actor handle (or an in-process
    ``DriftMonitor``); ``None`` = the workspace's actor, created on first use. ``ingest``: ingest the collector's
    files before each retrain. ``decider``: the decisions' owner; ``None`` = ``cfg.monitor``'s rules with the
    audit table in the lake (:meth:`RetrainDecider.from_config`).
    """

    def __init__(
        self,
        cfg: AppConfig,
        submit: SubmitMode | SubmitFn = "auto",
        monitor: Any = None,
        ingest: bool = True,
        job_address: str | None = None,
        job_working_dir: str | None = None,
        job_timeout_s: float = 3600.0,
        job_headers: dict[str, str] | None = None,
        history_path: str | Path | None = None,
        decider: RetrainDecider | None = None,
    ) -> None:
        if isinstance(submit, str) and submit not in ("auto", "inline", "job"):
            raise ValueError(f"submit must be 'auto', 'inline', 'job' or a function; got {submit!r}")
        self.cfg = cfg
        self.ingest = ingest
        self._monitor = monitor
        self.decider = decider if decider is not None else RetrainDecider.from_config(cfg)
        self.history_path = Path(history_path) if history_path else Path(cfg.paths.workspace) / "loop" / "retrains.jsonl"
        self.records: list[LoopRecord] = []
        self._stop = threading.Event()
        if callable(submit):
            self.mode, self._submit = getattr(submit, "__name__", "custom"), submit
        else:
            self.mode = ("job" if cfg.ray.address else "inline") if submit == "auto" else submit
            if self.mode == "job":
                self._submit = lambda cfg, request: submit_retrain_job(
                    cfg, request, job_address, job_working_dir, job_timeout_s, headers=job_headers)
            else:
                self._submit = lambda cfg, request: run_inline(cfg, request, self.monitor)

    @property
    def monitor(self):
        """The monitor this controller polls (the workspace's actor unless one was given)."""
        if self._monitor is None:
            from aisys.monitoring.monitor_actor import get_or_create

            self._monitor = get_or_create(self.cfg)
        return self._monitor

    def _call(self, method: str, *args):
        bound = getattr(self.monitor, method)
        if hasattr(bound, "remote"):
            import ray

            return ray.get(bound.remote(*args))
        return bound(*args)

    def decide(self) -> dict[str, Any] | None:
        """Take the monitor's new findings, decide on each, and return the pending retrain request (or None)."""
        self.decider.decide_all(self._call("take_findings"))
        return self.decider.take_request()

    def poll_once(self) -> LoopRecord | None:
        """Decide on the monitor's new findings and handle the retrain request they lead to, if any."""
        request = self.decide()
        return None if request is None else self.handle(request)

    def request_retrain(self, reason: str = "manual retrain") -> LoopRecord:
        """Retrain now, outside the policy; counted against the cooldown and daily budget, and audited."""
        decision = self.decider.record_retrain(reason)
        return self.handle({"triggers": ["manual"], "reasons": [reason], "at": decision.at.isoformat()})

    def handle(self, request: dict[str, Any] | None) -> LoopRecord:
        """Ingest the collected events (if configured), run the retrain, record the result. Never raises:
        a failure is recorded (``error``) and the loop goes on; the decider's cooldown spaces the retries."""
        record = LoopRecord(request=request, started_at=_utcnow_iso(), mode=self.mode)
        started = time.perf_counter()
        try:
            if self.ingest:
                t0 = time.perf_counter()
                manifest, n_files = ingest_collected(self.cfg)
                record.seconds["ingest"] = round(time.perf_counter() - t0, 3)
                if manifest is not None:
                    record.ingested_snapshot = manifest.snapshot_id
                    record.ingested_rows = int(manifest.counts.get("written", 0))
                    record.ingested_files = n_files
            t0 = time.perf_counter()
            outcome = self._submit(self.cfg, request)
            record.seconds["retrain"] = round(time.perf_counter() - t0, 3)
            record.outcome = outcome.to_dict()
            logger.info("retrain %s: version %s %s (%s)", record.request and record.request.get("triggers"),
                        outcome.new_version, "promoted" if outcome.promoted else "refused", "; ".join(outcome.reasons))
        except Exception as err:
            record.error = f"{type(err).__name__}: {err}"
            logger.error("retrain failed: %s\n%s", record.error, traceback.format_exc())
        record.seconds["total"] = round(time.perf_counter() - started, 3)
        record.finished_at = _utcnow_iso()
        self.records.append(record)
        self._append_history(record)
        return record

    def _append_history(self, record: LoopRecord) -> None:
        try:
            self.history_path.parent.mkdir(parents=True, exist_ok=True)
            with self.history_path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(record.to_dict(), default=str) + "\n")
        except OSError as err:  # the record is still in memory and in MLflow; the file is a convenience
            logger.warning("could not append to %s: %s", self.history_path, err)

    def run(self, max_iterations: int | None = None, poll_s: float = 5.0,
            on_record: Callable[[LoopRecord], None] | None = None) -> list[LoopRecord]:
        """Poll every ``poll_s`` seconds until :meth:`stop` (or ``max_iterations`` polls); return the records."""
        self._stop.clear()
        iterations = 0
        while not self._stop.is_set() and (max_iterations is None or iterations < max_iterations):
            iterations += 1
            try:
                record = self.poll_once()
            except Exception as err:  # the monitor unreachable for a moment must not end the loop
                logger.warning("polling the monitor failed: %s: %s", type(err).__name__, err)
                record = None
            if record is not None and on_record is not None:
                on_record(record)
            if max_iterations is None or iterations < max_iterations:
                self._stop.wait(poll_s)
        return self.records

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current step."""
        self._stop.set()


def job_config_from_environment(environ: dict[str, str] | None = None) -> tuple[AppConfig | None, dict | None]:
    """The config and request a controller put in a retrain job's environment (``None`` when absent)."""
    from aisys.config import config_from_dict

    environ = os.environ if environ is None else environ
    raw_cfg, raw_request = environ.get(CONFIG_ENV), environ.get(REQUEST_ENV)
    cfg = config_from_dict(json.loads(raw_cfg), CONFIG_ENV) if raw_cfg else None
    request = json.loads(raw_request) if raw_request else None
    return cfg, (request or None)
