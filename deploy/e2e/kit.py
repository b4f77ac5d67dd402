"""The e2e's view of the kit on podman: playing rendered manifests, the API pods
over HTTP, the master over TLS, and tearing everything down.

Used by conftest.py and the tests beside it; `python -m deploy.e2e.kit down` removes what
a run left behind (make e2e-down, after E2E_KEEP=1).
"""

import http.client
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import redis
import yaml

from deploy.e2e.podmanize import CONFIG_VOLUME_PREFIX

REPO = Path(__file__).resolve().parents[2]
E2E = REPO / "deploy/e2e"
WORK = REPO / "target/e2e/work"
NETWORK = "read-api-e2e"
# Host ports are taken from those free when a run starts, from a random point of a range
# below the kernel's ephemeral ports (which outgoing connections take), so that two runs,
# or any other program listening here, never meet on one.
PORT_RANGE = range(20000, 32768)
_port_cursor = [random.randrange(PORT_RANGE.start, PORT_RANGE.stop)]


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def host_ports(count):
    """The first of COUNT consecutive host ports no program listens on and this run has not
    handed out: a pod published with NAME=PORT takes PORT+N for its replica N."""
    span = PORT_RANGE.stop - PORT_RANGE.start
    start = _port_cursor[0]
    for step in range(span):
        first = PORT_RANGE.start + (start - PORT_RANGE.start + step) % span
        if first + count <= PORT_RANGE.stop and all(port_free(first + i) for i in range(count)):
            _port_cursor[0] = first + count
            return first
    raise RuntimeError(f"e2e: no {count} consecutive free host ports in {PORT_RANGE.start}..{PORT_RANGE.stop - 1}")


def api_ports(count):
    """Host ports for COUNT pods' API and admin listeners: (first API port, first admin port)."""
    return host_ports(count), host_ports(count)


MASTER_PORT = host_ports(1)  # the master's TLS port, published for the tests' writes
# read-api-N publishes API_PORT+N and ADMIN_PORT+N, its replica's redis_exporter
# EXPORTER_PORT+N: room for make scale's PODS.
SIDECAR_PODS = 100
API_PORT, ADMIN_PORT = api_ports(SIDECAR_PODS)
EXPORTER_PORT = host_ports(SIDECAR_PODS)
MASTER_EXPORTER_PORT = host_ports(1)  # the master's redis_exporter, for the e2e's Prometheus
PODS = 3
# Pods played by single tests publish ports of their own.
LATE_PORTS = (API_PORT + PODS, ADMIN_PORT + PODS)
BADCERT_PORTS = api_ports(1)
CENTRAL_PORTS = api_ports(1)
# The pods the e2e plays: teardown removes every pod named so.
POD_PREFIXES = ("redis-master", "read-api-", "redis-relay", "redis-node")
# Errors that mean "not yet" while waiting for a pod or the master.
TRANSIENT = (
    OSError,
    http.client.HTTPException,
    ValueError,
    KeyError,
    redis.exceptions.ConnectionError,
    redis.exceptions.BusyLoadingError,
)


# (test, outcome, seconds, one line of figures) of each test run, for the summary table.
RESULTS = []
# More tables after it: title -> (header, rows), such as the monitoring's alert timings.
TABLES = {}


def add_rows(title, header, rows):
    TABLES.setdefault(title, (header, []))[1].extend(rows)


def results_table():
    lines = ["| check | result | seconds | detail |", "| --- | --- | ---: | --- |"]
    lines += [f"| {name} | {outcome} | {seconds:.1f} | {detail} |" for name, outcome, seconds, detail in RESULTS]
    for title, (header, rows) in TABLES.items():
        lines += ["", f"{title}:", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def sh(*args, check=True, input=None, timeout=300):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, input=input, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def podman(*args, **kw):
    return sh("podman", *args, **kw)


def wait_for(what, check, deadline=60.0, every=0.1):
    """Polls check() until it returns something true; fails after deadline seconds."""
    started = time.monotonic()
    while True:
        try:
            value = check()
            if value:
                return value
        except TRANSIENT:
            pass
        if time.monotonic() - started > deadline:
            raise AssertionError(f"timed out after {deadline:.0f}s waiting for {what}")
        time.sleep(every)


class Api:
    """One API pod, through the ports it publishes on 127.0.0.1."""

    def __init__(self, name, port, admin):
        self.name, self.port, self.admin = name, port, admin

    def get(self, path, port=None):
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def value(self, key):
        status, body = self.get(f"/v1/keys/{key}")
        return json.loads(body)["value"] if status == 200 else None

    def ready(self):
        status, body = self.get("/readyz", self.admin)
        return status, json.loads(body)

    def metric(self, name, port=None):
        """The value of the first sample whose name and labels start with NAME."""
        _, text = self.get("/metrics", port or self.admin)
        for line in text.splitlines():
            if line.startswith((name + " ", name + "{")):
                return float(line.rsplit(" ", 1)[1])
        return None

    def exporter_metric(self, name):
        """A metric of the redis_exporter beside this pod's replica."""
        return self.metric(name, EXPORTER_PORT + int(self.name.rsplit("-", 1)[1]))


def sidecar_pod(index):
    return Api(f"read-api-{index}", API_PORT + index, ADMIN_PORT + index)


def play_sidecar_pods():
    """deploy/e2e/sidecar (the sidecar overlay with the redis-exporter component) as
    read-api-0..PODS-1: read-api-N publishes API_PORT+N, ADMIN_PORT+N and EXPORTER_PORT+N."""
    play(
        "sidecar", "e2e/sidecar",
        "--publish", f"http={API_PORT}", "--publish", f"admin={ADMIN_PORT}",
        "--publish", f"redis-metrics={EXPORTER_PORT}",
    )  # fmt: skip
    return [sidecar_pod(i) for i in range(PODS)]


def master_client(password):
    """A client of the master's published TLS port, verifying its certificate."""
    return redis.Redis(
        host="127.0.0.1",
        port=MASTER_PORT,
        password=password,
        ssl=True,
        ssl_ca_certs=str(WORK / "certs/ca.crt"),
        ssl_check_hostname=True,
        socket_timeout=10,
        decode_responses=True,
    )


def certificates():
    for name, hosts in [("certs", "redis-master,localhost,127.0.0.1"), ("rogue-certs", "redis-master-bad,localhost")]:
        env = {**os.environ, "CERTS_DIR": str(WORK / name), "MASTER_HOSTS": hosts, "FORCE": "1"}
        subprocess.run(["bash", str(REPO / "scripts/gen-certs.sh")], env=env, check=True, capture_output=True)


def exporter_passwords(password, *addresses):
    """The JSON map redis_exporter's --redis.password-file reads, as make deploy-* writes it."""
    return json.dumps(dict.fromkeys(addresses, password))


def secret_config_maps(master_password, replica_password, users=None):
    """The Secrets a cluster would hold, as ConfigMaps of the same names (podman 4.3 reads no Secrets),
    with the keys make deploy-master and make deploy-relay write. master_password: the admin's. users: the
    passwords of the master's ACL users api, replica, heartbeat and exporter (deploy/config/redis-master/
    acl-users.conf), and of the relays' admin and replica user (relay-admin, relay-replica); new ones if not given."""
    names = ("api", "replica", "heartbeat", "exporter", "relay-admin", "relay-replica")
    users = {name: secrets.token_hex(16) for name in names} | (users or {})
    certs, rogue = WORK / "certs", WORK / "rogue-certs"
    ca = (certs / "ca.crt").read_text()

    def config_map(name, data):
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}

    connection = {
        "port": "6380",
        "admin-password": master_password,
        "user": "api",
        "password": users["api"],
        "replica-user": "replica",
        "replica-password": users["replica"],
        "heartbeat-password": users["heartbeat"],
        "exporter-password": users["exporter"],
        "exporter-passwords.json": exporter_passwords(
            users["exporter"], "rediss://localhost:6380", "rediss://exporter@localhost:6380"
        ),
        "ca.crt": ca,
    }
    maps = [
        config_map("redis-master", {"host": "redis-master", **connection}),
        config_map("redis-master-bad", {"host": "redis-master-bad", **connection}),
        config_map(
            "read-api-replica",
            {
                "password": replica_password,
                "exporter-passwords.json": exporter_passwords(replica_password, "redis://127.0.0.1:6379"),
            },
        ),
        config_map("redis-relay", {"password": users["relay-admin"], "replica-password": users["relay-replica"]}),
        config_map(
            "redis-master-tls",
            {
                "tls.crt": (certs / "master.crt").read_text(),
                "tls.key": (certs / "master.key").read_text(),
                "ca.crt": ca,
            },
        ),
        # Signed by another CA: the pods' stunnel must refuse it.
        config_map(
            "redis-master-bad-tls",
            {
                "tls.crt": (rogue / "master.crt").read_text(),
                "tls.key": (rogue / "master.key").read_text(),
                "ca.crt": (rogue / "ca.crt").read_text(),
            },
        ),
    ]
    (WORK / "secrets.yaml").write_text(yaml.safe_dump_all(maps))


def play(name, target, *options):
    """Renders deploy/TARGET, adapts it with podmanize.py, and plays it on the e2e network."""
    rendered = sh("kubectl", "kustomize", REPO / "deploy" / target).stdout  # an absolute target stays as it is
    manifest = WORK / f"{name}.yaml"
    options += ("--config", WORK / "secrets.yaml", "--volume-dir", WORK / "volumes")
    manifest.write_text(sh(sys.executable, "-m", "deploy.e2e.podmanize", *options, input=rendered).stdout)
    podman("kube", "play", "--network", NETWORK, manifest, timeout=120)
    return manifest


def without_value_cache(target):
    """A kustomization of TARGET (a directory) whose API pods read every value from Redis
    (CACHE_MAX_BYTES=0): what a topology's own read path costs, as the original experiment
    measured it. With the cache on, a hot key never leaves the API's memory."""
    path = Path(f"{target}-no-cache")
    path.mkdir(parents=True, exist_ok=True)
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "read-api"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "api", "env": [{"name": "CACHE_MAX_BYTES", "value": "0"}]},
        ]}}},
    }  # fmt: skip
    doc = {
        "resources": [os.path.relpath(target, path)],
        "patches": [{"patch": yaml.safe_dump(patch), "target": {"kind": "Deployment", "name": "read-api"}}],
    }
    (path / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return path


def play_one(name, target, ports, *options):
    """Plays a one-pod variant of TARGET as NAME-0, publishing its API and admin ports."""
    play(
        name,
        target,
        "--rename",
        f"read-api={name}",
        "--replicas",
        "1",
        "--publish",
        f"http={ports[0]}",
        "--publish",
        f"admin={ports[1]}",
        *options,
    )
    return Api(f"{name}-0", *ports)


def pod_names(prefixes=POD_PREFIXES):
    out = podman("pod", "ps", "--format", "{{.Name}}").stdout.split()
    return [n for n in out if n.startswith(prefixes)]


# Where the API's replica (sidecar, relay pod or node replica) finds its own password, as its probes do.
REPLICA_AUTH_FILE = "/etc/redis/auth/password"


def redis_cli(container, *args, auth_file=REPLICA_AUTH_FILE):
    """redis-cli on 127.0.0.1 inside CONTAINER, with the password in AUTH_FILE there."""
    command = f'read -r REDISCLI_AUTH <{auth_file}; export REDISCLI_AUTH; redis-cli -h 127.0.0.1 "$@"'
    return podman("exec", container, "sh", "-c", command, "redis-cli", *args, check=False).stdout.strip()


def relay_cli(relay, *args):
    """redis-cli as a relay's admin (the default user; its password file in deploy/overlays/relay)."""
    return redis_cli(f"{relay}-redis", *args, auth_file="/etc/redis/users/default")


def info(text):
    """`field:value` lines of INFO as a dict."""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def replication_totals(client):
    """What the master has sent its replicas, and how: one INFO, so the figures agree."""
    i = client.info("everything")
    return {
        "sent": int(i["total_net_repl_output_bytes"]),
        "offset": int(i["master_repl_offset"]),
        "replicas": int(i["connected_slaves"]),
        "sync_full": int(i["sync_full"]),
        "sync_partial_ok": int(i["sync_partial_ok"]),
    }


def sync_bytes(before, after):
    """Bytes the master sent beyond the replication stream between two replication_totals: every
    connected replica receives the stream (the offset's growth), the rest is full syncs' snapshots.
    Exact while the same replicas stay connected."""
    stream = after["replicas"] * (after["offset"] - before["offset"])
    return after["sent"] - before["sent"] - stream


def remove_pod(name, grace=10):
    """podman pod rm, as a cluster deletes a pod: SIGTERM, GRACE seconds, SIGKILL. podman 4.3 sometimes
    fails when the SIGKILL meets a container that has just exited ("container state improper"): once more."""
    if podman("pod", "rm", "-f", "-t", str(grace), name, check=False).returncode != 0:
        podman("pod", "rm", "-f", name)


class Watch(threading.Thread):
    """Reads and readiness through some pods until stopped."""

    def __init__(self, pods):
        super().__init__(daemon=True)
        self.pods, self.stopped = pods, threading.Event()
        self.reads, self.readiness = Counter(), Counter()

    def run(self):
        while not self.stopped.is_set():
            for pod in self.pods:
                try:
                    self.reads[pod.get("/v1/keys/known-key")[0]] += 1
                    self.readiness[pod.ready()[0]] += 1
                except TRANSIENT:
                    self.reads[0] += 1
            time.sleep(0.02)

    def stop(self):
        self.stopped.set()
        self.join()
        return self


def pod_volumes(prefixes):
    """How the names of the volumes podmanize.py gives the pods named PREFIX... begin: their
    emptyDirs (POD-VOLUME) and their ConfigMap volumes."""
    return tuple(start for prefix in prefixes for start in (prefix, CONFIG_VOLUME_PREFIX + prefix))


def remove_pods(*prefixes):
    """Removes the pods whose names start with one of PREFIXES, and their volumes: what is done
    with, so at once (no grace: the API's drain would take its SHUTDOWN_DELAY for nobody), and
    in one podman call, which removes them side by side."""
    names = pod_names(prefixes)
    if names and podman("pod", "rm", "-f", "-t", "0", *names, check=False).returncode != 0:
        for name in pod_names(prefixes):  # podman 4.3's "container state improper": one by one
            podman("pod", "rm", "-f", "-t", "0", name, check=False)
    remove_volumes(pod_volumes(prefixes))


def remove_volumes(prefixes):
    volumes = [
        v for v in podman("volume", "ls", "--format", "{{.Name}}", check=False).stdout.split() if v.startswith(prefixes)
    ]
    if volumes and podman("volume", "rm", "-f", *volumes, check=False).returncode != 0:
        for volume in volumes:
            podman("volume", "rm", "-f", volume, check=False)


def pod_logs(pod, lines=15):
    return podman("pod", "logs", "--tail", str(lines), pod, check=False).stdout


def teardown():
    remove_pods(*POD_PREFIXES)
    podman("network", "rm", "-f", NETWORK, check=False)
    # The master's data (hostPath volumes, see podmanize.py), and every ConfigMap volume left
    # (make replay's pods have names of their own).
    shutil.rmtree(WORK / "volumes", ignore_errors=True)
    remove_volumes((CONFIG_VOLUME_PREFIX,))


if __name__ == "__main__":
    if sys.argv[1:] != ["down"]:
        raise SystemExit("usage: python -m deploy.e2e.kit down")
    teardown()
