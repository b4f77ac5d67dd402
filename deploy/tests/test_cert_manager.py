"""The cert-manager component: what it issues matches what the master and its
clients read, and its reload script makes a real TLS redis-server serve a
renewed certificate without a restart."""

import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from deploy.tests.test_manifests import CONFIG, DEPLOY, conf_lines, container, objects, one, pod_spec

COMPONENT = DEPLOY / "components/cert-manager"
TARGET = "tests/master-components"


def by_kind(kind):
    return {o["metadata"]["name"]: o for o in objects(TARGET) if o["kind"] == kind}


def test_the_master_certificate_is_the_secret_the_master_serves_with():
    certificate = by_kind("Certificate")["redis-master"]["spec"]
    spec = pod_spec(one(TARGET, "StatefulSet", "redis-master"))
    tls = next(v for v in spec["volumes"] if v["name"] == "tls")
    assert certificate["secretName"] == tls["secret"]["secretName"] == "redis-master-tls"
    conf = conf_lines((CONFIG / "redis-master/redis-master.conf").read_text())
    mount = next(m for m in container(spec, "redis")["volumeMounts"] if m["name"] == "tls")["mountPath"]
    # cert-manager writes tls.crt, tls.key and ca.crt: the names redis-master.conf reads.
    for setting, key in (("tls-cert-file", "tls.crt"), ("tls-key-file", "tls.key"), ("tls-ca-cert-file", "ca.crt")):
        assert conf[setting] == f"{mount}/{key}", setting


def test_the_certificate_names_every_way_clients_reach_the_master():
    names = set(by_kind("Certificate")["redis-master"]["spec"]["dnsNames"])
    namespace = one(TARGET, "Service", "redis-master")["metadata"]["namespace"]
    # stunnel checks the Secret's host (make deploy-master writes the Service's FQDN); the
    # exporter and heartbeat beside the master connect to localhost.
    assert {f"redis-master.{namespace}.svc.cluster.local", "localhost"} <= names
    spec = by_kind("Certificate")["redis-master"]["spec"]
    assert spec["privateKey"]["rotationPolicy"] == "Always"
    assert hours(spec["renewBefore"]) >= hours(spec["duration"]) / 4, "time to notice a renewal that fails"


def test_the_issuers_chain_from_a_ca_of_their_own():
    issuers, certificates = by_kind("Issuer"), by_kind("Certificate")
    ca = certificates["read-api-ca"]["spec"]
    assert ca["isCA"] is True and ca["issuerRef"]["name"] in issuers
    assert "selfSigned" in issuers[ca["issuerRef"]["name"]]["spec"]
    signer = issuers[certificates["redis-master"]["spec"]["issuerRef"]["name"]]["spec"]
    assert signer["ca"]["secretName"] == ca["secretName"]


def test_the_reloader_reads_the_files_the_master_serves():
    spec = pod_spec(one(TARGET, "StatefulSet", "redis-master"))
    reloader, redis = container(spec, "tls-reload"), container(spec, "redis")
    mounts = {m["name"]: m["mountPath"] for m in reloader["volumeMounts"]}
    assert mounts["tls"] == next(m["mountPath"] for m in redis["volumeMounts"] if m["name"] == "tls")
    env = {e["name"]: e.get("value") for e in reloader["env"]}
    assert env["TLS_DIR"] == mounts["tls"]
    password = next(v for v in spec["volumes"] if v["name"] == "admin-password")["secret"]
    assert password["secretName"] == "redis-master" and [i["key"] for i in password["items"]] == ["admin-password"]


def hours(duration: str) -> float:
    assert duration.endswith("h"), duration
    return float(duration[:-1])


# --- the reload script on a real redis-server --------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def issue(directory: Path, ca: Path, name: str) -> tuple[Path, Path]:
    key, csr, crt = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.crt"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca / "ca.crt", "-CAkey", ca / "ca.key", "-CAcreateserial",
            "-out", crt, "-days", "1", "-extfile", extensions)  # fmt: skip
    return crt, key


def served_certificate(port: int, ca: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


def der(crt: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(crt.read_text())


def wait_for(what, check, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def tls_master(tmp_path):
    """A TLS-only redis-server with a password, serving tls/ as a Secret volume would hold it."""
    ca_dir, tls = tmp_path / "ca", tmp_path / "tls"
    ca_dir.mkdir(), tls.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_dir / "ca.key", "-out",
            ca_dir / "ca.crt", "-subj", "/CN=test-ca", "-days", "1")  # fmt: skip
    first = issue(tmp_path, ca_dir, "first")
    (tls / "tls.crt").write_bytes(first[0].read_bytes())
    (tls / "tls.key").write_bytes(first[1].read_bytes())
    (tls / "ca.crt").write_bytes((ca_dir / "ca.crt").read_bytes())
    (tmp_path / "password").write_text("admin-pw\n")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no",
         "--tls-cert-file", tls / "tls.crt", "--tls-key-file", tls / "tls.key", "--tls-ca-cert-file", tls / "ca.crt",
         "--requirepass", "admin-pw", "--save", "", "--dir", tmp_path],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for("redis-server to serve TLS", lambda: try_served(port, ca_dir / "ca.crt"))
    yield {"port": port, "tls": tls, "ca": ca_dir, "tmp": tmp_path, "first": first[0]}
    server.terminate()
    server.wait(10)


def try_served(port, ca):
    try:
        return bool(served_certificate(port, ca))
    except OSError:
        return False


def test_a_renewed_certificate_is_served_without_a_restart(tls_master):
    port, tls, ca = tls_master["port"], tls_master["tls"], tls_master["ca"] / "ca.crt"
    assert served_certificate(port, ca) == der(tls_master["first"])
    env = {**os.environ, "TLS_DIR": str(tls), "REDISCLI_AUTH_FILE": str(tls_master["tmp"] / "password"),
           "REDIS_HOST": "localhost", "REDIS_PORT": str(port), "CHECK_EVERY_SECONDS": "0.2"}  # fmt: skip
    reloader = subprocess.Popen(["sh", COMPONENT / "reload-tls.sh"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert "watching" in reloader.stdout.readline()
        # What the kubelet does on a renewal: new files in place.
        crt, key = issue(tls_master["tmp"], tls_master["ca"], "renewed")
        (tls / "tls.key").write_bytes(key.read_bytes())
        (tls / "tls.crt").write_bytes(crt.read_bytes())
        wait_for("the renewed certificate", lambda: served_certificate(port, ca) == der(crt))
        assert "loaded the renewed certificate" in reloader.stdout.readline()
    finally:
        reloader.send_signal(signal.SIGTERM)
        reloader.wait(10)


def test_the_component_documents_how_clients_come_to_trust_the_ca():
    readme = (COMPONENT / "README.md").read_text()
    assert "redis-master-ca" in readme and "ca.crt" in readme
    kustomization = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
