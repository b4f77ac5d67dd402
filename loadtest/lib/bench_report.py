#!/usr/bin/env python3
"""Turns a make bench run (target/bench) into report.md and results.csv.

Usage: bench_report.py BENCH_DIR"""

import json
import os
import platform
import sys
from pathlib import Path

NAMES = {
    "api-sidecar-tcp": "API, sidecar: local replica over loopback TCP",
    "api-sidecar-unix": "API, sidecar: local replica over a unix socket",
    "api-central-tls": "API, central: master over TLS",
    "api-cache-hot": "API with its value cache, sidecar: the same hot key",
    "api-cache-zipf": "API with its value cache: Zipf keyspace larger than the cache",
    "webdis": "webdis on the same replica",
    "nginx-ceiling": "HTTP ceiling: nginx `return 200`",
    "openresty-tracking": "OpenResty, per-worker cache kept by CLIENT TRACKING BCAST",
    "openresty": "OpenResty, lua-resty-redis per request (keepalive pool)",
    "hyper-fred": "minimal hyper 1 + fred 10, current-thread, no cache (baseline)",
    "redis-benchmark": "redis-benchmark GET on the same replica (no HTTP)",
}
TARGETS = {"api_vs_webdis": 1.2, "cache_vs_webdis": 2.0, "p99_half_max_ms": 1.0, "rss_mb": 30.0}
# Issue 29's acceptance: the API against the peers a user would pick instead.
PEERS = [
    ("api-cache-hot", "openresty-tracking", 1.05, "API with cache, hot key / OpenResty with its tracking cache"),
    ("api-sidecar-tcp", "hyper-fred", 1.05, "API without cache / minimal hyper + fred"),
    ("api-cache-hot", "nginx-ceiling", 0.9, "API with cache, hot key / nginx `return 200`"),
]
# Issue 24's acceptance for the API alone past capacity.
OVERLOAD = {"served_vs_capacity": 0.95, "p99_503_ms": 5.0, "p99_200_vs_half_load": 3.0}


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def machine():
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}"


def us(value):
    return "under one clock tick in all (too short a run to measure)" if value is None else f"{value} µs"


def verdict(ok):
    return "met" if ok else "**missed**"


def overload_lines(rows, costs):
    """The overload rows: each system at multiples of its own closed-loop capacity, in the
    same cgroup limit and with the same open-loop generator; then issue 24's acceptance."""
    if not rows:
        return []
    period = costs.get("overload_period_us", 0) / 1000

    def ms(value):
        return "" if value is None else f"{value:.3f}"

    lines = [
        "",
        f"Overload: each system in a cgroup of {costs.get('overload_cpu')} of one core (CFS period "
        f"{period:g} ms), its closed-loop capacity (wrk) measured there, then the open-loop generator "
        "(oha with vegeta's semantics, at most 1.25 × rate × timeout in flight up to 1000, 1 s timeout) "
        f"at multiples of it:",
        "",
        "(not sent: ticks the generator had not sent when arrivals stopped: its cap reached, or a machine too busy "
        "for the rate.)",
        "",
        "| system | capacity/s | offered | answered 200/s | ÷ capacity | 503/s | no answer/s | not sent/s | p99 ms | "
        "p99 of the 200s ms | p99 of the 503s ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        seconds = r["duration_s"] or 1
        lines.append(
            f"| {r['label']} | {r['capacity']:.0f} | {r['factor']:g} × ({r['offered_rate']:.0f}/s) "
            f"| {r['throughput']:.0f} | {r['throughput'] / r['capacity']:.2f} | {r.get('shed', 0) / seconds:.0f} "
            f"| {r.get('failed', 0) / seconds:.0f} | {r.get('unsent', 0) / seconds:.0f} "
            f"| {r['p99_ms']:.3f} | {ms(r.get('p99_ms_200'))} "
            f"| {ms(r.get('p99_ms_503'))} |"
        )
    at = {(r["label"], r["factor"]): r for r in rows}
    lines += ["", "| past capacity | value | target |", "| --- | ---: | --- |"]
    if ("api", 2) in at and ("webdis", 2) in at:
        side_by_side = at[("api", 2)]["throughput"] / max(at[("webdis", 2)]["throughput"], 1)
        lines.append(f"| answered 200/s at 2 × capacity, API / webdis | {side_by_side:.2f} | |")
    half = at.get(("api", 0.5))
    for factor in sorted(f for label, f in at if label == "api" and f > 1):
        r = at[("api", factor)]
        served = r["throughput"] / r["capacity"]
        lines.append(
            f"| API at {factor:g} ×: answered 200/s ÷ closed-loop capacity | {served:.2f} "
            f"| ≥ {OVERLOAD['served_vs_capacity']} ({verdict(served >= OVERLOAD['served_vs_capacity'])}) |"
        )
        shed = r.get("p99_ms_503")
        lines.append(
            f"| API at {factor:g} ×: p99 of the 503s | "
            + (f"{shed:.3f} ms | ≤ {OVERLOAD['p99_503_ms']:g} ms ({verdict(shed <= OVERLOAD['p99_503_ms'])}) |"
               if shed is not None else "no 503 | ≤ 5 ms (**missed**: nothing refused) |")
        )  # fmt: skip
        if half and half.get("p99_ms_200") and r.get("p99_ms_200") is not None:
            ratio = r["p99_ms_200"] / half["p99_ms_200"]
            lines.append(
                f"| API at {factor:g} ×: p99 of the 200s ÷ p99 at 0.5 × ({half['p99_ms_200']:.3f} ms) | {ratio:.2f} "
                f"| ≤ {OVERLOAD['p99_200_vs_half_load']:g} ({verdict(ratio <= OVERLOAD['p99_200_vs_half_load'])}) |"
            )
    return lines


def median_point(rows):
    """The run with the median throughput; its latencies and memory come with it."""
    ranked = sorted(rows, key=lambda r: r["throughput"])
    return ranked[(len(ranked) - 1) // 2] | {"rounds": len(rows)}


def main(bench):
    by_label = {}
    for p in jsonl(bench / "points.jsonl"):
        by_label.setdefault(p["label"], []).append(p)
    points = {label: median_point(rows) for label, rows in by_label.items()}
    costs = json.loads((bench / "costs.json").read_text())
    ladders = {path.stem.removeprefix("ladder-"): jsonl(path) for path in sorted(bench.glob("ladder-*.jsonl"))}

    rows = ["| system | req/s | p50 ms | p99 ms | peak RSS MB | runs |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    csv = ["system,engine,requests_per_s,p50_ms,p99_ms,success_ratio,rss_mb"]
    for label, title in NAMES.items():
        p = points.get(label)
        if not p:
            continue
        rss = p.get("rss_kb", 0) / 1024
        runs = f"median of {p['rounds']}" if p["rounds"] > 1 else "1"
        rows.append(
            f"| {title} | {p['throughput']:.0f} | {p['p50_ms']:.3f} | {p['p99_ms']:.3f} "
            f"| {f'{rss:.1f}' if rss else ''} | {runs} |"
        )
        csv.append(
            f"{label},{p['engine']},{p['throughput']:.1f},{p['p50_ms']:.3f},{p['p99_ms']:.3f},{p['success_ratio']},{rss:.1f}"
        )

    def ratio(a, b):
        return points[a]["throughput"] / points[b]["throughput"] if a in points and b in points else float("nan")

    api_webdis = ratio("api-sidecar-tcp", "webdis")
    cache_webdis = ratio("api-cache-hot", "webdis")
    zipf_path = bench / "zipf.json"
    zipf = json.loads(zipf_path.read_text()) if zipf_path.exists() else None
    unix_tcp = ratio("api-sidecar-unix", "api-sidecar-tcp")
    sidecar = ladders.get("sidecar", [])
    # The ladder step nearest half the maximum, labelled with its real fraction.
    factors = sorted(float(f) for f in costs.get("ladder", "").split(",") if f)
    steps = sorted(sidecar, key=lambda r: r["offered_rate"])
    half, half_factor = None, None
    if factors and len(factors) == len(steps):
        half_factor = min(factors, key=lambda f: abs(f - 0.5))
        half = steps[factors.index(half_factor)]
    rss_mb = (
        max((p.get("rss_kb", 0) for k, rows in by_label.items() if k.startswith("api-") for p in rows), default=0)
        / 1024
    )

    lines = [
        "# make bench",
        "",
        f"Machine: {machine()}. System under test pinned to CPU {costs['sut_cpus']}, load generator on "
        f"the other: wrk ({costs['connections']} connections) for the maxima, oha at fixed rates for the "
        f"ladder; {costs['seconds_per_point']} s per point, measured side by side in one run.",
        "",
        *rows,
        "",
        "| ratio | value | target |",
        "| --- | ---: | --- |",
        f"| API sidecar TCP / webdis | {api_webdis:.2f} "
        f"| ≥ {TARGETS['api_vs_webdis']} ({verdict(api_webdis >= TARGETS['api_vs_webdis'])}) |",
        f"| API sidecar unix / TCP | {unix_tcp:.2f} | > 1 ({verdict(unix_tcp > 1)}) |",
        f"| API with cache, hot key / webdis | {cache_webdis:.2f} "
        f"| ≥ {TARGETS['cache_vs_webdis']} ({verdict(cache_webdis >= TARGETS['cache_vs_webdis'])}) |",
        f"| API with cache, hot key / HTTP ceiling | {ratio('api-cache-hot', 'nginx-ceiling'):.2f} | |",
        f"| API with cache, hot key / without | {ratio('api-cache-hot', 'api-sidecar-tcp'):.2f} | |",
        f"| API sidecar TCP / HTTP ceiling | {ratio('api-sidecar-tcp', 'nginx-ceiling'):.2f} | |",
        f"| API sidecar TCP / central TLS | {ratio('api-sidecar-tcp', 'api-central-tls'):.2f} | |",
    ]
    for a, b, target, title in PEERS:
        if a in points and b in points:
            value = ratio(a, b)
            lines.append(f"| {title} | {value:.2f} | ≥ {target} ({verdict(value >= target)}) |")
    if half:
        lines.append(
            f"| p99 at {half_factor:g} × the max rate ({half['offered_rate']:.0f}/s, sidecar), seen by oha "
            f"| {half['p99_ms']:.3f} ms "
            f"| < {TARGETS['p99_half_max_ms']} ms ({verdict(half['p99_ms'] < TARGETS['p99_half_max_ms'])}) |"
        )
        server = half.get("server_p99_ms")
        if server is not None:
            lines.append(
                f"| the same, inside the API (histogram bucket bound) | ≤ {server:g} ms "
                f"| < {TARGETS['p99_half_max_ms']} ms ({verdict(server <= TARGETS['p99_half_max_ms'])} to the bucket) |"
            )
    lines.append(
        f"| API peak resident memory under load | {rss_mb:.1f} MB "
        f"| < {TARGETS['rss_mb']:.0f} MB ({verdict(rss_mb < TARGETS['rss_mb'])}) |"
    )
    if zipf:
        lines.append(
            f"| Zipf over {zipf['keys']} keys, cache of {zipf['cache_bytes'] / 2**20:.1f} MiB: hit ratio "
            f"| {zipf['hit_ratio']} | ({zipf['evictions']:.0f} evictions) |"
        )
    lines += [
        "",
        "Rate ladder (the same offered rates for both topologies; plot: `target/bench/ladder.svg`):",
        "",
        "| topology | offered/s | success | throughput/s | p50 ms | p99 ms | API p99 ms ≤ |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, rows_ in ladders.items():
        for r in sorted(rows_, key=lambda r: r["offered_rate"]):
            lines.append(
                f"| {label} | {r['offered_rate']:.0f} | {100 * r['success_ratio']:.2f} % | {r['throughput']:.0f} "
                f"| {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r.get('server_p99_ms', float('nan')):g} |"
            )
    overload = bench / "overload.jsonl"
    lines += overload_lines(jsonl(overload) if overload.exists() else [], costs)
    verdicts = bench / "instructions.txt"
    if verdicts.exists():
        lines += [
            "",
            "The API's instructions per request under callgrind, one worker, sequential requests for `known-key` "
            "(`make instructions`; baseline and tolerance in `loadtest/instructions-baseline.json`; hit: value "
            "cache on, miss: cache off, a read of Redis):",
            "",
            *(f"- {line}" for line in verdicts.read_text().splitlines()),
        ]
    lines += [
        "",
        "What a request costs here (CPU time per operation, input to `loadtest/model`):",
        "",
        f"- API, sidecar read: {costs['api_cpu_us_per_read']} µs; its replica: {costs['replica_cpu_us_per_read']} µs",
        f"- API, central read over TLS: {costs['central_api_cpu_us_per_read']} µs; "
        f"the master: {costs['master_tls_cpu_us_per_read']} µs",
        f"- stunnel, per replicated write: {us(costs['stunnel_cpu_us_per_write'])}",
    ]
    (bench / "results.csv").write_text("\n".join(csv) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
