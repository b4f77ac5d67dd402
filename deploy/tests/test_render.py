"""What `make render` and the deploy targets put in front of a cluster: the
namespace asked for, and the image versions from their one home."""

import os
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
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "IMAGES_RECORD": "/nonexistent", **env},
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def version(name):
    return subprocess.run(
        ["scripts/versions.sh", "tag", name], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


TOPOLOGIES = ["sidecar", "central", "relay", "node-local", "master"]


@pytest.mark.parametrize("topology", TOPOLOGIES)
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
    home = {}
    for doc in yaml.safe_load_all((REPO / "deploy/images/images.yaml").read_text()):
        tag = doc["imageTag"]
        home[tag["newName"]] = tag["newTag"] + (f"@{tag['digest']}" if "digest" in tag else "")
    for topology in TOPOLOGIES:
        for image in {
            c["image"]
            for obj in render(topology)
            if "template" in obj.get("spec", {})
            for c in obj["spec"]["template"]["spec"]["containers"]
        }:
            name, _, tag = image.split("@")[0].rpartition(":")
            tag += image[len(name) + 1 + len(tag) :]
            assert home.get(name) == tag, f"{topology}: {image} is not in deploy/images/images.yaml"


def test_no_version_is_written_outside_its_home():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    # Lock files are written by cargo; the contract's version is checked equal below.
    homes = {"deploy/images/images.yaml", "api/Cargo.toml", "scripts/versions.sh", "api/openapi.yaml"}
    homes |= {path for path in tracked if path.endswith("Cargo.lock")}
    contract = yaml.safe_load((REPO / "api/openapi.yaml").read_text())
    assert contract["info"]["version"] == version("read-api"), "api/openapi.yaml's info.version is the API's"
    pinned = {version("read-api"), version("redis")}
    pattern = re.compile("|".join(rf"\b{re.escape(v)}\b" for v in pinned))
    offenders = [
        path
        for path in tracked
        if path not in homes and (REPO / path).is_file() and pattern.search((REPO / path).read_text(errors="ignore"))
    ]
    assert not offenders, f"versions written outside deploy/images/images.yaml: {offenders}"


def user_kustomization(tmp_path, overlay, components):
    """A kustomization of a user's own, as docs/deploy.md shows: no namespace field of its own."""
    rel = lambda path: os.path.relpath(REPO / "deploy" / path, tmp_path)  # noqa: E731
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [rel(overlay)], "components": [rel(f"components/{c}") for c in components]})
    )
    result = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


COMPONENTS = sorted(p.name for p in (REPO / "deploy/components").iterdir() if (p / "kustomization.yaml").is_file())
# Components that change only the sidecar pod's containers, and those for deploy/master alone.
SIDECAR_ONLY = {"native-sidecars", "unix-socket", "redis-exporter"}
MASTER_ONLY = {"cert-manager"}


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize(
    "overlay", ["overlays/sidecar", "overlays/central", "overlays/relay", "overlays/node-local", "master"]
)
def test_components_keep_every_object_in_the_kit_namespace(tmp_path, overlay, component):
    if (overlay == "master") != (component in MASTER_ONLY):
        pytest.skip(f"{component} is not for {overlay}")
    if overlay in ("overlays/central", "overlays/node-local") and component in SIDECAR_ONLY:
        pytest.skip(f"{component} applies to the sidecar pod only")
    if overlay == "overlays/relay" and component == "native-sidecars":
        pytest.skip("native-sidecars moves the sidecar pod's replica and stunnel; the relay pod has no stunnel")
    for obj in user_kustomization(tmp_path, overlay, [component]):
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == "read-api", (
                f"{component}: {obj['kind']}/{obj['metadata']['name']}"
            )


def test_the_hpa_component_leaves_the_replica_count_to_the_hpa(tmp_path):
    objects = user_kustomization(tmp_path, "overlays/sidecar", ["hpa"])
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert "replicas" not in deployment["spec"]
    assert any(o["kind"] == "HorizontalPodAutoscaler" for o in objects)


# --- network policies in a kustomization of yours -----------------------------


def readme_patches():
    """The `patches:` blocks of the network-policy component's README, as written there."""
    text = (REPO / "deploy/components/network-policy/README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    return [yaml.safe_load(block)["patches"] for block in blocks if block.startswith("patches:")]


def network_policies(objects):
    return {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}


def test_the_old_network_policy_component_still_builds_and_adds_nothing(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    without = network_policies(user_kustomization(tmp_path / "a", "overlays/sidecar", []))
    with_it = network_policies(user_kustomization(tmp_path / "b", "overlays/sidecar", ["network-policy"]))
    assert with_it == without and set(without) == {"read-api-ingress", "read-api-egress"}


def test_the_readme_patches_choose_the_monitoring_namespaces_and_let_a_hosted_master_in(tmp_path):
    selector, hosted = readme_patches()
    policies = {}
    for base, components in [("overlays/sidecar", ["components/heartbeat"]), ("master", [])]:
        path = tmp_path / base.replace("/", "-")
        path.mkdir()
        rel = lambda p, path=path: os.path.relpath(REPO / "deploy" / p, path)  # noqa: E731
        doc = {"resources": [rel(base)], "components": [rel(c) for c in components], "patches": selector + hosted}
        (path / "kustomization.yaml").write_text(yaml.safe_dump(doc))
        result = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        policies.update(network_policies(d for d in yaml.safe_load_all(result.stdout) if d))
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    for name in ("read-api-ingress", "redis-master-ingress"):
        assert policies[name]["ingress"][1]["from"] == monitoring, name
    *kept, added = policies["read-api-egress"]["egress"]
    assert len(kept) == 2, "DNS and the in-cluster master stay"
    assert added == {"to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}], "ports": [{"port": 6380, "protocol": "TCP"}]}
    assert "egress" not in policies["redis-master-egress"]
