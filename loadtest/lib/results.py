#!/usr/bin/env python3
"""One result format for every load engine.

A result is one JSON line:
  {"label", "engine", "offered_rate", "duration_s", "requests", "ok",
   "success_ratio", "throughput", "p50_ms", "p95_ms", "p99_ms", "max_ms"}
where `ok` counts HTTP 200 answers, success_ratio = ok / requests, and
throughput = ok / duration_s. From a vegeta report, also `shed` (503s), `failed`
(no answer), `unsent` (lib/openloop.py: ticks its generator fell behind on) and,
where the report has each status's latencies (lib/openloop.py), p50_ms_CODE and
p99_ms_CODE.

  results.py oha FILE --label L --rate R         an `oha --output-format json` file
  results.py vegeta FILE --label L --rate R [--engine oha]
                                                 a `vegeta report -type=json` file (or lib/openloop.py's)
  results.py wrk FILE --label L [--rss-samples F]
                                                 the last line of wrk with lib/wrk-json.lua; the peak
                                                 of F's VmRSS samples (kB, one a line) as rss_kb
  results.py redis-benchmark FILE --label L      a `redis-benchmark --csv` file
  results.py hist FILE... --label L --rate R --duration S
                                                 merge histograms from loadtest/k8s pods
  results.py table FILE.jsonl                    markdown table
  results.py csv FILE.jsonl                      label,offered_rate,success_pct,p99_ms,throughput
"""

import argparse
import csv
import json
import sys
from collections import Counter


def record(label, engine, rate, duration, requests, ok, p50, p95, p99, maximum):
    return {
        "label": label,
        "engine": engine,
        "offered_rate": rate,
        "duration_s": round(duration, 3),
        "requests": requests,
        "ok": ok,
        "success_ratio": round(ok / requests, 6) if requests else 0.0,
        "throughput": round(ok / duration, 1) if duration else 0.0,
        "p50_ms": round(p50, 3),
        "p95_ms": round(p95, 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(maximum, 3),
    }


def from_oha(path, label, rate):
    with open(path) as f:
        data = json.load(f)
    codes = {int(k): v for k, v in data.get("statusCodeDistribution", {}).items()}
    # Requests still in flight when -z ran out are cut off by oha itself, not failed.
    errors = sum(n for e, n in data.get("errorDistribution", {}).items() if "deadline" not in e)
    requests = sum(codes.values()) + errors
    percentiles = data.get("latencyPercentiles", {})
    summary = data["summary"]

    def ms(value):
        return (value or 0.0) * 1000.0

    return record(
        label,
        "oha",
        rate,
        summary["total"],
        requests,
        codes.get(200, 0),
        ms(percentiles.get("p50")),
        ms(percentiles.get("p95")),
        ms(percentiles.get("p99")),
        ms(summary.get("slowest")),
    )


def from_vegeta(path, label, rate):
    with open(path) as f:
        data = json.load(f)
    latencies = data["latencies"]
    requests = data["requests"]
    ok = data.get("status_codes", {}).get("200", 0)
    duration = (data["duration"] + data.get("wait", 0)) / 1e9

    def ms(ns):
        return ns / 1e6

    codes = data.get("status_codes", {})
    # The open-loop stand-in (lib/openloop.py) adds each status's own latencies: past capacity
    # the 200s and the fast 503s are two populations, and one percentile of both says little.
    by_status = {
        f"{name}_ms_{code}": round(ms(values[key]), 3)
        for code, values in data.get("latencies_by_status", {}).items()
        for name, key in (("p50", "50th"), ("p99", "99th"))
    }
    return (
        record(
            label,
            "vegeta",
            rate,
            duration,
            requests,
            ok,
            ms(latencies["50th"]),
            ms(latencies["95th"]),
            ms(latencies["99th"]),
            ms(latencies["max"]),
        )
        | {"shed": codes.get("503", 0), "failed": codes.get("0", 0), "unsent": data.get("unsent", 0)}
        | by_status
    )


def from_wrk(path, label, rate):
    with open(path) as f:
        data = json.loads(f.read().strip().splitlines()[-1])
    requests = data["requests"] + data["socket_errors"]
    ok = data["requests"] - data["non_2xx"]

    def ms(us):
        return us / 1000.0

    return record(
        label,
        "wrk",
        rate,
        data["duration_us"] / 1e6,
        requests,
        ok,
        ms(data["p50_us"]),
        ms(data["p95_us"]),
        ms(data["p99_us"]),
        ms(data["max_us"]),
    )


def from_redis_benchmark(path, label):
    with open(path) as f:
        row = next(csv.DictReader(f))
    return {
        "label": label,
        "engine": "redis-benchmark",
        "offered_rate": 0,
        "requests": 0,
        "ok": 0,
        "success_ratio": 1.0,
        "throughput": float(row["rps"]),
        "p50_ms": float(row["p50_latency_ms"]),
        "p95_ms": float(row["p95_latency_ms"]),
        "p99_ms": float(row["p99_latency_ms"]),
        "max_ms": float(row["max_latency_ms"]),
    }


def peak_rss_kb(path):
    with open(path) as f:
        return max((int(line) for line in f if line.strip()), default=0)


# Histogram lines from the loadtest Job pods: `H <status> <bucket> <count>`, a bucket
# being 10 µs of latency; status 0 is a transport error.
BUCKET_MS = 0.01


def from_histograms(paths, label, rate, duration):
    latencies = Counter()
    statuses = Counter()
    for path in paths:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 4 and parts[0] == "H":
                    status, bucket, count = int(parts[1]), int(parts[2]), int(parts[3])
                    statuses[status] += count
                    latencies[bucket] += count
    requests = sum(statuses.values())

    def percentile(p):
        if not requests:
            return 0.0
        rank = p * requests
        seen = 0
        for bucket in sorted(latencies):
            seen += latencies[bucket]
            if seen >= rank:
                return (bucket + 1) * BUCKET_MS
        return (max(latencies) + 1) * BUCKET_MS

    maximum = (max(latencies) + 1) * BUCKET_MS if latencies else 0.0
    return record(
        label,
        "vegeta",
        rate,
        duration,
        requests,
        statuses[200],
        percentile(0.50),
        percentile(0.95),
        percentile(0.99),
        maximum,
    )


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def table(rows):
    out = [
        "| label | engine | offered/s | requests | success | throughput/s | p50 ms | p95 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        offered = "max" if not r["offered_rate"] else f"{r['offered_rate']:.0f}"
        out.append(
            f"| {r['label']} | {r['engine']} | {offered} | {r['requests']} | {100 * r['success_ratio']:.2f} % "
            f"| {r['throughput']:.0f} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['p99_ms']:.3f} |"
        )
    return "\n".join(out)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["oha", "vegeta", "wrk", "redis-benchmark", "hist", "table", "csv"])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--label", default="")
    parser.add_argument("--rate", type=float, default=0.0, help="offered requests/s; 0 for as fast as possible")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds, for hist")
    parser.add_argument("--engine", help="the engine that ran, for vegeta reports written by another (oha)")
    parser.add_argument("--extra", action="append", default=[], metavar="KEY=NUMBER", help="a field to add")
    parser.add_argument("--rss-samples", help="VmRSS samples in kB, for wrk")
    args = parser.parse_args(argv)
    extra = {}
    for item in args.extra:
        key, _, value = item.partition("=")
        extra[key] = float(value)

    if args.kind == "oha":
        print(json.dumps(from_oha(args.files[0], args.label, args.rate) | extra))
    elif args.kind == "vegeta":
        engine = {"engine": args.engine} if args.engine else {}
        print(json.dumps(from_vegeta(args.files[0], args.label, args.rate) | engine | extra))
    elif args.kind == "wrk":
        if args.rss_samples:
            extra["rss_kb"] = peak_rss_kb(args.rss_samples)
        print(json.dumps(from_wrk(args.files[0], args.label, args.rate) | extra))
    elif args.kind == "redis-benchmark":
        print(json.dumps(from_redis_benchmark(args.files[0], args.label)))
    elif args.kind == "hist":
        if args.duration <= 0:
            parser.error("hist needs --duration")
        print(json.dumps(from_histograms(args.files, args.label, args.rate, args.duration)))
    elif args.kind == "table":
        print(table([r for path in args.files for r in read_jsonl(path)]))
    else:
        print("label,offered_rate,success_pct,p99_ms,throughput")
        for path in args.files:
            for r in read_jsonl(path):
                print(
                    f"{r['label']},{r['offered_rate']:.0f},{100 * r['success_ratio']:.3f},"
                    f"{r['p99_ms']:.3f},{r['throughput']:.1f}"
                )


if __name__ == "__main__":
    main(sys.argv[1:])
