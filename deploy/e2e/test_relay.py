"""The relay overlay on podman: two relays follow the master through stunnel,
two API pods' replicas follow the relays, a rollout of the API pods takes
nothing from the master, and a relay's loss keeps its pods serving.

podman has no Service: podmanize.py points API pod i at relay i mod 2 by name
(--spread), as the Service redis-relay spreads connections. Where a cluster's
Service would move a pod to another relay, the test does what the Service
would (REPLICAOF the other relay) and says so."""

import time

import pytest

from deploy.e2e import kit

RELAYS = 2
PODS = 2
PORTS = (18110, 19110)  # read-api-relay-N publishes PORTS[0]+N and PORTS[1]+N
ROLLOUT_PORTS = (18115, 19115)


def play_pods(name, ports, *options):
    kit.play(
        name, "overlays/relay",
        "--rename", f"read-api={name}", "--replicas", str(PODS), "--spread", f"redis-relay={RELAYS}",
        "--scale", f"redis-relay={RELAYS}", "--publish", f"http={ports[0]}", "--publish", f"admin={ports[1]}",
        *options,
    )  # fmt: skip
    return [kit.Api(f"{name}-{i}", ports[0] + i, ports[1] + i) for i in range(PODS)]


def ready(pod):
    return pod.ready()[0] == 200


@pytest.fixture(scope="module")
def relay_pods(master):
    """The relay overlay: redis-relay-0..1 and read-api-relay-0..1, all ready; removed after."""
    master.set("known-key", "through a relay")
    pods = play_pods("read-api-relay", PORTS)
    try:
        for pod in pods:
            kit.wait_for(f"{pod.name} to be ready", lambda p=pod: ready(p), 120, every=0.25)
        yield pods
    finally:
        kit.remove_pods("read-api-relay", "redis-relay")


def relay_of(pod):
    """The relay a pod's replica follows, by its own account."""
    return kit.info(kit.redis_cli(f"{pod.name}-redis", "INFO", "replication"))["master_host"]


def test_pods_follow_the_relays_and_the_relays_the_master(master, relay_pods, summary):
    for i, pod in enumerate(relay_pods):
        assert relay_of(pod) == f"redis-relay-{i % RELAYS}"
        kit.wait_for(f"known-key on {pod.name}", lambda p=pod: p.value("known-key") == "through a relay", 30)
    for i in range(RELAYS):
        replication = kit.info(kit.relay_cli(f"redis-relay-{i}", "INFO", "replication"))
        assert replication["role"] == "slave" and replication["master_link_status"] == "up", replication
        assert replication["connected_slaves"] == str(PODS // RELAYS), replication
    # The pods' replicas log in as the relays' user "replica", which may not read a key.
    refused = kit.podman(
        "exec", "read-api-relay-0-redis", "sh", "-c",
        "read -r p </etc/redis/master/password; redis-cli -h redis-relay-0 --user replica --pass \"$p\" "
        "--no-auth-warning GET known-key",
        check=False,
    ).stdout  # fmt: skip
    assert "NOPERM" in refused, refused
    summary(f"{PODS} pods read known-key from their own replica, each following one of {RELAYS} relays")


def test_a_rollout_of_the_api_pods_sends_nothing_from_the_master(master, relay_pods, summary):
    before = kit.replication_totals(master)
    relays = {f"redis-relay-{i}": kit.info(kit.relay_cli(f"redis-relay-{i}", "INFO", "stats")) for i in range(RELAYS)}
    new = play_pods("read-api-relay-r", ROLLOUT_PORTS, "--skip", "redis-relay")
    for pod in new:
        kit.wait_for(f"{pod.name} to be ready", lambda p=pod: ready(p), 120, every=0.25)
    for pod in relay_pods:
        kit.remove_pod(pod.name)
    relay_pods[:] = new
    after = kit.replication_totals(master)
    full_from_relays = sum(
        int(kit.info(kit.relay_cli(name, "INFO", "stats"))["sync_full"]) - int(stats["sync_full"])
        for name, stats in relays.items()
    )
    extra = kit.sync_bytes(before, after)
    assert after["sync_full"] == before["sync_full"], "the master ran a full sync for the rollout"
    assert full_from_relays == PODS, f"{full_from_relays} full syncs from the relays for {PODS} new pods"
    assert extra <= 0, f"the master sent {extra} bytes beyond its replication stream"
    summary(
        f"{PODS} pods replaced: {full_from_relays} full syncs from the relays, none from the master; the master sent "
        f"{after['sent'] - before['sent']} bytes, its replication stream to {after['replicas']} replicas, "
        f"{max(extra, 0)} beyond it"
    )


def test_a_relay_lost_keeps_its_pods_serving(master, relay_pods, summary):
    pod = relay_pods[0]
    relay = relay_of(pod)
    master.set("known-key", "before the relay went")
    kit.wait_for("the write on the pod", lambda: pod.value("known-key") == "before the relay went", 30)
    before = kit.replication_totals(master)
    reader = kit.Watch([pod])
    reader.start()
    try:
        # A crash: no last snapshot, so the relay comes back with what its volume holds.
        kit.podman("kill", f"{relay}-redis")
        kit.wait_for("the pod to see its link down", lambda: pod.metric("read_api_replica_link_up") == 0, 30)
        master.set("known-key", "while the relay was away")
        time.sleep(2)
        assert pod.value("known-key") == "before the relay went", "the pod's replica served nothing stale?"
        kit.podman("start", f"{relay}-redis")
        kit.wait_for("the pod to get the new write", lambda: pod.value("known-key") == "while the relay was away", 120)
    finally:
        reader.stop()
    after = kit.replication_totals(master)
    stats = kit.info(kit.relay_cli(relay, "INFO", "stats"))  # counted since the relay's restart
    assert set(reader.reads) == {200}, f"reads through {pod.name} while its relay was away: {dict(reader.reads)}"
    assert set(reader.readiness) == {200}, f"{pod.name}'s readiness while its relay was away: {reader.readiness}"
    summary(
        f"{relay} killed and restarted: {pod.name} answered {sum(reader.reads.values())} reads, all 200, and stayed "
        f"ready; the relay resynced from the master with {after['sync_full'] - before['sync_full']} full and "
        f"{after['sync_partial_ok'] - before['sync_partial_ok']} partial syncs, its pods from it with "
        f"{stats['sync_full']} full and {stats['sync_partial_ok']} partial"
    )


def test_a_pod_moved_to_another_relay_resumes_partially(master, relay_pods, summary):
    """What the Service does when a pod's relay goes away on a cluster: the pod's replica
    reconnects to another relay, which shares the master's replication ID and offsets."""
    pod = relay_pods[0]
    old = relay_of(pod)
    other = next(f"redis-relay-{i}" for i in range(RELAYS) if f"redis-relay-{i}" != old)
    before = kit.info(kit.relay_cli(other, "INFO", "stats"))
    kit.redis_cli(f"{pod.name}-redis", "REPLICAOF", other, "6379")
    try:
        kit.wait_for("the link to the other relay", lambda: pod.metric("read_api_replica_link_up") == 1, 30)
        master.set("known-key", "through the other relay")
        kit.wait_for("the write", lambda: pod.value("known-key") == "through the other relay", 30)
        after = kit.info(kit.relay_cli(other, "INFO", "stats"))
        full = int(after["sync_full"]) - int(before["sync_full"])
        partial = int(after["sync_partial_ok"]) - int(before["sync_partial_ok"])
        assert (full, partial) == (0, 1), f"{pod.name} resumed from {other} with {full} full, {partial} partial syncs"
        assert ready(pod)
    finally:
        kit.redis_cli(f"{pod.name}-redis", "REPLICAOF", old, "6379")
    summary(f"{pod.name} moved from {old} to {other}: a partial resync, no full one, ready throughout")
