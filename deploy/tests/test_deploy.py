"""What scripts/deploy.sh (make deploy-master, make master-secret, make
deploy-sidecar) puts in the Secret redis-master, against a kubectl that records
what it would apply (fake_kubectl.py): every key the manifests read, and the
replicas' own account."""

import base64
import re
from pathlib import Path

import pytest
import yaml

from deploy.tests.recording_cluster import RecordingCluster
from deploy.tests.test_manifests import SECRETS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(tmp_path):
    """deploy.sh against the recording kubectl, a default StorageClass stored (as kind and most clusters have)."""
    return DeployCluster(tmp_path)


class DeployCluster(RecordingCluster):
    def __init__(self, root):
        super().__init__(root)
        default = {"storageclass.kubernetes.io/is-default-class": "true"}
        self.store(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": "standard", "annotations": default},
            }
        )

    def deploy(self, *args, **extra):
        return self.run(["scripts/deploy.sh", *args], timeout=120, CERTS_DIR=str(self.root / "certs"), **extra)

    def secret(self, name):
        path = self.state / f"Secret.{name}.yaml"
        assert path.exists(), f"no Secret {name} applied"
        data = yaml.safe_load(path.read_text())["data"]
        return {k: base64.b64decode(v).decode() for k, v in data.items()}


def test_deploy_master_writes_every_key_the_manifests_read(cluster):
    result = cluster.deploy("master")
    assert result.returncode == 0, result.stderr
    secret = cluster.secret("redis-master")
    assert set(secret) == SECRETS["redis-master"]
    assert secret["user"] == "api", "the central topology reads as the read-only user of acl-users.conf"
    assert secret["replica-user"] == "replica", "the user of acl-users.conf for replicas"
    keys = ("admin-password", "password", "replica-password", "heartbeat-password", "exporter-password")
    passwords = [secret[k] for k in keys]
    assert len(set(passwords)) == len(keys), "every user has its own password"
    assert all(len(p) == 48 and int(p, 16) >= 0 for p in passwords), (
        "hex: plain in redis.conf and in the exporters' JSON map"
    )
    assert set(cluster.secret("redis-master-tls")) == SECRETS["redis-master-tls"]

    # A second run keeps the passwords the running master and its replicas use.
    assert cluster.deploy("master").returncode == 0
    assert cluster.secret("redis-master") == secret


def test_deploy_master_with_cert_manager_leaves_the_certificate_to_it(cluster):
    result = cluster.deploy("master", CERT_MANAGER="1")
    assert result.returncode == 1 and "cert-manager is not installed" in result.stderr, result.stderr

    # As cert-manager would hold it once the Certificate is ready.
    ca = "-----BEGIN CERTIFICATE-----\ncert-manager's CA\n-----END CERTIFICATE-----\n"
    cluster.store(secret_object("redis-master-ca", {"ca.crt": ca, "tls.crt": ca, "tls.key": "key"}))
    result = cluster.deploy("master", CERT_MANAGER="1", FAKE_CRDS="certificates.cert-manager.io")
    assert result.returncode == 0, result.stderr
    assert "Secret.redis-master-tls.yaml" not in cluster.applied("Secret"), "cert-manager's to write"
    assert not (cluster.state.parent / "certs").exists(), "no certificate of ours is made"
    secret = cluster.secret("redis-master")
    assert set(secret) == SECRETS["redis-master"] and secret["ca.crt"] == ca
    certificate = yaml.safe_load((cluster.state / "Certificate.redis-master.yaml").read_text())
    assert certificate["spec"]["secretName"] == "redis-master-tls"
    assert "redis-master.read-api.svc.cluster.local" in certificate["spec"]["dnsNames"]
    master = yaml.safe_load((cluster.state / "StatefulSet.redis-master.yaml").read_text())
    assert "tls-reload" in [c["name"] for c in master["spec"]["template"]["spec"]["containers"]]


def secret_object(name, data):
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}


def hosted(**extra):
    return {"MASTER_HOST": "redis.example.net", "MASTER_PORT": "6380", "MASTER_PASSWORD": "app-pw", **extra}


def test_master_secret_gives_the_replicas_the_same_account_unless_told(cluster, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here\n")
    result = cluster.deploy("master-secret", **hosted(MASTER_USER="app", MASTER_CA=str(ca)))
    assert result.returncode == 0, result.stderr
    secret = cluster.secret("redis-master")
    assert (secret["user"], secret["password"]) == ("app", "app-pw")
    assert (secret["replica-user"], secret["replica-password"]) == ("app", "app-pw")
    assert "replicas log in as 'app'" in result.stderr

    result = cluster.deploy(
        "master-secret",
        **hosted(MASTER_USER="app", MASTER_CA=str(ca), MASTER_REPLICA_USER="repl", MASTER_REPLICA_PASSWORD="repl-pw"),
    )
    assert result.returncode == 0, result.stderr
    secret = cluster.secret("redis-master")
    assert (secret["user"], secret["password"]) == ("app", "app-pw")
    assert (secret["replica-user"], secret["replica-password"]) == ("repl", "repl-pw")
    assert set(secret) <= SECRETS["redis-master"]


def test_master_secret_wants_a_password_with_a_replica_user(cluster, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x\n")
    result = cluster.deploy("master-secret", **hosted(MASTER_CA=str(ca), MASTER_REPLICA_USER="repl"))
    assert result.returncode != 0
    assert "MASTER_REPLICA_USER needs MASTER_REPLICA_PASSWORD" in result.stderr


def test_the_sidecar_refuses_a_master_secret_without_the_replicas_account(cluster):
    """A Secret written before the replicas had their own user: say what to run, deploy nothing."""
    data = {"host": "h", "port": "6380", "user": "default", "password": "pw", "ca.crt": "x"}
    cluster.store(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "redis-master"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
    )
    result = cluster.deploy("sidecar")
    assert result.returncode != 0
    assert "no replica-password" in result.stderr and "make master-secret" in result.stderr
    assert not cluster.applied("Deployment")


def pod_annotations(cluster, kind, name):
    obj = yaml.safe_load((cluster.state / f"{kind}.{name}.yaml").read_text())
    return obj["spec"]["template"]["metadata"].get("annotations", {})


def test_pods_roll_when_a_secret_they_read_changes(cluster):
    """The pod templates carry a hash of the Secrets their pods read: a new
    password or certificate changes the template, and so rolls the pods."""
    assert cluster.deploy("master").returncode == 0
    first = pod_annotations(cluster, "StatefulSet", "redis-master")["read-api.io/secrets-hash"]
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert cluster.deploy("master").returncode == 0
    assert pod_annotations(cluster, "StatefulSet", "redis-master")["read-api.io/secrets-hash"] == first

    result = cluster.deploy("sidecar")
    assert result.returncode == 0, result.stderr
    api = pod_annotations(cluster, "Deployment", "read-api")["read-api.io/secrets-hash"]
    secret = yaml.safe_load((cluster.state / "Secret.read-api-replica.yaml").read_text())
    secret["data"]["password"] = base64.b64encode(b"a new password").decode()
    cluster.store(secret)
    assert cluster.deploy("sidecar").returncode == 0
    assert pod_annotations(cluster, "Deployment", "read-api")["read-api.io/secrets-hash"] not in ("", api)


@pytest.mark.parametrize("topology", ["relay", "node-local"])
def test_the_shared_replica_topologies_get_their_secrets_and_roll_with_them(cluster, topology):
    """make deploy-relay writes the relays' Secret (kept on a rerun); both topologies put the hash
    of every Secret their pods read into the API's pod template and the shared replica's."""
    assert cluster.deploy("master").returncode == 0
    result = cluster.deploy(topology)
    assert result.returncode == 0, result.stderr
    shared = {"relay": ("StatefulSet", "redis-relay"), "node-local": ("DaemonSet", "redis-node")}[topology]
    hashes = {pod_annotations(cluster, *w)["read-api.io/secrets-hash"] for w in [("Deployment", "read-api"), shared]}
    assert len(hashes) == 1 and re.fullmatch(r"[0-9a-f]{16}", hashes.pop())
    if topology == "relay":
        relay = cluster.secret("redis-relay")
        assert set(relay) == SECRETS["redis-relay"]
        assert relay["password"] != relay["replica-password"] and all(len(p) == 48 for p in relay.values())
        assert cluster.deploy("relay").returncode == 0
        assert cluster.secret("redis-relay") == relay, "a rerun keeps the passwords the relays and pods use"
    else:
        assert not cluster.applied("Secret.redis-relay")
    assert set(cluster.secret("read-api-replica")) == SECRETS["read-api-replica"]
