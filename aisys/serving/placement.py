"""Where the serving tier's shared actors live on a cluster: on the head node.

A shared actor (the session store, the stock) outlives the replica that created it, and a replica on a worker
node would otherwise create it on its own node: that node's loss would then take every replica's sessions or
stock with it. The head node holds the GCS and the Serve controller already (the cluster does not outlive it),
so pinning the shared state there adds no new way to fail. On a one-node Ray the head is the only node.
"""

from __future__ import annotations

HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's own marker resource of the head node


def head_node_resources() -> dict[str, float]:
    """``resources=`` that place an actor on the head node (empty where the cluster has no marked head)."""
    import ray

    return {HEAD_NODE_RESOURCE: 0.001} if HEAD_NODE_RESOURCE in ray.cluster_resources() else {}
