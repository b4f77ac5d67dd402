"""A new user's first deploy on a real cluster (kind, GKE, EKS): what podman's
kube play cannot show (no scheduler, no NetworkPolicy, no StorageClasses), read
from the manifests as real `kubectl kustomize` renders them."""

import ipaddress

import pytest
from test_manifests import RENDERED, objects, pod_spec, policies, selects, workloads

NODELOCAL_DNSCACHE = "169.254.20.10"
GKE_CLOUD_DNS = "169.254.169.254"


def admits(rule, address, port, protocol="UDP"):
    """Whether an egress rule lets a packet to ADDRESS:PORT out."""
    ports = rule.get("ports")
    if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports):
        return False
    if "to" not in rule:
        return True
    for peer in rule["to"]:
        block = peer.get("ipBlock")
        if block and ipaddress.ip_address(address) in ipaddress.ip_network(block["cidr"]):
            if not any(ipaddress.ip_address(address) in ipaddress.ip_network(e) for e in block.get("except", [])):
                return True
    return False


@pytest.mark.parametrize("target", RENDERED)
@pytest.mark.parametrize("resolver", [NODELOCAL_DNSCACHE, GKE_CLOUD_DNS])
def test_lookups_of_the_master_are_not_dropped_with_nodelocal_dnscache_or_cloud_dns(target, resolver):
    """NodeLocal DNSCache and GKE Cloud DNS answer at link-local addresses, not
    from kube-dns pods: every pod that may connect out may ask them."""
    for name, spec in policies(target).items():
        if "Egress" not in spec["policyTypes"] or not spec.get("egress"):
            continue  # no egress at all (the master): it looks nothing up
        for protocol in ("UDP", "TCP"):
            assert any(admits(rule, resolver, 53, protocol) for rule in spec["egress"]), (
                f"{target}: {name} drops DNS ({protocol}) to {resolver}"
            )


@pytest.mark.parametrize("target", RENDERED)
def test_no_pod_stays_pending_on_nodes_without_zone_labels(target):
    """kind, minikube and kubeadm nodes have no topology.kubernetes.io/zone: a
    required spread on it leaves every pod Pending there. Only the hostname, which
    every node has, may be required."""
    for workload in workloads(target):
        for constraint in pod_spec(workload).get("topologySpreadConstraints", []):
            if constraint["whenUnsatisfiable"] == "DoNotSchedule":
                assert constraint["topologyKey"] == "kubernetes.io/hostname", (
                    f"{target}: {workload['metadata']['name']} requires {constraint['topologyKey']}"
                )


def port_number(container, port):
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port)


def rule_admits_from_anywhere(rule, container, number):
    if rule.get("from"):
        return False
    ports = rule.get("ports")
    return not ports or any(port_number(container, p["port"]) == number for p in ports)


@pytest.mark.parametrize("target", RENDERED)
def test_kubelet_probes_are_not_dropped_by_the_network_policies(target):
    """The kubelet probes from the node. NetworkPolicy should let node traffic in,
    but several CNIs have dropped it: a port that a probe reaches over the network
    is open to any source, or the probe reads from inside the container (exec)."""
    found = policies(target)
    for workload in workloads(target):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        ingress = [
            p for p in found.values() if "Ingress" in p["policyTypes"] and selects(p["podSelector"], labels)
        ]
        spec = pod_spec(workload)
        for c in spec.get("initContainers", []) + spec["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                action = c.get(probe, {})
                target_port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
                if target_port is None:
                    continue
                number = port_number(c, target_port)
                for policy in ingress:
                    assert any(rule_admits_from_anywhere(r, c, number) for r in policy.get("ingress", [])), (
                        f"{target}: {workload['metadata']['name']}/{c['name']} {probe} to port {target_port}"
                        " is let in from selected pods or namespaces only, not from the node"
                    )


def test_a_stuck_pod_does_not_block_node_drains():
    [pdb] = [o for o in objects("tests/all-components") if o["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
