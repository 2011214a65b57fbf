"""What the Ray dashboard costs a private Ray started by aisys: start time, processes and memory.

Each repetition starts a private Ray through ``aisys.runtime.init_ray`` in a fresh child process (the way every
CLI verb starts one: 2 CPUs, the configured object store), with ``ray.include_dashboard`` off and on in turn,
and reports the seconds ``init_ray`` took, then, after ``--settle`` seconds, the processes under the driver and
their summed RSS (the shared object store counts in the raylet's RSS only as far as it is touched).

    python benchmarks/ray_start_cost.py               # 3 repetitions each
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

DRIVER = textwrap.dedent("""
    import json, sys, time
    import psutil
    from aisys.config import AppConfig
    from aisys.runtime import init_ray

    cfg = AppConfig(ray={"include_dashboard": sys.argv[1] == "on"})
    t0 = time.monotonic()
    ray = init_ray(cfg)
    init_s = time.monotonic() - t0
    time.sleep(float(sys.argv[2]))
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    rss = 0
    for p in procs:
        try:
            rss += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    print(json.dumps({"init_s": round(init_s, 2), "processes": len(procs), "rss_mib": round(rss / 2**20)}))
    ray.shutdown()
""")


def one_start(dashboard: str, settle: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    done = subprocess.run([sys.executable, "-c", DRIVER, dashboard, str(settle)], capture_output=True, text=True,
                          env=env, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"driver failed: {done.stderr[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after init before memory is read")
    parser.add_argument("--out", type=Path, default=RESULTS / "ray_start_cost.json")
    args = parser.parse_args(argv)
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for rep in range(args.reps):
        for mode in ("off", "on"):  # alternated, so a load change hits both
            runs[mode].append(one_start(mode, args.settle))
            print(f"rep {rep + 1} dashboard {mode}: {runs[mode][-1]}", flush=True)
    summary = {mode: {key: statistics.median(r[key] for r in rows) for key in ("init_s", "processes", "rss_mib")}
               for mode, rows in runs.items()}
    result = {"benchmark": "benchmarks/ray_start_cost.py",
              "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python benchmarks/ray_start_cost.py", *(argv or sys.argv[1:])]),
              "machine": {"cpus": os.cpu_count()}, "loadavg_before": loadavg_before,
              "loadavg_after": [round(x, 2) for x in os.getloadavg()], "runs": runs, "median": summary}
    for mode in ("off", "on"):
        m = summary[mode]
        print(f"dashboard {mode:>3}: init_ray {m['init_s']:.2f} s, {m['processes']} processes, {m['rss_mib']} MiB RSS "
              f"(median of {args.reps})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
