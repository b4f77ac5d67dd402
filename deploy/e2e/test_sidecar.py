"""The sidecar overlay on podman: every pod serves the master's data, writes
propagate, readiness waits for the first sync, and reads survive a master
outage and the loss of the tunnel."""

import json
import secrets
import statistics
import subprocess
import time

import pytest

from deploy.e2e import kit, monitoring


@pytest.fixture(autouse=True)
def _watched(prometheus):
    """Prometheus watches the pods from the first test here on, so that the live monitoring checks
    (test_monitoring_live.py, run last) cover every test of this module."""


def test_every_pod_serves_known_key(master, pods, summary):
    master.set("known-key", "hello from the e2e master")
    for pod in pods:
        kit.wait_for(
            f"known-key on {pod.name}", lambda pod=pod: pod.value("known-key") == "hello from the e2e master", 30
        )
    summary(f"{len(pods)} pods answer 200 with the master's value")


def test_propagation(master, pods, summary, writes=200):
    """From a write on the master to every pod answering it, through the pods' value caches
    (on by default): a key read before its write reaches a pod is cached as missing, and only
    the invalidation that follows the write lets the new value through."""
    kit.wait_for(
        "every pod's value cache to serve", lambda: all(p.metric("read_api_cache_tracking_up") == 1 for p in pods), 10
    )
    invalidations = [pod.metric("read_api_cache_invalidations_total") for pod in pods]
    delays = []
    for i in range(writes):
        key, value = f"prop:{i}", secrets.token_hex(8)
        master.set(key, value)
        written = time.monotonic()
        for pod in pods:
            kit.wait_for(
                f"{key} on {pod.name}", lambda pod=pod, key=key, value=value: pod.value(key) == value, 10, every=0.0005
            )
        delays.append((time.monotonic() - written) * 1000)
    delays.sort()
    p99 = delays[max(0, int(len(delays) * 0.99) - 1)]
    for pod, before in zip(pods, invalidations, strict=True):
        assert pod.metric("read_api_cache_invalidations_total") - before >= writes, f"{pod.name}: too few invalidations"
    summary(
        f"propagation p50={statistics.median(delays):.1f} p99={p99:.1f} max={delays[-1]:.1f} "
        f"(ms, {writes} writes, all {len(pods)} pods, through their value caches)"
    )


def test_readiness_gates_on_the_first_sync(master, pods, summary):
    master.set("known-key", "hello from the e2e master")
    # Enough data, saved slowly, that the new replica's first sync visibly takes a while.
    for start in range(0, 20000, 1000):
        master.mset({f"fill:{i}": "x" * 64 for i in range(start, start + 1000)})
    master.config_set("rdb-key-save-delay", 200)
    try:
        pod = kit.play_one("read-api-late", "overlays/sidecar", kit.LATE_PORTS)
        seen = set()

        def synced():
            status, body = pod.ready()
            seen.add((status, body.get("reason", "").split(":")[0]))
            return status == 200

        kit.wait_for("the late pod to become ready", synced, 90, every=0.05)
        assert (503, "replica_not_synced") in seen, f"never saw 'not synced' before ready: {sorted(seen)}"
        assert pod.value("known-key") == "hello from the e2e master"
    finally:
        master.config_set("rdb-key-save-delay", 0)
        kit.podman("pod", "rm", "-f", "read-api-late-0", check=False)
    summary("read-api-late-0 answered 503 replica_not_synced during its first sync, then 200")


HEARTBEAT_AGE = "read_api_replica_heartbeat_age_seconds"
FRESH = 5  # seconds: the heartbeat writer's period plus the API's poll, with room


def fresh(pod):
    return 0 <= pod.metric(HEARTBEAT_AGE) < FRESH


# The alerts the master outage must raise on every pod, and that must resolve after it.
OUTAGE_ALERTS = ("ReadApiReplicaLinkDown", "ReadApiReplicaStale")


def test_master_outage(master, pods, prometheus, summary):
    master.set("known-key", "before the outage")
    for pod in pods:
        kit.wait_for(f"{pod.name} to see the last write", lambda p=pod: p.value("known-key") == "before the outage", 10)
        kit.wait_for(f"{pod.name}'s heartbeat age under {FRESH} s", lambda p=pod: fresh(p), 30)
        assert pod.exporter_metric("redis_master_link_up") == 1, f"{pod.name}: its exporter sees no master link"
    memory = pods[0].exporter_metric("redis_memory_used_bytes")
    assert memory and memory > 0, f"the exporter reports no replica memory: {memory}"
    # As Kubernetes would: SIGTERM and time to shut down while the pod's network
    # stays up (stopping the whole podman pod would tear the network down first).
    kit.podman("stop", "-t", "20", "redis-master-redis")
    stopped = time.time()
    names = {pod.name for pod in pods}
    try:
        for pod in pods:
            kit.wait_for(
                f"{pod.name} to report the link down", lambda p=pod: p.metric("read_api_replica_link_up") == 0, 30
            )
            kit.wait_for(
                f"{pod.name}'s exporter to see the link down",
                lambda p=pod: p.exporter_metric("redis_master_link_up") == 0,
                30,
            )
            kit.wait_for(
                f"{pod.name}'s heartbeat age past {FRESH} s", lambda p=pod: p.metric(HEARTBEAT_AGE) > FRESH, 30
            )
        stale = min(pod.metric(HEARTBEAT_AGE) for pod in pods)
        for _ in range(20):
            for pod in pods:
                status, body = pod.get("/v1/keys/known-key")
                assert status == 200 and json.loads(body)["value"] == "before the outage", (
                    f"{pod.name}: {status} {body}"
                )
                assert pod.ready()[0] == 200, f"{pod.name} stopped being ready without its master"
            time.sleep(0.1)
        # The kit's own rules on the real Prometheus: pending, then firing past their `for:`, on every pod.
        for name in OUTAGE_ALERTS:
            prometheus.alerts.wait(
                f"{name} firing on every pod",
                lambda name=name: monitoring.pods_in(prometheus.alerts.since(stopped, name), "firing") >= names,
                240,
            )
    finally:
        kit.podman("start", "redis-master-redis")
        kit.wait_for("the master to come back", master.ping, 60, every=0.5)
    master.set("known-key", "after the outage")
    for pod in pods:
        kit.wait_for(f"{pod.name} to get the new write", lambda p=pod: p.value("known-key") == "after the outage", 60)
        kit.wait_for(f"{pod.name}'s heartbeat age back under {FRESH} s", lambda p=pod: fresh(p), 60)
        assert pod.exporter_metric("redis_master_link_up") == 1, f"{pod.name}: its exporter still sees the link down"
    for name in OUTAGE_ALERTS:
        prometheus.alerts.wait(
            f"{name} resolved on every pod",
            lambda name=name: monitoring.pods_in(prometheus.alerts.since(stopped, name), "resolved") >= names,
            60,
        )
    episodes = [e for name in OUTAGE_ALERTS for e in prometheus.alerts.since(stopped, name)]
    for e in episodes:
        assert e["pending"] < e["firing"] < e["resolved"], f"{e['name']} {e['labels'].get('pod')}: {e}"
    kit.add_rows("Alerts", monitoring.TIMELINE_HEADER, monitoring.timeline_rows("master outage", stopped, episodes))
    summary(
        "every pod kept answering 200 with the last value and /metrics showed the link down; new writes arrived "
        f"after; heartbeat age rose past {stale:.0f} s and fell back under {FRESH} s; each exporter showed the link "
        f"down and up, and {memory / 2**20:.1f} MiB of replica memory"
    )


def test_tunnel_loss(master, pods, summary):
    pod = pods[0]

    def syncs():
        stats = master.info("stats")
        return int(stats["sync_partial_ok"]), int(stats["sync_full"])

    before = syncs()
    statuses = {}
    restart = subprocess.Popen(
        ["podman", "restart", "-t", "1", f"{pod.name}-stunnel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    reads = 0
    # Until the replica has reconnected (the master counts a new sync) and reports its link up.
    while True:
        status, _ = pod.get("/v1/keys/known-key")
        statuses[status] = statuses.get(status, 0) + 1
        reads += 1
        if restart.poll() is not None and reads % 20 == 0:
            after = syncs()
            if after != before and pod.metric("read_api_replica_link_up") == 1:
                break
        assert time.monotonic() < deadline, f"the replica did not reconnect within 60s (answers: {statuses})"
    assert restart.returncode == 0, restart.stderr.read()
    assert set(statuses) == {200}, f"answers during the restart: {statuses}"
    resync = "a partial resync" if after[0] > before[0] else "a full resync"
    summary(f"{pod.name}: {reads} reads during the stunnel restart, all 200; the replica came back with {resync}")
