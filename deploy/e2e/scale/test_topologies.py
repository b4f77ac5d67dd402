"""make compare-topologies: the sidecar, relay and node-local topologies side
by side on podman, for the same PODS and DATASET_MB, on one sized and seeded
master under WRITES_PER_S writes (the fixtures of make scale).

For each topology in turn: a cold start (every pod at once), the replica
memory it then holds, reads/s through one pod at a time, propagation from the
master to every API pod, and a full rollout of the API pods in batches of
maxSurge; for the relay topology also the loss of a relay, stopped and
killed. The bytes the master sent are read from its INFO: all of them, and
those beyond the replication stream (kit.sync_bytes: full syncs). The run
ends with target/compare/report.md.

What podman cannot play: a Service. The relay topology's API pods follow
relay i mod R by name (podmanize.py --spread), as the Service spreads them;
the node-local API pods reach the one node replica by its pod name,
redis-node, which is the Service's name; there is no internalTrafficPolicy
to check on one node.
"""

import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from deploy.e2e import kit, scale
from deploy.e2e.scale import test_scale

OUT = kit.REPO / "target/compare"
TOPOLOGIES = ["sidecar", "relay", "node-local"]
SHORT = {"sidecar": "sc", "relay": "rl", "node-local": "nl"}
BASE_PORT = {"sidecar": 18200, "relay": 18300, "node-local": 18400}
LOAD_SECONDS = int(os.environ.get("LOAD_SECONDS", "5"))
LOAD_PODS = 2  # reads/s measured through this many pods, one at a time
PROPAGATION_WRITES = 100
FIGURES = {t: {} for t in TOPOLOGIES}
NOTES = []
COLD_START_DEADLINE = 300  # seconds: a cold start at these sizes takes seconds


class Deployed:
    """One topology on podman: its API pods, and the Redis servers that hold its data."""

    def __init__(self, topology, sizing):
        self.topology, self.sizing = topology, sizing
        self.render = kit.without_value_cache(sizing[topology])
        self.relays = 0
        self.pods = []

    def play(self, name, count, port, pods_only=False):
        options = ["--rename", f"read-api={name}", "--replicas", str(count),
                   "--publish", f"http={port}", "--publish", f"admin={port + 1000}"]  # fmt: skip
        if pods_only:  # a rollout replaces the API pods alone
            options += ["--skip", "redis-relay", "--skip", "redis-node"]
        if self.topology == "relay":
            self.relays = self.relays or relay_count(self.sizing["relay"])
            options += ["--spread", f"redis-relay={self.relays}"]
        kit.play(name, self.render, *options)
        return [kit.Api(f"{name}-{i}", port + i, port + 1000 + i) for i in range(count)]

    def data_holders(self):
        """(container, redis-cli runner) of every Redis holding the data set for this topology."""
        holders = []
        if self.topology != "node-local":
            holders += [(f"{p.name}-redis", lambda c, *a: kit.redis_cli(c, *a)) for p in self.pods]
        holders += [(f"redis-relay-{i}-redis", relay_cli_of(f"redis-relay-{i}")) for i in range(self.relays)]
        if self.topology == "node-local":
            holders.append(("redis-node-redis", lambda c, *a: kit.redis_cli(c, *a)))
        return holders

    def remove(self):
        kit.remove_pods(f"read-api-{SHORT[self.topology]}", "redis-relay", "redis-node")


def relay_cli_of(relay):
    return lambda _container, *args: kit.relay_cli(relay, *args)


def relay_count(render):
    """The relays the rendered overlay runs (one per zone by default)."""
    docs = yaml.safe_load_all(kit.sh("kubectl", "kustomize", render).stdout)
    return next(d for d in docs if d and d["kind"] == "StatefulSet")["spec"]["replicas"]


def ready(pod):
    return pod.ready()[0] == 200


def mib(n):
    return f"{n / 2**20:.0f} MiB"


@pytest.fixture(scope="module")
def writer(master, passwords):
    master.set("known-key", "compare")
    w = test_scale.Writer(passwords["master"], scale.WRITES_PER_S)
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="module", autouse=True)
def report():
    scale.REPORT["compare"] = True
    yield
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [
        ("master bytes sent, cold start", "cold_sent"),
        ("  of which full syncs (beyond the stream)", "cold_sync"),
        ("master full syncs, cold start", "cold_full"),
        ("time to all ready, cold start", "cold_seconds"),
        ("replica memory, all Redis holding the data (RSS)", "rss"),
        ("  peak (cgroups, summed)", "peak"),
        ("Redis servers holding the data", "holders"),
        ("reads/s per pod (one pod at a time)", "reads"),
        ("  p99 latency at that load", "read_p99"),
        ("propagation master → every API pod, p50 / p99", "propagation"),
        ("master bytes sent, full rollout of the API pods", "roll_sent"),
        ("  of which full syncs (beyond the stream)", "roll_sync"),
        ("master full syncs, rollout", "roll_full"),
        ("full syncs from relays, rollout", "roll_relay_full"),
        ("rollout time", "roll_seconds"),
        ("reads through the pods that stayed, rollout", "roll_reads"),
    ]
    lines = ["| | " + " | ".join(TOPOLOGIES) + " |", "|---" * (len(TOPOLOGIES) + 1) + "|"]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(str(FIGURES[t].get(key, "–")) for t in TOPOLOGIES) + " |")
    text = "\n".join(
        [
            "# make compare-topologies",
            "",
            f"{scale.PODS} API pods per topology, {scale.DATASET_MB} MiB of data "
            f"({scale.REPORT.get('seed', 'not seeded')}), {scale.WRITES_PER_S} writes/s throughout; "
            f"{os.cpu_count()} CPUs, every container under the limits the manifests declare.",
            "",
            *lines,
            "",
            *NOTES,
            "",
            "Checks:",
            "",
            kit.results_table(),
            "",
        ]
    )
    (OUT / "report.md").write_text(text)
    print(f"\ncompare: wrote {OUT.relative_to(kit.REPO) / 'report.md'}\n\n" + "\n".join(lines))


@pytest.fixture(scope="module", params=TOPOLOGIES)
def deployed(request, master, sizing, writer):
    """A cold start of one topology: every pod at once, under writes. Removed after its tests."""
    topology = request.param
    d = Deployed(topology, sizing)
    before, started = kit.replication_totals(master), time.monotonic()
    d.pods = d.play(f"read-api-{SHORT[topology]}", scale.PODS, BASE_PORT[topology])
    try:
        try:
            for pod in d.pods:
                kit.wait_for(f"{pod.name} to be ready", lambda p=pod: ready(p), COLD_START_DEADLINE, 0.5)
        except AssertionError:
            for name in kit.pod_names():
                print(f"--- podman pod logs {name} (last lines)\n{kit.pod_logs(name)}")
            raise
        after = kit.replication_totals(master)
        FIGURES[topology].update(
            cold_sent=mib(after["sent"] - before["sent"]),
            cold_sync=mib(kit.sync_bytes(before, after)),
            cold_full=after["sync_full"] - before["sync_full"],
            cold_seconds=f"{time.monotonic() - started:.0f} s",
        )
        yield d
    finally:
        d.remove()


def test_cold_start(deployed, summary):
    f = FIGURES[deployed.topology]
    expected = {"sidecar": scale.PODS, "relay": deployed.relays, "node-local": 1}[deployed.topology]
    assert f["cold_full"] == expected, f"{f['cold_full']} full syncs from the master, {expected} expected"
    summary(
        f"{deployed.topology}: {scale.PODS} pods ready in {f['cold_seconds']}; the master ran {expected} full syncs"
    )


def test_replica_memory(deployed, summary):
    rss = peak = 0
    for container, cli in deployed.data_holders():
        memory = kit.info(cli(container, "INFO", "memory"))
        rss += int(memory["used_memory_rss"])
        peak += test_scale.peak_memory(container)[0]
    holders = len(deployed.data_holders())
    FIGURES[deployed.topology].update(rss=mib(rss), peak=mib(peak), holders=holders)
    assert rss > holders * scale.DATASET_MB * 2**20 * 0.8, "a Redis holding the data holds less than the data set"
    summary(f"{deployed.topology}: {holders} Redis hold the data, {mib(rss)} RSS in all, peaks summed {mib(peak)}")


def oha(url):
    result = subprocess.run(
        [shutil.which("oha") or str(Path.home() / ".cargo/bin/oha"), "--no-tui", "--output-format", "json",
         "-z", f"{LOAD_SECONDS}s", "-c", "16", url],
        capture_output=True, text=True, timeout=LOAD_SECONDS + 60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_reads_per_pod(deployed, summary):
    rates, p99s = [], []
    for pod in deployed.pods[:LOAD_PODS]:
        out = oha(f"http://127.0.0.1:{pod.port}/v1/keys/known-key")
        codes = out.get("statusCodeDistribution", {})
        assert set(codes) == {"200"}, f"{pod.name}: {codes}"
        rates.append(out["summary"]["requestsPerSec"])
        p99s.append(out["latencyPercentiles"]["p99"] * 1000)
    FIGURES[deployed.topology].update(reads=f"{statistics.mean(rates):.0f}", read_p99=f"{max(p99s):.1f} ms")
    summary(f"{deployed.topology}: {statistics.mean(rates):.0f} reads/s per pod (oha, 16 connections, all 200)")


def test_propagation(deployed, master, summary):
    delays = []
    for i in range(PROPAGATION_WRITES):
        key, value = f"prop:{i}", f"{deployed.topology}-{time.monotonic_ns()}"
        master.set(key, value)
        written = time.monotonic()
        for pod in deployed.pods:
            kit.wait_for(f"{key} on {pod.name}", lambda p=pod, k=key, v=value: p.value(k) == v, 10, every=0.0005)
        delays.append((time.monotonic() - written) * 1000)
    delays.sort()
    p99 = delays[max(0, int(len(delays) * 0.99) - 1)]
    FIGURES[deployed.topology]["propagation"] = f"{statistics.median(delays):.1f} / {p99:.1f} ms"
    summary(f"{deployed.topology}: propagation p50 {statistics.median(delays):.1f} ms, p99 {p99:.1f} ms")


def test_full_rollout_of_the_api_pods(deployed, master, sizing, summary):
    surge = sizing["figures"]["max_surge"]
    topology, old = deployed.topology, list(deployed.pods)
    serving = list(old)
    reader = test_scale.Reader(serving)
    relays_before = [int(kit.info(kit.relay_cli(f"redis-relay-{i}", "INFO", "stats"))["sync_full"])
                     for i in range(deployed.relays)]  # fmt: skip
    before, started, batch = kit.replication_totals(master), time.monotonic(), 0
    reader.start()
    try:
        while old:
            count = min(surge, len(old))
            port = BASE_PORT[topology] + 20 * (batch + 1)
            new = deployed.play(f"read-api-{SHORT[topology]}-r{batch}", count, port, pods_only=True)
            for pod in new:
                kit.wait_for(f"{pod.name} to be ready", lambda p=pod: ready(p), test_scale.FIRST_SYNC_DEADLINE, 0.5)
            serving.extend(new)
            for pod in old[:count]:
                serving.remove(pod)
                kit.remove_pod(pod.name)
            old = old[count:]
            batch += 1
    finally:
        reader.stop()
    after = kit.replication_totals(master)
    deployed.pods[:] = serving
    relay_full = sum(int(kit.info(kit.relay_cli(f"redis-relay-{i}", "INFO", "stats"))["sync_full"]) - n
                     for i, n in enumerate(relays_before))  # fmt: skip
    sync, full = kit.sync_bytes(before, after), after["sync_full"] - before["sync_full"]
    FIGURES[topology].update(
        roll_sent=mib(after["sent"] - before["sent"]),
        roll_sync=f"{max(sync, 0)} B" if sync < 2**20 else mib(sync),
        roll_full=full,
        roll_relay_full=relay_full if topology == "relay" else "–",
        roll_seconds=f"{time.monotonic() - started:.0f} s ({batch} batches of {surge})",
        roll_reads=f"{sum(reader.statuses.values())}, "
        + ", ".join(f"{k}: {v}" for k, v in sorted(reader.statuses.items())),
    )
    assert set(reader.statuses) == {200}, f"answers through the pods that stayed: {dict(reader.statuses)}"
    if topology == "sidecar":
        assert full == scale.PODS
    else:
        # The acceptance of issue #12: a rollout of the API pods takes nothing from the master.
        assert full == 0 and sync <= 0, f"the master ran {full} full syncs, {sync} bytes beyond its stream"
    if topology == "relay":
        assert relay_full == scale.PODS, f"{relay_full} full syncs from the relays for {scale.PODS} new pods"
    summary(f"{topology}: {scale.PODS} pods replaced in {batch} batches; master full syncs {full}, "
            f"{max(sync, 0)} bytes beyond the stream")  # fmt: skip


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_relay_loss(deployed, master, how, summary):
    """A relay stopped (SIGTERM: a last snapshot, as a rolling update of the relays does) or killed
    (no last snapshot): its pods keep serving their last data and stay ready; then the cascade."""
    if deployed.topology != "relay":
        pytest.skip("relay topology only")
    relay = "redis-relay-0"
    followers = [p for p in deployed.pods if relay_of(p) == relay]
    assert followers, "no pod follows redis-relay-0"
    before = kit.replication_totals(master)
    watch = kit.Watch(followers)
    watch.start()
    started = time.monotonic()
    try:
        if how == "stopped":
            kit.podman("stop", "-t", "30", f"{relay}-redis")
        else:
            kit.podman("kill", f"{relay}-redis")
        time.sleep(5)  # writes go on without it
        kit.podman("start", f"{relay}-redis")
        master.set("relay-loss", how)
        for pod in followers:
            kit.wait_for(f"{pod.name} to catch up", lambda p=pod: p.value("relay-loss") == how, 300, every=0.2)
    finally:
        watch.stop()
    seconds = time.monotonic() - started
    after = kit.replication_totals(master)
    stats = kit.info(kit.relay_cli(relay, "INFO", "stats"))  # counted since its restart
    full, partial = after["sync_full"] - before["sync_full"], after["sync_partial_ok"] - before["sync_partial_ok"]
    from_master = f"{full} full, {partial} partial"
    to_pods = f"{stats['sync_full']} full, {stats['sync_partial_ok']} partial"
    NOTES.append(
        f"- Relay {how} ({relay}, {len(followers)} of its pods): back and caught up in {seconds:.0f} s; the relay "
        f"resynced from the master with {from_master} syncs ({mib(kit.sync_bytes(before, after))} beyond the "
        f"stream), its pods from it with {to_pods}; reads through its pods {dict(watch.reads)}, their /readyz "
        f"{dict(watch.readiness)}."
    )
    assert set(watch.reads) == {200}, f"reads while {relay} was {how}: {dict(watch.reads)}"
    assert set(watch.readiness) == {200}, f"readiness while {relay} was {how}: {dict(watch.readiness)}"
    summary(f"{relay} {how}: from the master {from_master}; to its {len(followers)} pods {to_pods}; reads all 200")


def relay_of(pod):
    return kit.info(kit.redis_cli(f"{pod.name}-redis", "INFO", "replication"))["master_host"]
