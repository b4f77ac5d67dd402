#!/usr/bin/env python3
"""make size: the memory, rollout and replication settings for a data set size,
a pod count and the master's egress bandwidth, printed as a table and written
as a kustomize component to apply over the topology's overlay (deploy/overlays/sidecar,
relay or node-local) and deploy/master.

Usage: size.py --dataset 1Gi --pods 100 --egress-mbps 1000 [--writes-mbps 0.2] [--out DIR]
              [--topology sidecar|relay|node-local]

The rules, each from how Redis replication spends memory and bandwidth:
- The master's maxmemory is the data set plus 25 % growth, with noeviction:
  a master that fills up refuses writes instead of making every replica
  grow past its limit at the same moment.
- A replica holds up to maxmemory, and twice that during a full resync
  (repl-diskless-load swapdb loads the new copy beside the one it serves).
  Its request equals its limit, so the scheduler reserves what a resync takes.
- The master forks for every snapshot: copy-on-write under writes can touch
  every page again, so its limit is twice maxmemory plus the backlog.
- A full sync streams the data set to each new pod. maxSurge is the number of
  pods whose syncs the master's egress carries in SYNC_BATCH_SECONDS, at most
  a quarter of the pods, and at least one.
- While a replica loads, the writes it misses queue in the master's output
  buffer for it: the hard limit holds twice what the write rate brings during
  the longest sync, and there is no soft limit (a slow sync is not a dead one).
- The backlog lets a tunnel drop for BACKLOG_SECONDS and still resume with a
  partial sync.
- A relay (relay topology) is a master to its pods: sized as the master, with
  its backlog and output buffer. The pods sync from the relays, so a rollout of
  the API pods takes nothing from the master, and maxSurge follows the same
  rule (the relays' egress is in-cluster, at least the master's).
- A node replica (node-local topology) is sized as a pod's replica; the API
  pods hold no data, so their rollout syncs nothing at all.
"""

import argparse
import math
import re
import sys
from pathlib import Path

import yaml

MI = 1024 * 1024
SYNC_BATCH_SECONDS = 120  # how long one batch of full syncs may take at full egress
POD_START_SECONDS = 30  # scheduling, image, process start: the part of a batch that is not the sync
BACKLOG_SECONDS = 300
MIN_BACKLOG = 64 * MI
MIN_OUTPUT_BUFFER = 256 * MI
REPLICA_BASE = 64 * MI  # redis-server, clients, buffers, beside the data
MASTER_BASE = 128 * MI
UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": MI, "gi": 1024**3}


def parse_size(text):
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?)?b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (try 256Mi, 1Gi or 500MB)")
    return int(float(match.group(1)) * UNITS[match.group(2) or ""])


def mebibytes(n):
    return f"{math.ceil(n / MI)}Mi"


def redis_bytes(n):
    return f"{math.ceil(n / MI)}mb"


def size(dataset, pods, egress_mbps, writes_mbps):
    egress = egress_mbps * 1e6 / 8  # bytes/s
    writes = writes_mbps * 1e6  # bytes/s
    maxmemory = math.ceil(dataset * 1.25)
    backlog = max(MIN_BACKLOG, math.ceil(writes * BACKLOG_SECONDS))
    replica_memory = 2 * maxmemory + REPLICA_BASE
    master_memory = 2 * maxmemory + backlog + MASTER_BASE
    surge = max(1, min(math.ceil(pods / 4), math.floor(egress * SYNC_BATCH_SECONDS / dataset)))
    batch_seconds = surge * dataset / egress + POD_START_SECONDS
    batches = math.ceil(pods / surge)
    rollout_seconds = batches * batch_seconds
    output_buffer = max(MIN_OUTPUT_BUFFER, math.ceil(2 * writes * (surge * dataset / egress)))
    return {
        "dataset": dataset,
        "pods": pods,
        "maxmemory": maxmemory,
        "replica_memory": replica_memory,
        "master_memory": master_memory,
        "master_volume": 2 * maxmemory + MI * 512,
        "backlog": backlog,
        "output_buffer": output_buffer,
        "max_surge": surge,
        "batch_seconds": batch_seconds,
        "rollout_seconds": rollout_seconds,
        # The deadline is per batch without progress; the deploy waits for the whole rollout.
        "progress_deadline_seconds": max(600, math.ceil(3 * batch_seconds)),
        "deploy_timeout_seconds": max(180, math.ceil(1.5 * rollout_seconds)),
        "egress_per_rollout": pods * dataset,
    }


def master_args(s):
    return [
        "--maxmemory", redis_bytes(s["maxmemory"]),
        "--repl-backlog-size", redis_bytes(s["backlog"]),
        "--client-output-buffer-limit", f"replica {redis_bytes(s['output_buffer'])} 0 0",
    ]  # fmt: skip


TOPOLOGIES = ("sidecar", "relay", "node-local")


def sized_redis(memory, args=None):
    """JSON patch ops for the first container (redis) of a workload: its memory, and args if given."""
    redis = "/spec/template/spec/containers/0"
    ops = [{"op": "test", "path": f"{redis}/name", "value": "redis"}]
    if args:
        ops.append({"op": "add", "path": f"{redis}/args", "value": args})
    ops += [
        {"op": "replace", "path": f"{redis}/resources/requests/memory", "value": memory},
        {"op": "replace", "path": f"{redis}/resources/limits/memory", "value": memory},
    ]
    return ops


def component(s, topology="sidecar"):
    """The kustomize component: patches for the API Deployment, the master StatefulSet, and the
    relays (relay) or node replicas (node-local)."""
    memory = {
        "requests": {"memory": mebibytes(s["replica_memory"])},
        "limits": {"memory": mebibytes(s["replica_memory"])},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "read-api"},
        "spec": {
            "progressDeadlineSeconds": s["progress_deadline_seconds"],
            "strategy": {"rollingUpdate": {"maxSurge": s["max_surge"], "maxUnavailable": 0}},
        },
    }
    # Node-local API pods hold no replica.
    if topology != "node-local":
        # api listed first to keep the containers' order (a merge puts the patch's containers first).
        containers = [{"name": "api"}, {"name": "redis", "resources": memory}]
        deployment["spec"]["template"] = {"spec": {"containers": containers}}
    master_memory = mebibytes(s["master_memory"])
    redis = "/spec/template/spec/containers/0"
    statefulset = [
        # Fail the build, rather than size the wrong container, if the master pod changes shape.
        {"op": "test", "path": f"{redis}/name", "value": "redis"},
        {"op": "add", "path": f"{redis}/args", "value": master_args(s)},
        {"op": "replace", "path": f"{redis}/resources/requests/memory", "value": master_memory},
        {"op": "replace", "path": f"{redis}/resources/limits/memory", "value": master_memory},
        {
            "op": "replace",
            "path": "/spec/volumeClaimTemplates/0/spec/resources/requests/storage",
            "value": mebibytes(s["master_volume"]),
        },
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "patches": [
            {"path": "deployment.yaml", "target": {"kind": "Deployment", "name": "read-api"}},
            {"path": "statefulset.yaml", "target": {"kind": "StatefulSet", "name": "redis-master"}},
        ],
    }
    files = {"kustomization.yaml": kustomization, "deployment.yaml": deployment, "statefulset.yaml": statefulset}
    if topology == "relay":
        relay = sized_redis(master_memory, master_args(s)[2:])  # a replica ignores maxmemory
        relay.append(statefulset[-1])  # the volume: snapshots, as the master's
        kustomization["patches"].append(
            {"path": "relay.yaml", "target": {"kind": "StatefulSet", "name": "redis-relay"}}
        )
        files["relay.yaml"] = relay
    if topology == "node-local":
        kustomization["patches"].append({"path": "node.yaml", "target": {"kind": "DaemonSet", "name": "redis-node"}})
        files["node.yaml"] = sized_redis(mebibytes(s["replica_memory"]))
    return files


def duration(seconds):
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes} min {sec} s" if minutes else f"{sec} s"


def gib(n):
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / MI:.0f} MiB"


def table(s, egress_mbps, topology="sidecar"):
    egress = f"{s['pods']} full syncs at {egress_mbps} Mbit/s"
    if topology != "sidecar":
        egress = "the API pods sync from the relays" if topology == "relay" else "the API pods hold no data"
    rows = [
        ("replica memory (request = limit)", mebibytes(s["replica_memory"]), "2 × maxmemory (swapdb resync) + 64Mi"),
        ("master maxmemory", redis_bytes(s["maxmemory"]), "data set + 25 %, noeviction"),
        ("master memory (request = limit)", mebibytes(s["master_memory"]), "2 × maxmemory (fork) + backlog + 128Mi"),
        ("master volume", mebibytes(s["master_volume"]), "two snapshots"),
        ("repl-backlog-size", redis_bytes(s["backlog"]), f"{BACKLOG_SECONDS} s of writes"),
        ("client-output-buffer-limit replica", f"{redis_bytes(s['output_buffer'])} 0 0", "2 × writes during a batch"),
        ("maxSurge", str(s["max_surge"]), f"full syncs the egress carries in {SYNC_BATCH_SECONDS} s"),
        ("progressDeadlineSeconds", str(s["progress_deadline_seconds"]), "3 batches"),
        ("deploy timeout (ROLLOUT_TIMEOUT)", f"{s['deploy_timeout_seconds']}s", "1.5 × the full rollout"),
        ("full rollout", duration(s["rollout_seconds"]), f"{math.ceil(s['pods'] / s['max_surge'])} batches"),
        ("master egress per rollout", gib(s["egress_per_rollout"]) if topology == "sidecar" else "0", egress),
    ]
    if topology == "relay":
        rows.insert(
            1, ("relay memory (request = limit)", mebibytes(s["master_memory"]), "as the master: its pods' master")
        )
    if topology == "node-local":
        rows[0] = ("node replica memory (request = limit)", *rows[0][1:])
    lines = ["| setting | value | rule |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=parse_size, required=True, help="the data set in Redis (used_memory)")
    parser.add_argument("--pods", type=int, required=True)
    parser.add_argument("--egress-mbps", type=float, required=True, help="the master's egress, Mbit/s")
    parser.add_argument("--writes-mbps", type=float, default=0.2, help="write traffic to the master, MB/s (0.2)")
    parser.add_argument("--out", type=Path, help="write the kustomize component here")
    parser.add_argument("--topology", choices=TOPOLOGIES, default="sidecar", help="the overlay it sizes (sidecar)")
    args = parser.parse_args(argv)
    for name in ("pods", "egress_mbps", "writes_mbps"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    s = size(args.dataset, args.pods, args.egress_mbps, args.writes_mbps)
    print(f"Sizing for {gib(args.dataset)} of data, {args.pods} pods, {args.egress_mbps:g} Mbit/s of master egress:\n")
    print(table(s, f"{args.egress_mbps:g}", args.topology))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, doc in component(s, args.topology).items():
            (args.out / name).write_text(yaml.safe_dump(doc, sort_keys=False))
        print(f"\nWrote the component to {args.out}: list it under `components:` beside the overlay or deploy/master.")
    return s


if __name__ == "__main__":
    main(sys.argv[1:])
