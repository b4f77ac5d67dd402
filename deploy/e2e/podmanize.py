#!/usr/bin/env python3
"""Turns rendered kit manifests into what `podman kube play` (4.3) can run.

Every change is something podman lacks, never a change of what the pods run
(see README.md beside this file):

- Deployments become one Pod per replica (NAME-0, NAME-1, ...) and StatefulSets
  one Pod per replica (NAME alone for one replica), so each pod can publish its
  own ports and be found by the name the manifests use. A DaemonSet becomes one
  Pod, NAME: podman is one node, and the pod name is what the Service the API
  reaches it through (redis-node) is called.
- A Service in front of several pods (redis-relay) has no podman equivalent:
  --spread SERVICE=COUNT points the pods of each Deployment at the pods behind
  it in turn (replica i of the Deployment at SERVICE-(i mod COUNT)), as a
  Service spreads connections, wherever the host SERVICE appears in a
  container's command, args or env values.
- A volumeClaimTemplate becomes a directory under --volume-dir, owned by the
  pod's fsGroup, mounted as hostPath: podman 4.3 applies no fsGroup to volumes.
- Ports named with --publish NAME=PORT get hostPort PORT + replica index on
  127.0.0.1; the others are dropped (podman 4.3 would publish each on the
  host's same port), and probes on named ports get the numbers.
- Secrets cannot be read by podman 4.3: secretKeyRef becomes configMapKeyRef
  and secret volumes become configMap volumes, with the same names and keys
  (the e2e runner creates those ConfigMaps).
- podman does not expand $(VAR) in env values: they are expanded here, from the
  variables defined before them in the same container.
- Images that the e2e builds from this machine's Debian binaries get the
  names it builds them under (e2e_images.py): the manifests keep the names a
  cluster pulls, and podman never finds a local build under those names.
- podman 4.3 makes each emptyDir a named volume, shared by every pod with a
  volume of that name: the master's and the relays' `run` would hold one
  auth.conf, which each start-redis.sh rewrites. Each pod gets its own
  (POD-NAME), as on a cluster.
- podman 4.3 makes each ConfigMap (and so each Secret) volume a named volume
  called after the ConfigMap, shared by every pod that mounts it, and writes
  the mounting pod's items into it at every pod's creation: a sidecar's
  `password` (the replicas' password) and a central pod's (the API user's)
  are one file, and a pod's containers read files another pod's creation is
  truncating and writing again. Each pod gets a ConfigMap of its own per
  volume (CONFIG_VOLUME_PREFIX + POD-VOLUME) holding that volume's items, as a
  cluster projects them per pod.
- Kinds with no podman equivalent are dropped (Namespace, Service,
  ServiceAccount, NetworkPolicy, HorizontalPodAutoscaler, PodDisruptionBudget,
  PodMonitor): pods on one podman network reach each other by pod name.

Usage: python -m deploy.e2e.podmanize [--publish NAME=PORT]... [--rename OLD=NEW]... [--rename-config OLD=NEW]...
                    [--config FILE]... [--volume-dir DIR] [--replicas N] [--spread SERVICE=COUNT]...
                    [--scale STATEFULSET=N]... [--skip NAME]...
                    < rendered.yaml > play.yaml
  --rename         renames a workload (and so its pods)
  --rename-config  points references to ConfigMap or Secret OLD at NEW instead
  --config         YAML with ConfigMaps to resolve env references against (also emitted)
  --skip           leaves out workload NAME (a rollout of the API pods plays them alone)
"""

import argparse
import copy
import os
import re
import sys
from pathlib import Path

import yaml

from deploy.e2e.e2e_images import e2e_image, stand_ins

DROPPED = {
    "Namespace",
    "Service",
    "ServiceAccount",
    "NetworkPolicy",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "PodMonitor",
}


# The per-pod ConfigMaps (and so podman volumes) private_config_volumes makes: kit.teardown removes them.
CONFIG_VOLUME_PREFIX = "e2e-config-"


def pairs(items, what):
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"podmanize: {what} takes NAME=VALUE, got {item!r}")
        result[key] = value
    return result


def secrets_to_config_maps(spec, renames):
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            secret = volume.pop("secret")
            volume["configMap"] = {"name": renames.get(secret["secretName"], secret["secretName"])}
            for field in ("items", "defaultMode", "optional"):
                if field in secret:
                    volume["configMap"][field] = secret[field]
        elif "configMap" in volume:
            name = volume["configMap"]["name"]
            volume["configMap"]["name"] = renames.get(name, name)
    for container in spec.get("initContainers", []) + spec["containers"]:
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            ref = source.pop("secretKeyRef", None) or source.get("configMapKeyRef")
            if ref is not None:
                ref["name"] = renames.get(ref["name"], ref["name"])
                source["configMapKeyRef"] = ref


def expand_env(spec, config_maps):
    for container in spec.get("initContainers", []) + spec["containers"]:
        known = {}
        for env in container.get("env", []):
            if "value" in env:
                env["value"] = re.sub(
                    r"\$\((\w+)\)", lambda m, known=known: known.get(m.group(1), m.group(0)), env["value"]
                )
                known[env["name"]] = env["value"]
            else:
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref and ref["name"] in config_maps:
                    value = config_maps[ref["name"]].get(ref["key"])
                    if value is not None:
                        known[env["name"]] = value


def publish(spec, ports, index):
    for container in spec["containers"]:
        for port in container.get("ports", []):
            if port.get("name") in ports:
                port["hostPort"] = int(ports[port["name"]]) + index
                port["hostIP"] = "127.0.0.1"


def unpublish_the_rest(spec):
    """podman 4.3 publishes every containerPort without a hostPort on the host's
    same port, so two pods with one port collide: probes get numbers for named
    ports, and ports not asked for are dropped (pods reach each other by IP)."""
    for container in spec.get("initContainers", []) + spec["containers"]:
        numbers = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            for action in ("httpGet", "tcpSocket"):
                target = container.get(probe, {}).get(action)
                if target and isinstance(target.get("port"), str):
                    target["port"] = numbers[target["port"]]
        kept = [p for p in container.get("ports", []) if "hostPort" in p]
        if kept:
            container["ports"] = kept
        else:
            container.pop("ports", None)


def spread(spec, services, index):
    """Points the pod at one pod behind each Service in SERVICES ({name: count})."""
    for service, count in services.items():
        target = f"{service}-{index % int(count)}"
        pattern = re.compile(rf"(?<![\w.-]){re.escape(service)}(?![\w-])")
        for container in spec.get("initContainers", []) + spec["containers"]:
            for field in ("command", "args"):
                if field in container:
                    container[field] = [pattern.sub(target, part) for part in container[field]]
            for env in container.get("env", []):
                if "value" in env:
                    env["value"] = pattern.sub(target, env["value"])


def private_empty_dirs(spec, pod_name):
    """Renames every emptyDir to POD-NAME, so that no other pod shares it."""
    names = {v["name"]: f"{pod_name}-{v['name']}" for v in spec.get("volumes", []) if "emptyDir" in v}
    for volume in spec.get("volumes", []):
        volume["name"] = names.get(volume["name"], volume["name"])
    for container in spec.get("initContainers", []) + spec["containers"]:
        for mount in container.get("volumeMounts", []):
            mount["name"] = names.get(mount["name"], mount["name"])


def private_config_volumes(spec, pod_name, config_maps):
    """Points every ConfigMap volume of the pod at a ConfigMap of its own holding the volume's
    items (their keys become the paths): the ConfigMaps to play with the pod."""
    private = []
    for volume in spec.get("volumes", []):
        source = volume.get("configMap")
        if source is None or source["name"] not in config_maps:
            continue  # an optional ConfigMap that is not there stays as it is
        data = config_maps[source["name"]]
        items = source.pop("items", None) or [{"key": key, "path": key} for key in data]
        name = f"{CONFIG_VOLUME_PREFIX}{pod_name}-{volume['name']}"
        for item in items:
            if "/" in item["path"]:
                raise SystemExit(f"podmanize: volume {volume['name']}: item path {item['path']!r} has a directory")
            if item["key"] not in data:
                raise SystemExit(f"podmanize: volume {volume['name']}: ConfigMap {source['name']} has no {item['key']}")
        source["name"] = name
        private.append({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name},
            "data": {item["path"]: data[item["key"]] for item in items},
        })  # fmt: skip
    return private


def use_e2e_images(spec, mapping):
    for container in spec.get("initContainers", []) + spec["containers"]:
        container["image"] = e2e_image(container["image"], mapping)


def pods_of(workload, ports, renames, volume_dir, services):
    name = renames.get(workload["metadata"]["name"], workload["metadata"]["name"])
    # A DaemonSet: one node, one pod.
    replicas = 1 if workload["kind"] == "DaemonSet" else workload["spec"].get("replicas", 1)
    template = workload["spec"]["template"]
    claims = workload["spec"].get("volumeClaimTemplates", [])
    for index in range(replicas):
        single = workload["kind"] == "DaemonSet" or (workload["kind"] == "StatefulSet" and replicas == 1)
        pod_name = name if single else f"{name}-{index}"
        spec = copy.deepcopy(template["spec"])
        private_empty_dirs(spec, pod_name)
        if workload["kind"] == "Deployment":
            spread(spec, services, index)
        use_e2e_images(spec, stand_ins())
        publish(spec, ports, index)
        unpublish_the_rest(spec)
        for claim in claims:
            if not volume_dir:
                raise SystemExit("podmanize: a StatefulSet with volumeClaimTemplates needs --volume-dir")
            path = Path(volume_dir) / f"{claim['metadata']['name']}-{pod_name}"
            # podman applies no fsGroup: the directory is handed to the pod's group instead.
            group = template["spec"].get("securityContext", {}).get("fsGroup")
            path.mkdir(parents=True, exist_ok=True)
            if group is not None:
                os.chown(path, group, group)
            spec.setdefault("volumes", []).append(
                {"name": claim["metadata"]["name"], "hostPath": {"path": str(path), "type": "Directory"}}
            )
        metadata = copy.deepcopy(template.get("metadata", {}))
        metadata["name"] = pod_name
        yield {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--publish", action="append", default=[])
    parser.add_argument("--rename", action="append", default=[])
    parser.add_argument("--rename-config", action="append", default=[])
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--volume-dir", help="where the volumes of StatefulSet pods go")
    parser.add_argument("--replicas", type=int, help="pods per Deployment, instead of its replicas")
    parser.add_argument("--spread", action="append", default=[], help="SERVICE=COUNT: see above")
    parser.add_argument("--scale", action="append", default=[], help="NAME=N: pods of StatefulSet NAME")
    parser.add_argument("--skip", action="append", default=[], help="a workload to leave out")
    args = parser.parse_args()
    ports = pairs(args.publish, "--publish")
    renames = pairs(args.rename, "--rename")
    config_renames = pairs(args.rename_config, "--rename-config")
    services = pairs(args.spread, "--spread")
    scales = pairs(args.scale, "--scale")

    extra = [doc for path in args.config for doc in yaml.safe_load_all(open(path)) if doc]
    docs = [doc for doc in yaml.safe_load_all(sys.stdin) if doc]
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in extra + docs if d["kind"] == "ConfigMap"}

    out = list(extra)
    for doc in docs:
        kind = doc["kind"]
        if kind in DROPPED:
            continue
        if kind in ("Deployment", "StatefulSet", "DaemonSet") and doc["metadata"]["name"] in args.skip:
            continue
        if kind in ("Deployment", "StatefulSet", "DaemonSet"):
            if kind == "Deployment" and args.replicas is not None:
                doc["spec"]["replicas"] = args.replicas
            if kind == "StatefulSet" and doc["metadata"]["name"] in scales:
                doc["spec"]["replicas"] = int(scales[doc["metadata"]["name"]])
            for item in pods_of(doc, ports, renames, args.volume_dir, services):
                secrets_to_config_maps(item["spec"], config_renames)
                expand_env(item["spec"], config_maps)
                out += private_config_volumes(item["spec"], item["metadata"]["name"], config_maps)
                out.append(item)
        elif kind == "ConfigMap":
            doc["metadata"].pop("namespace", None)
            out.append(doc)
        else:
            raise SystemExit(f"podmanize: no podman equivalent for kind {kind}")
    for doc in out:
        doc.get("metadata", {}).pop("namespace", None)
    yaml.safe_dump_all(out, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
