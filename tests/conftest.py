"""Shared fixtures: a small, isolated AppConfig, one real local Ray per session, one token-auth
`ray start --head` per session lent to the tests that drive a separate cluster, and one migrated MLflow
database per session copied into every workspace that needs an empty one."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from aisys.config import AppConfig, config_from_dict
from aisys.runtime import PRIVATE_RAY_ENV

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
# What `init_ray` sets for the private Ray it starts (`aisys.runtime.PRIVATE_RAY_ENV`: Ray Train's 0.5 s poll,
# its preemption watcher and metrics off, the GCS task-event cap) also reaches the Rays the tests start without
# it: the session Ray, the token-auth heads, the subprocesses that start their own. The Ray Train poll alone took
# the three Ray Train test files (7 fits) from 164 s to 124 s on the 2-core box (2026-12-05).
for _name, _value in PRIVATE_RAY_ENV.items():
    os.environ.setdefault(_name, _value)


def pytest_configure(config):
    # `make test` starts its second pytest process in the background (`&`), and a non-interactive shell starts
    # background jobs with SIGINT ignored, a disposition every child inherits: an `aisys serve` started from there
    # would ignore the Ctrl-C that tests/e2e/test_serve_stop.py sends, as no process in a terminal's foreground does.
    # Restored here (Python's own handler, which a child's exec turns back into the default).
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _share_the_machine(config)


def pytest_addoption(parser):
    parser.addoption("--schemathesis-full", action="store_true", default=False,
                     help="send the full 10,000+ Schemathesis requests (tests/reliability/test_schemathesis.py); "
                          "CI sends ~1,000 (benchmarks/chaos.py passes this flag)")


def small_config_dict(root: Path) -> dict:
    """A config whose state lives under ``root`` and whose data and model are tiny."""
    return {
        "paths": {
            "workspace": str(root / "ws"),
            "lake_uri": str(root / "lake"),
            "mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "mlflow_artifact_uri": str(root / "mlartifacts"),
            "cache_dir": str(root / "cache"),
        },
        "ray": {"num_cpus": 2, "object_store_memory_mb": 512},
        "data": {
            "raw_dir": str(root / "raw"),
            "simulator": {"n_users": 120, "n_items": 80, "n_sessions": 900, "days": 10},
        },
        "features": {"max_seq_len": 20},
        # The shipped SASRec refit on train + valid (model.stages.refit_sasrec) is a second Ray Train fit, ~12-15 s
        # of fixed start-up each; the tests that train what ships turn it back on (test_train_register,
        # test_evaluate_shipped, test_demo).
        "model": {"embedding_dim": 32, "n_layers": 1, "n_heads": 2, "stages": {"refit_sasrec": False}},
        "train": {"epochs": 3, "batch_size": 64},
        "demo": {"n_events": 40, "n_requests": 40},
    }


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite database with every schema migration applied, made once per session.

    MLflow migrates a new SQLite database on first use: ~3 s of CPU (6 s of wall time on a busy 2-core machine)
    against ~0.1 s to open a copy of a migrated one. Dozens of tests each start from an empty registry, so they
    start from a copy of this file (:func:`seed_mlflow_db`) instead of paying the migration again. The test that
    runs the app exactly as a user does (`tests/e2e/test_demo.py`) still starts without one.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("mlflow-template")
    path = folder / "mlflow.db"
    # Creating the store creates the tables (tracking and model registry share one schema) and the Default
    # experiment; aisys logs into its own experiment, created per workspace with that workspace's artifact root.
    SqlAlchemyStore(f"sqlite:///{path}", (folder / "unused-artifacts").as_uri())
    return path


def seed_mlflow_db(template: Path, db_path: Path) -> Path:
    """Put a copy of the migrated empty database (``mlflow_db_template``) at ``db_path``; returns ``db_path``."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, db_path)
    return db_path


@pytest.fixture
def small_config(tmp_path: Path, mlflow_db_template: Path) -> AppConfig:
    """:func:`small_config_dict` under ``tmp_path``, its MLflow database already migrated (empty)."""
    seed_mlflow_db(mlflow_db_template, tmp_path / "mlflow.db")
    return config_from_dict(small_config_dict(tmp_path), "tests")


METRICS_REPORT_INTERVAL_MS = 2000


# The session's Ray is stopped once the module of its last user is done, not at session end: its users run as one
# block (``_run_users_together``), and the tests after them start Rays of their own (subprocesses, clusters), beside
# which an idle Ray (GCS, raylet, its prestarted workers: ~7% of a core) would only take CPU and memory.
_LAST_RAY_ITEM = pytest.StashKey[pytest.Item]()


@pytest.fixture(scope="session")
def ray_session(request):
    """One real local Ray for the session's Ray users: 2 CPUs, a 512 MiB object store, no dashboard."""
    import ray

    if not hasattr(request.config, "workerinput"):  # under xdist a worker runs only part of the collection
        items = request.session.items
        users = [item for item in items if "ray_session" in item.fixturenames]
        if users:
            last_module = _module_of(users[-1])
            request.session.stash[_LAST_RAY_ITEM] = [i for i in items if _module_of(i) == last_module][-1]

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=512 * 1024 * 1024,
            include_dashboard=False,
            logging_level="WARNING",
            # Application metrics reach Ray's metrics endpoint (and Prometheus) every 2 s instead of every 10 s:
            # the tests that read them back (tests/ray/test_monitor_actor.py, test_serving_metrics.py) wait on
            # that export. A test setting of this Ray only, never the product's.
            _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS},
        )
    yield ray
    ray.shutdown()


# The shared head is stopped as soon as the last test that needs it is done, not at session end: an idle head
# (GCS, raylet, dashboard and its agents) would otherwise hold memory and CPU through the rest of the suite.
_LAST_HEAD_USER = pytest.StashKey[pytest.Item]()
_SHARED_HEAD = pytest.StashKey[object]()


@pytest.fixture(scope="session")
def shared_token_head(request):
    """One `ray start --head` with RAY_AUTH_MODE=token for the session (``SharedTokenHead``): each user takes a
    lease (``token_head`` below, or ``shared_token_head.lease(name)`` in a module-scoped fixture), and every lease
    ends with the cluster reset (jobs stopped, Serve shut down, actors killed) or the head replaced."""
    from tests.e2e.cluster_helpers import SharedTokenHead

    session = request.session
    users = [item for item in session.items if "shared_token_head" in item.fixturenames]
    if users:
        session.stash[_LAST_HEAD_USER] = users[-1]
    head = SharedTokenHead()
    session.stash[_SHARED_HEAD] = head
    yield head
    head.close()


@pytest.fixture
def token_head(shared_token_head, request):
    """A lease of the session's token-auth head for one test: ``(dashboard_url, env, token)``."""
    with shared_token_head.lease(request.node.nodeid) as cluster:
        yield cluster


def _module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _run_users_together(items: list[pytest.Item], fixture: str) -> None:
    """Run the modules that use the session-scoped ``fixture`` one after another, where the first of them stood.

    Such a fixture lives from its first user to its last user's teardown (see ``pytest_runtest_teardown``); left in
    path order, its users sit in tests/ray, tests/e2e and tests/reliability with minutes of other tests between
    them, through which an idle Ray or head would run beside them. Whole modules move, in their own order, so
    module-scoped fixtures are still set up once.
    """
    modules = {_module_of(item) for item in items if fixture in item.fixturenames}
    if len(modules) < 2:
        return
    first = next(i for i, item in enumerate(items) if _module_of(item) in modules)
    users = [item for item in items if _module_of(item) in modules]
    others = [item for item in items if _module_of(item) not in modules]
    items[:] = others[:first] + users + others[first:]


def _uses_head(item: pytest.Item | None) -> bool:
    return item is not None and "shared_token_head" in item.fixturenames


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        # Serially the last user is known from the collection; under xdist a worker runs only some of it, but the
        # head's users reach one worker as one block (``HeadUsersTogether``), so the block ends where the next
        # item needs no head. A head closed too early is restarted by the next lease.
        last = item.session.stash.get(_LAST_HEAD_USER, None) is item
        block_ends = _uses_head(item) and not _uses_head(nextitem)
        if (last or block_ends) and _SHARED_HEAD in item.session.stash:
            item.session.stash[_SHARED_HEAD].close()
        if item.session.stash.get(_LAST_RAY_ITEM, None) is item:
            import ray

            ray.shutdown()


# --- pytest-xdist (`make test TEST_WORKERS=2`; the default is one process, measured faster on 2 cores) -------------
# The serial suite leaves part of the cores idle (most tests wait on one single-threaded process at a time: a job
# driver, a Ray Train worker, a subprocess importing torch), but two workers on 2 cores ran slower (two private Rays
# and their replicas oversubscribe them); on more cores the workers pay. Work goes out by module, so module fixtures are set
# up once, and every module that leases the shared token-auth head goes to one worker as one unit, so only one
# head is started per run. Tests marked `serial` (their figures are rates or tails that a neighbour would skew)
# run afterwards on their own (the Makefile's second phase).
_HEAD_USER = re.compile(r"def \w+\([^)]*?\b(?:shared_)?token_head\b")
_HEAD_SCOPE = "shared-token-head"


def _module_leases_head(path: Path, cache: dict[Path, bool]) -> bool:
    if path not in cache:
        try:
            cache[path] = bool(_HEAD_USER.search(path.read_text()))
        except OSError:
            cache[path] = False
    return cache[path]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class HeadUsersTogether(LoadScopeScheduling):
        """Module scopes, except that the modules leasing the shared head form one scope."""

        _cache: dict[Path, bool] = {}

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            if _module_leases_head(Path(config.rootpath) / module, self._cache):
                return _HEAD_SCOPE
            return module

    config.option.loadscopereorder = False  # keep the collection's order (longest first), not "most tests first"
    return HeadUsersTogether(config, log)


# `slow` marks the tests that take more than ~SLOW_AFTER_S on the 2-core CI machine (their own Ray or server in a
# subprocess, a job chain, Ray Train runs): `make test-fast` deselects them for local iteration, CI runs everything.
# So that the marker keeps meaning that, the run ends by naming every test over the limit that is not marked (a
# hint, never a failure: timings on a shared machine are no assertion).
SLOW_AFTER_S = 20.0
_SLOW_ITEMS = pytest.StashKey[set]()


# Under xdist, work goes out in collection order (see ``pytest_xdist_make_scheduler``): the longest directories
# first, so the many short unit modules fill the gaps at the end instead of two long e2e modules closing the run
# one worker at a time (serial suite, 2026-12-06: e2e 505 s, ray 290 s, reliability 223 s, unit 56 s).
_XDIST_ORDER = ("tests/e2e/", "tests/ray/", "tests/reliability/", "tests/unit/")


def _longest_first(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(_XDIST_ORDER) if item.nodeid.startswith(prefix)), len(_XDIST_ORDER))

    items.sort(key=rank)  # stable: each directory keeps its own order


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # an xdist worker: its collection is the order work is handed out in
        _longest_first(items)
    _run_users_together(items, "ray_session")
    _run_users_together(items, "shared_token_head")
    if SERIAL_LOCK_ENV in os.environ:
        _serial_modules_last(items)
    config.stash[_SLOW_ITEMS] = {item.nodeid for item in items if item.get_closest_marker("slow")}


def pytest_terminal_summary(terminalreporter, config):
    seconds: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call", "teardown"):
                seconds[report.nodeid] = seconds.get(report.nodeid, 0.0) + report.duration
    marked = config.stash.get(_SLOW_ITEMS, set())
    unmarked = sorted(((s, nodeid) for nodeid, s in seconds.items() if s > SLOW_AFTER_S and nodeid not in marked),
                      reverse=True)
    if unmarked:
        terminalreporter.write_sep("-", f"over {SLOW_AFTER_S:.0f} s but not marked slow (`make test-fast` runs them)")
        for s, nodeid in unmarked:
            terminalreporter.write_line(f"{s:6.1f}s {nodeid}")


# --- `serial` tests alone on the machine while `make test` runs two pytest processes side by side ------------------
# The Makefile names one lock file in SERIAL_LOCK_ENV for both processes. Each holds it shared from its start; a
# process reaching its first `serial` test (they run last: ``_serial_modules_last``) trades its shared hold for an
# exclusive one, which waits until the other process has ended or reached its own serial tests, and keeps it to its
# end. So a test whose figures are a rate or a tail (200 req/s through a replica kill, a rate limit within 5%) never
# shares the 2 cores with the other process: measured beside the notebooks, the replica-kill driver failed.
SERIAL_LOCK_ENV = "AISYS_TESTS_SERIAL_LOCK"
_SERIAL_LOCK = pytest.StashKey[object]()
_SERIAL_HELD = pytest.StashKey[bool]()


def _share_the_machine(config) -> None:
    path = os.environ.get(SERIAL_LOCK_ENV)
    if not path or hasattr(config, "workerinput"):
        return
    import fcntl

    handle = open(path, "a+")  # noqa: SIM115 - held (and closed by the OS) until this process ends
    fcntl.flock(handle, fcntl.LOCK_SH)
    config.stash[_SERIAL_LOCK] = handle


def _serial_modules_last(items: list[pytest.Item]) -> None:
    """Move every module holding a ``serial`` test, whole (its module fixtures set up once), to the end."""
    serial = {_module_of(item) for item in items if item.get_closest_marker("serial")}
    items[:] = [i for i in items if _module_of(i) not in serial] + [i for i in items if _module_of(i) in serial]


def pytest_runtest_setup(item):
    handle = item.config.stash.get(_SERIAL_LOCK, None)
    if handle is None or item.config.stash.get(_SERIAL_HELD, False) or not item.get_closest_marker("serial"):
        return
    import fcntl
    import time

    started = time.monotonic()
    fcntl.flock(handle, fcntl.LOCK_UN)
    fcntl.flock(handle, fcntl.LOCK_EX)  # waits for the other process's end (or its own serial tests)
    item.config.stash[_SERIAL_HELD] = True
    reporter = item.config.pluginmanager.get_plugin("terminalreporter")
    capture = item.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # setup's output is captured; this line is the run's
            reporter.write_line(f"\nserial tests from here, alone: waited {time.monotonic() - started:.0f} s "
                                f"for the other pytest process")
