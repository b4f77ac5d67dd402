"""deploy/e2e/podmanize.py without podman: what it makes of the rendered
manifests the e2e plays (the e2e itself runs them, make e2e)."""

import subprocess
import sys
from pathlib import Path

import yaml

from deploy.e2e import e2e_images

REPO = Path(__file__).resolve().parents[2]


def render(target):
    return subprocess.run(
        ["kubectl", "kustomize", str(REPO / "deploy" / target)], capture_output=True, text=True, check=True
    ).stdout


def podmanize(rendered, *args):
    result = subprocess.run(
        [sys.executable, "-m", "deploy.e2e.podmanize", *args], input=rendered, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def images(docs):
    return {
        c["name"]: c["image"]
        for doc in docs
        if doc["kind"] == "Pod"
        for c in doc["spec"].get("initContainers", []) + doc["spec"]["containers"]
    }


def test_the_e2e_plays_its_own_images_and_the_manifests_keep_the_clusters():
    rendered = render("e2e/sidecar")
    cluster = images([{"kind": "Pod", "spec": d["spec"]["template"]["spec"]} for d in yaml.safe_load_all(rendered)
                      if d and d["kind"] == "Deployment"])  # fmt: skip
    played = images(podmanize(rendered, "--replicas", "1"))
    stand_in = {name: image for name, (image, _, _) in e2e_images.E2E_IMAGES.items()}
    assert played["redis"] == stand_in["redis"]
    assert played["stunnel"] == stand_in["read-api-stunnel"]
    assert played["redis-exporter"] == stand_in["redis-exporter"]
    # The API image is built from the kit's own Containerfile, under the name the manifests use.
    assert played["api"] == cluster["api"]
    for name in ("redis", "stunnel", "redis-exporter"):
        assert cluster[name] != played[name] and not cluster[name].startswith("localhost/e2e-"), name


def test_an_image_is_matched_by_repository_whatever_its_tag_or_digest():
    mapping = {"docker.io/library/redis": "localhost/e2e-redis:debian-7.0"}
    digest = "sha256:" + "0" * 64
    for image in (
        "docker.io/library/redis:7.4.2",
        f"docker.io/library/redis:7.4.2@{digest}",
        "docker.io/library/redis",
    ):
        assert e2e_images.e2e_image(image, mapping) == "localhost/e2e-redis:debian-7.0", image
    assert e2e_images.e2e_image("localhost:5000/redis:1", mapping) == "localhost:5000/redis:1"
    assert e2e_images.e2e_image("docker.io/library/redis-stack:7", mapping) == "docker.io/library/redis-stack:7"


def test_podman_gets_no_network_policy():
    """podman enforces none: podmanize drops them, and the pods reach each other by name."""
    rendered = render("e2e/sidecar")
    assert "kind: NetworkPolicy" in rendered
    kinds = {doc["kind"] for doc in podmanize(rendered, "--replicas", "1")}
    assert kinds == {"Pod", "ConfigMap"}


def test_a_daemonset_is_one_pod_named_as_its_service():
    """podman is one node: the node replica is one pod, redis-node, the name the API's REDIS_URL uses."""
    docs = podmanize(render("overlays/node-local"), "--replicas", "2")
    pods = [d["metadata"]["name"] for d in docs if d["kind"] == "Pod"]
    assert pods == ["read-api-0", "read-api-1", "redis-node"]
    api = next(d for d in docs if d["metadata"]["name"] == "read-api-0")["spec"]["containers"][0]
    url = next(e["value"] for e in api["env"] if e["name"] == "REDIS_URL")
    assert url == "redis://redis-node:6379"


def test_spread_points_each_api_pod_at_one_relay_as_the_service_would():
    docs = podmanize(render("overlays/relay"), "--replicas", "3", "--spread", "redis-relay=2",
                     "--scale", "redis-relay=2", "--volume-dir", str(REPO / "target/test-podmanize"))  # fmt: skip
    pods = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Pod"}
    assert sorted(pods) == ["read-api-0", "read-api-1", "read-api-2", "redis-relay-0", "redis-relay-1"]
    for i in range(3):
        redis = next(c for c in pods[f"read-api-{i}"]["containers"] if c["name"] == "redis")
        assert redis["command"][-2:] == [f"redis-relay-{i % 2}", "6379"], redis["command"]
        # Names that only contain the Service's name stay as they are: the Secret redis-relay, now a ConfigMap.
        volume = next(v for v in pods[f"read-api-{i}"]["volumes"] if v["name"] == "master-password")
        assert volume["configMap"]["name"] == "redis-relay"


def test_every_pod_has_its_own_empty_dirs():
    """podman 4.3 shares a named volume between pods: the master's and the relays' /run/redis
    (auth.conf) would be one."""
    docs = podmanize(render("overlays/relay"), "--replicas", "2", "--volume-dir", str(REPO / "target/test-podmanize"))
    seen = {}
    for pod in (d for d in docs if d["kind"] == "Pod"):
        for volume in pod["spec"]["volumes"]:
            if "emptyDir" in volume:
                assert volume["name"].startswith(pod["metadata"]["name"] + "-"), volume["name"]
                assert volume["name"] not in seen
                seen[volume["name"]] = pod["metadata"]["name"]
        mounts = {m["name"] for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])}
        assert mounts <= {v["name"] for v in pod["spec"]["volumes"]}


def test_every_pod_has_its_own_config_volumes_holding_their_items():
    """podman 4.3 makes one volume per ConfigMap, shared by every pod that mounts it and written
    again at each pod's creation: the sidecars' and the central pods' `password` were one file."""
    config = REPO / "target/test-podmanize/config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    keys = ("host", "port", "ca.crt", "password", "replica-password", "user")
    config.write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {k: f"{k} value" for k in keys}}
        for name in ("redis-master", "read-api-replica")
    ]))  # fmt: skip
    docs = []
    for topology in ("sidecar", "central"):
        options = ("--replicas", "2", "--config", str(config), "--rename", f"read-api={topology}")
        docs += podmanize(render(f"overlays/{topology}"), *options)
    config_maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    mounted = {}
    for pod in (d for d in docs if d["kind"] == "Pod"):
        name = pod["metadata"]["name"]
        for volume in pod["spec"]["volumes"]:
            if "configMap" in volume:
                source = volume["configMap"]
                assert source["name"].startswith(f"e2e-config-{name}-") and "items" not in source, source
                assert source["name"] not in mounted
                mounted[source["name"]] = config_maps[source["name"]]
    assert mounted["e2e-config-sidecar-1-master-password"] == {"password": "replica-password value"}
    assert mounted["e2e-config-central-1-master-password"] == {"password": "password value"}
    assert mounted["e2e-config-sidecar-0-master-ca"] == {"ca.crt": "ca.crt value"}
