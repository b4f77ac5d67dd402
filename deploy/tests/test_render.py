"""What `make render` and the deploy targets put in front of a cluster: the
namespace asked for, and the image versions from their one home."""

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# Kinds a namespace does not apply to.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def render(topology, **env):
    result = subprocess.run(
        ["scripts/deploy.sh", "render", topology],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", **env},
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def version(name):
    return subprocess.run(
        ["scripts/versions.sh", "tag", name], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize("topology", ["sidecar", "central", "master"])
def test_render_puts_every_namespaced_object_in_the_namespace_asked_for(topology):
    objects = render(topology, NAMESPACE="team-a")
    for obj in objects:
        meta = obj["metadata"]
        if obj["kind"] in CLUSTER_SCOPED:
            if obj["kind"] == "Namespace":
                assert meta["name"] == "team-a"
        else:
            assert meta.get("namespace") == "team-a", f"{obj['kind']}/{meta['name']}: {meta.get('namespace')}"


def test_the_api_image_tag_is_the_crate_version():
    crate = tomllib.loads((REPO / "api/Cargo.toml").read_text())["package"]["version"]
    assert version("read-api") == crate


def test_every_rendered_image_comes_from_deploy_images():
    home = {
        doc["imageTag"]["newName"]: doc["imageTag"]["newTag"]
        for doc in yaml.safe_load_all((REPO / "deploy/images/images.yaml").read_text())
    }
    for topology in ["sidecar", "central", "master"]:
        for image in {
            c["image"]
            for obj in render(topology)
            if "template" in obj.get("spec", {})
            for c in obj["spec"]["template"]["spec"]["containers"]
        }:
            name, _, tag = image.rpartition(":")
            assert home.get(name) == tag, f"{topology}: {image} is not in deploy/images/images.yaml"


def test_no_version_is_written_outside_its_home():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    homes = {"deploy/images/images.yaml", "api/Cargo.toml", "Cargo.lock", "scripts/versions.sh", "README.md"}
    pinned = {version("read-api"), version("redis")}
    pattern = re.compile("|".join(rf"\b{re.escape(v)}\b" for v in pinned))
    offenders = [
        path
        for path in tracked
        if path not in homes and (REPO / path).is_file() and pattern.search((REPO / path).read_text(errors="ignore"))
    ]
    assert not offenders, f"versions written outside deploy/images/images.yaml: {offenders}"
