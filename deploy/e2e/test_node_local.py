"""The node-local overlay on podman: one node replica (the DaemonSet's pod on
podman's one "node", named redis-node as the Service is), two API pods
reading it over the pod network, and the node replica's loss taking them out
of service.

podman has no Service, so no internalTrafficPolicy: Local to check; the API
pods reach the node replica by its pod name, which is the Service's name."""

import time

import pytest

from deploy.e2e import kit

PODS = 2
PORTS = (18120, 19120)


def ready(pod):
    return pod.ready()[0] == 200


@pytest.fixture(scope="module")
def node_pods(master):
    master.set("known-key", "from the node's replica")
    kit.play(
        "node-local", "overlays/node-local",
        "--rename", "read-api=read-api-node", "--replicas", str(PODS),
        "--publish", f"http={PORTS[0]}", "--publish", f"admin={PORTS[1]}",
    )  # fmt: skip
    pods = [kit.Api(f"read-api-node-{i}", PORTS[0] + i, PORTS[1] + i) for i in range(PODS)]
    try:
        for pod in pods:
            kit.wait_for(f"{pod.name} to be ready", lambda p=pod: ready(p), 120, every=0.25)
        yield pods
    finally:
        kit.remove_pods("read-api-node", "redis-node")


def test_api_pods_read_the_node_replica(master, node_pods, summary):
    for pod in node_pods:
        kit.wait_for(f"known-key on {pod.name}", lambda p=pod: p.value("known-key") == "from the node's replica", 30)
        assert pod.metric("read_api_replica_role") == 1, f"{pod.name} does not read a replica"
    clients = kit.redis_cli("redis-node-redis", "CLIENT", "LIST")
    assert clients.count("cmd=") >= PODS, f"the node replica has fewer clients than API pods:\n{clients}"
    summary(f"{PODS} API pods read one node replica, redis-node, over the pod network")


def test_the_node_replica_gone_takes_its_api_pods_out_and_back(master, node_pods, summary):
    started = time.monotonic()
    kit.podman("stop", "-t", "5", "redis-node-redis")
    try:
        for pod in node_pods:
            kit.wait_for(f"{pod.name} to turn unready", lambda p=pod: not ready(p), 30)
            status, body = pod.ready()
            assert body["reason"].startswith("redis_unreachable"), body
        out = time.monotonic() - started
    finally:
        kit.podman("start", "redis-node-redis")
    # A restarted replica is empty until it has synced again: readiness waits for that sync.
    for pod in node_pods:
        kit.wait_for(f"{pod.name} to be ready again", lambda p=pod: ready(p), 120, every=0.25)
        assert pod.value("known-key") == "from the node's replica"
    summary(
        f"the node replica stopped: all {PODS} API pods unready (redis_unreachable) within {out:.1f} s; "
        f"ready again after its resync, {time.monotonic() - started:.1f} s in all"
    )
