"""One home per workload part: the redis, stunnel and heartbeat containers and
the probes are written once, in deploy/parts, and every workload that runs
them gets them from there."""

import subprocess
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
