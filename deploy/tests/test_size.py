"""make size: the sizing rules, the component it writes, and the shipped
defaults being what it says for the kit's stated default size."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts import size

REPO = Path(__file__).resolve().parents[2]

MI = 1024 * 1024
# The size the shipped manifests are set for (docs/sizing.md).
DEFAULT = {"dataset": 256 * MI, "pods": 12, "egress_mbps": 1000, "writes_mbps": 0.2}


def render(tmp_path, base, component_dir):
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [os.path.relpath(REPO / base, tmp_path)], "components": [component_dir.name]})
    )
    result = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_a_gigabyte_for_a_hundred_pods():
    s = size.size(1024**3, 100, 1000, 1)
    assert s["maxmemory"] == 1280 * MI
    assert s["replica_memory"] == 2 * 1280 * MI + 64 * MI  # two copies during a swapdb resync
    # 125 MB/s carries 13 syncs of 1 GiB in 120 s; fewer than a quarter of 100 pods.
    assert s["max_surge"] == 13
    assert s["egress_per_rollout"] == 100 * 1024**3
    assert s["deploy_timeout_seconds"] >= s["rollout_seconds"] > 14 * 60  # 100 GiB through 1 Gbit/s
    assert s["progress_deadline_seconds"] >= 2 * s["batch_seconds"]


def test_small_data_is_capped_at_a_quarter_of_the_pods_and_one_at_least():
    assert size.size(16 * MI, 100, 10_000, 1)["max_surge"] == 25
    assert size.size(10 * 1024**3, 4, 10, 1)["max_surge"] == 1


def test_the_output_buffer_holds_the_writes_of_the_longest_sync():
    s = size.size(1024**3, 100, 100, 50)  # 50 MB/s of writes, slow egress
    sync_seconds = s["max_surge"] * 1024**3 / (100e6 / 8)
    assert s["output_buffer"] >= 2 * 50e6 * sync_seconds


@pytest.mark.parametrize("bad", [["--dataset", "lots"], ["--pods", "0"], ["--egress-mbps", "-1"]])
def test_bad_input_is_one_clear_line(bad):
    args = {"--dataset": "1Gi", "--pods": "3", "--egress-mbps": "100"}
    args.update(dict(zip(bad[::2], bad[1::2], strict=True)))
    result = subprocess.run(
        [sys.executable, REPO / "scripts/size.py", *[x for kv in args.items() for x in kv]],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and bad[0] in result.stderr and "Traceback" not in result.stderr


def test_the_component_sizes_the_sidecar_pods_and_the_master(tmp_path):
    s = size.main(["--dataset", "1Gi", "--pods", "100", "--egress-mbps", "1000", "--out", str(tmp_path / "size")])
    work = REPO / "target/test-size"
    for base in ["deploy/overlays/sidecar", "deploy/master"]:
        out = work / base.replace("/", "-")
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-r", str(tmp_path / "size"), str(out)], check=True)
        for obj in render(out, base, out / "size"):
            spec = obj.get("spec", {})
            if obj["kind"] == "Deployment":
                assert spec["strategy"]["rollingUpdate"]["maxSurge"] == s["max_surge"]
                assert spec["progressDeadlineSeconds"] == s["progress_deadline_seconds"]
                redis = next(c for c in spec["template"]["spec"]["containers"] if c["name"] == "redis")
                assert redis["resources"]["limits"]["memory"] == redis["resources"]["requests"]["memory"] == "2624Mi"
            if obj["kind"] == "StatefulSet":
                redis = spec["template"]["spec"]["containers"][0]
                assert redis["args"] == ["--maxmemory", "1280mb", "--repl-backlog-size", "64mb",
                                         "--client-output-buffer-limit", "replica 256mb 0 0"]  # fmt: skip
                assert redis["resources"]["limits"]["memory"] == "2752Mi"  # 2 × 1280Mi + the 64mb backlog + 128Mi
                assert spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "3072Mi"


def conf(path):
    lines = (REPO / "deploy/config" / path).read_text().splitlines()
    return dict(line.split(None, 1) for line in lines if line.strip() and not line.startswith("#"))


def test_the_shipped_defaults_are_what_make_size_says_for_the_stated_default():
    s = size.size(**DEFAULT)
    master_conf = conf("redis-master/redis-master.conf")
    assert master_conf["maxmemory"] == size.redis_bytes(s["maxmemory"])
    assert master_conf["client-output-buffer-limit"] == f"replica {size.redis_bytes(s['output_buffer'])} 0 0"
    assert master_conf["repl-backlog-size"] == size.redis_bytes(s["backlog"])
    sidecars = yaml.safe_load((REPO / "deploy/overlays/sidecar/sidecars.yaml").read_text())
    redis = next(c for c in sidecars["spec"]["template"]["spec"]["containers"] if c["name"] == "redis")
    assert redis["resources"]["limits"]["memory"] == redis["resources"]["requests"]["memory"]
    assert redis["resources"]["limits"]["memory"] == size.mebibytes(s["replica_memory"])
    master = yaml.safe_load((REPO / "deploy/master/statefulset.yaml").read_text())
    resources = master["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == size.mebibytes(s["master_memory"])
    storage = master["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    assert storage == size.mebibytes(s["master_volume"])


@pytest.mark.parametrize("topology,base,kind,name", [
    ("relay", "deploy/overlays/relay", "StatefulSet", "redis-relay"),
    ("node-local", "deploy/overlays/node-local", "DaemonSet", "redis-node"),
])  # fmt: skip
def test_the_component_sizes_the_shared_replicas(tmp_path, topology, base, kind, name):
    s = size.main(["--dataset", "1Gi", "--pods", "100", "--egress-mbps", "1000", "--topology", topology,
                   "--out", str(tmp_path / "size")])  # fmt: skip
    out = REPO / "target/test-size" / topology
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["rm", "-rf", str(out / "size")], check=True)
    subprocess.run(["cp", "-r", str(tmp_path / "size"), str(out)], check=True)
    objects = render(out, base, out / "size")
    shared = next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)
    redis = shared["spec"]["template"]["spec"]["containers"][0]
    want = size.mebibytes(s["master_memory"] if topology == "relay" else s["replica_memory"])
    assert redis["resources"]["limits"]["memory"] == redis["resources"]["requests"]["memory"] == want
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == s["max_surge"]
    containers = [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert containers == (["api", "redis"] if topology == "relay" else ["api"])
    if topology == "relay":
        assert redis["args"] == ["--repl-backlog-size", "64mb", "--client-output-buffer-limit", "replica 256mb 0 0"]
        assert shared["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "3072Mi"


def test_the_shipped_shared_replicas_are_what_make_size_says_for_the_stated_default():
    s = size.size(**DEFAULT)
    shared = [
        ("overlays/relay/redis-relay/relay.yaml", "relay", s["master_memory"]),
        ("overlays/node-local/redis-node/node-replica.yaml", "node", s["replica_memory"]),
    ]
    for path, kind, want in shared:
        workload = yaml.safe_load((REPO / "deploy" / path).read_text())
        resources = workload["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert resources["limits"]["memory"] == resources["requests"]["memory"] == size.mebibytes(want), kind
    relay_conf = conf("redis-relay/redis-relay.conf")
    assert relay_conf["repl-backlog-size"] == size.redis_bytes(s["backlog"])
    assert relay_conf["client-output-buffer-limit"] == f"replica {size.redis_bytes(s['output_buffer'])} 0 0"
