#!/usr/bin/env python3
"""make doctor: checks the cluster of the current kube context before a first
`make deploy-*`, with the same settings (TOPOLOGY, COMPONENTS, SIZE,
STORAGE_CLASS, NAMESPACE, IMAGE_REGISTRY, MASTER_CIDR). Each problem is one line
that says what to do; the exit status is 1 when there is one.

What it checks:
- kubectl reaches a cluster;
- the images: no localhost/ image for a cluster that is not on this machine;
- RBAC: every verb the deploy needs, granted (`kubectl auth can-i`);
- a StorageClass for the master's and relays' volumes: STORAGE_CLASS, or a default one;
- metrics-server, when COMPONENTS has hpa;
- zone labels, when the relays spread over zones (a note: they spread over nodes without);
- the nodes' allocatable CPU and memory against what the deploy requests, with its surge pod;
- from inside the cluster, a short Job running scripts/check-master.sh against the
  Secret redis-master: DNS, TLS, AUTH and PSYNC as a replica (DOCTOR_JOB=0 skips it).
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = os.environ.get("NAMESPACE") or "read-api"
TOPOLOGY = os.environ.get("TOPOLOGY") or "sidecar"
COMPONENTS = [c for c in re.split(r"[,\s]+", os.environ.get("COMPONENTS", "")) if c]
ZONE = "topology.kubernetes.io/zone"
JOB = "read-api-doctor"
LOCAL_CONTEXT = re.compile(r"^kind-|^minikube$|^docker-desktop$|podman")


class Report:
    def __init__(self):
        self.failures = 0

    def ok(self, text):
        print(f"doctor: ok    {text}")

    def note(self, text):
        print(f"doctor: note  {text}")

    def fail(self, text):
        self.failures += 1
        print(f"doctor: FAIL  {text}")


def kubectl(*args, namespaced=True, stdin=None):
    command = ["kubectl", *(["-n", NAMESPACE] if namespaced else []), *args]
    return subprocess.run(command, capture_output=True, text=True, input=stdin, timeout=300)


def get_json(*args, namespaced=True):
    result = kubectl("get", *args, "-o", "json", namespaced=namespaced)
    return json.loads(result.stdout) if result.returncode == 0 else None, result.stderr


def render(target):
    result = subprocess.run(
        [str(REPO / "scripts/deploy.sh"), "render", target], capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise SystemExit(f"doctor: cannot render {target}: {result.stderr.strip()}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def cpu(value):
    value = str(value)
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def memory(value):
    """Bytes of a Kubernetes quantity."""
    match = re.fullmatch(r"([0-9.]+)([KMGTE]i?|[kmM]|)", str(value))
    number, unit = float(match.group(1)), match.group(2)
    factors = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    factors.update({f"{u}i": 1024 ** (i + 1) for i, u in enumerate("KMGTE")})
    return number * factors[unit]


def pods_of(workload, nodes, objects):
    spec = workload["spec"]
    if workload["kind"] == "DaemonSet":
        return nodes
    # Without replicas (the hpa component), the HPA's minimum.
    scalers = [
        o["spec"]["minReplicas"]
        for o in objects
        if o["kind"] == "HorizontalPodAutoscaler"
        and o["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
    ]
    pods = spec.get("replicas", scalers[0] if scalers else 1)
    if workload["kind"] == "Deployment":
        surge = str(spec.get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", "25%"))
        pods += math.ceil(pods * int(surge[:-1]) / 100) if surge.endswith("%") else int(surge)
    return pods


def pod_requests(workload):
    containers = workload["spec"]["template"]["spec"]["containers"]
    requests = [c.get("resources", {}).get("requests", {}) for c in containers]
    return sum(cpu(r.get("cpu", 0)) for r in requests), sum(memory(r.get("memory", 0)) for r in requests)


def gib(value):
    return f"{value / 1024**3:.1f} GiB"


def check_images(report, objects, context):
    local = sorted(
        {
            c["image"]
            for o in objects
            if "template" in o.get("spec", {})
            for c in o["spec"]["template"]["spec"]["containers"]
            if c["image"].startswith("localhost/")
        }
    )
    if not local:
        report.ok("images come from a registry")
    elif LOCAL_CONTEXT.search(context):
        report.note(f"{local[0]} is on this machine only: on kind, run make kind-load after make images")
    else:
        report.fail(
            f"the pods would run {local[0]}, which this cluster cannot pull: set IMAGE_REGISTRY"
            " (make images IMAGE_REGISTRY=registry.example.com/team PUSH=1 records it)"
        )


def needed_rights(kinds, namespace_exists):
    rights = [
        ("get", "secrets"),
        ("create", "secrets"),
        ("patch", "secrets"),
        ("list", "pods"),
        ("get", "pods/log"),
        ("list", "events"),
        ("create", "jobs.batch"),
        ("create", "configmaps"),
    ]
    resources = {
        "Deployment": "deployments.apps",
        "StatefulSet": "statefulsets.apps",
        "DaemonSet": "daemonsets.apps",
        "Service": "services",
        "ServiceAccount": "serviceaccounts",
        "ConfigMap": "configmaps",
        "NetworkPolicy": "networkpolicies.networking.k8s.io",
        "PodDisruptionBudget": "poddisruptionbudgets.policy",
        "HorizontalPodAutoscaler": "horizontalpodautoscalers.autoscaling",
        "PodMonitor": "podmonitors.monitoring.coreos.com",
        "PrometheusRule": "prometheusrules.monitoring.coreos.com",
    }
    for kind in sorted(kinds):
        if kind in resources:
            rights += [("create", resources[kind]), ("patch", resources[kind])]
    if not namespace_exists:
        rights.append(("create", "namespaces"))
    return list(dict.fromkeys(rights))


def check_rbac(report, kinds, namespace_exists):
    denied = []
    for verb, resource in needed_rights(kinds, namespace_exists):
        namespaced = resource != "namespaces"
        if kubectl("auth", "can-i", verb, resource, namespaced=namespaced).stdout.strip() != "yes":
            denied.append(f"{verb} {resource}")
    if denied:
        report.fail(
            f"RBAC: not allowed in namespace {NAMESPACE}: {', '.join(denied)}: ask an administrator for a Role"
            f" granting them (kubectl auth can-i --list -n {NAMESPACE} shows what you have)"
        )
    else:
        report.ok(f"RBAC: every right the deploy needs in namespace {NAMESPACE}")


def check_storage(report, objects):
    claims = [o["metadata"]["name"] for o in objects if o["kind"] == "StatefulSet"]
    if not claims:
        return
    classes, error = get_json("storageclass", namespaced=False)
    if classes is None:
        report.note(f"cannot list StorageClasses ({error.strip()}): the volumes of {', '.join(claims)} need one")
        return
    names = [c["metadata"]["name"] for c in classes["items"]]
    wanted = os.environ.get("STORAGE_CLASS")
    defaults = [
        c["metadata"]["name"]
        for c in classes["items"]
        if c["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class") == "true"
    ]
    if wanted and wanted not in names:
        report.fail(f"STORAGE_CLASS {wanted} is not a StorageClass here: set it to one of {', '.join(names) or 'none'}")
    elif not wanted and not defaults:
        report.fail(
            f"no default StorageClass: the volumes of {', '.join(claims)} would stay Pending: set STORAGE_CLASS"
            f" to one of {', '.join(names) or 'none (install a CSI driver, e.g. the EBS CSI add-on on EKS)'}"
        )
    else:
        report.ok(f"volumes get StorageClass {wanted or defaults[0]}")


def check_metrics_server(report):
    if "hpa" not in COMPONENTS:
        return
    service, _ = get_json("apiservice", "v1beta1.metrics.k8s.io", namespaced=False)
    conditions = (service or {}).get("status", {}).get("conditions", [])
    if any(c["type"] == "Available" and c["status"] == "True" for c in conditions):
        report.ok("metrics-server answers, for the hpa component")
    else:
        report.fail(
            "COMPONENTS has hpa, but no metrics-server answers (APIService v1beta1.metrics.k8s.io): install"
            " metrics-server (on kind with --kubelet-insecure-tls), or leave hpa out"
        )


def check_zones(report, objects, nodes):
    spreads = [
        c
        for o in objects
        if "template" in o.get("spec", {})
        for c in o["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
        if c["topologyKey"] == ZONE
    ]
    if not spreads or nodes is None:
        return
    unlabelled = [n["metadata"]["name"] for n in nodes if ZONE not in n["metadata"].get("labels", {})]
    if unlabelled:
        report.note(
            f"nodes without a {ZONE} label ({', '.join(unlabelled[:3])}{', …' if len(unlabelled) > 3 else ''}):"
            f" the relays spread over nodes only; label them (kubectl label node NAME {ZONE}=ZONE) to spread over zones"
        )
    else:
        report.ok("every node has a zone label, for the relays' spread")


def schedulable(node):
    if node["spec"].get("unschedulable"):
        return False
    return not any(t.get("effect") in ("NoSchedule", "NoExecute") for t in node["spec"].get("taints", []))


def check_capacity(report, objects, nodes):
    if nodes is None:
        return
    nodes = [n for n in nodes if schedulable(n)]
    free_cpu = sum(cpu(n["status"]["allocatable"]["cpu"]) for n in nodes)
    free_memory = sum(memory(n["status"]["allocatable"]["memory"]) for n in nodes)
    pods, _ = get_json("pods", "--all-namespaces", namespaced=False)
    for pod in (pods or {}).get("items", []):
        if pod["metadata"].get("namespace") == NAMESPACE or pod["status"].get("phase") in ("Succeeded", "Failed"):
            continue  # the kit's own pods are replaced by the deploy
        used_cpu, used_memory = pod_requests({"spec": {"template": pod}})
        free_cpu, free_memory = free_cpu - used_cpu, free_memory - used_memory
    need_cpu = need_memory = 0
    largest = (0, 0, "")
    for o in objects:
        if "template" not in o.get("spec", {}):
            continue
        pod_cpu, pod_memory = pod_requests(o)
        count = pods_of(o, len(nodes), objects)
        need_cpu, need_memory = need_cpu + count * pod_cpu, need_memory + count * pod_memory
        largest = max(largest, (pod_memory, pod_cpu, o["metadata"]["name"]))
    size = "SIZE=small (a laptop), or make size for your data set and COMPONENTS=size, or more or larger nodes"
    if need_cpu > free_cpu or need_memory > free_memory:
        report.fail(
            f"the deploy requests {need_cpu:.2f} CPU / {gib(need_memory)} with its surge pod, the nodes have"
            f" {max(free_cpu, 0):.2f} CPU / {gib(max(free_memory, 0))} free: {size}"
        )
    elif nodes and largest[0] > max(memory(n["status"]["allocatable"]["memory"]) for n in nodes):
        report.fail(f"a {largest[2]} pod requests {gib(largest[0])}, more than any node has: {size}")
    else:
        report.ok(
            f"the nodes have room: {need_cpu:.2f} of {free_cpu:.2f} CPU, {gib(need_memory)} of {gib(free_memory)}"
        )


def check_master(report):
    secret, _ = get_json("secret", "redis-master")
    if secret is None:
        report.note(
            "no Secret redis-master yet, so the master is not checked from inside the cluster: run"
            " make master-secret MASTER_HOST=… (hosted) or make deploy-master, then make doctor again"
        )
        return
    import base64

    host = base64.b64decode(secret["data"].get("host", "")).decode()
    cidr = os.environ.get("MASTER_CIDR") or secret["metadata"].get("annotations", {}).get("read-api.io/master-cidr")
    hosted = not re.search(r"\.svc(\.cluster\.local)?$", host)
    if hosted and not cidr and not re.fullmatch(r"[0-9.]+", host):
        report.fail(
            f"the master {host} is outside the cluster: set MASTER_CIDR to its addresses, for the egress policy"
        )
    if os.environ.get("DOCTOR_JOB", "1") == "0":
        report.note("DOCTOR_JOB=0: the master is not checked from inside the cluster")
        return
    configmap = kubectl(
        "create",
        "configmap",
        JOB,
        "--dry-run=client",
        "-o",
        "yaml",
        f"--from-file=check-master.sh={REPO / 'scripts/check-master.sh'}",
        f"--from-file=replica_handshake.py={REPO / 'scripts/lib/replica_handshake.py'}",
    )
    kubectl("delete", "job", JOB, "--ignore-not-found", "--wait=true")
    job = yaml.safe_dump_all(render("doctor"))
    for manifest in (configmap.stdout, job):
        applied = kubectl("apply", "--server-side", "--field-manager=read-api-doctor", "-f", "-", stdin=manifest)
        if applied.returncode != 0:
            report.fail(f"cannot start the check Job {JOB}: {applied.stderr.strip()}")
            return
    done = kubectl("wait", "--for=condition=complete", f"job/{JOB}", "--timeout=150s")
    log = kubectl("logs", f"job/{JOB}", "--tail=20").stdout.strip().splitlines()
    if done.returncode == 0:
        report.ok(f"from inside the cluster, a replica can follow {host} (Job {JOB}: DNS, TLS, AUTH, PSYNC)")
    else:
        reason = next((line.strip() for line in reversed(log) if "FAIL" in line), log[-1] if log else "no log")
        report.fail(
            f"from inside the cluster, {host} cannot be followed: {reason}: check its DNS name, its allow-list"
            f" (the nodes' egress addresses) and MASTER_CIDR (kubectl -n {NAMESPACE} logs job/{JOB})"
        )
    kubectl("delete", "job", JOB, "--ignore-not-found")
    kubectl("delete", "configmap", JOB, "--ignore-not-found")


def main():
    report = Report()
    context = kubectl("config", "current-context", namespaced=False).stdout.strip() or "none"
    if kubectl("version", "--request-timeout=5s", namespaced=False).returncode != 0:
        report.fail(f"kubectl reaches no cluster (context {context}): kubectl config use-context NAME, or KUBECONFIG")
        return 1
    report.ok(f"context {context}, topology {TOPOLOGY}, namespace {NAMESPACE}")
    namespace_exists = kubectl("get", "namespace", NAMESPACE, namespaced=False).returncode == 0
    objects = render(TOPOLOGY)
    with_master = (
        kubectl("get", "secret", "redis-master").returncode != 0
        or kubectl("get", "statefulset", "redis-master").returncode == 0
    )
    if with_master:
        objects += render("master")
    objects = [o for o in objects if o["kind"] != "Namespace"]
    check_images(report, objects, context)
    check_rbac(report, {o["kind"] for o in objects}, namespace_exists)
    check_storage(report, objects)
    check_metrics_server(report)
    nodes, error = get_json("nodes", namespaced=False)
    nodes = nodes["items"] if nodes else None
    if nodes is None:
        report.note(f"cannot list nodes ({error.strip()}): zone labels and room are not checked")
    check_zones(report, objects, nodes)
    check_capacity(report, objects, nodes)
    check_master(report)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
