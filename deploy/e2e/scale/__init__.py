"""make scale's settings (PODS, DATASET_MB, WRITES_PER_S from the environment) and the
steps its fixtures (conftest.py, which says what a run is) and its tests share."""

import os
import secrets

import yaml

from deploy.e2e import kit

PODS = int(os.environ.get("PODS", "8"))
DATASET_MB = int(os.environ.get("DATASET_MB", "256"))
WRITES_PER_S = int(os.environ.get("WRITES_PER_S", "50"))
EGRESS_MBPS = 1000
OUT = kit.REPO / "target/scale"
VALUE_BYTES = 1000


def render_dir(name, base, sizing, *components):
    """A kustomization of deploy/BASE with the sizing component (and COMPONENTS of deploy/components),
    as a user would apply it."""
    path = OUT / "render" / name
    path.mkdir(parents=True, exist_ok=True)
    doc = {
        "resources": [os.path.relpath(kit.REPO / "deploy" / base, path)],
        "components": [os.path.relpath(sizing, path)]
        + [os.path.relpath(kit.REPO / "deploy/components" / c, path) for c in components],
    }
    (path / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return path


def seed(client, megabytes):
    """Writes 1000-byte values until the master's used_memory reaches MEGABYTES MiB.
    The values are slices of random text: snapshots compress repeated bytes, and
    full syncs must move the data set's real size."""
    blob = secrets.token_urlsafe(2**20)
    key, target = 0, megabytes * 2**20
    while int(client.info("memory")["used_memory"]) < target:
        pipe = client.pipeline(transaction=False)
        for _ in range(16):
            pipe.mset({f"data:{key + i}": blob[(key + i) % 1000 :][:VALUE_BYTES] for i in range(500)})
            key += 500
        pipe.execute()
    return key


REPORT = {}
