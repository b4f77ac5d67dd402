#!/usr/bin/env python3
"""The arithmetic and bookkeeping of make bench, so that bench.sh only orchestrates.

bench.py render TEMPLATE OUT KEY=VALUE...   fill a template of loadtest/templates (${key} fields)
bench.py mark CPU_FILE PHASE PROCESS PID [UNITS]
                                            record PID's CPU ticks now; the second mark of a
                                            (PHASE, PROCESS) closes an interval of UNITS operations
                                            (default: the requests of PHASE in points.jsonl)
bench.py ladder-rates POINTS LABEL FACTORS  offered rates: FACTORS (0.25,0.5,...) times LABEL's median max
bench.py costs BENCH_DIR KEY=VALUE...       costs.json: CPU µs per operation from the marks and points
bench.py limit NAME CPU PERIOD_US PID      put PID in the cgroup (v1) NAME, limited to CPU cores in each
                                            period of PERIOD_US (created when missing)
bench.py unlimit NAME PID                   PID back to the root cgroup; NAME removed
bench.py cache-run OUT BEFORE AFTER KEY=VALUE...
                                            OUT: the KEY=VALUEs and the value cache's hits, misses
                                            and hit ratio between two /metrics texts of the API
"""

import json
import os
import statistics
import sys
from pathlib import Path
from string import Template

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# Which process in which phase makes which cost, named as loadtest/model reads them.
COSTS = {
    "api_cpu_us_per_read": ("api-sidecar-tcp", "api"),
    "replica_cpu_us_per_read": ("api-sidecar-tcp", "replica"),
    "central_api_cpu_us_per_read": ("api-central-tls", "api"),
    "master_tls_cpu_us_per_read": ("api-central-tls", "master"),
    "stunnel_cpu_us_per_write": ("replication-writes", "stunnel"),
}


def jsonl(path):
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def pairs(items):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bench.py: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def render(template, out, fields):
    text = Template(Path(template).read_text()).substitute(pairs(fields))
    Path(out).write_text(text)


def cpu_ticks(pid):
    # utime and stime, fields 14 and 15 of /proc/PID/stat (after the command in parentheses).
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def mark(cpu_file, phase, process, pid, units=None):
    entry = {"phase": phase, "process": process, "ticks": cpu_ticks(pid)}
    if units is not None:
        entry["units"] = float(units)
    with open(cpu_file, "a") as f:
        f.write(json.dumps(entry) + "\n")


def intervals(marks):
    """(phase, process) -> [(ticks spent, units or None)], pairing marks in order."""
    opened, spans = {}, {}
    for m in marks:
        key = (m["phase"], m["process"])
        if key in opened:
            start = opened.pop(key)
            spans.setdefault(key, []).append((m["ticks"] - start, m.get("units")))
        else:
            opened[key] = m["ticks"]
    return spans


def median_throughput(points, label):
    values = [p["throughput"] for p in points if p["label"] == label]
    if not values:
        raise SystemExit(f"bench.py: no point labelled {label}")
    return statistics.median(values)


def ladder_rates(points, label, factors):
    top = median_throughput(points, label)
    return ",".join(str(int(float(f) * top)) for f in factors.split(","))


def costs(bench, fields):
    bench = Path(bench)
    points = jsonl(bench / "points.jsonl")
    spans = intervals(jsonl(bench / "cpu.jsonl"))
    result = {}
    for name, (phase, process) in COSTS.items():
        measured = spans.get((phase, process), [])
        if not measured:
            continue
        ticks = sum(t for t, _ in measured)
        units = sum(u for _, u in measured if u is not None) or sum(
            p["requests"] for p in points if p["label"] == phase
        )
        # None when the process spent less than one clock tick (10 ms): too little to measure.
        result[name] = round(ticks * 1e6 / TICKS_PER_S / units, 2) if units and ticks else None
    for key, value in pairs(fields).items():
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = value
    (bench / "costs.json").write_text(json.dumps(result, indent=1) + "\n")


CGROUP_CPU = Path("/sys/fs/cgroup/cpu")


def limit(name, cpu, period_us, pid):
    """The CFS quota of one cgroup for PID: CPU cores' worth of every period. The kernel takes
    no quota under 1 ms, so a small share needs a long period; the period is also the longest
    a throttled process waits to run again, a floor under every latency it serves."""
    group = CGROUP_CPU / name
    group.mkdir(exist_ok=True)
    period = int(period_us)
    quota = round(float(cpu) * period)
    if quota < 1000:
        raise SystemExit(f"bench.py: {cpu} of a core in {period} µs is a quota under 1 ms; lengthen the period")
    (group / "cpu.cfs_period_us").write_text(str(period))
    (group / "cpu.cfs_quota_us").write_text(str(quota))
    (group / "cgroup.procs").write_text(str(pid))


def unlimit(name, pid):
    (CGROUP_CPU / "cgroup.procs").write_text(str(pid))
    (CGROUP_CPU / name).rmdir()


def metric(text, name):
    for line in text.splitlines():
        field, _, value = line.partition(" ")
        if field == name:
            return float(value)
    raise SystemExit(f"bench.py: no metric {name} in the API's /metrics")


def cache_run(out, before, after, fields):
    before, after = Path(before).read_text(), Path(after).read_text()
    result = {k: json.loads(v) for k, v in pairs(fields).items()}
    for name in ("hits", "misses", "evictions"):
        full = f"read_api_cache_{name}_total"
        result[name] = metric(after, full) - metric(before, full)
    looked_up = result["hits"] + result["misses"]
    result["hit_ratio"] = round(result["hits"] / looked_up, 4) if looked_up else None
    Path(out).write_text(json.dumps(result) + "\n")


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    command, args = argv[0], argv[1:]
    if command == "render":
        render(args[0], args[1], args[2:])
    elif command == "mark":
        mark(*args)
    elif command == "ladder-rates":
        print(ladder_rates(jsonl(args[0]), args[1], args[2]))
    elif command == "costs":
        costs(args[0], args[1:])
    elif command == "limit":
        limit(*args)
    elif command == "unlimit":
        unlimit(*args)
    elif command == "cache-run":
        cache_run(args[0], args[1], args[2], args[3:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
