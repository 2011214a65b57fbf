"""Serve the champion on every node of a cluster: the entrypoint `tests/e2e/test_multinode.py` submits with
`ray job submit -- python tests/e2e/multinode_serve.py --config ... --set ...` (it runs until stopped).

What `aisys serve` does, with two cluster-only choices: one proxy on the head (``proxy_location="HeadOnly"``:
on one machine a proxy per node would fight over one port) and at most one replica per node
(``max_replicas_per_node=1``), so ``serve.num_replicas=2`` puts a replica on each node.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))  # the job runs from a copy of the repo

from _entry import parse  # noqa: E402

if __name__ == "__main__":
    cfg, _ = parse(__doc__)
    from ray import serve

    from aisys.runtime import init_ray
    from aisys.serving.deployment import RecommenderService
    from aisys.serving.serve_yaml import APP_NAME, deployment_options

    init_ray(cfg)
    serve.start(proxy_location="HeadOnly", http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    app = RecommenderService.options(**deployment_options(cfg), max_replicas_per_node=1).bind(cfg.model_dump())
    print(f"serving at http://{cfg.serve.host}:{cfg.serve.port}", flush=True)
    serve.run(app, name=APP_NAME, route_prefix=cfg.serve.route_prefix, blocking=True)
