#!/usr/bin/env python3
"""make replay: the original experiment, central against sidecar over 1..N
CPU-limited pods, on podman with the kit's own rendered manifests.

Every container gets a CPU limit scaled down (LIMITS below) so that N pods, the
master and the load generators fit on this machine's two cores; the master's
limit stands for the small hosted instance that was the original's bottleneck.
Load is the vegeta kit's own path (loadtest/attack.sh, oha standing in for
vegeta): an open-model, fixed-rate ladder, one attack per pod at RATE/N on
its own connections, which is how a Service spreads kept-alive connections.
The CPU each container spends per read is read from its cgroup at every step,
and loadtest/model, fed with the costs measured at one pod and the limits,
predicts every N.

This machine is shared: the same play measured minutes apart can differ by a
third. So the whole run, calibration and ladders, is repeated --repeats times
in turn; every figure is the median of its repeats, and the report gives how
far the repeats of each point lie apart, the bound below which no model can
be checked.

Usage: python -m loadtest.replay [--pods 1,2,4,6,8] [--seconds 5] [--steps 7] [--repeats 3]
       python -m loadtest.replay --report   (the report again from target/replay's records, after a change to the model)
Output: target/replay/report.md, results.csv, calibration.csv (the steps costs came from), ladder.svg,
throughput.svg
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from deploy.e2e import kit
from loadtest import model
from loadtest.lib import bench

REPO = Path(__file__).resolve().parents[1]

OUT = REPO / "target/replay"
# Cores per container: a pod is a hundredth of the original's half-core pods' budget
# per core of ours, and the master a small fraction of one, so 8 pods, the master and
# the load generators share two cores.
LIMITS = {"api": 0.05, "redis": 0.025, "stunnel": 0.025, "master": 0.025}
PORTS = {"sidecar": (18200, 19200), "central": (18300, 19300)}
SUCCESS = 0.999  # the share of 200s a step must keep to count as held
HELD_THROUGHPUT = 0.95  # and the share of the offered rate it must complete
HOST_SATURATED = 0.95  # a step with the machine's cores this busy measures the machine
TOLERANCE = 0.20  # the model's error the report accepts at a point
MASTER_LADDER = (1.2, 1.6, 2.0, 2.6)  # offered, in multiples of the master's one-pod capacity
MASTER_PODS = (2, 4, 8)  # the pod counts its cost is measured at (at_pods: linear between them)


def millicores(cores):
    return f"{round(cores * 1000)}m"


def limits_component(name, kind, workload, containers):
    """A component setting the CPU request and limit of each named container to LIMITS."""
    path = OUT / "limits" / name
    path.mkdir(parents=True, exist_ok=True)
    patch = {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": workload},
        "spec": {"template": {"spec": {"containers": [
            {"name": c, "resources": {"requests": {"cpu": cpu}, "limits": {"cpu": cpu}}}
            for c, cpu in ((c, millicores(LIMITS[key])) for c, key in containers.items())
        ]}}},
    }  # fmt: skip
    (path / "patch.yaml").write_text(yaml.safe_dump(patch))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "patches": [{"path": "patch.yaml", "target": {"kind": kind, "name": workload}}],
    }
    (path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return path


def render_dir(name, base, component):
    """A kustomization of deploy/BASE with COMPONENT, as a user would apply it."""
    path = OUT / "render" / name
    path.mkdir(parents=True, exist_ok=True)
    doc = {
        "resources": [os.path.relpath(REPO / "deploy" / base, path)],
        "components": [os.path.relpath(component, path)],
    }
    (path / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return path


def cpu_use(container):
    """(CPU seconds used, CFS periods, periods throttled) of the container, from its cgroup (v1)."""
    cgroup = kit.podman("inspect", "--format", "{{.State.CgroupPath}}", container).stdout.strip()
    seconds = int(Path(f"/sys/fs/cgroup/cpuacct{cgroup}/cpuacct.usage").read_text()) / 1e9
    stat = dict(line.split() for line in Path(f"/sys/fs/cgroup/cpu{cgroup}/cpu.stat").read_text().splitlines())
    return seconds, int(stat["nr_periods"]), int(stat["nr_throttled"])


def total_use(containers):
    return [sum(column) for column in zip(*(cpu_use(c) for c in containers), strict=True)]


def host_cpu():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


def attack(pod, rate, seconds, label):
    """One step of loadtest/attack.sh against one pod; its normalised result."""
    out = OUT / "runs" / label
    env = {
        **os.environ,
        "BASE_URL": f"http://127.0.0.1:{pod.port}",
        "RATES": str(max(1, round(rate))),
        "DURATION": str(seconds),
        "CONNECTIONS": "8",
        "LABEL": label,
        "OUT": str(out),
        "ENGINE": "oha",
    }
    subprocess.run([REPO / "loadtest/attack.sh"], env=env, check=True, capture_output=True, timeout=seconds + 120)
    return json.loads((out / "summary.jsonl").read_text().splitlines()[-1])


def merge(results, offered, seconds):
    """One step's results across pods: totals add up; p99 is the worst pod's (an upper bound)."""
    requests = sum(r["requests"] for r in results)
    ok = sum(r["ok"] for r in results)
    return {
        "offered": offered,
        "requests": requests,
        "success": ok / requests if requests else 0.0,
        "throughput": ok / seconds,
        "p50_ms": sum(r["p50_ms"] * r["requests"] for r in results) / requests if requests else 0.0,
        "p99_ms": max(r["p99_ms"] for r in results),
    }


def median_rows(rows):
    """One row per point (topology, pods, offered): the median of every figure over its repeats,
    and how far apart the repeats' throughputs lie (largest / smallest - 1)."""
    points = {}
    for row in rows:
        points.setdefault((row["topology"], row["pods"], row["offered"]), []).append(row)
    merged = []
    for repeats in points.values():
        figures = (k for k, v in repeats[0].items() if isinstance(v, float) and k != "offered")
        row = {"topology": repeats[0]["topology"], "pods": repeats[0]["pods"], "offered": repeats[0]["offered"]}
        row |= {k: statistics.median(r[k] for r in repeats) for k in figures}
        served = [r["throughput"] for r in repeats]
        row["repeats"] = len(repeats)
        row["spread"] = max(served) / min(served) - 1 if min(served) > 0 else 0.0
        merged.append(row)
    return merged


def median_costs(calibrations):
    """Each cost term: its median over the repeats' calibrations."""
    costs = {}
    for topology in calibrations[0]:
        costs[topology] = {}
        for key, value in calibrations[0][topology].items():
            values = [c[topology][key] for c in calibrations]
            if isinstance(value, dict):
                value = {k: statistics.median(v[k] for v in values) for k in value}
            else:
                value = statistics.median(values)
            costs[topology][key] = value
    return costs


def one_pod_costs(rows):
    """Per-read costs at one pod, from its busiest step, and the share of that the pod
    sustains in overload (the steps that served less than HELD_THROUGHPUT of the offer)."""
    busiest = max(rows, key=lambda r: r["throughput"])
    overloaded = [r["throughput"] for r in rows if r["throughput"] < HELD_THROUGHPUT * r["offered"]]
    sustained = sum(overloaded) / len(overloaded) / busiest["throughput"] if overloaded else 1.0
    # What a container got of its limit is known only where it ran out: elsewhere, the limit.
    granted = {
        f"{part}_granted": max(busiest[f"{part}_quota"], 1.0) for part in ("api", "redis") if f"{part}_quota" in busiest
    }
    return {k: busiest[k] for k in busiest if k.endswith("_us")} | {"sustained": sustained} | granted


def master_costs(central, ladders):
    """The master's cost per read where it bounds the central topology, from its ladders at a
    few pod counts ({pods: rows}): its cost at each ladder's knee (the busiest step). The cost
    is not constant in N, nor monotone: more clients batch more reads per wake-up of its event
    loop, and past a few pods the wake-ups' own work grows (one run: 15.4 µs a read at 2 pods,
    12.2 at 4 and 6, 14.4 at 8), so the model takes it at N from the counts measured (at_pods).
    The deepest step of a ladder gives the share of the knee the master sustains in overload
    (it serves less there: every client's backlog costs it a little more per read)."""
    measured, granted, sustained = {}, {}, []
    for n, rows in sorted(ladders.items()):
        knee = max(rows, key=lambda r: r["throughput"])
        measured[n] = knee["master_us"]
        granted[n] = max(knee["master_quota"], 1.0)
        if rows[-1] is not knee and rows[-1]["throughput"] < HELD_THROUGHPUT * rows[-1]["offered"]:
            sustained.append(rows[-1]["throughput"] / knee["throughput"])
    central["master_sustained"] = sum(sustained) / len(sustained) if sustained else 1.0
    central["master_measured"] = measured
    central["master_granted"] = granted


def at_pods(measured, n):
    """A figure measured at some pod counts ({pods: value}), at N pods: linear between the
    nearest counts measured on either side, the nearest count's beyond them."""
    counts = sorted(measured)
    below = [c for c in counts if c <= n]
    above = [c for c in counts if c >= n]
    if not below or not above:
        return measured[counts[0] if not below else counts[-1]]
    low, high = below[-1], above[0]
    if low == high:
        return measured[low]
    return measured[low] + (measured[high] - measured[low]) * (n - low) / (high - low)


def costs_from(calibration):
    """One repeat's costs, from the steps of its calibration ladders."""
    one_pod = {t: [r for r in calibration if r["topology"] == t and r["pods"] == 1] for t in ("sidecar", "central")}
    costs = {t: one_pod_costs(rows) for t, rows in one_pod.items()}
    ladders = {}
    for row in calibration:
        if row["topology"] == "central" and row["pods"] > 1:
            ladders.setdefault(row["pods"], []).append(row)
    master_costs(costs["central"], ladders)
    return costs


class Run:
    def __init__(self, pods, seconds, steps, repeats=1):
        self.pods, self.seconds, self.steps, self.repeats = pods, seconds, steps, repeats
        self.rows, self.costs, self.plays = [], {}, 0
        self.repeat = 0  # the repeat being played; every step records it
        self.steps_played = []  # every ladder step of every repeat, kept for results.csv
        self.calibration = []  # the steps the costs were measured in, kept for calibration.csv
        self.calibrations = []  # each repeat's costs

    @classmethod
    def recorded(cls):
        """The run whose steps target/replay holds (run.json and the two CSVs), to report again."""
        if not (OUT / "run.json").exists():
            raise SystemExit(f"replay: no recorded run in {OUT} (make replay writes one)")
        meta = json.loads((OUT / "run.json").read_text())
        run = cls(meta["pods"], meta["seconds"], meta["steps"], meta["repeats"])

        def read(name):
            rows = []
            for raw in csv.DictReader(open(OUT / name)):
                row = {k: float(v) for k, v in raw.items() if v and k not in ("topology", "pods", "repeat")}
                rows.append(row | {"topology": raw["topology"], "pods": int(raw["pods"]), "repeat": int(raw["repeat"])})
            return rows

        run.steps_played, run.calibration = read("results.csv"), read("calibration.csv")
        run.calibrations = [costs_from([r for r in run.calibration if r["repeat"] == i]) for i in range(run.repeats)]
        run.costs = median_costs(run.calibrations)
        return run

    def setup(self):
        OUT.mkdir(parents=True, exist_ok=True)
        kit.WORK.mkdir(parents=True, exist_ok=True)
        kit.teardown()
        kit.certificates()
        self.password = "replay" + os.urandom(8).hex()
        kit.secret_config_maps(self.password, "replica" + os.urandom(8).hex())
        kit.podman("network", "create", kit.NETWORK)
        pod = {"api": "api", "redis": "redis", "stunnel": "stunnel"}
        components = {
            "master": limits_component("master", "StatefulSet", "redis-master", {"redis": "master"}),
            "sidecar": limits_component("sidecar", "Deployment", "read-api", pod),
            "central": limits_component("central", "Deployment", "read-api", {"api": "api"}),
        }
        bases = {"master": "master", "sidecar": "overlays/sidecar", "central": "overlays/central"}
        self.renders = {name: render_dir(name, bases[name], components[name]) for name in bases}
        # The original had no value cache: every read went to Redis (with the cache, one hot key
        # never reaches the master, and central no longer flattens).
        for topology in ("sidecar", "central"):
            self.renders[topology] = kit.without_value_cache(self.renders[topology])
        kit.play("master", self.renders["master"], "--publish", f"redis-tls={kit.MASTER_PORT}")
        self.master = kit.master_client(self.password)
        kit.wait_for("the master", self.master.ping, 60, every=0.5)
        self.master.set("known-key", "x" * 100)

    def play(self, topology, n):
        self.plays += 1  # a name of its own per play: podman may still hold the last one's
        name = f"rp{self.plays}-{topology}"
        http, admin = PORTS[topology]
        kit.play(name, self.renders[topology], "--rename", f"read-api={name}", "--replicas", str(n),
                 "--publish", f"http={http}", "--publish", f"admin={admin}")  # fmt: skip
        pods = [kit.Api(f"{name}-{i}", http + i, admin + i) for i in range(n)]
        for pod in pods:
            kit.wait_for(f"{pod.name} ready", lambda p=pod: p.ready()[0] == 200, 300, every=0.5)
        return pods

    def containers(self, topology, pods):
        parts = ["api", "redis"] if topology == "sidecar" else ["api"]
        return {part: [f"{p.name}-{part}" for p in pods] for part in parts} | {"master": ["redis-master-redis"]}

    def step(self, topology, pods, rate):
        containers = self.containers(topology, pods)
        before = {part: total_use(names) for part, names in containers.items()}
        host_before = host_cpu()
        with ThreadPoolExecutor(len(pods)) as pool:
            results = list(pool.map(
                lambda p: attack(p, rate / len(pods), self.seconds, f"{topology}-{len(pods)}-{round(rate)}-{p.name}"),
                pods,
            ))  # fmt: skip
        host_after = host_cpu()
        row = merge(results, rate, self.seconds) | {"topology": topology, "pods": len(pods), "repeat": self.repeat}
        # The machine's own load: past HOST_SATURATED the pods wait for a core, not for their quota,
        # and the step measures this machine rather than the topology.
        row["host_busy"] = (host_after[0] - host_before[0]) / max(host_after[1] - host_before[1], 1)
        served = sum(r["ok"] for r in results) or 1
        for part, names in containers.items():
            used, periods, throttled = (a - b for a, b in zip(total_use(names), before[part], strict=True))
            row[f"{part}_us"] = used * 1e6 / served
            row[f"{part}_quota"] = used / (LIMITS[part] * len(names) * self.seconds)
            # The share of CFS periods (100 ms) in which the part ran out of quota: with quotas this
            # small, when in each period it runs decides how the reads it gets bunch up.
            row[f"{part}_throttled"] = throttled / periods if periods else 0.0
        print(f"replay: {topology} {len(pods)} pods at {rate:.0f}/s: {row['throughput']:.0f}/s, "
              f"{100 * row['success']:.2f} % ok, p99 {row['p99_ms']:.1f} ms, "
              f"machine {100 * row['host_busy']:.0f} % busy", flush=True)  # fmt: skip
        return row

    def ladder(self, topology, n, rates):
        """One play of N pods, a step at each offered rate, then the pods removed."""
        pods = self.play(topology, n)
        try:
            rows = [self.step(topology, pods, rate) for rate in rates]
            hits = sum(pod.metric("read_api_cache_hits_total") or 0 for pod in pods)
            if hits:
                raise RuntimeError(f"{topology} {n} pods: {hits:.0f} reads came from the value cache, not Redis")
            return rows
        finally:
            kit.remove_pods(*(f"{pod.name}-" for pod in pods))

    def rates(self, top):
        """The ladder's offered rates: --steps even steps up to TOP."""
        return [top * (i + 1) / self.steps for i in range(self.steps)]

    def calibrate(self, topology):
        """One pod's ladder, up to twice a first guess of its reads/s: under a CPU quota this
        small a read costs the API about 40-50 µs (throttling and the kernel's share), not the
        17 of a free core."""
        rows = self.ladder(topology, 1, self.rates(2 * LIMITS["api"] * 1e6 / 40.0))
        self.calibration += rows
        return one_pod_costs(rows)

    def saturate_master(self, central):
        """The master's short ladders past its one-pod estimate, at MASTER_PODS up to the most
        pods played, and the most (see master_costs); costed at one pod's rate, the master looks
        dear: its cost per read falls as reads batch up."""
        most = max(self.pods)
        counts = sorted({n for n in MASTER_PODS if n <= most} | {most}) if most >= 2 else []
        estimate = LIMITS["master"] * 1e6 / central["master_us"]
        ladders = {n: self.ladder("central", n, [factor * estimate for factor in MASTER_LADDER]) for n in counts}
        for rows in ladders.values():
            self.calibration += rows
        master_costs(central, ladders)

    def run(self):
        """Every repeat calibrates and plays every ladder in turn, so that a slow spell of the
        machine lands in one repeat; the ladders of every repeat offer the same rates (from the
        first repeat's costs), so their steps pair up."""
        self.setup()
        m = model
        rates = {}
        for repeat in range(self.repeats):
            self.repeat = repeat
            self.costs = {topology: self.calibrate(topology) for topology in ("sidecar", "central")}
            self.saturate_master(self.costs["central"])
            self.calibrations.append(self.costs)
            for topology in ("sidecar", "central"):
                for n in self.pods:
                    if (topology, n) not in rates:
                        rates[(topology, n)] = self.rates(1.5 * self.predict(m, topology, n)[0])
                    self.steps_played += self.ladder(topology, n, rates[(topology, n)])
        self.costs = median_costs(self.calibrations)

    def predict(self, m, topology, n, costs=None):
        """The model's capacity for N pods, and the share of it they sustain past it: the
        one-pod figure where the API is the bottleneck, all of it where the master is (it
        queues in its clients, not in itself). From COSTS (one repeat's), or the medians."""
        costs = costs or self.costs
        sidecar, central = costs["sidecar"], costs["central"]
        own = costs[topology]
        # What each container got of its limit where it was the bottleneck, not the limit.
        api_cores = LIMITS["api"] * own.get("api_granted", 1.0)
        # The master at N pods: as measured at its knee at the nearest counts (master_costs);
        # measured at one pod only (a run of one pod), at that one pod's load.
        measured = central.get("master_measured")
        master_us = at_pods(measured, n) if measured else central["master_us"]
        master_granted = at_pods(central["master_granted"], n) if measured else 1.0
        capacity = m.predict_limits(
            n,
            topology,
            api_cores=api_cores,
            replica_cores=LIMITS["redis"] * sidecar.get("redis_granted", 1.0),
            master_cores=LIMITS["master"] * master_granted,
            api_us=own["api_us"],
            replica_us=sidecar.get("redis_us", 0.0),
            master_us=master_us,
        )
        master_bound = topology == "central" and capacity < n * api_cores * 1e6 / own["api_us"]
        return capacity, central.get("master_sustained", 1.0) if master_bound else own["sustained"]

    def held(self, topology, n):
        rows = [r for r in self.rows if r["topology"] == topology and r["pods"] == n]
        held = [r for r in rows if r["success"] >= SUCCESS and r["throughput"] >= HELD_THROUGHPUT * r["offered"]]
        best = max(rows, key=lambda r: r["throughput"])
        return (max(r["offered"] for r in held) if held else 0.0), best["throughput"]


def model_error(row):
    """How far the model's point is from what was served: +0.1 is 10 % over."""
    return row["predicted"] / row["throughput"] - 1


def write_outputs(run):
    OUT.mkdir(parents=True, exist_ok=True)
    m = model
    (OUT / "run.json").write_text(json.dumps(
        {"pods": run.pods, "seconds": run.seconds, "steps": run.steps, "repeats": run.repeats}
    ))  # fmt: skip
    for row in run.steps_played:
        # The model's point: what N pods can serve, or the offered rate when that is less, from the
        # costs its own repeat measured minutes before (the machine drifts between repeats).
        costs = run.calibrations[row["repeat"]]
        row["predicted"] = m.served(row["offered"], *run.predict(m, row["topology"], row["pods"], costs))
    run.rows = median_rows(run.steps_played)
    fields = ["topology", "pods", "offered", "repeat", "requests", "success", "throughput", "predicted", "p50_ms",
              "p99_ms", "api_us", "redis_us", "master_us", "api_quota", "redis_quota", "master_quota",
              "api_throttled", "redis_throttled", "master_throttled", "host_busy"]  # fmt: skip
    for name, rows in (("results.csv", run.steps_played), ("calibration.csv", run.calibration)):
        with open(OUT / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", restval="")
            writer.writeheader()
            writer.writerows(rows)
    table = ["| topology | pods | held at 99.9 % | most served | model | model / measured |", "|---" * 6 + "|"]
    summary = {}
    for topology in ("sidecar", "central"):
        for n in run.pods:
            held, best = run.held(topology, n)
            predicted = statistics.median(run.predict(m, topology, n, costs)[0] for costs in run.calibrations)
            summary[(topology, n)] = (held, best, predicted)
            table.append(f"| {topology} | {n} | {held:.0f} | {best:.0f} | {predicted:.0f} | {predicted / best:.2f} |")
    plot(run)
    measured = [r for r in run.rows if r["throughput"]]
    errors = [model_error(r) for r in measured]
    worst = max(errors, key=abs)
    quiet = [model_error(r) for r in measured if r["host_busy"] < HOST_SATURATED]
    saturated = len(errors) - len(quiet)
    worst_quiet = max(quiet, key=abs) if quiet else 0.0
    spreads = sorted(r["spread"] for r in run.rows)
    # A miss the repeats of its own point disagree by as much says nothing about the model.
    beyond = [r for r in measured if abs(model_error(r)) > max(TOLERANCE, r["spread"])]

    def miss(r):
        return f"{r['topology']} {r['pods']} pods at {r['offered']:.0f}/s ({100 * model_error(r):+.0f} %)"

    points = [
        "| topology | pods | offered/s | served/s | repeats apart | model/s | model / served | API quota used "
        "| machine busy |",
        "|---" * 9 + "|",
    ]
    points += [
        f"| {r['topology']} | {r['pods']} | {r['offered']:.0f} | {r['throughput']:.0f} | {100 * r['spread']:.0f} % "
        f"| {r['predicted']:.0f} | {r['predicted'] / r['throughput']:.2f} | {100 * r['api_quota']:.0f} % "
        f"| {100 * r['host_busy']:.0f} % {'(saturated)' if r['host_busy'] >= HOST_SATURATED else ''}|"
        for r in run.rows
    ]
    central = run.costs["central"]
    master_measured = central.get("master_measured", {})
    one = summary[("sidecar", run.pods[0])][1]
    top = summary[("sidecar", run.pods[-1])][1]
    lines = [
        "# make replay",
        "",
        f"The original experiment at reduced scale: {', '.join(map(str, run.pods))} pods per topology, "
        f"{run.steps} fixed-rate steps of {run.seconds} s each (loadtest/attack.sh, oha standing in for vegeta, "
        f"one attack per pod at RATE/N on its own connections), the whole run {run.repeats} times in turn; "
        "every figure below is the median of its repeats.",
        "",
        "Scaling: every container's CPU is limited so the pods, the master and the load generators share this "
        "machine's two cores: "
        + ", ".join(f"{k} {millicores(v)}" for k, v in LIMITS.items())
        + " (master: the small hosted instance).",
        "",
        "Model terms (CPU µs per read, from each container's cgroup), each measured where that container is "
        "the bottleneck: the API and the replica at one pod's busiest step; the master at its knee where it "
        "bounds the central topology, at "
        + ", ".join(f"{n} pods {us:.1f} µs" for n, us in master_measured.items())
        + " (linear in between; at one pod's load it cost "
        f"{central['master_us']:.1f} µs); past capacity, the bottleneck "
        f"serves the share of it it sustained in overload: one pod's own CPU (sidecar "
        f"{run.costs['sidecar']['sustained']:.2f}, central {central['sustained']:.2f}), the master "
        f"{central.get('master_sustained', 1.0):.2f}.",
        "",
        "Costs: "
        + "; ".join(
            f"{t}: " + ", ".join(f"{k} {v:.2f}" for k, v in c.items() if isinstance(v, float))
            for t, c in run.costs.items()
        ),
        "",
        table[0],
        table[1],
        *table[2:],
        "",
        f"Sidecar at {run.pods[-1]} pods serves {top:.0f}/s, {top / (run.pods[-1] * one):.2f} × "
        f"{run.pods[-1]} × the one-pod figure ({one:.0f}/s).",
        "",
        "Every point against the model (served = the offered rate up to capacity, the sustained share of capacity "
        f"past it): the worst is {100 * worst:+.0f} %; {saturated} of {len(errors)} steps ran with this machine's "
        f"cores {100 * HOST_SATURATED:.0f} % busy or more, where pods wait for a core rather than for their quota; "
        f"without them the worst is {100 * worst_quiet:+.0f} %.",
        "",
        f"Repeatability: the repeats of a point lie {100 * statistics.median(spreads):.0f} % apart at the median and "
        f"{100 * spreads[-1]:.0f} % at the most; {len(measured) - len(beyond)} of {len(measured)} points are within "
        f"{100 * TOLERANCE:.0f} % of the model or within their own repeats' spread"
        + (": every one." if not beyond else ", not: " + "; ".join(map(miss, beyond)) + ".")
        + ("" if run.repeats > 1 else " (one repeat: nothing to compare)"),
        "",
        *points,
        "",
        "![success and latency against offered rate](ladder.svg)",
        "![throughput against pods](throughput.svg)",
        "",
    ]
    (OUT / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return summary


def plot(run):
    """ladder.svg (loadtest/plot.sh, one series per topology and pod count) and throughput.svg."""
    series = []
    for topology in ("sidecar", "central"):
        for n in run.pods:
            path = OUT / f"ladder-{topology}-{n}.jsonl"
            rows = [r for r in run.rows if r["topology"] == topology and r["pods"] == n]
            path.write_text("".join(json.dumps({
                "label": f"{topology}-{n}", "offered_rate": r["offered"], "success_ratio": r["success"],
                "p99_ms": r["p99_ms"], "throughput": r["throughput"],
            }) + "\n" for r in rows))  # fmt: skip
            series.append(path)
    subprocess.run([REPO / "loadtest/plot.sh", OUT / "ladder.svg", *series], check=True, capture_output=True)
    data = OUT / "throughput.dat"
    data.write_text("".join(f"{n} {run.held('sidecar', n)[1]:.0f} {run.held('central', n)[1]:.0f}\n" for n in run.pods))
    bench.render(
        REPO / "loadtest/templates/throughput.gp",
        OUT / "throughput.gp",
        [f"output={OUT / 'throughput.svg'}", f"data={data}"],
    )
    subprocess.run(["gnuplot", OUT / "throughput.gp"], check=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", default="1,2,4,6,8")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report", action="store_true", help="report again from target/replay, playing nothing")
    args = parser.parse_args(argv)
    if args.report:
        return write_outputs(Run.recorded())
    if not os.environ.get("CONTAINERS_CONF"):
        raise SystemExit("replay: run through make replay, which prepares podman (CONTAINERS_CONF)")
    run = Run([int(n) for n in args.pods.split(",")], args.seconds, args.steps, args.repeats)
    try:
        run.run()
    finally:
        kit.teardown()
    return write_outputs(run)


if __name__ == "__main__":
    main()
