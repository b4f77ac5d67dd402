#!/usr/bin/env python3
"""make e2e: the kit's own rendered manifests on a real engine (podman kube play).

Plays deploy/master and deploy/overlays/sidecar (3 API pods) on a dedicated
podman network, seeds known-key through the master, reads it from every pod,
then checks propagation, readiness, a master outage, tunnel loss, a bad master
certificate and the central overlay. One line per check, a summary table, and
everything torn down at the end, even when a check fails (E2E_KEEP=1 keeps
the pods up for exploring; make e2e-down removes them).

Needs: podman with CONTAINERS_CONF set, the images from build-images.sh,
kubectl, openssl, and the .venv (PyYAML).
"""

import http.client
import json
import os
import secrets
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
E2E = REPO / "deploy/e2e"
WORK = REPO / "target/e2e/work"
NETWORK = "read-api-e2e"
MASTER_PORT = 16380  # the master's TLS port, published for the runner's writes
API_PORT, ADMIN_PORT = 18080, 19080  # read-api-N publishes API_PORT+N and ADMIN_PORT+N
LATE = 3  # index of the pod started during the readiness check
BADCERT_PORT, BADCERT_ADMIN = 18090, 19090
CENTRAL_PORT, CENTRAL_ADMIN = 18095, 19095
PODS = 3


def sh(*args, check=True, capture=True, input=None, timeout=300):
    result = subprocess.run([str(a) for a in args], capture_output=capture, text=True, input=input, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def podman(*args, **kw):
    return sh("podman", *args, **kw)


def wait_for(what, check, deadline=60.0, every=0.1):
    started = time.monotonic()
    while True:
        try:
            value = check()
            if value:
                return value
        except (OSError, http.client.HTTPException, ValueError):
            pass
        if time.monotonic() - started > deadline:
            raise AssertionError(f"timed out after {deadline:.0f}s waiting for {what}")
        time.sleep(every)


# --- the master, over TLS ---------------------------------------------------


class Master:
    """A minimal RESP client over TLS: the runner writes as any client would."""

    def __init__(self, password, ca_file):
        self.password, self.ca_file, self.sock = password, ca_file, None

    def connect(self):
        context = ssl.create_default_context(cafile=str(self.ca_file))
        raw = socket.create_connection(("127.0.0.1", MASTER_PORT), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        assert self.command("AUTH", self.password) == "OK"

    def close(self):
        if self.sock:
            self.sock.close()
            self.sock = None

    def command(self, *args):
        if self.sock is None:
            self.connect()
        payload = f"*{len(args)}\r\n" + "".join(f"${len(str(a).encode())}\r\n{a}\r\n" for a in args)
        try:
            self.sock.sendall(payload.encode())
            return self.reply()
        except OSError:
            self.close()
            raise

    def reply(self):
        line = self.file.readline().decode().rstrip("\r\n")
        kind, rest = line[:1], line[1:]
        if kind == "+":
            return rest
        if kind == "-":
            raise RuntimeError(rest)
        if kind == ":":
            return int(rest)
        if kind == "$":
            if rest == "-1":
                return None
            data = self.file.read(int(rest) + 2)
            return data[:-2].decode()
        if kind == "*":
            return [self.reply() for _ in range(int(rest))]
        raise RuntimeError(f"unexpected reply {line!r}")

    def info(self, section):
        text = self.command("INFO", section)
        return dict(l.split(":", 1) for l in text.splitlines() if ":" in l)


# --- the API pods ---------------------------------------------------------------


class Api:
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

    def metric(self, name):
        _, text = self.get("/metrics", self.admin)
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None


def sidecar_pod(index):
    return Api(f"read-api-{index}", API_PORT + index, ADMIN_PORT + index)


# --- set-up ---------------------------------------------------------------------


def certificates():
    for name, hosts in [("certs", "redis-master,localhost,127.0.0.1"), ("rogue-certs", "redis-master-bad,localhost")]:
        env = {**os.environ, "CERTS_DIR": str(WORK / name), "MASTER_HOSTS": hosts, "FORCE": "1"}
        subprocess.run(["bash", str(REPO / "scripts/gen-certs.sh")], env=env, check=True, capture_output=True)


def secret_config_maps(master_password, replica_password):
    """The Secrets a cluster would hold, as ConfigMaps of the same names (podman 4.3 reads no Secrets)."""
    certs, rogue = WORK / "certs", WORK / "rogue-certs"
    ca = (certs / "ca.crt").read_text()

    def config_map(name, data):
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}

    connection = {"port": "6380", "user": "default", "password": master_password, "ca.crt": ca}
    maps = [
        config_map("redis-master", {"host": "redis-master", **connection}),
        config_map("redis-master-bad", {"host": "redis-master-bad", **connection}),
        config_map("read-api-replica", {"password": replica_password}),
        config_map("redis-master-tls", {
            "tls.crt": (certs / "master.crt").read_text(), "tls.key": (certs / "master.key").read_text(), "ca.crt": ca}),
        # Signed by another CA: the pods' stunnel must refuse it.
        config_map("redis-master-bad-tls", {
            "tls.crt": (rogue / "master.crt").read_text(), "tls.key": (rogue / "master.key").read_text(),
            "ca.crt": (rogue / "ca.crt").read_text()}),
    ]
    import yaml  # from the project's .venv

    path = WORK / "secrets.yaml"
    path.write_text(yaml.safe_dump_all(maps))
    return path


def play(name, target, *options):
    rendered = sh("kubectl", "kustomize", REPO / "deploy" / target).stdout
    manifest = WORK / f"{name}.yaml"
    options += ("--config", WORK / "secrets.yaml", "--volume-dir", WORK / "volumes")
    manifest.write_text(sh(sys.executable, E2E / "podmanize.py", *options, input=rendered).stdout)
    podman("kube", "play", "--network", NETWORK, manifest, timeout=120)
    return manifest


def pod_names():
    out = podman("pod", "ps", "--format", "{{.Name}}").stdout.split()
    return [n for n in out if n.startswith(("redis-master", "read-api-"))]


def teardown():
    for pod in pod_names():
        podman("pod", "rm", "-f", pod, check=False)
    podman("network", "rm", "-f", NETWORK, check=False)
    # The master's data (hostPath volumes, see podmanize.py) and the ConfigMap volumes podman made.
    shutil.rmtree(WORK / "volumes", ignore_errors=True)
    for volume in podman("volume", "ls", "--format", "{{.Name}}", check=False).stdout.split():
        if volume.startswith(("redis-", "read-api-", "stunnel-config")):
            podman("volume", "rm", "-f", volume, check=False)


# --- checks ---------------------------------------------------------------------


results = []


def check(name):
    def decorator(fn):
        def run(*args):
            started = time.monotonic()
            try:
                detail = fn(*args) or ""
                results.append((name, "PASS", detail, time.monotonic() - started))
                print(f"PASS {name}: {detail}", flush=True)
            except Exception as e:  # a failed check is reported, and the others still run
                results.append((name, "FAIL", str(e).splitlines()[0][:200], time.monotonic() - started))
                print(f"FAIL {name}: {e}", flush=True)
                if os.environ.get("E2E_DEBUG"):
                    traceback.print_exc()
        return run
    return decorator


@check("every pod serves known-key")
def check_known_key(master, pods):
    master.command("SET", "known-key", "hello from the e2e master")
    for pod in pods:
        wait_for(f"known-key on {pod.name}", lambda: pod.value("known-key") == "hello from the e2e master", 30)
    return f"{len(pods)} pods answer 200 with the master's value"


@check("propagation")
def check_propagation(master, pods, writes=200):
    delays = []
    for i in range(writes):
        key, value = f"prop:{i}", secrets.token_hex(8)
        master.command("SET", key, value)
        written = time.monotonic()
        for pod in pods:
            wait_for(f"{key} on {pod.name}", lambda: pod.value(key) == value, 10, every=0.0005)
        delays.append((time.monotonic() - written) * 1000)
    delays.sort()
    p99 = delays[max(0, int(len(delays) * 0.99) - 1)]
    return f"propagation p50={statistics.median(delays):.1f} p99={p99:.1f} max={delays[-1]:.1f} (ms, {writes} writes, all {len(pods)} pods)"


@check("readiness gates on the first sync")
def check_readiness(master, pods):
    # Enough data, saved slowly, that the new replica's first sync visibly takes a while.
    for start in range(0, 20000, 1000):
        master.command("MSET", *[x for i in range(start, start + 1000) for x in (f"fill:{i}", "x" * 64)])
    master.command("CONFIG", "SET", "rdb-key-save-delay", "200")
    try:
        play("late", "overlays/sidecar", "--rename", "read-api=read-api-late", "--replicas", "1",
             "--publish", f"http={API_PORT + LATE}", "--publish", f"admin={ADMIN_PORT + LATE}")
        pod = Api("read-api-late-0", API_PORT + LATE, ADMIN_PORT + LATE)
        seen = set()

        def synced():
            status, body = pod.ready()
            seen.add((status, body.get("reason", "").split(":")[0]))
            return status == 200

        wait_for("the late pod to become ready", synced, 90, every=0.05)
        assert (503, "replica_not_synced") in seen, f"never saw 'not synced' before ready: {sorted(seen)}"
        assert pod.value("known-key") == "hello from the e2e master"
        return f"read-api-late-0 answered 503 replica_not_synced during its first sync, then 200"
    finally:
        master.command("CONFIG", "SET", "rdb-key-save-delay", "0")
        podman("pod", "rm", "-f", "read-api-late-0", check=False)


@check("master outage")
def check_master_outage(master, pods):
    master.command("SET", "known-key", "before the outage")
    for pod in pods:
        wait_for(f"{pod.name} to see the last write", lambda: pod.value("known-key") == "before the outage", 10)
    master.close()
    # As Kubernetes would: SIGTERM and time to shut down while the pod's network
    # stays up (stopping the whole podman pod would tear the network down first).
    podman("stop", "-t", "20", "redis-master-redis")
    try:
        for pod in pods:
            wait_for(f"{pod.name} to report the link down", lambda: pod.metric("read_api_replica_link_up") == 0, 30)
        for _ in range(20):
            for pod in pods:
                status, body = pod.get("/v1/keys/known-key")
                assert status == 200 and json.loads(body)["value"] == "before the outage", f"{pod.name}: {status} {body}"
                assert pod.ready()[0] == 200, f"{pod.name} stopped being ready without its master"
            time.sleep(0.1)
    finally:
        podman("start", "redis-master-redis")
        wait_for("the master to come back", lambda: master.command("PING") == "PONG", 60, every=0.5)
    master.command("SET", "known-key", "after the outage")
    for pod in pods:
        wait_for(f"{pod.name} to get the new write", lambda: pod.value("known-key") == "after the outage", 60)
    return "all pods kept answering 200 with the last value, /metrics showed the link down, new writes arrived after"


@check("tunnel loss")
def check_tunnel_loss(master, pods):
    pod = pods[0]

    def syncs():
        stats = master.info("stats")
        return int(stats["sync_partial_ok"]), int(stats["sync_full"])

    partial_before, full_before = syncs()
    statuses = {}
    restart = subprocess.Popen(["podman", "restart", "-t", "1", f"{pod.name}-stunnel"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    reads = 0
    # Until the replica has reconnected (the master counts a new sync) and reports its link up.
    while True:
        status, _ = pod.get("/v1/keys/known-key")
        statuses[status] = statuses.get(status, 0) + 1
        reads += 1
        if restart.poll() is not None and reads % 20 == 0:
            partial, full = syncs()
            if (partial, full) != (partial_before, full_before) and pod.metric("read_api_replica_link_up") == 1:
                break
        assert time.monotonic() < deadline, f"the replica did not reconnect within 60s (answers: {statuses})"
    assert restart.returncode == 0, restart.stderr.read()
    assert set(statuses) == {200}, f"answers during the restart: {statuses}"
    resync = "a partial resync" if partial > partial_before else "a full resync"
    return f"{pod.name}: {reads} reads during the stunnel restart, all 200; the replica came back with {resync}"


@check("bad certificate")
def check_bad_certificate():
    play("master-bad", "master", "--rename", "redis-master=redis-master-bad",
         "--rename-config", "redis-master-tls=redis-master-bad-tls")
    play("badcert", "overlays/sidecar", "--rename", "read-api=read-api-badcert", "--replicas", "1",
         "--rename-config", "redis-master=redis-master-bad",
         "--publish", f"http={BADCERT_PORT}", "--publish", f"admin={BADCERT_ADMIN}")
    pod = Api("read-api-badcert-0", BADCERT_PORT, BADCERT_ADMIN)
    wait_for("the badcert pod's replica to answer", lambda: pod.ready()[1]["reason"].startswith("replica_not_synced"), 60)
    for _ in range(40):
        status, body = pod.ready()
        assert status == 503 and body["reason"].startswith("replica_not_synced"), f"{status} {body}"
        time.sleep(0.2)
    stunnel = podman("logs", "read-api-badcert-0-stunnel", check=False)
    logs = stunnel.stdout + stunnel.stderr
    assert "certificate verify failed" in logs, f"stunnel logs do not name the reason: {logs[-500:]}"
    assert pod.metric("read_api_replica_synced") == 0 and pod.metric("read_api_replica_link_up") == 0
    return "stunnel refused the certificate (logged 'certificate verify failed'); /readyz stayed 503, read_api_replica_synced 0"


@check("central overlay")
def check_central(master):
    master.command("SET", "known-key", "read from the master itself")
    play("central", "overlays/central", "--rename", "read-api=read-api-central", "--replicas", "1",
         "--publish", f"http={CENTRAL_PORT}", "--publish", f"admin={CENTRAL_ADMIN}")
    pod = Api("read-api-central-0", CENTRAL_PORT, CENTRAL_ADMIN)
    wait_for("the central pod to be ready", lambda: pod.ready()[0] == 200, 60)
    assert pod.value("known-key") == "read from the master itself"
    assert pod.metric("read_api_replica_role") == 0
    return "read-api-central-0 reads known-key from the master over TLS"


def main():
    if not os.environ.get("CONTAINERS_CONF"):
        raise SystemExit("e2e: run through make e2e, which prepares podman (CONTAINERS_CONF)")
    WORK.mkdir(parents=True, exist_ok=True)
    teardown()
    master_password, replica_password = secrets.token_hex(16), secrets.token_hex(16)
    master = Master(master_password, WORK / "certs/ca.crt")
    pods = [sidecar_pod(i) for i in range(PODS)]
    try:
        print("e2e: certificates, passwords, podman network", flush=True)
        certificates()
        secret_config_maps(master_password, replica_password)
        podman("network", "create", NETWORK)
        print("e2e: playing deploy/master", flush=True)
        play("master", "master", "--publish", f"redis-tls={MASTER_PORT}")
        wait_for("the master's TLS port", lambda: master.command("PING") == "PONG", 60, every=0.5)
        print(f"e2e: playing deploy/overlays/sidecar ({PODS} pods)", flush=True)
        play("sidecar", "overlays/sidecar", "--publish", f"http={API_PORT}", "--publish", f"admin={ADMIN_PORT}")
        for pod in pods:
            wait_for(f"{pod.name} to be ready", lambda: pod.ready()[0] == 200, 120, every=0.25)

        only = os.environ.get("E2E_ONLY", "").split(",")
        for name, run, args in [
            ("known-key", check_known_key, (master, pods)),
            ("propagation", check_propagation, (master, pods)),
            ("readiness", check_readiness, (master, pods)),
            ("outage", check_master_outage, (master, pods)),
            ("tunnel", check_tunnel_loss, (master, pods)),
            ("badcert", check_bad_certificate, ()),
            ("central", check_central, (master,)),
        ]:
            if only == [""] or name in only:
                run(*args)
    except Exception as e:
        results.append(("set-up", "FAIL", str(e).splitlines()[0][:200], 0.0))
        print(f"FAIL set-up: {e}", flush=True)
        for pod in pod_names():
            print(f"--- podman pod logs {pod} (last lines)", flush=True)
            print(podman("pod", "logs", "--tail", "15", pod, check=False).stdout, flush=True)
    finally:
        master.close()
        if os.environ.get("E2E_KEEP"):
            print("e2e: E2E_KEEP=1, pods left running:", ", ".join(pod_names()))
            print(f"  curl 127.0.0.1:{API_PORT}/v1/keys/known-key   curl 127.0.0.1:{ADMIN_PORT}/metrics   make e2e-down")
        else:
            teardown()

    print("\n| check | result | seconds | detail |\n| --- | --- | ---: | --- |")
    for name, verdict, detail, seconds in results:
        print(f"| {name} | {verdict} | {seconds:.1f} | {detail} |")
    passed = sum(1 for r in results if r[1] == "PASS")
    failed = len(results) - passed
    print(f"\ne2e: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["down"]:
        teardown()
        sys.exit(0)
    sys.exit(main())
