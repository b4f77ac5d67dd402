"""Every render the manifest tests make, compared with its golden copy in
deploy/tests/golden/: a change to deploy/ that moves YAML around must leave
what reaches a cluster as it was, and one that means to change it shows the
change in the golden files' diff.

After an intended change: `make golden` writes them again; review their diff.

Normalized so that the diff shows meaning, not layout: objects sorted by
kind, namespace and name, keys sorted; volumes sorted by name and
volumeMounts by mount path (the kubelet reads both as maps; env and container
order are kept, since they mean something); the images deploy/images pins
without their version (its one home; test_render.py checks the rendered
ones); a ConfigMap's data as a digest per key (its files are deploy/config's,
compared by test_manifests.py, and its name carries a hash of them anyway).
The copy of a component's render, and of `deploy.sh render`'s, holds only
what it changes in the overlay's render.
"""

import difflib
import hashlib
import os
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from deploy.tests.test_manifests import RENDERED

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
GOLDEN = DEPLOY / "tests/golden"
UPDATE = os.environ.get("GOLDEN_UPDATE") == "1"

# test_manifests.py's renders, and what the e2e plays for the API pods.
KUSTOMIZATIONS = [*RENDERED, "e2e/sidecar"]
# test_render.py's: `scripts/deploy.sh render` of each topology, and each
# component in a kustomization of the user's own over each overlay it is for.
TOPOLOGIES = ["sidecar", "central", "relay", "node-local", "master"]
COMPONENTS = sorted(p.name for p in (DEPLOY / "components").iterdir() if (p / "kustomization.yaml").is_file())
SIDECAR_ONLY = {"native-sidecars", "unix-socket", "redis-exporter"}
MASTER_ONLY = {"cert-manager"}


def applies(overlay, component):
    if (overlay == "master") != (component in MASTER_ONLY):
        return False
    if overlay in ("overlays/central", "overlays/node-local") and component in SIDECAR_ONLY:
        return False
    return not (overlay == "overlays/relay" and component == "native-sidecars")


COMBINATIONS = [
    (overlay, component)
    for overlay in ["overlays/sidecar", "overlays/central", "overlays/relay", "overlays/node-local", "master"]
    for component in COMPONENTS
    if applies(overlay, component)
]


def kustomize(path):
    result = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"kubectl kustomize {path}: {result.stderr}"
    return result.stdout


def render_kustomization(target, tmp_path):
    return kustomize(DEPLOY / target)


def render_topology(topology, tmp_path):
    result = subprocess.run(
        ["scripts/deploy.sh", "render", topology],
        cwd=REPO,
        capture_output=True,
        text=True,
        # No digests of images pushed from this machine: the render of a fresh checkout.
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "PUSHED_DIGESTS": str(tmp_path / "none")},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def render_combination(overlay_component, tmp_path):
    overlay, component = overlay_component
    rel = lambda path: os.path.relpath(DEPLOY / path, tmp_path)  # noqa: E731
    doc = {"resources": [rel(overlay)], "components": [rel(f"components/{component}")]}
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return kustomize(tmp_path)


def overlay_of(topology):
    return "master" if topology == "master" else f"overlays/{topology}"


# (golden name, render, its argument, the kustomization whose render the golden copy is a delta of).
CASES = (
    [(f"kustomize-{t.replace('/', '-')}", render_kustomization, t, None) for t in KUSTOMIZATIONS]
    + [(f"render-{t}", render_topology, t, overlay_of(t)) for t in TOPOLOGIES]
    + [(f"{o.replace('/', '-')}+{c}", render_combination, (o, c), o) for o, c in COMBINATIONS]
)


def digest(text):
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


@cache
def pinned_images():
    """Each image as deploy/images/images.yaml pins it, and what its golden copy says instead."""
    pins = {}
    for doc in yaml.safe_load_all((DEPLOY / "images/images.yaml").read_text()):
        tag = doc["imageTag"]
        pins[f"{tag['newName']}:{tag['newTag']}"] = f"{tag['newName']}:<deploy/images>"
    return pins


def normalize_pod(spec):
    spec.get("volumes", []).sort(key=lambda v: v["name"])
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        c.get("volumeMounts", []).sort(key=lambda m: m["mountPath"])
        c["image"] = pinned_images().get(c["image"], c["image"])


def normalize(rendered):
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for d in docs:
        if d["kind"] == "ConfigMap":
            d["data"] = {k: digest(v) for k, v in d.get("data", {}).items()}
        template = d.get("spec", {}).get("template", {})
        if "spec" in template:
            normalize_pod(template["spec"])
    return sorted(docs, key=object_id)


def object_id(d):
    return d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]


@cache
def rendered(target):
    return normalize(kustomize(DEPLOY / target))


def delta(docs, overlay):
    """What a render changes in an overlay's: the objects that differ from the
    overlay's own render, and the ids of those it removes."""
    base = rendered(overlay)
    changed = [d for d in docs if d not in base]
    removed = sorted({object_id(d) for d in base} - {object_id(d) for d in docs})
    return changed + ([{"removed": [list(i) for i in removed]}] if removed else [])


@pytest.mark.parametrize("name,render,arg,base", CASES, ids=[c[0] for c in CASES])
def test_render_is_its_golden_copy(name, render, arg, base, tmp_path):
    docs = normalize(render(arg, tmp_path))
    if base:
        docs = delta(docs, base)
    got = yaml.safe_dump_all(docs, sort_keys=True, width=120)
    golden = GOLDEN / f"{name}.yaml"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(got)
        return
    assert golden.is_file(), f"no golden copy {golden.relative_to(REPO)}: run make golden"
    want = golden.read_text()
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "rendered", n=2))
        pytest.fail(f"{name} differs from {golden.relative_to(REPO)} (make golden, if intended):\n{diff[:6000]}")


def test_every_golden_copy_is_of_a_render_made_here():
    stale = {p.stem for p in GOLDEN.glob("*.yaml")} - {c[0] for c in CASES}
    assert not stale, f"golden copies of renders no test makes: {sorted(stale)} (make golden removes none: delete them)"
