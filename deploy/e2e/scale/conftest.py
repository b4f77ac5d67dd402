"""make scale: the kit at size on podman, with the limits the manifests declare.

A master holding DATASET_MB of data, sized by make size for that data set
and PODS pods, and the sidecar pods played from the rendered overlay with the
same sizing component. The e2e's fixtures (network, certificates, Secrets as
ConfigMaps) are reused; the master is replaced by the sized, seeded one. The
run ends with target/scale/report.md: the settings used and one line of
figures per scenario.
"""

import os
import platform
import time
from pathlib import Path

import pytest
import yaml

from deploy.e2e import kit, monitoring
from deploy.e2e.scale import DATASET_MB, EGRESS_MBPS, OUT, PODS, REPORT, VALUE_BYTES, WRITES_PER_S, render_dir, seed
from scripts import size


@pytest.fixture(scope="session")
def sizing():
    """What make size says for DATASET_MB and PODS, as a component and as figures."""
    component = OUT / "size"
    figures = size.main(
        [
            "--dataset",
            f"{DATASET_MB}Mi",
            "--pods",
            str(PODS),
            "--egress-mbps",
            str(EGRESS_MBPS),
            "--out",
            str(component),
        ]
    )
    renders = {"figures": figures, "master": render_dir("master", "master", component)}
    # Each topology with the component make size TOPOLOGY=... writes for it.
    for topology in size.TOPOLOGIES:
        path = component if topology == "sidecar" else OUT / f"size-{topology}"
        if topology != "sidecar":
            for name, doc in size.component(figures, topology).items():
                path.mkdir(parents=True, exist_ok=True)
                (path / name).write_text(yaml.safe_dump(doc, sort_keys=False))
        renders[topology] = render_dir(topology, f"overlays/{topology}", path)
    # make scale's sidecar pods carry the exporter, as a cluster with Prometheus runs them: the memory
    # alerts read it. make compare-topologies plays the three topologies as they are.
    renders["sidecar-monitored"] = render_dir("sidecar-monitored", "overlays/sidecar", component, "redis-exporter")
    return renders


@pytest.fixture(scope="session")
def master(kit_network, passwords, sizing):
    """The sized master (deploy/master with the make size component), seeded with DATASET_MB."""
    kit.play("master", sizing["master"], "--publish", f"redis-tls={kit.MASTER_PORT}")
    client = kit.master_client(passwords["master"])
    kit.wait_for("the master's TLS port", client.ping, 60, every=0.5)
    started = time.monotonic()
    keys = seed(client, DATASET_MB)
    used = int(client.info("memory")["used_memory"])
    REPORT["seed"] = (
        f"{keys} keys of {VALUE_BYTES} bytes, used_memory {used / 2**20:.0f} MiB, in {time.monotonic() - started:.0f} s"
    )
    yield client
    client.close()


@pytest.fixture(scope="session")
def prometheus(master):
    """The e2e's Prometheus (deploy/e2e/monitoring.py) with the kit's rules, up before the cold start
    so that it watches every scenario; the tests name the pods it scrapes (Prometheus.watch)."""
    limits = monitoring.PodLimits([])
    limits.start()
    server = monitoring.Prometheus(OUT / "prometheus", [], limits)
    try:
        yield server.wait_ready()
    finally:
        server.stop()
        limits.stop()


def pytest_sessionfinish(session):
    # make compare-topologies writes a report of its own (test_topologies.py).
    if not kit.RESULTS or "compare" in REPORT:
        return
    OUT.mkdir(parents=True, exist_ok=True)
    figures = size.size(DATASET_MB * 2**20, PODS, EGRESS_MBPS, 0.2)
    lines = [
        "# make scale",
        "",
        f"Machine: {platform.node()} {os.cpu_count()} CPUs. {PODS} sidecar pods, {DATASET_MB} MiB of data "
        f"({REPORT.get('seed', 'not seeded')}), {WRITES_PER_S} writes/s during the scenarios.",
        "",
        f"Settings from `make size DATASET={DATASET_MB}Mi PODS={PODS} EGRESS_MBPS={EGRESS_MBPS}`, "
        "applied as a component:",
        "",
        size.table(figures, EGRESS_MBPS),
        "",
        "Scenarios:",
        "",
        kit.results_table(),
        "",
    ]
    if "probes" in REPORT:
        lines += ["Probe contract (what each probe answered in each replica state):", "", REPORT["probes"], ""]
    (OUT / "report.md").write_text("\n".join(lines))
    print(f"\nscale: wrote {Path(OUT / 'report.md').relative_to(kit.REPO)}")
