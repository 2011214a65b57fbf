"""benchmarks/serving.py's pure parts: process labels for CPU per request, ratios to uvicorn, the targets check."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # the benchmark's modules import each other by file name
    try:
        import serving_report
        import serving_servers
        import serving_workload

        yield serving_report, serving_servers, serving_workload
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_processes_are_labelled_by_what_they_are(bench):
    _, servers, _ = bench
    label = servers.process_label
    assert label(["ray::ServeReplica:aisys:RecommenderService"], "ray::ServeRepli") == \
        "ray::ServeReplica:aisys:RecommenderService"
    assert label(["/x/bin/python", "-m", "uvicorn", "--factory", "a:b"], "python") == "uvicorn master"
    assert label(["/x/bin/python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main()"],
                 "python") == "uvicorn worker"
    assert label(["/x/bin/python", "-c", "from multiprocessing.resource_tracker import main;main(5)"],
                 "python") == "python resource_tracker"
    assert label(["/usr/lib/haproxy", "-f", "cfg"], "haproxy") == "haproxy"
    assert label([], "raylet") == "raylet"


def test_cpu_per_request_excludes_the_client_from_the_server_total(bench):
    _, servers, _ = bench
    spent = {"ray::ServeReplica": 2.0, "haproxy": 0.5, servers.CLIENT_LABEL: 1.0}
    per = servers.cpu_per_request_ms(spent, 1000)
    assert per["total"] == 2.5 and per["haproxy"] == 0.5 and per[servers.CLIENT_LABEL] == 1.0
    assert servers.cpu_per_request_ms(spent, 0) == {}
    before = {1: ("replica", 1.0), 2: ("gone", 5.0)}
    after = {1: ("replica", 1.5), 3: ("new", 0.25)}
    assert servers.CpuMeter.per_label(before, after) == {"replica": 0.5, "new": 0.25}


def _cell(concurrency, rps, p50, p99, load="closed"):
    return {"load": load, "concurrency": concurrency, "rate": 200.0 if load == "open" else None, "rps": rps,
            "p50_ms": p50, "p99_ms": p99, "errors": 0, "fallbacks": 0}


def test_ratios_and_targets_come_from_the_same_run(bench):
    report, _, _ = bench
    uvicorn = {"mode": "uvicorn", "kind": "uvicorn", "cells": [_cell(1, 400, 2.0, 3.0), _cell(16, 400, 40, 80),
                                                                _cell(64, 400, 160, 300)]}
    shipped = {"mode": "shipped", "kind": "shipped", "cells": [
        _cell(1, 300, 3.0, 6.0), _cell(16, 500, 30, 60), _cell(64, 380, 150, 140),
        _cell(None, 200, 3.0, 40.0, load="open")]}
    result = {"modes": [uvicorn, shipped], "settings": {"rate": 200.0}, "bare_handler": {"p50_ms": 1.5}}
    result["ratios"] = report.ratios(result["modes"])
    assert result["ratios"] == {"shipped": {"1": 0.75, "16": 1.25, "64": 0.95}}
    lines = "\n".join(report.targets(result))
    assert "rps x uvicorn at 16 clients: 1.25 (target >= 1): met" in lines
    assert "rps x uvicorn at 64 clients: 0.95 (target >= 1): MISSED by 0.05" in lines
    assert "p99 ms at 64 clients: 140.00 (target <= 100): MISSED by 40.00" in lines
    assert "open loop: 40.00 (target <= 50): met" in lines
    assert "bare handler (1 client): 1.50 (target <= 2): met" in lines

    uvicorn["cells"][1]["uvicorn_workers_busy"] = [1, 2]  # its 16 connections all landed on one worker
    result["ratios"] = report.ratios(result["modes"])
    lines = "\n".join(report.targets(result))
    assert "at 16 clients: 1.25 (target >= 1): met -- but uvicorn served this cell with 1 of its 2 workers" in lines


def test_a_cell_tells_how_many_uvicorn_workers_did_the_work(bench):
    _, servers, _ = bench
    worker = servers.UVICORN_WORKER
    before = {1: (worker, 10.0), 2: (worker, 10.0), 3: ("master", 1.0)}
    assert servers.busy_processes(before, {1: (worker, 18.0), 2: (worker, 10.01), 3: ("master", 2.0)},
                                  worker) == [1, 2]
    assert servers.busy_processes(before, {1: (worker, 14.0), 2: (worker, 13.0)}, worker) == [2, 2]


def test_overrides_nest_into_a_config_and_only_what_is_listed_changes(bench, tmp_path):
    _, _, workload = bench
    assert workload.nested({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
    cfg = workload.write_config(tmp_path / "c.yaml", workload.bench_overrides(tmp_path, 8123))
    assert cfg.serve.port == 8123 and cfg.gateway.cache_ttl_s == 0
    assert cfg.serve.ingress == "haproxy" and cfg.gateway.rate_limit_backend == "actor"  # shipped defaults kept
    assert cfg.online.session_store == "actor"


def test_a_set_mode_measures_the_shipped_server_with_those_settings():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import serving
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert serving.set_mode_overrides("set:serve.access_log=true;serve.max_ongoing_requests=16") == {
        "serve.access_log": True, "serve.max_ongoing_requests": 16}
    with pytest.raises(ValueError, match="set:section.key=value"):
        serving.set_mode_overrides("set:serve.access_log")
    assert "/" not in serving.file_stem("set:a.b=c;d=e/f")
    args = serving.parse_args(["--modes", "uvicorn,set:serve.access_log=true,shipped-1-replica"])
    assert args.modes == ["uvicorn", "set:serve.access_log=true", "shipped-1-replica"]
    assert "shipped-1-replica" in serving.default_modes()


def test_the_plot_is_written_for_every_server_and_load(bench, tmp_path):
    report, _, _ = bench
    uvicorn = {"mode": "uvicorn", "kind": "uvicorn", "cells": [_cell(1, 400, 2.0, 3.0), _cell(16, 800, 18, 70)]}
    shipped = {"mode": "shipped", "kind": "shipped", "cells": [_cell(1, 300, 3.0, 6.0), _cell(16, 750, 20, 45),
                                                                _cell(None, 200, 3.8, 20.0, load="open")]}
    result = {"modes": [uvicorn, shipped, dict(shipped)], "settings": {"rate": 200.0, "k": 10, "uvicorn_workers": 2},
              "machine": {"cpus": 2}, "created_at": "now"}
    path = report.plot(result, tmp_path / "serving.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_a_repeated_mode_is_paired_with_the_uvicorn_measured_before_it(bench):
    report, _, _ = bench
    modes = [{"mode": "uvicorn", "kind": "uvicorn", "cells": [_cell(16, 900, 18, 60)]},
             {"mode": "shipped", "kind": "shipped", "cells": [_cell(16, 700, 22, 50)]},
             {"mode": "uvicorn", "kind": "uvicorn", "cells": [_cell(16, 800, 18, 60)]},
             {"mode": "shipped", "kind": "shipped", "cells": [_cell(16, 760, 22, 50)]}]
    assert report.ratios(modes) == {"shipped": {"16": 0.778}}  # the first run of each mode
    assert [m["cells"][0].get("x_uvicorn") for m in modes] == [None, 0.778, None, 0.95]
