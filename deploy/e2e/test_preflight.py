"""The preflight names what is missing in one line: here, a podman network
made without DNS, as on a machine that lacks the dnsname plugin."""

import subprocess
import sys

from deploy.e2e import kit

NETWORK = "read-api-e2e-nodns"


def test_preflight_names_the_missing_dns_plugin(summary):
    kit.podman("network", "rm", "-f", NETWORK, check=False)
    kit.podman("network", "create", "--disable-dns", NETWORK)
    try:
        result = subprocess.run(
            [sys.executable, kit.E2E / "preflight.py", "--network", NETWORK],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        kit.podman("network", "rm", "-f", NETWORK, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, f"preflight passed on a network without DNS: {result.stdout}{result.stderr}"
    assert len(lines) == 1, f"expected one line, got: {result.stderr}"
    assert "do not resolve each other by name" in lines[0]
    assert "golang-github-containernetworking-plugin-dnsname" in lines[0]
    summary(lines[0])
