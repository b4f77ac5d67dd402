"""The scenarios of make scale, in the order they run: a cold start of every
pod at once under writes, the probe contract in each replica state, a rolling
replacement in batches of maxSurge, and a master restart with the data set;
a live Prometheus with the kit's rules watches them all, and its sync and
memory alerts must stay silent."""

import threading
import time
from collections import Counter

import pytest
import yaml

from deploy.e2e import kit, monitoring, scale

FIRST_SYNC_DEADLINE = 900  # seconds for every pod of a cold start to be ready


class Writer(threading.Thread):
    """Writes at a fixed rate through the master until stopped; errors (a master away) are counted."""

    def __init__(self, password, rate):
        super().__init__(daemon=True)
        self.client, self.rate, self.stopped = kit.master_client(password), rate, threading.Event()
        self.writes = self.errors = 0

    def run(self):
        while not self.stopped.wait(1 / self.rate):
            try:
                self.client.set(f"write:{self.writes % 10000}", "w" * 100)
                self.writes += 1
            except kit.TRANSIENT:
                self.errors += 1

    def stop(self):
        self.stopped.set()
        self.join()


class Reader(threading.Thread):
    """Reads known-key round-robin through the pods in `serving` until stopped."""

    def __init__(self, serving):
        super().__init__(daemon=True)
        self.serving, self.stopped = serving, threading.Event()
        self.statuses, self.last_ok, self.longest_gap = Counter(), {}, 0.0

    def run(self):
        while not self.stopped.is_set():
            for pod in list(self.serving):
                try:
                    status, _ = pod.get("/v1/keys/known-key")
                except kit.TRANSIENT:
                    status = 0
                self.statuses[status] += 1
                now = time.monotonic()
                if status == 200:
                    self.longest_gap = max(self.longest_gap, now - self.last_ok.get(pod.name, now))
                    self.last_ok[pod.name] = now
            time.sleep(0.01)

    def stop(self):
        self.stopped.set()
        self.join()

    def share_ok(self):
        total = sum(self.statuses.values())
        return self.statuses[200] / total if total else 0.0


def container_state(name):
    fields = "{{.State.OOMKilled}} {{.RestartCount}} {{.State.CgroupPath}}"
    oom, restarts, cgroup = kit.podman("inspect", "--format", fields, name).stdout.split()
    return oom == "true", int(restarts), cgroup


def peak_memory(container):
    """Peak and limit of the container's memory cgroup (v1), bytes."""
    _, _, cgroup = container_state(container)
    base = f"/sys/fs/cgroup/memory{cgroup}"
    return int(open(f"{base}/memory.max_usage_in_bytes").read()), int(open(f"{base}/memory.limit_in_bytes").read())


def why(container):
    """What podman knows about a container that restarted: its health log and last lines."""
    health = kit.podman("inspect", "--format", "{{json .State.Health}}", container, check=False).stdout.strip()
    logs = kit.podman("logs", "--tail", "5", container, check=False)
    return f"health {health[:600]}; logs: {(logs.stdout + logs.stderr)[-600:]}"


def repl_bytes(master):
    return int(master.info("stats")["total_net_repl_output_bytes"])


def ready(pod):
    return pod.ready()[0] == 200


EXPORTERS = {}  # pod name -> the host port its replica's redis_exporter is published on
# Pods made to resync in full with their data in place: the load holds a second copy beside the
# first (repl-diskless-load swapdb), which may take the replica past ReadApiReplicaMemoryHigh's 40 %.
RESYNCED = set()


def watch(prometheus, pods):
    """Prometheus scrapes PODS (their API and exporter) from now on, and no other pod."""
    prometheus.watch(monitoring.targets(pods, {pod.name: EXPORTERS[pod.name] for pod in pods}, None))


@pytest.fixture(scope="session")
def writer(master, passwords):
    master.set("known-key", "scale")
    w = Writer(passwords["master"], scale.WRITES_PER_S)
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="session")
def cold_start(master, sizing, writer, prometheus):
    """Every pod started at once, under writes: figures for the cold-start scenario."""
    before, started = repl_bytes(master), time.monotonic()
    kit.play(
        "sidecar", sizing["sidecar-monitored"], "--replicas", str(scale.PODS),
        "--publish", f"http={kit.API_PORT}", "--publish", f"admin={kit.ADMIN_PORT}",
        "--publish", f"redis-metrics={kit.EXPORTER_PORT}",
    )  # fmt: skip
    pods = [kit.sidecar_pod(i) for i in range(scale.PODS)]
    EXPORTERS.update({pod.name: kit.EXPORTER_PORT + i for i, pod in enumerate(pods)})
    watch(prometheus, pods)
    for pod in pods:
        kit.wait_for(f"{pod.name} to be ready", lambda p=pod: ready(p), FIRST_SYNC_DEADLINE, every=0.5)
    return {"pods": pods, "seconds": time.monotonic() - started, "sent": repl_bytes(master) - before}


def test_cold_start(cold_start, master, summary):
    pods = cold_start["pods"]
    peaks = []
    for pod in pods:
        for part in ("api", "redis", "stunnel"):
            oom, restarts, _ = container_state(f"{pod.name}-{part}")
            assert not oom and restarts == 0, (
                f"{pod.name}-{part}: OOM-killed {oom}, restarted {restarts} times; {why(f'{pod.name}-{part}')}"
            )
        peak, limit = peak_memory(f"{pod.name}-redis")
        assert peak < limit
        peaks.append((peak, limit))
    highest = max(p / limit for p, limit in peaks)
    summary(
        f"{len(pods)} pods ready in {cold_start['seconds']:.0f} s, no container OOM-killed or restarted; "
        f"the master sent {cold_start['sent'] / 2**20:.0f} MiB; replica peak memory "
        f"{min(p for p, _ in peaks) / 2**20:.0f}-{max(p for p, _ in peaks) / 2**20:.0f} MiB of "
        f"{peaks[0][1] / 2**20:.0f} MiB ({100 * highest:.0f} % at most)"
    )


def test_full_syncs_under_writes_drop_no_replica(cold_start, master, writer, summary):
    stats = master.info("stats")
    logs = kit.podman("logs", "redis-master-redis", check=False)
    dropped = (logs.stdout + logs.stderr).count("output buffer limits")
    assert dropped == 0, f"the master dropped {dropped} replicas for their output buffer"
    assert int(stats["sync_full"]) == scale.PODS, f"{stats['sync_full']} full syncs for {scale.PODS} pods"
    summary(
        f"{stats['sync_full']} full syncs for {scale.PODS} pods while {writer.writes} writes went in "
        f"({scale.WRITES_PER_S}/s); no replica dropped for its output buffer"
    )


# --- the probe contract -----------------------------------------------------------


def rendered_probes(sizing):
    """The exec probes of the sidecar pod, and the API's readiness, as the manifests declare them."""
    docs = yaml.safe_load_all(kit.sh("kubectl", "kustomize", sizing["sidecar-monitored"]).stdout)
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    probes = {}
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        for kind in ("livenessProbe", "readinessProbe"):
            command = c.get(kind, {}).get("exec", {}).get("command")
            if command:
                probes[f"{c['name']} {kind.removesuffix('Probe')}"] = (c["name"], command)
    return probes


def probe_results(pod, probes):
    results = {"api readiness": ready(pod)}
    for label, (container, command) in probes.items():
        results[label] = kit.podman("exec", f"{pod.name}-{container}", *command, check=False).returncode == 0
    return results


def replica_cli(pod, *args):
    return kit.redis_cli(f"{pod.name}-redis", *args)


# What each probe must answer in each replica state: True passes, False fails.
EXPECTED = {
    "synced": {"redis live": True, "redis ready": True, "stunnel live": True, "stunnel ready": True, "api": True},
    # Stale reads beat no reads: after its first sync a pod stays in service without its master.
    "master down": {"redis live": True, "redis ready": True, "stunnel live": True, "stunnel ready": True, "api": True},
    "master refuses the password": {
        "redis live": True, "redis ready": True, "stunnel live": True, "stunnel ready": True, "api": True,
    },
    # Waiting for the master's snapshot: the old data is still served.
    "syncing": {"redis live": True, "redis ready": True, "stunnel live": True, "stunnel ready": True, "api": True},
    # Loading a full sync: alive (killing it would restart the sync), not serving.
    "loading": {"redis live": True, "redis ready": False, "stunnel live": True, "stunnel ready": True, "api": False},
}  # fmt: skip
SHORT = {
    "redis liveness": "redis live",
    "redis readiness": "redis ready",
    "stunnel liveness": "stunnel live",
    "stunnel readiness": "stunnel ready",
    "api readiness": "api",
}


def test_probe_contract(cold_start, master, passwords, sizing, summary):
    pod = cold_start["pods"][0]
    probes = rendered_probes(sizing)
    assert set(SHORT) == set(probes) | {"api readiness"}, f"probes in the manifests: {sorted(probes)}"
    actual = {}

    actual["synced"] = probe_results(pod, probes)

    kit.podman("stop", "-t", "20", "redis-master-redis")
    try:
        kit.wait_for("the link down", lambda: pod.metric("read_api_replica_link_up") == 0, 60)
        actual["master down"] = probe_results(pod, probes)
    finally:
        kit.podman("start", "redis-master-redis")
        kit.wait_for("the master back", master.ping, 120, every=0.5)
    kit.wait_for("the link up", lambda: pod.metric("read_api_replica_link_up") == 1, 120)

    # The replicas log in as the master's ACL user "replica" (acl-users.conf).
    master.execute_command("ACL", "SETUSER", "replica", "resetpass", ">not-the-password")
    try:
        master.execute_command("CLIENT", "KILL", "TYPE", "replica")
        kit.wait_for("the link down", lambda: pod.metric("read_api_replica_link_up") == 0, 60)
        actual["master refuses the password"] = probe_results(pod, probes)
    finally:
        master.execute_command("ACL", "SETUSER", "replica", "resetpass", f">{passwords['master-replica']}")
    kit.wait_for("the link up", lambda: pod.metric("read_api_replica_link_up") == 1, 120)

    # A full sync held before the snapshot (the master waits repl-diskless-sync-delay for more
    # replicas before it forks), then loaded slowly (key-load-delay, µs per key): probes run in both.
    RESYNCED.add(pod.name)
    replica_cli(pod, "CONFIG", "SET", "key-load-delay", "100")
    master.config_set("repl-diskless-sync-delay", 8)
    replica_cli(pod, "REPLICAOF", "NO", "ONE")
    replica_cli(pod, "REPLICAOF", "127.0.0.1", "6390")
    try:
        # Until the snapshot starts, the replica reports its link down and keeps its data.
        info = replica_cli(pod, "INFO", "replication") + replica_cli(pod, "INFO", "persistence")
        assert "role:slave" in info and "master_link_status:down" in info and "loading:0" in info, info
        actual["syncing"] = probe_results(pod, probes)
        master.config_set("repl-diskless-sync-delay", 2)
        kit.wait_for("the replica to load", lambda: "loading:1" in replica_cli(pod, "INFO", "persistence"), 120, 0.05)
        # The API learns of the load at its next INFO poll (REPLICA_POLL_MS, 1 s).
        kit.wait_for("the API to see the load", lambda: not ready(pod), 5, 0.1)
        actual["loading"] = probe_results(pod, probes)
        assert "loading:1" in replica_cli(pod, "INFO", "persistence"), "the load ended before the probes ran"
    finally:
        master.config_set("repl-diskless-sync-delay", 2)
        replica_cli(pod, "CONFIG", "SET", "key-load-delay", "0")
    kit.wait_for("the replica synced again", lambda: ready(pod), 300, every=0.5)

    rows = ["| state | " + " | ".join(SHORT.values()) + " |", "|---" * (len(SHORT) + 1) + "|"]
    wrong = []
    for state, results in actual.items():
        cells = []
        for label, short in SHORT.items():
            want, got = EXPECTED[state][short], results[label]
            cells.append(("pass" if got else "fail") + ("" if want == got else f" (want {'pass' if want else 'fail'})"))
            if want != got:
                wrong.append(f"{state}: {label}")
        rows.append(f"| {state} | " + " | ".join(cells) + " |")
    scale.REPORT["probes"] = "\n".join(rows)
    assert not wrong, "probes that answered wrong:\n" + "\n".join(rows)
    summary(f"every probe gave the expected answer in {len(actual)} replica states (table in report.md)")


# --- rolling replacement and master restart ----------------------------------------


def test_rolling_replacement(cold_start, master, sizing, prometheus, summary):
    surge = sizing["figures"]["max_surge"]
    old = list(cold_start["pods"])
    serving = list(old)
    reader = Reader(serving)
    reader.start()
    before, started, batch = repl_bytes(master), time.monotonic(), 0
    try:
        while old:
            name, count = f"read-api-r{batch}", min(surge, len(old))
            base, exporters = kit.api_ports(count), kit.host_ports(count)
            kit.play(
                name, sizing["sidecar-monitored"], "--rename", f"read-api={name}", "--replicas", str(count),
                "--publish", f"http={base[0]}", "--publish", f"admin={base[1]}",
                "--publish", f"redis-metrics={exporters}",
            )  # fmt: skip
            new = [kit.Api(f"{name}-{i}", base[0] + i, base[1] + i) for i in range(count)]
            EXPORTERS.update({pod.name: exporters + i for i, pod in enumerate(new)})
            watch(prometheus, serving + new)
            for pod in new:
                kit.wait_for(f"{pod.name} to be ready", lambda p=pod: ready(p), FIRST_SYNC_DEADLINE, every=0.5)
            serving.extend(new)
            for pod in old[:count]:
                serving.remove(pod)
                watch(prometheus, serving)
                kit.podman("pod", "rm", "-f", "-t", "10", pod.name)
            old = old[count:]
            batch += 1
    finally:
        reader.stop()
    cold_start["pods"][:] = serving
    assert set(reader.statuses) == {200}, f"answers through the pods that stayed: {dict(reader.statuses)}"
    summary(
        f"{scale.PODS} pods replaced in {batch} batches of {surge} in {time.monotonic() - started:.0f} s; "
        f"{sum(reader.statuses.values())} reads through the pods that stayed, all 200; "
        f"the master sent {(repl_bytes(master) - before) / 2**20:.0f} MiB"
    )


def test_master_restart_keeps_reads(cold_start, master, summary):
    pods = cold_start["pods"]
    reader = Reader(list(pods))
    reader.start()
    try:
        # SIGTERM saves a snapshot carrying the replication ID; the data volume keeps it.
        kit.podman("stop", "-t", "60", "redis-master-redis")
        kit.podman("start", "redis-master-redis")
        kit.wait_for("the master back", master.ping, 300, every=0.5)
        for pod in pods:
            kit.wait_for(f"{pod.name}'s link up", lambda p=pod: p.metric("read_api_replica_link_up") == 1, 300)
        time.sleep(1)
    finally:
        reader.stop()
    stats = master.info("stats")  # counted since the restart
    assert int(stats["sync_full"]) == 0, f"{stats['sync_full']} full syncs after the restart"
    assert int(stats["sync_partial_ok"]) == len(pods)
    assert reader.share_ok() == 1.0, f"answers during the restart: {dict(reader.statuses)}"
    summary(
        f"{100 * reader.share_ok():.1f} % of {sum(reader.statuses.values())} reads answered 200 during the restart, "
        f"longest gap {1000 * reader.longest_gap:.0f} ms; {stats['sync_partial_ok']} partial resyncs, 0 full"
    )


def test_no_container_was_killed_or_restarted(cold_start):
    for pod in cold_start["pods"]:
        for part in ("api", "redis", "stunnel"):
            oom, restarts, _ = container_state(f"{pod.name}-{part}")
            assert not oom and restarts == 0, (
                f"{pod.name}-{part}: OOM-killed {oom}, restarted {restarts} times; {why(f'{pod.name}-{part}')}"
            )


# --- the live monitoring -------------------------------------------------------------

# The alerts a scale run must not raise: its scenarios restart, resync and replace replicas on
# purpose, which may set a sync alert pending for a while, never firing; the memory alerts are
# what make size's limits are for, so not even pending, but for MemoryHigh on a replica the probe
# contract made load a second copy beside its data (RESYNCED), which make size's limit holds.
SYNC_ALERTS = ("ReadApiReplicaLinkDown", "ReadApiReplicaNeverSynced", "ReadApiReplicaStale", "ReadApiHeartbeatMissing")
MEMORY_ALERTS = ("ReadApiReplicaMemoryHigh", "ReadApiReplicaMemoryCritical")


def too_loud(episode):
    name, pod = episode["name"], episode["labels"].get("pod")
    if name in SYNC_ALERTS:
        return bool(episode["firing"])
    if name == "ReadApiReplicaMemoryHigh" and pod in RESYNCED:
        return bool(episode["firing"]) or episode["resolved"] is None
    return name in MEMORY_ALERTS


def test_sync_and_memory_alerts_stayed_silent(cold_start, prometheus, summary):
    """Over every scenario above (this test runs last): Prometheus scraped each pod there was,
    and the memory ratio the alerts compare is checked to exist for each pod, so that silence
    is not the silence of a missing series."""
    prometheus.wait_watched()
    rule = monitoring.rule("ReadApiReplicaMemoryHigh")["expr"]
    ratio = monitoring.compared(rule)
    now = {e["metric"]["pod"]: float(e["value"][1]) for e in prometheus.query(ratio)}
    assert set(now) == {pod.name for pod in cold_start["pods"]}, f"the memory ratio's series: {now}"
    span = time.time() - prometheus.started
    peak = prometheus.query(f"max(max_over_time(({ratio})[{span:.0f}s:{monitoring.SCRAPE_SECONDS}s]))")
    episodes = prometheus.alerts.since(prometheus.started)
    loud = [e for e in episodes if too_loud(e)]
    rows = monitoring.timeline_rows("make scale", prometheus.started, episodes)
    seen = {row[1] for row in rows}
    rows += [["make scale", name, "0", "-", "-", "-"] for name in SYNC_ALERTS + MEMORY_ALERTS if name not in seen]
    kit.add_rows("Alerts (seconds from Prometheus's start, before the cold start)", monitoring.TIMELINE_HEADER, rows)
    assert not loud, "alerts a scale run must not raise:\n" + "\n".join(
        f"{e['name']} {e['labels'].get('pod')}: {e}" for e in loud
    )
    assert prometheus.alerts.errors < 10, f"{prometheus.alerts.errors} polls of /api/v1/alerts failed"
    pending = sorted({e["name"] for e in episodes if e["name"] in SYNC_ALERTS + MEMORY_ALERTS})
    summary(
        f"Prometheus watched {span:.0f} s: no sync or memory alert fired, none pending but "
        f"{', '.join(pending) or 'none'} while replicas resynced; replica memory at most "
        f"{float(peak[0]['value'][1]):.1%} of its limit ({len(now)} replicas); every alert in the Alerts table"
    )
