"""make doctor (scripts/doctor.py) against the recording kubectl (fake_kubectl.py):
a cluster where the first deploy would work says ok; each way it would fail is
one FAIL line that says what to do."""

import base64
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.tests.recording_cluster import RecordingCluster

REPO = Path(__file__).resolve().parents[2]
GIB = 1024**3
REGISTRY = "registry.example.com/team"


def node(name, cpu="8", memory="32Gi", zone="europe-west1-b"):
    labels = {"kubernetes.io/hostname": name, **({"topology.kubernetes.io/zone": zone} if zone else {})}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"}},
    }


def secret(name, data, annotations=None):
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    meta = {"name": name, "annotations": annotations or {}}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": encoded}


IN_CLUSTER = {
    "host": "redis-master.read-api.svc.cluster.local",
    "port": "6380",
    "ca.crt": "x",
    "replica-user": "replica",
    "replica-password": "pw",
}


@pytest.fixture
def doctor(tmp_path):
    """A healthy cluster (three zoned nodes, a default StorageClass, the master's Secret) and a runner of doctor.py."""

    class Doctor(RecordingCluster):
        def run(self, **extra):
            result = super().run(
                [sys.executable, "scripts/doctor.py"],
                timeout=300,
                **{
                    "IMAGE_REGISTRY": "registry.example.com/team",
                    "FAKE_CONTEXT": "gke_team_europe-west1_prod",
                    **extra,
                },
            )
            self.failures = [line for line in result.stdout.splitlines() if line.startswith("doctor: FAIL")]
            return result

    d = Doctor(tmp_path)
    for i, zone in enumerate("bcd"):
        d.store(node(f"node-{i}", zone=f"europe-west1-{zone}"))
    d.store(
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": "standard-rwo",
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
        }
    )
    d.store({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "read-api"}})
    d.store(secret("redis-master", IN_CLUSTER))
    d.store({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "redis-master"}, "spec": {}})
    return d


def one_failure(doctor, result, *words):
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(doctor.failures) == 1, doctor.failures
    for word in words:
        assert word in doctor.failures[0], doctor.failures[0]


def test_a_cluster_ready_for_the_first_deploy_passes(doctor):
    result = doctor.run(TOPOLOGY="relay", COMPONENTS="pdb,hpa")
    # No metrics-server in this cluster: the one failure; with it, none.
    one_failure(doctor, result, "metrics-server")
    doctor.store(
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "status": {"conditions": [{"type": "Available", "status": "True"}]},
        }
    )
    result = doctor.run(TOPOLOGY="relay", COMPONENTS="pdb,hpa")
    assert result.returncode == 0, result.stdout + result.stderr
    for text in ("RBAC", "StorageClass standard-rwo", "metrics-server", "zone label", "room", "a replica can follow"):
        assert text in result.stdout, text


def test_the_master_is_checked_from_inside_the_cluster_by_the_kits_check_master(doctor):
    assert doctor.run().returncode == 0
    applied = [c for c in doctor.calls() if c[2:3] == ["apply"]]
    assert len(applied) == 2, "the ConfigMap with the scripts, then the Job"
    deletes = [c for c in doctor.calls() if c[2:3] == ["delete"]]
    assert ["-n", "read-api", "delete", "job", "read-api-doctor", "--ignore-not-found"] in deletes, "cleaned up"


def test_a_master_unreachable_from_the_cluster_says_why(doctor):
    log = "Checking h:6380 as a replica would:\n  FAIL  connect: [Errno -2] Name or service not known\n"
    result = doctor.run(FAKE_JOB_FAILS="read-api-doctor", FAKE_JOB_LOG=log)
    one_failure(doctor, result, "Name or service not known", "MASTER_CIDR", "logs job/read-api-doctor")


def test_the_check_job_runs_the_kits_check_master_with_the_replicas_account(doctor, tmp_path):
    """The Job, as rendered for the cluster (deploy/doctor): the repository's check-master.sh, from a ConfigMap."""
    result = subprocess.run(
        ["scripts/deploy.sh", "render", "doctor"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "IMAGES_RECORD": "/nonexistent"},
    )
    assert result.returncode == 0, result.stderr
    [job] = [d for d in yaml.safe_load_all(result.stdout) if d]
    spec = job["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert c["command"] == ["bash", "/opt/read-api/scripts/check-master.sh"]
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") for e in c["env"]}
    assert env["MASTER_REPLICA_USER"] == "replica-user" and env["MASTER_REPLICA_PASSWORD"] == "replica-password"
    [scripts] = [v for v in spec["volumes"] if v["name"] == "scripts"]
    paths = {i["key"]: i["path"] for i in scripts["configMap"]["items"]}
    assert paths == {"check-master.sh": "check-master.sh", "replica_handshake.py": "lib/replica_handshake.py"}
    assert job["spec"]["activeDeadlineSeconds"] and job["spec"]["ttlSecondsAfterFinished"], "short-lived"
    assert c["image"].startswith("docker.io/library/python:")


def test_no_default_storage_class(doctor):
    doctor.remove("StorageClass", "standard-rwo")
    doctor.store({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "gp2"}})
    one_failure(doctor, doctor.run(), "no default StorageClass", "STORAGE_CLASS", "gp2")
    assert doctor.run(STORAGE_CLASS="gp2").returncode == 0
    one_failure(doctor, doctor.run(STORAGE_CLASS="gp3"), "STORAGE_CLASS gp3", "gp2")


def test_nodes_without_zone_labels_are_a_note_for_the_relays(doctor):
    for i in range(3):
        doctor.store(node(f"node-{i}", zone=None))
    result = doctor.run(TOPOLOGY="relay")
    assert result.returncode == 0, result.stdout
    assert "nodes without a topology.kubernetes.io/zone label" in result.stdout
    assert "kubectl label node" in result.stdout


def test_a_deploy_larger_than_the_nodes(doctor):
    for i in range(3):
        doctor.remove("Node", f"node-{i}")
    doctor.store(node("kind-control-plane", cpu="2", memory="4Gi", zone=None))
    one_failure(doctor, doctor.run(SIZE="default"), "requests", "SIZE=small", "make size")
    assert doctor.run(SIZE="small").returncode == 0


def test_pods_of_other_namespaces_take_their_share(doctor):
    doctor.store(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "big", "namespace": "other"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "23", "memory": "1Gi"}}}]},
            "status": {"phase": "Running"},
        }
    )
    one_failure(doctor, doctor.run(), "CPU", "free")


def test_missing_rights_are_named(doctor):
    result = doctor.run(FAKE_DENY="create deployments.apps,patch networkpolicies.networking.k8s.io")
    one_failure(doctor, result, "create deployments.apps", "patch networkpolicies.networking.k8s.io", "Role")
    asked = {" ".join(c[4:6]) for c in doctor.calls() if c[2:4] == ["auth", "can-i"]}
    assert {"create secrets", "create statefulsets.apps", "get pods/log", "create jobs.batch"} <= asked


def test_localhost_images_for_a_cluster_elsewhere(doctor):
    one_failure(doctor, doctor.run(IMAGE_REGISTRY=""), "localhost/read-api", "IMAGE_REGISTRY")
    result = doctor.run(IMAGE_REGISTRY="", FAKE_CONTEXT="kind-laptop", SIZE="default")
    assert result.returncode == 0 and "make kind-load" in result.stdout, result.stdout


def test_a_hosted_master_without_its_addresses(doctor):
    hosted = {**IN_CLUSTER, "host": "redis.example.net"}
    doctor.store(secret("redis-master", hosted))
    doctor.remove("StatefulSet", "redis-master")
    one_failure(doctor, doctor.run(), "redis.example.net", "MASTER_CIDR")
    doctor.store(secret("redis-master", hosted, {"read-api.io/master-cidr": "203.0.113.10/32"}))
    assert doctor.run().returncode == 0
