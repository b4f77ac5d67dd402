#!/usr/bin/env python3
"""Capacity model: reads/s for N pods of C cores, central vs sidecar.

One machine cannot replay a cluster, but it can measure what a read costs
(`make bench` writes target/bench/costs.json). From those costs:

  sidecar, per pod   = (C * 1e6 - writes/s * stunnel_us) / (api_us + replica_us)
                       every pod serves from its own replica: capacity adds up
  sidecar, total     = N * per pod
  central, per pod   = min(C * 1e6 / central_api_us,  inflight / rtt)
  central, total     = min(N * per pod,  master capacity)
  master capacity    = master_ops if given, else 1e6 / master_tls_us (one Redis thread)

Usage:
  loadtest/model                      costs from target/bench/costs.json, 1..12 pods
  loadtest/model --scenario original  the original experiment's parameters
  loadtest/model --pods 12 --cores 0.5 --rtt-ms 0.5 --master-ops 15000 ...
"""

import argparse
import json
from pathlib import Path

COSTS = Path(__file__).resolve().parent.parent / "target/bench/costs.json"

# Per-read costs on the machine of the original experiment are not known; these
# reproduce its two published figures (about 15k reads/s central, 60k+ sidecar,
# 12 small pods): a heavier API stack than this one (about 80 µs of CPU per read
# with its replica, at half a core per pod) and a small hosted master whose TLS
# endpoint saturated near 15k reads/s.
ORIGINAL = {
    "pods": [12],
    "cores": 0.5,
    "api_us": 65.0,
    "replica_us": 15.0,
    "central_api_us": 90.0,
    "master_ops": 15000.0,
    "rtt_ms": 1.0,
    "inflight": 64,
    "writes": 10.0,
    "stunnel_us": 20.0,
}


def load_costs():
    if COSTS.exists():
        c = json.loads(COSTS.read_text())
        names = {
            "api_us": "api_cpu_us_per_read",
            "replica_us": "replica_cpu_us_per_read",
            "central_api_us": "central_api_cpu_us_per_read",
            "master_us": "master_tls_cpu_us_per_read",
            "stunnel_us": "stunnel_cpu_us_per_write",
        }
        # A cost too small to measure (None) leaves the default in place.
        return {ours: c[theirs] for ours, theirs in names.items() if c.get(theirs) is not None}
    return {}


def predict(n, a):
    replication = a["writes"] * a["stunnel_us"]
    sidecar_pod = max(a["cores"] * 1e6 - replication, 0) / (a["api_us"] + a["replica_us"])
    sidecar = n * sidecar_pod
    cpu_pod = a["cores"] * 1e6 / a["central_api_us"]
    latency_pod = a["inflight"] / (a["rtt_ms"] / 1000)
    master = a["master_ops"] if a["master_ops"] else 1e6 / a["master_us"]
    limits = {"API CPU": n * cpu_pod, "round trips": n * latency_pod, "master": master}
    bound = min(limits, key=limits.get)
    return sidecar, limits[bound], bound


def predict_limits(n, topology, api_cores, replica_cores, master_cores, api_us, replica_us, master_us):
    """Reads/s of N pods whose containers have CPU limits of their own (as in the manifests):
    a sidecar pod serves what the slower of its API and its replica allows; central pods
    together serve what their APIs allow, up to what the master's limit allows.

    master_us is what a read costs the master with N pods as its clients, not a constant:
    more clients batch more reads into each wake-up of its event loop, and more wake-ups
    cost more of their own. Costed at one count for every N, the master looked cheaper at
    2 pods than it was (the first replays over-predicted central by 26 %)."""
    api = api_cores * 1e6 / api_us
    if topology == "sidecar":
        return n * min(api, replica_cores * 1e6 / replica_us if replica_us else float("inf"))
    return min(n * api, master_cores * 1e6 / master_us)


def served(offered, capacity, sustained=1.0):
    """Reads/s served at an offered rate: all of it up to capacity; past it, the share of
    capacity the bottleneck sustains in overload (below 1: an API past its CPU quota
    spends more per read on the queue it builds, and serves less than at its knee)."""
    return offered if offered <= capacity else sustained * capacity


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["measured", "original"], default="measured")
    parser.add_argument("--pods", type=int, nargs="+", help="pod counts (default 1 2 4 8 12)")
    parser.add_argument("--cores", type=float, help="CPU cores per pod (default 1)")
    parser.add_argument("--api-us", type=float, help="API CPU µs per sidecar read")
    parser.add_argument("--replica-us", type=float, help="replica CPU µs per read")
    parser.add_argument("--central-api-us", type=float, help="API CPU µs per read over TLS from the master")
    parser.add_argument("--master-us", type=float, help="master CPU µs per read over TLS")
    parser.add_argument("--master-ops", type=float, help="master capacity in reads/s (overrides --master-us)")
    parser.add_argument("--rtt-ms", type=float, help="network round trip pod to master (default 0.5)")
    parser.add_argument("--inflight", type=int, help="reads in flight per pod towards the master (default 64)")
    parser.add_argument("--writes", type=float, help="writes/s on the master, replicated to every pod (default 10)")
    parser.add_argument("--stunnel-us", type=float, help="stunnel CPU µs per replicated write")
    args = parser.parse_args()

    a = {
        "pods": [1, 2, 4, 8, 12],
        "cores": 1.0,
        "rtt_ms": 0.5,
        "inflight": 64,
        "writes": 10.0,
        "master_ops": 0.0,
        "stunnel_us": 20.0,
    }
    if args.scenario == "original":
        a |= ORIGINAL
    else:
        a |= load_costs()
    for key, value in vars(args).items():
        if key != "scenario" and value is not None:
            a[key] = value
    missing = [k for k in ("api_us", "replica_us", "central_api_us") if k not in a]
    if missing or not (a.get("master_ops") or a.get("master_us")):
        parser.error(
            f"no per-read costs: run make bench (it writes {COSTS}), pass --scenario original, or give "
            "--api-us, --replica-us, --central-api-us and --master-us or --master-ops"
        )

    print(f"# reads/s, {a['cores']} cores per pod, {a['writes']:.0f} writes/s, rtt {a['rtt_ms']} ms ({args.scenario})")
    print(f"{'pods':>5} {'sidecar':>12} {'central':>12}  central is bound by")
    for n in a["pods"]:
        sidecar, central, bound = predict(n, a)
        print(f"{n:>5} {sidecar:>12,.0f} {central:>12,.0f}  {bound}")


if __name__ == "__main__":
    main()
