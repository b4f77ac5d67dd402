"""A new user's first deploy on a real cluster (kind, GKE, EKS): what podman's
kube play cannot show (no scheduler, no NetworkPolicy, no StorageClasses), read
from the manifests as real `kubectl kustomize` renders them."""

import base64
import ipaddress
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.tests import test_deploy
from deploy.tests.test_manifests import RENDERED, objects, pod_spec, policies, selects, workloads
from deploy.tests.test_render import render

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
    found = {n: s for n, s in policies(target).items() if "Egress" in s["policyTypes"] and s.get("egress")}
    if not found:
        pytest.skip("no pod of this render connects out (the master): it looks nothing up")
    for name, spec in found.items():
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
        ingress = [p for p in found.values() if "Ingress" in p["policyTypes"] and selects(p["podSelector"], labels)]
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


# --- scripts/deploy.sh (make deploy-*), against the recording kubectl -----------


@pytest.fixture
def cluster(tmp_path):
    """test_deploy.py's cluster: deploy.sh against the recording kubectl."""
    return test_deploy.DeployCluster(tmp_path)


REPO = Path(__file__).resolve().parents[2]
ELSEWHERE = {"FAKE_CONTEXT": "gke_team_europe-west1_prod"}
TAG = subprocess.run(
    ["scripts/versions.sh", "tag", "read-api"], cwd=REPO, capture_output=True, text=True
).stdout.strip()


def stored(cluster, kind, name):
    path = cluster.state / f"{kind}.{name}.yaml"
    assert path.exists(), f"no {kind} {name} applied"
    return yaml.safe_load(path.read_text())


def calls(cluster):
    path = cluster.state / "calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def images(obj):
    spec = obj["spec"]["template"]["spec"]
    return {c["image"] for c in spec.get("initContainers", []) + spec["containers"]}


def test_deploy_uses_the_registry_make_images_recorded(cluster, tmp_path):
    """The README's next step after `make images IMAGE_REGISTRY=… PUSH=1` is a bare make deploy-*."""
    (tmp_path / "registry").write_text("registry.example.com/team\n")
    assert cluster.deploy("master", **ELSEWHERE).returncode == 0
    result = cluster.deploy("sidecar", **ELSEWHERE)
    assert result.returncode == 0, result.stderr
    ours = {i for i in images(stored(cluster, "Deployment", "read-api")) if "read-api" in i}
    assert ours == {f"registry.example.com/team/read-api:{TAG}", f"registry.example.com/team/read-api-stunnel:{TAG}"}


def test_no_pod_waits_in_image_pull_backoff_for_a_localhost_image(cluster):
    """localhost/ images exist on this machine only: refuse them for a cluster elsewhere, naming the variable."""
    assert cluster.deploy("master", **ELSEWHERE).returncode == 0
    result = cluster.deploy("sidecar", **ELSEWHERE)
    assert result.returncode != 0
    assert "localhost/read-api" in result.stderr and "IMAGE_REGISTRY" in result.stderr, result.stderr
    assert not cluster.applied("Deployment")
    # kind runs the images it was given (make kind-load).
    assert cluster.deploy("sidecar", FAKE_CONTEXT="kind-read-api").returncode == 0


def recording_tool(tmp_path, name, body=""):
    """A stand-in for NAME on PATH that appends its arguments to tmp_path/NAME.calls."""
    bin_dir = tmp_path / "bin"
    tool = bin_dir / name
    tool.write_text(f'#!/bin/sh\necho "$*" >>{tmp_path / (name + ".calls")}\n{body}\nexit 0\n')
    tool.chmod(0o755)
    return tmp_path / f"{name}.calls"


def test_kind_gets_the_images_without_a_registry(cluster, tmp_path):
    kind = recording_tool(tmp_path, "kind")
    podman = recording_tool(tmp_path, "podman", 'if [ "$1" = save ]; then : >"$3"; fi')
    result = cluster.deploy("kind-load", FAKE_CONTEXT="kind-laptop", CONTAINER_TOOL="podman")
    assert result.returncode == 0, result.stderr
    loaded = kind.read_text().splitlines()
    assert len(loaded) == 2 and all(line.startswith("load image-archive ") for line in loaded), loaded
    assert all(line.endswith("--name laptop") for line in loaded)
    assert "save -o" in podman.read_text() and f"localhost/read-api-stunnel:{TAG}" in podman.read_text()
    result = cluster.deploy("kind-load", **ELSEWHERE)
    assert result.returncode != 0 and "KIND_CLUSTER" in result.stderr


def test_a_private_registry_gets_its_pull_secret(cluster):
    assert cluster.deploy("master", IMAGE_PULL_SECRET="regcred").returncode == 0
    assert cluster.deploy("relay", IMAGE_PULL_SECRET="regcred").returncode == 0
    for kind, name in [("StatefulSet", "redis-master"), ("StatefulSet", "redis-relay"), ("Deployment", "read-api")]:
        spec = stored(cluster, kind, name)["spec"]["template"]["spec"]
        assert spec.get("imagePullSecrets") == [{"name": "regcred"}], name


def egress_rules(cluster, name):
    return stored(cluster, "NetworkPolicy", name)["spec"]["egress"]


def hosted_master(cluster, tmp_path, **extra):
    ca = tmp_path / "ca.pem"
    ca.write_text("x\n")
    env = {"MASTER_HOST": "redis.example.net", "MASTER_PORT": "6390", "MASTER_PASSWORD": "pw", "MASTER_CA": str(ca)}
    return cluster.deploy("master-secret", **env, **extra)


def test_a_hosted_master_is_reachable_through_the_egress_policy(cluster, tmp_path):
    """MASTER_CIDR, given once to make master-secret, opens exactly that egress on every later deploy."""
    result = hosted_master(cluster, tmp_path, MASTER_CIDR="203.0.113.0/28")
    assert result.returncode == 0, result.stderr
    rule = {"to": [{"ipBlock": {"cidr": "203.0.113.0/28"}}], "ports": [{"port": 6390, "protocol": "TCP"}]}
    assert cluster.deploy("sidecar").returncode == 0
    assert rule in egress_rules(cluster, "read-api-egress")
    assert cluster.deploy("relay").returncode == 0
    assert rule in egress_rules(cluster, "redis-relay-egress"), "the relays follow the master"
    assert rule not in egress_rules(cluster, "read-api-egress"), "the API pods follow the relays, not the master"


def test_a_hosted_master_named_without_its_addresses_is_refused_before_pods_fail(cluster, tmp_path):
    assert hosted_master(cluster, tmp_path).returncode == 0
    result = cluster.deploy("sidecar")
    assert result.returncode != 0 and "MASTER_CIDR" in result.stderr, result.stderr
    assert not cluster.applied("Deployment")
    result = cluster.deploy("sidecar", MASTER_CIDR="203.0.113.10/32")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("target", ["master", "sidecar", "central", "relay", "node-local"])
def test_components_reach_every_deploy_target(cluster, target):
    if target != "master":
        assert cluster.deploy("master").returncode == 0
    result = cluster.deploy(target, COMPONENTS="pdb,hpa")
    assert result.returncode == 0, result.stderr
    kinds = {p.name.split(".")[0] for p in cluster.state.glob("*.yaml")}
    if target == "master":
        assert "PodDisruptionBudget" not in kinds, "the API's components are not the master's"
    else:
        assert {"PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    result = cluster.deploy(target, COMPONENTS="pdb,nonesuch")
    assert result.returncode != 0 and "COMPONENTS names 'nonesuch'" in result.stderr, result.stderr


def storage_class(name, default=False):
    annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default else {}
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name, "annotations": annotations},
    }


def test_volumes_do_not_stay_pending_without_a_default_storage_class(cluster):
    """New EKS clusters have no default StorageClass: say so and name the variable; STORAGE_CLASS chooses one."""
    (cluster.state / "StorageClass.standard.yaml").unlink()
    cluster.store(storage_class("gp3"))
    result = cluster.deploy("master")
    assert result.returncode != 0 and "STORAGE_CLASS" in result.stderr and "gp3" in result.stderr, result.stderr
    assert not cluster.applied("StatefulSet")
    result = cluster.deploy("master", STORAGE_CLASS="gp2")
    assert result.returncode != 0 and "STORAGE_CLASS gp2" in result.stderr
    assert cluster.deploy("master", STORAGE_CLASS="gp3").returncode == 0
    assert cluster.deploy("relay", STORAGE_CLASS="gp3").returncode == 0
    for name in ("redis-master", "redis-relay"):
        [claim] = stored(cluster, "StatefulSet", name)["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["storageClassName"] == "gp3", name


def test_a_namespace_of_ones_own_is_used_everywhere(cluster):
    result = cluster.deploy("master", NAMESPACE="team-a")
    assert result.returncode == 0, result.stderr
    assert cluster.applied("Namespace") == ["Namespace.team-a.yaml"]
    assert cluster.deploy("sidecar", NAMESPACE="team-a").returncode == 0
    for path in cluster.state.glob("*.yaml"):
        obj = yaml.safe_load(path.read_text())
        if obj["kind"] not in ("Namespace", "StorageClass"):
            assert obj["metadata"].get("namespace") == "team-a", path.name
    assert (
        stored(cluster, "Secret", "redis-master")["data"]["host"]
        == base64.b64encode(b"redis-master.team-a.svc.cluster.local").decode()
    )


def test_a_user_with_rights_in_the_namespace_alone_can_deploy(cluster):
    """Namespaces are cluster-scoped: such a user may neither read nor patch theirs. Every deploy
    re-applying it would end in Forbidden."""
    assert cluster.deploy("master").returncode == 0
    (cluster.state / "Namespace.read-api.yaml").unlink()
    result = cluster.deploy("sidecar", FAKE_FORBIDDEN="namespaces")
    assert result.returncode == 0, result.stderr
    assert not cluster.applied("Namespace")
    assert cluster.applied("Deployment")
    result = cluster.deploy("master", FAKE_FORBIDDEN="namespaces")
    assert result.returncode == 0, result.stderr


def applies(cluster):
    return [c for c in calls(cluster) if c[0] == "apply"]


def test_adding_the_hpa_keeps_the_pods_running(cluster):
    """Client-side apply of a Deployment without replicas resets them to 1 (then the HPA scales up
    again, two full syncs). Server-side, with the count handed over first, it stays."""
    assert cluster.deploy("master", SIZE="default").returncode == 0
    assert cluster.deploy("sidecar", SIZE="default").returncode == 0
    assert stored(cluster, "Deployment", "read-api")["spec"]["replicas"] == 3
    before = len(applies(cluster))
    result = cluster.deploy("sidecar", SIZE="default", COMPONENTS="hpa")
    assert result.returncode == 0, result.stderr
    assert stored(cluster, "Deployment", "read-api")["spec"]["replicas"] == 3
    assert all("--server-side" in c for c in applies(cluster)), "every apply is server-side"
    managers = [next(a for a in c if a.startswith("--field-manager=")) for c in applies(cluster)[before:]]
    handover = managers.index("--field-manager=read-api-hpa-handover")
    assert managers[handover + 1 :] and set(managers[handover + 1 :]) == {"--field-manager=read-api-kit"}


def test_a_new_volume_size_does_not_fail_the_apply(cluster):
    """volumeClaimTemplates are immutable: the StatefulSet is replaced, its pods and claims kept."""
    assert cluster.deploy("master", SIZE="default").returncode == 0
    result = cluster.deploy("master", SIZE="small")
    assert result.returncode == 0, result.stderr
    assert ["-n", "read-api", "delete", "statefulset", "redis-master", "--cascade=orphan"] in calls(cluster)
    assert "volumeClaimTemplates changed" in result.stderr
    [claim] = stored(cluster, "StatefulSet", "redis-master")["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "592Mi"


def test_a_rollout_timeout_says_why(cluster):
    """On a timeout: the events of the pods that are not ready, and the last log lines of their failing containers."""
    assert cluster.deploy("master").returncode == 0
    labels = {"app.kubernetes.io/name": "read-api"}
    statuses = [
        {"name": "api", "ready": False, "restartCount": 0},
        {"name": "redis", "ready": False, "restartCount": 4},
        {"name": "stunnel", "ready": True, "restartCount": 0},
    ]
    cluster.store(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "read-api-1", "labels": labels},
            "status": {"containerStatuses": statuses},
        }
    )
    cluster.store(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "e1"},
            "type": "Warning",
            "reason": "BackOff",
            "involvedObject": {"kind": "Pod", "name": "read-api-1"},
            "message": "Back-off restarting failed container redis",
        }
    )
    (cluster.state / "Log.read-api-1.redis.txt").write_text("MASTER aborted replication: NOAUTH\n")
    (cluster.state / "Log.read-api-1.stunnel.txt").write_text("stunnel is fine\n")
    result = cluster.deploy("sidecar", FAKE_ROLLOUT_FAILS="read-api", ROLLOUT_TIMEOUT="5s")
    assert result.returncode != 0
    assert "Back-off restarting failed container redis" in result.stderr
    assert "MASTER aborted replication: NOAUTH" in result.stderr
    assert "stunnel is fine" not in result.stderr, "only the failing containers' logs"
    assert ["-n", "read-api", "logs", "read-api-1", "-c", "redis", "--tail=20", "--previous"] in calls(cluster)
    assert "ROLLOUT_TIMEOUT" in result.stderr


# --- SIZE=small: a 2-CPU / 4 GiB kind node -----------------------------------

# What kind's own pods request on its one node (kind v0.2x, Kubernetes 1.29-1.33):
# kube-apiserver 250m, kube-controller-manager 200m, kube-scheduler, etcd and
# kindnet 100m each, coredns 2 x 100m/70Mi, etcd 100Mi, kindnet 50Mi.
KIND_SYSTEM = {"cpu": 950, "memory": 290}
NODE = {"cpu": 2000, "memory": 4096}


def quantity(value, kind):
    value = str(value)
    if kind == "cpu":
        return int(value[:-1]) if value.endswith("m") else int(float(value) * 1000)
    units = {"Mi": 1, "Gi": 1024, "Ki": 1 / 1024}
    return next(float(value[: -len(u)]) * f for u, f in units.items() if value.endswith(u))


def requested(objects):
    """CPU (m) and memory (Mi) the pods of OBJECTS request on one node, with the Deployment's surge pod."""
    total = {"cpu": 0, "memory": 0}
    for obj in objects:
        if "template" not in obj.get("spec", {}):
            continue
        spec = obj["spec"]
        pods = 1 if obj["kind"] == "DaemonSet" else spec.get("replicas", 1)
        if obj["kind"] == "Deployment":
            surge = str(spec["strategy"]["rollingUpdate"]["maxSurge"])
            pods += -(-pods * int(surge[:-1]) // 100) if surge.endswith("%") else int(surge)
        for c in spec["template"]["spec"]["containers"]:
            for kind in total:
                total[kind] += pods * quantity(c["resources"]["requests"][kind], kind)
    return total


@pytest.mark.parametrize("topology", ["sidecar", "central", "relay", "node-local"])
def test_the_small_profile_fits_a_laptop_kind_node(topology):
    need = requested(render("master", SIZE="small") + render(topology, SIZE="small"))
    for kind in need:
        assert need[kind] <= NODE[kind] - KIND_SYSTEM[kind], f"{topology}: {kind} {need[kind]} does not fit"
    kit = requested(render("master", SIZE="default") + render(topology, SIZE="default"))
    assert topology == "central" or kit["cpu"] > NODE["cpu"] - KIND_SYSTEM["cpu"], "the kit's own sizes do not"


def test_kind_gets_the_small_profile_by_default(cluster):
    assert cluster.deploy("master", FAKE_CONTEXT="kind-laptop").returncode == 0
    assert cluster.deploy("sidecar", FAKE_CONTEXT="kind-laptop").returncode == 0
    assert stored(cluster, "Deployment", "read-api")["spec"]["replicas"] == 2
    cluster.store(storage_class("standard", default=True))
    (cluster.state / "registry").write_text("")
    assert cluster.deploy("master", **ELSEWHERE).returncode == 0
    [redis] = [
        c
        for c in stored(cluster, "StatefulSet", "redis-master")["spec"]["template"]["spec"]["containers"]
        if c["name"] == "redis"
    ]
    assert redis["resources"]["requests"]["cpu"] == "500m", "elsewhere, the kit's own sizes"


# --- docs/first-deploy.md and the kind config it uses ---------------------------

# The fields kind's config API (kind.x-k8s.io/v1alpha4, pkg/apis/config/v1alpha4) accepts.
KIND_CLUSTER_FIELDS = {
    "kind",
    "apiVersion",
    "name",
    "nodes",
    "networking",
    "featureGates",
    "runtimeConfig",
    "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902",
    "containerdConfigPatches",
    "containerdConfigPatchesJSON6902",
}
KIND_NODE_FIELDS = {
    "role",
    "image",
    "labels",
    "extraMounts",
    "extraPortMappings",
    "gpus",
    "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902",
}


def test_the_kind_config_is_one_kind_accepts_and_fits_the_small_profile():
    config = yaml.safe_load((REPO / "deploy/kind/cluster.yaml").read_text())
    assert (config["apiVersion"], config["kind"]) == ("kind.x-k8s.io/v1alpha4", "Cluster")
    assert set(config) <= KIND_CLUSTER_FIELDS, set(config) - KIND_CLUSTER_FIELDS
    for n in config["nodes"]:
        assert set(n) <= KIND_NODE_FIELDS, set(n) - KIND_NODE_FIELDS
        assert n["role"] in ("control-plane", "worker")
        assert all(isinstance(v, str) for v in n.get("labels", {}).values()), "label values are strings"
    # One node: the small profile's budget (test_the_small_profile_fits_a_laptop_kind_node) is one node's.
    assert [n["role"] for n in config["nodes"]] == ["control-plane"]
    assert "topology.kubernetes.io/zone" in config["nodes"][0]["labels"]
    makefile = (REPO / "Makefile").read_text()
    assert "--config deploy/kind/cluster.yaml" in makefile


def doc_commands():
    text = (REPO / "docs/first-deploy.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_every_make_command_of_the_first_deploy_page_exists_with_its_variables():
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    readers = ["scripts/deploy.sh", "scripts/images.sh", "scripts/doctor.py", "scripts/check-master.sh"]
    scripts = "".join((REPO / p).read_text() for p in [*readers, "scripts/build-static.sh", "Makefile"])
    makes = [shlex.split(c) for c in doc_commands() if c.startswith("make ")]
    assert {"kind-cluster", "kind-load", "doctor", "images", "deploy-master", "deploy-sidecar"} <= {m[1] for m in makes}
    for words in makes:
        assert words[1] in targets, f"make {words[1]}: no such target"
        for word in words[2:]:
            variable = word.split("=")[0]
            assert re.fullmatch(r"[A-Z_]+", variable) and variable in scripts, f"{' '.join(words)}: {variable}"


def test_make_images_builds_a_manifest_list_for_amd64_and_arm64_and_records_the_registry(tmp_path):
    """With a podman that records its calls (no registry here): one --platform build per image into a
    manifest list, pushed with every image, and the registry kept for make deploy-*."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "podman.calls"
    digest = "sha256:" + "a" * 64
    podman = f'echo "$*" >>{log}\ncase "$1 $2" in "manifest push") printf {digest} >"$5" ;; esac\nexit 0\n'
    (bin_dir / "podman").write_text("#!/bin/sh\n" + podman)
    (bin_dir / "podman").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "IMAGE_REGISTRY": "registry.example.com/team",
        "IMAGE_TAG": "9.9.9",
        "PLATFORMS": "linux/amd64,linux/arm64",
        "PUSH": "1",
        "PUSHED_DIGESTS": str(tmp_path / "digests"),
        "IMAGES_RECORD": str(tmp_path / "registry"),
    }
    result = subprocess.run(["scripts/images.sh"], cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = log.read_text().splitlines()
    builds = [line for line in lines if line.startswith("build ")]
    assert len(builds) == 3 and all(
        "--platform linux/amd64,linux/arm64 --manifest registry.example.com/team/" in b for b in builds
    ), builds
    pushes = [line for line in lines if line.startswith("manifest push --all")]
    assert len(pushes) == 3, lines
    assert (tmp_path / "registry").read_text().strip() == "registry.example.com/team"
    assert f"registry.example.com/team/read-api:9.9.9 {digest}" in (tmp_path / "digests").read_text()
    env["PLATFORMS"] = "linux/s390x"
    result = subprocess.run(["scripts/images.sh"], cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0 and "PLATFORMS" in result.stderr


# What make deploy-* adds to the renders, validated as test_manifests validates the kit's own.
EXTRA_RENDERS = [
    ("doctor", {}),
    *((t, {"SIZE": "small"}) for t in ("master", "sidecar", "central", "relay", "node-local")),
    ("relay", {"STORAGE_CLASS": "gp3", "IMAGE_PULL_SECRET": "regcred", "MASTER_CIDR": "203.0.113.0/28"}),
    ("master", {"STORAGE_CLASS": "gp3", "IMAGE_PULL_SECRET": "regcred"}),
    ("sidecar", {"COMPONENTS": "pdb,hpa", "MASTER_CIDR": "203.0.113.10/32", "MASTER_PORT": "6390"}),
]


@pytest.mark.parametrize("target,env", EXTRA_RENDERS, ids=lambda v: v if isinstance(v, str) else ",".join(v))
@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_what_the_deploy_targets_add_validates_strictly(target, env, version, tmp_path):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(render(target, **env)))
    result = subprocess.run(
        [REPO / ".venv/bin/kubernetes-validate", "--strict", "-k", version, "--quiet", str(manifest)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
