#!/usr/bin/env python3
"""Checks that podman can run the e2e here, before minutes go into building images.

Each check exercises the function the e2e relies on, not just a binary's
presence: podman reads the project's containers.conf, `kube play` starts two
pods on a podman network, and one pod resolves the other by its pod name.
The first failure prints one line (what is missing, which Debian package
provides it) and exits 1.

Usage: preflight.py [--network NAME]
  --network  check an existing network (left in place) instead of a new one
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PROBE_IMAGE = "localhost/read-api-e2e-probe:latest"
NETWORK = "read-api-e2e-preflight"
PODS = ("read-api-preflight-a", "read-api-preflight-b")

# What a podman error names -> what to install (Debian packages, as make e2e installs them).
KNOWN_CAUSES = [
    ("catatonit", "podman cannot start a pod's infra container: install the Debian package catatonit"),
    (
        "dnsname",
        "podman's CNI network lacks the dnsname plugin: install the Debian package "
        "golang-github-containernetworking-plugin-dnsname",
    ),
    ("runc", "podman cannot find its OCI runtime runc: install the Debian package runc"),
    ("ulimit", "podman sets default ulimits this sandbox refuses: run with CONTAINERS_CONF=deploy/e2e/containers.conf"),
    ("rlimit", "podman sets default ulimits this sandbox refuses: run with CONTAINERS_CONF=deploy/e2e/containers.conf"),
]


class PreflightError(Exception):
    """One line for the person running make e2e."""


def podman(*args, timeout=120):
    return subprocess.run(["podman", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def explain(step, result):
    output = (result.stderr or result.stdout).strip()
    for needle, advice in KNOWN_CAUSES:
        if needle in output:
            return PreflightError(f"{step}: {advice}")
    first = output.splitlines()[-1] if output else f"exit code {result.returncode}"
    return PreflightError(f"{step}: {first}")


def check_engine():
    conf = os.environ.get("CONTAINERS_CONF")
    if not conf or not Path(conf).is_file():
        raise PreflightError("CONTAINERS_CONF must name deploy/e2e/containers.conf (make e2e sets it)")
    result = podman("info", "--format", "{{.Host.OCIRuntime.Name}}")
    if result.returncode != 0:
        raise explain("podman info", result)
    if result.stdout.strip() != "runc":
        raise PreflightError(f"podman uses the runtime {result.stdout.strip()!r}, not runc: check {conf}")


def probe_pod(name):
    container = {
        "name": "probe",
        "image": PROBE_IMAGE,
        "command": ["sleep", "300"],
        "securityContext": {"runAsUser": 65532, "allowPrivilegeEscalation": False},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [container], "restartPolicy": "Never"},
    }


def remove_pods():
    for pod in PODS:
        podman("pod", "rm", "-f", "-t", "0", pod)


def check_pods_resolve(network):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="preflight-") as manifest:
        yaml.safe_dump_all([probe_pod(p) for p in PODS], manifest)
        manifest.flush()
        result = podman("kube", "play", "--network", network, manifest.name)
    if result.returncode != 0:
        raise explain("podman kube play", result)
    target, source = PODS
    lookup = podman("exec", f"{source}-probe", "getent", "hosts", target, timeout=30)
    if lookup.returncode != 0:
        raise PreflightError(
            f"pods on the podman network {network} do not resolve each other by name ({source} cannot "
            f"resolve {target}): install the Debian package golang-github-containernetworking-plugin-dnsname, "
            f"then remove networks made without it (podman network rm {network})"
        )


def run(network):
    check_engine()
    build = subprocess.run([REPO / "deploy/e2e/build-images.sh", "probe"], capture_output=True, text=True)
    if build.returncode != 0:
        raise explain("building the probe image", build)
    remove_pods()
    made_network = network is None
    network = network or NETWORK
    try:
        if made_network:
            podman("network", "rm", "-f", network)
            created = podman("network", "create", network)
            if created.returncode != 0:
                raise explain(f"podman network create {network}", created)
        check_pods_resolve(network)
    finally:
        remove_pods()
        if made_network:
            podman("network", "rm", "-f", network)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", help="an existing podman network to check (left in place)")
    args = parser.parse_args()
    try:
        run(args.network)
    except PreflightError as e:
        print(f"e2e preflight: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(
            f"e2e preflight: {e.filename} is not installed (make e2e installs podman, runc and catatonit)",
            file=sys.stderr,
        )
        return 1
    print("e2e preflight: podman starts pods with the project's containers.conf, and pods resolve each other by name")
    return 0


if __name__ == "__main__":
    sys.exit(main())
