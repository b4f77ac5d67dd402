"""One home per workload part: the redis, stunnel and heartbeat containers and
the probes are written once, in deploy/parts, and every workload that runs
them gets them from there."""

import os
import secrets
import shutil
import socket
import subprocess
import time
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# The containers deploy/parts defines, and the file that defines each.
PARTS = {
    "redis": "deploy/parts/redis/redis.yaml",
    "stunnel": "deploy/parts/stunnel/stunnel.yaml",
    "heartbeat": "deploy/parts/heartbeat/heartbeat.yaml",
}
RENDERS = ["overlays/sidecar", "overlays/relay", "overlays/node-local", "master", "tests/all-components"]


def manifest_sources():
    """The kit's own YAML: deploy/ but its tests (golden copies, test kustomizations)."""
    tracked = subprocess.run(
        ["git", "ls-files", "deploy/*.yaml"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return [path for path in tracked if not path.startswith("deploy/tests/")]


def containers_in(node):
    """Every mapping that looks like a container, wherever it sits (workloads, patches, JSON patch values)."""
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and {"image", "command", "livenessProbe", "readinessProbe"} & set(node):
            yield node
        for value in node.values():
            yield from containers_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from containers_in(value)


@cache
def source_containers():
    found = []
    for path in manifest_sources():
        for doc in yaml.safe_load_all((REPO / path).read_text()):
            found += [(path, c) for c in containers_in(doc)]
    return found


@pytest.mark.parametrize("name", PARTS)
def test_each_part_container_is_defined_in_one_file(name):
    defining = {path for path, c in source_containers() if c["name"] == name and "image" in c}
    assert defining == {PARTS[name]}, f"container {name} is defined in {sorted(defining)}"


def exec_probes(c):
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = c.get(probe, {}).get("exec", {}).get("command")
        if command:
            yield " ".join(command)


def test_every_probe_script_is_written_once():
    homes = {}
    for path, c in source_containers():
        for script in exec_probes(c):
            homes.setdefault(script, set()).add(path)
    repeated = {script: sorted(paths) for script, paths in homes.items() if len(paths) > 1}
    assert not repeated, f"probe scripts written in more than one file: {repeated}"


@cache
def rendered_containers(target):
    result = subprocess.run(["kubectl", "kustomize", str(DEPLOY / target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    found = []
    for doc in yaml.safe_load_all(result.stdout):
        if doc and doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            spec = doc["spec"]["template"]["spec"]
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for c in spec.get("initContainers", []) + spec["containers"]:
                found.append((doc["metadata"]["name"], c, volumes))
    return found


@pytest.mark.parametrize("target", [t for t in RENDERS if t != "master"])
def test_the_probes_read_the_password_the_server_starts_with(target):
    """The replica's probes read $REDIS_PASSWORD_FILE, which the part names and each workload sets:
    a workload that forgot it would render the variable with no value."""
    checked = 0
    for workload, c, volumes in rendered_containers(target):
        if not any("$REDIS_PASSWORD_FILE" in script for script in exec_probes(c)):
            continue
        [variable] = [e for e in c["env"] if e["name"] == "REDIS_PASSWORD_FILE"]
        path = variable.get("value", "")
        mount = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
        assert mount and "secret" in volumes[mount[0]["name"]], f"{workload}/{c['name']}: {path!r} is no Secret file"
        checked += 1
    assert checked, f"{target}: no container runs the replica's probes"


@pytest.mark.parametrize("target", RENDERS)
def test_every_stunnel_is_the_part(target):
    """What a workload may add to the part's stunnel: a preStop (the sidecar pod), smaller resources (the heartbeat)."""
    [part] = [c for path, c in source_containers() if path == PARTS["stunnel"]]
    for workload, c, _ in rendered_containers(target):
        if c["name"] == "stunnel":
            differs = {k for k in set(c) | set(part) if c.get(k) != part.get(k)} - {"image", "restartPolicy"}
            assert differs <= {"lifecycle", "resources"}, f"{workload}: stunnel differs from the part in {differs}"


# --- the replica's probes, run against real redis-servers ----------------------


def part_probe(part, probe):
    doc = yaml.safe_load((DEPLOY / f"parts/{part}/{part}.yaml").read_text())
    [c] = doc["spec"]["template"]["spec"]["containers"]
    return c[probe]["exec"]["command"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, what, seconds=20):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Server:
    """A redis-server on a free loopback port with a password in a file, as the pods' replica runs."""

    def __init__(self, path, *args):
        self.port, self.password = free_port(), secrets.token_hex(8)
        self.password_file = path / f"password-{self.port}"
        self.password_file.write_text(self.password)
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        command += ["no", "--dir", str(path), "--requirepass", self.password, *args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_until(lambda: self.cli("ping") == "PONG", f"redis-server on {self.port}")

    def cli(self, *args):
        env = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": self.password}
        result = subprocess.run(["redis-cli", "-p", str(self.port), *args], env=env, capture_output=True, text=True)
        return result.stdout.strip()

    def probe(self, part, probe, password_file=None):
        """The part's probe as the kubelet runs it in the container; the pod's replica listens on
        6379, this one on its own port."""
        sh, flag, script = part_probe(part, probe)
        script = script.replace("redis-cli -h 127.0.0.1", f"redis-cli -h 127.0.0.1 -p {self.port}")
        env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD_FILE": str(password_file or self.password_file)}
        return subprocess.run([sh, flag, script], env=env, capture_output=True, timeout=10).returncode == 0

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def servers(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is missing (make deps)")
    started = []
    yield lambda *args: started.append(Server(tmp_path, *args)) or started[-1]
    for server in started:
        server.stop()


def test_the_replica_probes_on_real_servers(servers, tmp_path):
    master = servers()
    replica = servers("--replicaof", "127.0.0.1", str(free_port()), "--masterauth", master.password)
    # No master yet: alive, and ready for a pod that reads its own replica (the API's readiness
    # waits for the sync); not for the pods behind a Service.
    assert replica.probe("redis-replica", "livenessProbe")
    assert replica.probe("redis-replica", "readinessProbe")
    assert not replica.probe("shared-replica", "readinessProbe")
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    assert not replica.probe("redis-replica", "livenessProbe", wrong), "a wrong password must fail the probe"
    assert not replica.probe("redis-replica", "readinessProbe", wrong)
    # Following the master, with data from it: ready behind a Service too.
    replica.cli("replicaof", "127.0.0.1", str(master.port))
    wait_until(lambda: "master_link_status:up" in replica.cli("info", "replication"), "the replica's sync")
    master.cli("set", "known-key", "v")
    wait_until(lambda: replica.probe("shared-replica", "readinessProbe"), "the shared replica's readiness")
    assert replica.cli("get", "known-key") == "v"
