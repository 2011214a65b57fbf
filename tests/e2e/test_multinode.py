"""Two Ray nodes on one machine (a token-auth head and a worker, separate `ray start` processes), the lake, the
collector, the stock and MLflow's artifacts on a local S3 server (moto), MLflow tracking on PostgreSQL.

Ingest, train and serve go through `ray job submit`; Serve puts one replica on each node. What it proves:
- the ingest job, its Ray Data workers getting the AWS credentials from the nodes' environment, writes a
  snapshot of a raw file with broken and duplicated rows into ``s3://.../multinode/lake`` (the objects are
  listed with boto3, not through the code under test): written + quarantined + duplicates add up to the raw
  rows, the quarantine is in the bucket, and the lake reads the clean rows back (test_s3.py leaves this case
  here);
- a shopper's first event, posted through the head's proxy, is known to whichever replica serves the next
  request (the session store is one actor on the head): a new user is served by the model, never the
  unknown-user fallback, and both replicas served such requests;
- a stock change made through one replica reaches both (``online.stock_backend: actor``);
- every event answered 202 is a batch object in ``s3://.../collector`` (``paths.collector_uri``), including
  while the worker node is SIGKILLed under load; the app keeps answering, and the requests that fail are
  bounded by what was in flight on the dead replica.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import small_config_dict
from tests.e2e.cluster_helpers import (alive_nodes, free_port, start_token_head, start_worker_node, tiny_events,
                                      wait_until)
from tests.e2e.conftest import BUCKET
from tests.e2e.test_jobs_more import Jobs

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.multinode]

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
CLIENTS = 4  # concurrent shoppers during the kill: at most this many requests can be in flight on a replica
LOAD_S, KILL_AT_S = 8.0, 3.0


@pytest.fixture(scope="module")
def figures():
    got: dict = {}
    yield got
    print(f"\nmulti-node figures: {json.dumps(got)}")


@pytest.fixture(scope="module")
def cluster(s3_endpoint, figures):
    """A token-auth head and one worker node, both with the S3 credentials in their environment."""
    import boto3

    saved = {key: os.environ.get(key) for key in AWS_ENV}
    os.environ.update(AWS_ENV)  # this process reads the bucket too (moto takes any credentials)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    started = time.perf_counter()
    head = start_token_head({**AWS_ENV, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    try:
        worker = start_worker_node(head, num_cpus=1)
        figures["cluster_start_s"] = round(time.perf_counter() - started, 1)
        yield head, worker
    finally:
        head.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, s3_endpoint, mlflow_server) -> Path:
    root = tmp_path_factory.mktemp("multinode")
    data = small_config_dict(root)
    prefix = f"s3://{BUCKET}/multinode"
    data["paths"].update(lake_uri=f"{prefix}/lake", mlflow_artifact_uri=f"{prefix}/mlartifacts",
                         mlflow_tracking_uri=mlflow_server, s3_endpoint_url=s3_endpoint,
                         collector_uri=f"{prefix}/lake/collector")
    data["data"]["simulator"] = {"n_users": 40, "n_items": 30, "n_sessions": 200, "days": 5}
    data["train"] = {"epochs": 1, "batch_size": 64}
    data["model"] = {"embedding_dim": 16, "n_layers": 1, "n_heads": 1}
    data["online"] = {"stock_backend": "actor", "session_store": "actor"}
    data["gateway"] = {"auth": False, "cache_ttl_s": 0}
    data["monitor"] = {"enabled": False}
    data["serve"] = {"port": free_port(), "num_replicas": 2, "replica_cpus": 0.5, "access_log": False}
    path = root / "multinode.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cfg(config_file: Path):
    from aisys.config import load_config

    return load_config(str(config_file), [], environ={})


def test_two_nodes_share_sessions_stock_and_collector_and_survive_the_worker_dying(cluster, config_file, figures,
                                                                                     tmp_path):
    import boto3

    from aisys.data.lake import Lake
    from aisys.data.raw_files import write_raw_events
    from aisys.serving.collector_store import read_collected_events

    head, worker = cluster
    cfg = _cfg(config_file)
    s3 = boto3.client("s3", endpoint_url=cfg.paths.s3_endpoint_url, region_name="us-east-1")  # env: `cluster`
    args = ["--config", str(config_file)]
    jobs = Jobs(head.url, head.token)  # the job API `ray job submit` uses, without a CLI process per job

    # ---- ingest and train as jobs (the raw file is on this machine's disk, which both nodes share here)
    events = tiny_events(n_users=40, n_items=30, n_sessions=200)
    raw = write_raw_events(events, tmp_path / "raw.jsonl", "jsonl", bad_share=0.05, duplicate_share=0.05, seed=1)
    t0 = time.perf_counter()
    ingest = jobs.run("jobs/ingest.py", *args, str(raw.path))
    assert ingest.status == "SUCCEEDED", ingest.describe()
    figures["ingest_job_s"] = round(time.perf_counter() - t0, 1)

    # The snapshot is on S3: counts add up, its objects are in the bucket (seen through boto3, independently of
    # pyarrow) and nowhere local, and the lake reads back the clean rows (the broken ones quarantined).
    lake = Lake.from_config(cfg.paths)
    manifest = lake.get(ingest.last_json()["snapshot_id"])
    counts = manifest.counts
    assert counts["quarantined"] == raw.bad_rows > 0
    assert counts["duplicates_in_batch"] == raw.duplicate_rows > 0
    assert counts["written"] == events.num_rows - raw.bad_rows
    assert counts["written"] + counts["quarantined"] + counts["duplicates_in_batch"] == raw.rows
    stored = keys(s3, "multinode/lake/events/")
    assert f"multinode/lake/events/_manifests/{manifest.snapshot_id}.json" in stored
    assert {f"multinode/lake/events/{f}" for f in manifest.files} <= set(stored)
    assert any(k.startswith(f"multinode/lake/events/quarantine/{manifest.snapshot_id}/") for k in stored)
    assert not list(config_file.parent.glob("**/_manifests")) and not list(tmp_path.glob("**/_manifests"))
    snapshot = lake.read_events(manifest.snapshot_id)
    quarantined = lake.read_quarantine(manifest.snapshot_id)
    assert quarantined.num_rows == raw.bad_rows
    assert snapshot.num_rows == counts["written"]
    assert sorted(snapshot.column("event_id").to_pylist()) == sorted(
        set(events.column("event_id").to_pylist()) - set(quarantined.column("event_id").to_pylist()))

    t1 = time.perf_counter()
    train = jobs.run("jobs/train.py", *args)
    assert train.status == "SUCCEEDED", train.describe()
    t2 = time.perf_counter()
    figures["train_job_s"] = round(t2 - t1, 1)

    # ---- serve: one replica per node, one proxy on the head
    serve_job = jobs.submit("tests/e2e/multinode_serve.py", *args)
    api = f"http://127.0.0.1:{cfg.serve.port}"

    def up() -> bool:
        status = str(jobs.client.get_job_status(serve_job).value)
        if status in ("FAILED", "STOPPED", "SUCCEEDED"):
            raise AssertionError(f"the serve job ended {status}:\n{jobs.client.get_job_logs(serve_job)[-3000:]}")
        return httpx.get(f"{api}/healthz", timeout=5).status_code == 200 and len(replica_nodes(head)) == 2

    wait_until(up, timeout=240, what="two replicas on two nodes answering /healthz")
    figures["serve_ready_s"] = round(time.perf_counter() - t2, 1)
    nodes = replica_nodes(head)
    assert len(set(nodes.values())) == 2, nodes  # a replica on each node
    worker_node_id = next(n["node_id"] for n in alive_nodes(head) if not n.get("is_head_node"))
    assert worker_node_id in nodes.values()
    assert placed_on_head(head, "aisys-sessions-") and placed_on_head(head, "aisys-stock-")
    worker_replica_pid = next(a["pid"] for a in head.alive_actors() if a["name"] in nodes
                              and a["node_id"] == worker_node_id)

    items = sorted(set(snapshot.column("item_id").to_pylist()))  # the clean rows: what the model was trained on
    accepted: list[str] = []
    with httpx.Client(base_url=api, timeout=30) as http:
        # ---- a new shopper's first event is known to whichever replica answers next
        for n in range(16):
            user = f"mn-new-{n}"
            posted = http.post("/events", json=event(user, items[n % len(items)], f"first-{n}"))
            assert posted.status_code == 202, posted.text
            accepted.append(f"first-{n}")
            got = http.get(f"/recommendations/{user}", params={"k": 5}).json()
            assert got["fallback"] is False, got  # an unknown-user fallback = the event never reached this replica
        # Both replicas are up and Serve spreads requests over them: had the sessions not been shared, each of
        # the 16 GETs would have had an even chance of landing on the replica that never saw the event.

        # ---- a stock change made through one replica reaches both
        user = "mn-new-0"
        top = http.get(f"/recommendations/{user}", params={"k": 5}).json()["items"][0]["item_id"]
        assert http.put("/admin/stock", json={"items": {top: False}}).status_code == 200
        wait_until(lambda: all(top not in ids(http.get(f"/recommendations/{user}", params={"k": 5}).json())
                               for _ in range(10)), timeout=10, what="the stock change on every replica", every=0.2)

        # ---- the worker node dies under load: no 202 lost, the app keeps answering
        outcomes, load_accepted, killed = run_load_and_kill(api, worker, items, figures)
        assert worker_replica_pid in killed  # the worker's replica died with its node
        accepted.extend(load_accepted)
        health = http.get("/healthz")
        assert health.status_code == 200, health.text
        assert http.get("/recommendations/mn-new-1", params={"k": 5}).status_code == 200

    failed = sum(n for outcome, n in outcomes.items() if outcome not in ("200", "202"))
    assert failed <= 2 * CLIENTS, outcomes  # only what was in flight on the dead replica (each client: 1 + retry)
    stored = Counter(e["event_id"] for e in read_collected_events(cfg.paths.collector_uri, cfg.paths))
    missing = [event_id for event_id in accepted if event_id not in stored]
    figures.update(events_accepted=len(accepted), events_found=sum(1 for e in accepted if e in stored),
                   failed_requests=failed, outcomes=dict(outcomes))
    assert not missing, f"{len(missing)} event(s) answered 202 are not in the collector: {missing[:5]}"
    jobs.client.stop_job(serve_job)


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def event(user: str, item: str, event_id: str) -> dict:
    return {"event_id": event_id, "user_id": user, "item_id": item, "event_type": "view"}


def ids(answer: dict) -> list[str]:
    return [item["item_id"] for item in answer["items"]]


def replica_nodes(head) -> dict[str, str]:
    """ALIVE Serve replica actors of the app: ``{actor name: node id}``."""
    return {a["name"]: a["node_id"] for a in head.alive_actors()
            if a.get("ray_namespace") == "serve" and "RecommenderService" in (a.get("name") or "")
            and "Replica" in (a.get("class_name") or "")}


def placed_on_head(head, prefix: str) -> bool:
    head_id = next(n["node_id"] for n in alive_nodes(head) if n.get("is_head_node"))
    return any(a["node_id"] == head_id for a in head.alive_actors() if (a.get("name") or "").startswith(prefix))


def run_load_and_kill(api: str, worker, items: list[str], figures: dict) -> tuple[Counter, list[str], list[int]]:
    """``CLIENTS`` shoppers post an event then ask for recommendations, for ``LOAD_S``; the worker node is
    SIGKILLed at ``KILL_AT_S``. Returns the outcome counts, the ids of the events answered 202 and the pids
    killed."""
    outcomes: Counter = Counter()
    accepted: list[str] = []
    lock = threading.Lock()
    stop_at = time.time() + LOAD_S
    done_before_kill: list[int] = []

    def shopper(n: int) -> None:
        with httpx.Client(base_url=api, timeout=30) as http:
            seq = 0
            while time.time() < stop_at:
                seq += 1
                event_id = f"load-{n}-{seq}"
                for method, url, body in (("POST", "/events", event(f"mn-load-{n}", items[seq % len(items)],
                                                                     event_id)),
                                          ("GET", f"/recommendations/mn-load-{n}", None)):
                    try:
                        got = http.request(method, url, json=body, params=None if body else {"k": 5})
                        outcome = str(got.status_code)
                    except httpx.HTTPError as err:
                        outcome = type(err).__name__
                    with lock:
                        outcomes[outcome] += 1
                        if method == "POST" and outcome == "202":
                            accepted.append(event_id)

    threads = [threading.Thread(target=shopper, args=(n,)) for n in range(CLIENTS)]
    started = time.time()
    for thread in threads:
        thread.start()
    time.sleep(KILL_AT_S)
    with lock:
        done_before_kill.append(sum(outcomes.values()))
    killed = worker.kill()
    figures["worker_processes_killed"] = len(killed)
    for thread in threads:
        thread.join()
    figures["requests_per_s_two_nodes"] = round(done_before_kill[0] / (KILL_AT_S), 1)
    figures["requests_per_s_after_kill"] = round((sum(outcomes.values()) - done_before_kill[0])
                                                 / max(time.time() - started - KILL_AT_S, 1e-9), 1)
    return outcomes, accepted, killed
