"""The kit's manifests, rendered by real `kubectl kustomize`, validated against
real Kubernetes schemas, and read for what the topology promises."""

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CONFIG = DEPLOY / "config"
KUBERNETES_VERSIONS = ["1.29.0", "1.33.0"]
RENDERED = [
    "base",
    "overlays/sidecar",
    "overlays/central",
    "overlays/relay",
    "overlays/node-local",
    "master",
    "tests/all-components",
    "tests/master-components",
]
# The overlays that put the API in front of Redis, each its own way.
OVERLAYS = ["overlays/sidecar", "overlays/central", "overlays/relay", "overlays/node-local"]
# Kinds that come from CRDs, which the validator has no schema for.
CRD_KINDS = {"PodMonitor", "PrometheusRule", "Certificate", "Issuer"}
# Secrets the user (or make deploy-*) creates; the manifests only refer to them.
SECRETS = {
    "redis-master": {
        "host",
        "port",
        "ca.crt",
        # The account the central API reads with (user api, on the in-cluster master).
        "user",
        "password",
        # The in-cluster master's admin (its default user): make seed and the probes beside it.
        "admin-password",
        # The account replicas follow the master with (user "replica" in acl-users.conf).
        "replica-user",
        "replica-password",
        # The in-cluster master's users for the containers beside it (acl-users.conf).
        "heartbeat-password",
        "exporter-password",
        # The exporter's password again, as the JSON map redis_exporter reads (deploy.sh derives it).
        "exporter-passwords.json",
    },
    "read-api-replica": {"password", "exporter-passwords.json"},
    # The relays' admin (default user: their probes) and the user their pods' replicas follow them as.
    "redis-relay": {"password", "replica-password"},
    "redis-master-tls": {"tls.crt", "tls.key", "ca.crt"},
}


@cache
def render(target: str) -> str:
    result = subprocess.run(["kubectl", "kustomize", str(DEPLOY / target)], capture_output=True, text=True)
    assert result.returncode == 0, f"kubectl kustomize {target}: {result.stderr}"
    return result.stdout


def objects(target: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(render(target)) if doc]


def one(target: str, kind: str, name: str | None = None) -> dict:
    found = [o for o in objects(target) if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{target}: expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def all_containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def container(spec: dict, name: str) -> dict:
    return next(c for c in all_containers(spec) if c["name"] == name)


def env(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def config_map(target: str, prefix: str) -> dict:
    found = [o for o in objects(target) if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(prefix + "-")]
    assert len(found) == 1, f"{target}: ConfigMap {prefix}-<hash>"
    return found[0]


def conf_lines(text: str) -> dict[str, str]:
    """`directive value` lines of a redis.conf, last one wins."""
    lines = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition(" ")
            lines[key] = value.strip()
    return lines


def workloads(target: str) -> list[dict]:
    return [o for o in objects(target) if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


# --- rendering and schemas -------------------------------------------------


@pytest.mark.parametrize("target", RENDERED)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_renders_and_validates_strictly(target, version, tmp_path):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(render(target))
    result = subprocess.run(
        [REPO / ".venv/bin/kubernetes-validate", "--strict", "-k", version, "--quiet", str(manifest)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    unknown = {m for m in re.findall(r"schema for kind (\w+)", result.stdout + result.stderr)}
    assert unknown <= CRD_KINDS, f"no schema checked for {unknown - CRD_KINDS}"


def test_the_validator_rejects_an_unknown_field(tmp_path):
    deployment = one("overlays/sidecar", "Deployment")
    pod_spec(deployment)["containers"][0]["imagePullPolice"] = "Always"
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump(deployment))
    result = subprocess.run(
        [REPO / ".venv/bin/kubernetes-validate", "--strict", "-k", "1.33.0", str(manifest)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0, "strict validation must catch a misspelt field"


# Each render carries the ConfigMaps its pods use, and no other.
CONFIG_MAPS = {
    "overlays/sidecar": {
        "redis-start": "redis-start/start-redis.sh",
        "redis-replica-config": "redis-replica/redis-replica.conf",
        "stunnel-config": "stunnel/stunnel.conf stunnel/start-stunnel.sh",
    },
    "master": {
        "redis-start": "redis-start/start-redis.sh",
        "redis-master-config": "redis-master/redis-master.conf redis-master/acl-users.conf",
    },
    "overlays/central": {},
    "overlays/relay": {
        "redis-start": "redis-start/start-redis.sh",
        "redis-replica-config": "redis-replica/redis-replica.conf",
        "redis-relay-config": "redis-relay/redis-relay.conf redis-relay/acl-users.conf",
        "stunnel-config": "stunnel/stunnel.conf stunnel/start-stunnel.sh",
    },
    "overlays/node-local": {
        "redis-start": "redis-start/start-redis.sh",
        "redis-node-config": "redis-node/redis-node.conf",
        "stunnel-config": "stunnel/stunnel.conf stunnel/start-stunnel.sh",
    },
}


@pytest.mark.parametrize("target", CONFIG_MAPS)
def test_config_maps_carry_the_same_files_the_local_scripts_use(target):
    rendered = {o["metadata"]["name"].rsplit("-", 1)[0] for o in objects(target) if o["kind"] == "ConfigMap"}
    assert rendered == set(CONFIG_MAPS[target]), f"{target} renders ConfigMaps {rendered}"
    for prefix, files in CONFIG_MAPS[target].items():
        data = config_map(target, prefix)["data"]
        for path in files.split():
            name = path.split("/")[-1]
            assert data[name] == (CONFIG / path).read_text(), f"{prefix}/{name} differs from deploy/config/{path}"


# --- the sidecar pod -------------------------------------------------------


def test_sidecar_pod_holds_api_replica_and_stunnel():
    spec = pod_spec(one("overlays/sidecar", "Deployment", "read-api"))
    assert [c["name"] for c in spec["containers"]] == ["api", "redis", "stunnel"]


# Who follows the master through a stunnel in its own pod: (render, kind, workload, redis.conf generator, file).
FOLLOWERS = [
    ("overlays/sidecar", "Deployment", "read-api", "redis-replica-config", "redis-replica.conf"),
    ("overlays/relay", "StatefulSet", "redis-relay", "redis-relay-config", "redis-relay.conf"),
    ("overlays/node-local", "DaemonSet", "redis-node", "redis-node-config", "redis-node.conf"),
]


@pytest.mark.parametrize("target,kind,name,generator,conf", FOLLOWERS)
def test_replica_follows_the_master_through_stunnel(target, kind, name, generator, conf):
    spec = pod_spec(one(target, kind, name))
    replica = conf_lines(config_map(target, generator)["data"][conf])
    stunnel = container(spec, "stunnel")
    accept = env(stunnel)["STUNNEL_ACCEPT"]["value"]
    assert replica["replicaof"].replace(" ", ":") == accept
    assert accept.startswith("127.0.0.1:"), "the tunnel's plaintext end stays inside the pod"
    stunnel_conf = config_map(target, "stunnel-config")["data"]["stunnel.conf"]
    settings = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition("=") for line in stunnel_conf.splitlines())
        if _ and not k.startswith(";")
    )
    assert settings["client"] == "yes"
    assert settings["accept"] == "@STUNNEL_ACCEPT@"
    assert settings["connect"] == "@MASTER_HOST@:@MASTER_PORT@"
    assert settings["verifyChain"] == "yes"
    assert settings["checkHost"] == "@MASTER_HOST@"
    assert settings["CAfile"] == "@STUNNEL_CA_FILE@"


@pytest.mark.parametrize("target,kind,name,generator,conf", FOLLOWERS)
def test_stunnel_verifies_the_ca_from_the_master_secret(target, kind, name, generator, conf):
    spec = pod_spec(one(target, kind, name))
    stunnel = container(spec, "stunnel")
    ca_file = env(stunnel)["STUNNEL_CA_FILE"]["value"]
    mount = next(m for m in stunnel["volumeMounts"] if ca_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "redis-master"
    assert [i["key"] for i in volume["secret"]["items"]] == ["ca.crt"]
    for variable, key in [("MASTER_HOST", "host"), ("MASTER_PORT", "port")]:
        assert env(stunnel)[variable]["valueFrom"]["secretKeyRef"] == {"name": "redis-master", "key": key}
    # Whoever follows the master does so as its user for replicas, with the password as a file of its own.
    redis = container(spec, "redis")
    assert env(redis)["MASTER_USER"]["valueFrom"]["secretKeyRef"] == {"name": "redis-master", "key": "replica-user"}
    assert secret_file(spec, redis, env(redis)["MASTER_PASSWORD_FILE"]["value"]) == (
        "redis-master",
        "replica-password",
    )


def test_api_reads_the_local_replica():
    spec = pod_spec(one("overlays/sidecar", "Deployment", "read-api"))
    replica = conf_lines(config_map("overlays/sidecar", "redis-replica-config")["data"]["redis-replica.conf"])
    url = env(container(spec, "api"))["REDIS_URL"]["value"]
    assert url == f"redis://127.0.0.1:{replica['port']}"
    assert replica["bind"].split()[0] == "127.0.0.1" and "0.0.0.0" not in replica["bind"]
    assert replica["replica-read-only"] == "yes"
    assert replica["replica-serve-stale-data"] == "yes"
    assert replica["save"] == '""' and replica["appendonly"] == "no"


def secret_file(spec, c, path):
    """(Secret, key) of the file at `path` in container `c`."""
    mount = next(m for m in c.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    name = path[len(mount["mountPath"].rstrip("/")) + 1 :]
    [key] = [i["key"] for i in volume["secret"]["items"] if i["path"] == name]
    return volume["secret"]["secretName"], key


def test_replica_and_master_passwords_come_from_separate_secrets():
    spec = pod_spec(one("overlays/sidecar", "Deployment", "read-api"))
    redis = container(spec, "redis")
    variables = env(redis)
    assert secret_file(spec, redis, variables["REDIS_PASSWORD_FILE"]["value"]) == ("read-api-replica", "password")
    # The replica follows as the master's user for replicas, not with the account the central API reads with;
    # its password is a file of the redis container alone.
    assert variables["MASTER_USER"]["valueFrom"]["secretKeyRef"] == {"name": "redis-master", "key": "replica-user"}
    path = variables["MASTER_PASSWORD_FILE"]["value"]
    assert secret_file(spec, redis, path) == ("redis-master", "replica-password")
    volume = next(m["name"] for m in redis["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert [c["name"] for c in all_containers(spec) if volume in {m["name"] for m in c.get("volumeMounts", [])}] == [
        "redis"
    ]
    api = container(spec, "api")
    assert secret_file(spec, api, env(api)["REDIS_PASSWORD_FILE"]["value"]) == ("read-api-replica", "password")
    assert "@" not in env(api)["REDIS_URL"]["value"], "the password is a file, not part of the URL"


def test_central_reads_the_master_over_tls():
    spec = pod_spec(one("overlays/central", "Deployment", "read-api"))
    assert [c["name"] for c in spec["containers"]] == ["api"]
    api = container(spec, "api")
    variables = env(api)
    assert variables["REDIS_URL"]["value"].startswith("rediss://")
    ca_file = variables["REDIS_CA_FILE"]["value"]
    mount = next(m for m in api["volumeMounts"] if ca_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "redis-master"


# --- the relay topology ------------------------------------------------------


def test_relay_pods_follow_the_relays_not_the_master():
    """The API pod keeps its replica, which follows the Service redis-relay as the relays'
    user for replicas; stunnel and every way to the master leave the pod."""
    spec = pod_spec(one("overlays/relay", "Deployment", "read-api"))
    assert [c["name"] for c in spec["containers"]] == ["api", "redis"]
    assert {"stunnel-config", "master-ca", "stunnel-run"}.isdisjoint(v["name"] for v in spec["volumes"])
    redis = container(spec, "redis")
    command = redis["command"]
    assert command[:3] == ["sh", "/etc/redis/start/start-redis.sh", "/etc/redis/conf/redis-replica.conf"]
    assert command[3:5] == ["--replicaof", "redis-relay"], command
    relay_conf = conf_lines(config_map("overlays/relay", "redis-relay-config")["data"]["redis-relay.conf"])
    service = one("overlays/relay", "Service", "redis-relay")
    [port] = service["spec"]["ports"]
    assert int(command[5]) == port["port"] == int(relay_conf["port"])
    relay = one("overlays/relay", "StatefulSet", "redis-relay")
    assert service["spec"]["selector"].items() <= relay["spec"]["template"]["metadata"]["labels"].items()
    relay_redis = container(pod_spec(relay), "redis")
    assert {"name": "redis", "containerPort": port["port"], "protocol": "TCP"} in relay_redis["ports"]
    assert port["targetPort"] == "redis"
    # As the relays' user "replica", defined in their acl-users.conf, with that user's password.
    users = config_map("overlays/relay", "redis-relay-config")["data"]["acl-users.conf"]
    user = env(redis)["MASTER_USER"]["value"]
    rules = re.search(rf"^user {user} (.*)$", users, re.M).group(1).split()
    assert "-@all" in rules and "resetkeys" in rules and "+psync" in rules
    assert secret_file(spec, redis, env(redis)["MASTER_PASSWORD_FILE"]["value"]) == ("redis-relay", "replica-password")
    relay_spec = pod_spec(relay)
    users_dir = env(relay_redis)["REDIS_USERS_DIR"]["value"]
    assert secret_file(relay_spec, relay_redis, f"{users_dir}/{user}") == ("redis-relay", "replica-password")
    assert secret_file(relay_spec, relay_redis, env(relay_redis)["REDIS_PASSWORD_FILE"]["value"]) == (
        "redis-relay",
        "password",
    )
    # The pod's own replica and the API still share the pod-local password.
    api = container(spec, "api")
    for c in (redis, api):
        assert secret_file(spec, c, env(c)["REDIS_PASSWORD_FILE"]["value"]) == ("read-api-replica", "password")
    assert env(api)["REDIS_URL"]["value"] == "redis://127.0.0.1:6379"


def test_relays_spread_over_zones_persist_and_serve_the_pods():
    relay = one("overlays/relay", "StatefulSet", "redis-relay")
    spec = pod_spec(relay)
    assert relay["spec"]["replicas"] == 3, "one per zone, for three zones"
    zone = next(c for c in spec["topologySpreadConstraints"] if c["topologyKey"] == "topology.kubernetes.io/zone")
    assert (zone["maxSkew"], zone["whenUnsatisfiable"]) == (1, "DoNotSchedule")
    assert zone["labelSelector"]["matchLabels"] == relay["spec"]["selector"]["matchLabels"]
    conf = conf_lines(config_map("overlays/relay", "redis-relay-config")["data"]["redis-relay.conf"])
    # Snapshots on the volume carry the replication ID: a restarted relay resumes partially.
    assert conf["save"] and conf["save"] != '""' and conf["appendonly"] == "no"
    redis = container(spec, "redis")
    data = next(m for m in redis["volumeMounts"] if m["name"] == "data")
    assert data["mountPath"] == redis["workingDir"]
    assert [t["metadata"]["name"] for t in relay["spec"]["volumeClaimTemplates"]] == ["data"]
    # It listens beyond loopback (the pods come over the network), with a password.
    assert "127.0.0.1" not in conf["bind"] and "requirepass" not in conf
    assert env(redis)["REDIS_PASSWORD_FILE"]["value"]
    assert conf["replica-read-only"] == "yes" and conf["repl-diskless-sync"] == "yes"
    assert conf["client-output-buffer-limit"] == "replica 256mb 0 0"


@pytest.mark.parametrize("target,kind,name", [("overlays/relay", "StatefulSet", "redis-relay"),
                                              ("overlays/node-local", "DaemonSet", "redis-node")])  # fmt: skip
def test_a_shared_replica_is_ready_only_with_data_and_alive_while_loading(target, kind, name):
    """Its readiness puts it behind the Service: only once it holds the master's data (an offset
    past 0), so no pod ever reads or syncs an empty one; LOADING keeps it alive."""
    redis = container(pod_spec(one(target, kind, name)), "redis")
    ready = " ".join(redis["readinessProbe"]["exec"]["command"])
    assert "grep -q PONG" in ready and "master_repl_offset:[1-9]" in ready
    live = " ".join(redis["livenessProbe"]["exec"]["command"])
    assert "PONG|LOADING" in live


# --- the node-local topology --------------------------------------------------


def test_node_local_api_reads_its_nodes_replica_through_a_local_service():
    spec = pod_spec(one("overlays/node-local", "Deployment", "read-api"))
    assert [c["name"] for c in spec["containers"]] == ["api"]
    node = one("overlays/node-local", "DaemonSet", "redis-node")
    service = one("overlays/node-local", "Service", "redis-node")
    assert service["spec"]["internalTrafficPolicy"] == "Local"
    assert service["spec"]["selector"].items() <= node["spec"]["template"]["metadata"]["labels"].items()
    [port] = service["spec"]["ports"]
    conf = conf_lines(config_map("overlays/node-local", "redis-node-config")["data"]["redis-node.conf"])
    url = env(container(spec, "api"))["REDIS_URL"]["value"]
    assert url == f"redis://redis-node:{port['port']}" and port["port"] == int(conf["port"])
    assert "127.0.0.1" not in conf["bind"], "the API pods come over the pod network"
    assert conf["replica-read-only"] == "yes" and conf["replica-serve-stale-data"] == "yes"
    assert conf["save"] == '""' and conf["appendonly"] == "no"
    # The API reads with the node replica's own password.
    redis = container(pod_spec(node), "redis")
    for pod, c in ((pod_spec(node), redis), (spec, container(spec, "api"))):
        assert secret_file(pod, c, env(c)["REDIS_PASSWORD_FILE"]["value"]) == ("read-api-replica", "password")
    # A new node replica syncs beside the old one before it goes: the node's API pods stay in service.
    assert node["spec"]["updateStrategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_in_cluster_master_is_tls_only_with_a_secret_password_and_a_volume():
    master = one("master", "StatefulSet", "redis-master")
    conf = conf_lines(config_map("master", "redis-master-config")["data"]["redis-master.conf"])
    assert conf["port"] == "0", "no plaintext listener"
    service = one("master", "Service", "redis-master")
    assert [p["port"] for p in service["spec"]["ports"]] == [int(conf["tls-port"])]
    redis = container(pod_spec(master), "redis")
    assert secret_file(pod_spec(master), redis, env(redis)["REDIS_PASSWORD_FILE"]["value"]) == (
        "redis-master",
        "admin-password",
    )
    # Snapshots keep the replication ID across a restart (an AOF would not): replicas resume partially.
    assert conf["appendonly"] == "no" and conf["save"]
    assert conf["client-output-buffer-limit"] == "replica 256mb 0 0"
    data = next(m for m in redis["volumeMounts"] if m["name"] == "data")
    assert data["mountPath"] == redis["workingDir"]
    assert [t["metadata"]["name"] for t in master["spec"]["volumeClaimTemplates"]] == ["data"]


def test_the_master_creates_a_user_for_each_password_it_mounts():
    """The users volume maps Secret keys to files named as the users of
    acl-users.conf, which start-redis.sh reads; the containers beside the master
    log in as users defined there."""
    spec = pod_spec(one("master", "StatefulSet", "redis-master"))
    config = config_map("master", "redis-master-config")["data"]
    defined = set(re.findall(r"^user (\S+) ", config["acl-users.conf"], re.M))
    redis = container(spec, "redis")
    variables = env(redis)
    users_file = variables["REDIS_USERS_FILE"]["value"]
    conf_mount = next(m for m in redis["volumeMounts"] if m["name"] == "config")
    assert users_file == f"{conf_mount['mountPath']}/acl-users.conf"
    users_mount = next(m for m in redis["volumeMounts"] if m["mountPath"] == variables["REDIS_USERS_DIR"]["value"])
    volume = next(v for v in spec["volumes"] if v["name"] == users_mount["name"])
    assert volume["secret"]["secretName"] == "redis-master"
    # The Secret's user/password is the central API's account: "api" on this master.
    expected = {u: f"{u}-password" for u in defined} | {"default": "admin-password", "api": "password"}
    assert {i["path"]: i["key"] for i in volume["secret"]["items"]} == expected
    assert variables["REDIS_PASSWORD_FILE"]["value"] == f"{users_mount['mountPath']}/default"
    for name in ("heartbeat", "redis-exporter"):
        assert env(container(spec, name))["REDIS_USER"]["value"] in defined, name
        mounted = {m["name"] for m in container(spec, name).get("volumeMounts", [])}
        assert users_mount["name"] not in mounted, f"{name} sees every user's password"


# --- production defaults, every container of every workload ---------------


# Keys of the kit's Secrets that say where and who, not how to prove it.
NOT_SECRET = {"host", "port", "user", "replica-user"}


@pytest.mark.parametrize("target", RENDERED)
def test_no_password_or_key_reaches_an_environment_variable(target):
    """Secrets as files: the environment is readable by whatever reads /proc of the
    process and by anyone who may exec into the container."""
    for workload in workloads(target):
        for c in all_containers(pod_spec(workload)):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                where = f"{target}: {workload['metadata']['name']}/{c['name']} {e['name']}"
                assert not ref or ref["key"] in NOT_SECRET, f"{where} holds {ref['name']}/{ref['key']}"
                assert "PASSWORD" not in e["name"] or e["name"].endswith("_FILE"), where
                assert not re.search(r"://[^/@]*:[^/@]*@", e.get("value", "")), f"{where}: a password in a URL"


def every_container():
    for target in RENDERED:
        for workload in workloads(target):
            spec = pod_spec(workload)
            for c in all_containers(spec):
                yield pytest.param(target, workload, c, id=f"{target}:{workload['metadata']['name']}:{c['name']}")


@pytest.mark.parametrize("target,workload,c", list(every_container()))
def test_production_defaults(target, workload, c):
    spec = pod_spec(workload)
    pod_security = spec.get("securityContext", {})
    security = c.get("securityContext", {})
    assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True
    # Set on every container, and 10000 or more: clear of the users and groups
    # of the nodes and of the images' own (redis is 999 in the official image).
    assert security.get("runAsUser", 0) >= 10000, f"runAsUser {security.get('runAsUser')}"
    assert security.get("runAsGroup", 0) >= 10000, f"runAsGroup {security.get('runAsGroup')}"
    assert pod_security.get("fsGroup", 10000) >= 10000, f"fsGroup {pod_security.get('fsGroup')}"
    assert security.get("readOnlyRootFilesystem") is True
    assert security.get("allowPrivilegeEscalation") is False
    assert security.get("capabilities", {}).get("drop") == ["ALL"]
    seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
    assert seccomp.get("type") == "RuntimeDefault"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), f"resources.{kind}"
    assert "livenessProbe" in c and "readinessProbe" in c
    image = c["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"image {image} not pinned"
    assert c.get("imagePullPolicy") in ("IfNotPresent", "Always")
    assert spec.get("automountServiceAccountToken") is False


def test_the_e2e_images_run_as_the_manifests_users():
    """deploy/e2e builds Redis, stunnel and redis_exporter images from Debian's
    binaries (e2e_images.py names them and their users): each runs as the user
    the manifests give every container of the image it stands in for."""
    e2e_images = e2e_images_module()
    mapping = e2e_images.stand_ins()
    users = {image: uid for image, uid, _ in e2e_images.E2E_IMAGES.values()}
    seen = set()
    for target in RENDERED:
        for workload in workloads(target):
            for c in all_containers(pod_spec(workload)):
                image = e2e_images.e2e_image(c["image"], mapping)
                if image in users:
                    assert c["securityContext"]["runAsUser"] == users[image], f"{target}: {c['name']} ({image})"
                    seen.add(image)
    assert seen == set(users), f"e2e images for no container: {set(users) - seen}"
    script = (DEPLOY / "e2e/build-images.sh").read_text()
    calls = re.findall(r"^\s*import_rootfs .*$", script, re.M)
    assert calls and all(c.endswith('"$uid"') or "PROBE_IMAGE" in c for c in calls), calls


def e2e_images_module():
    from deploy.e2e import e2e_images

    return e2e_images


@pytest.mark.parametrize("target", RENDERED)
def test_pods_spread_and_outlive_the_api_drain(target):
    for workload in workloads(target):
        spec = pod_spec(workload)
        if workload["kind"] == "Deployment" or workload["metadata"]["name"] == "redis-relay":
            keys = [c["topologyKey"] for c in spec["topologySpreadConstraints"]]
            assert "kubernetes.io/hostname" in keys
        for c in all_containers(spec):
            grace = env(c).get("SHUTDOWN_GRACE_SECONDS")
            if grace:
                assert spec["terminationGracePeriodSeconds"] > int(grace["value"])


@pytest.mark.parametrize("target", RENDERED)
def test_env_references_resolve_in_order(target):
    """Kubernetes expands $(VAR) only from variables defined earlier in the same container."""
    for workload in workloads(target):
        for c in all_containers(pod_spec(workload)):
            defined = set()
            for e in c.get("env", []):
                for name in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                    assert name in defined, f"{c['name']}: {e['name']} uses $({name}) before it is defined"
                defined.add(e["name"])


@pytest.mark.parametrize("target", RENDERED)
def test_volumes_and_references_exist(target):
    config_maps = {o["metadata"]["name"] for o in objects(target) if o["kind"] == "ConfigMap"}
    for workload in workloads(target):
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps, f"missing ConfigMap {v['configMap']['name']}"
            if "secret" in v:
                keys = {i["key"] for i in v["secret"].get("items", [])}
                assert keys <= SECRETS[v["secret"]["secretName"]]
        for c in all_containers(spec):
            mounts = c.get("volumeMounts", [])
            for m in mounts:
                assert m["name"] in volumes or m["name"] in claims, f"{c['name']}: no volume {m['name']}"
            # A mount inside a read-only ConfigMap or Secret mount cannot be created.
            read_only = [
                m["mountPath"]
                for m in mounts
                if m["name"] in volumes and {"configMap", "secret"} & set(volumes[m["name"]])
            ]
            for m in mounts:
                assert not any(m["mountPath"].startswith(r + "/") for r in read_only), (
                    f"{c['name']}: {m['mountPath']} nested"
                )
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in SECRETS[ref["name"]], f"{ref} is not a documented Secret key"
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                handler = c.get(probe, {}).get("httpGet") or c.get(probe, {}).get("tcpSocket")
                if handler and isinstance(handler["port"], str):
                    assert handler["port"] in ports, f"{c['name']}.{probe} port {handler['port']}"


def test_service_routes_port_80_to_the_api():
    service = one("base", "Service", "read-api")
    assert service["metadata"]["namespace"] == "read-api"
    [port] = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, "http")
    api = container(pod_spec(one("base", "Deployment", "read-api")), "api")
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in api["ports"]
    account = one("base", "ServiceAccount", "read-api")
    assert account["automountServiceAccountToken"] is False


# --- components ------------------------------------------------------------


def test_all_components_compose():
    target = "tests/all-components"
    kinds = sorted(o["kind"] for o in objects(target))
    for kind in ["HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "PodMonitor"]:
        assert kind in kinds
    spec = pod_spec(one(target, "Deployment", "read-api"))
    assert [c["name"] for c in spec["containers"]] == ["api", "redis-exporter"]
    assert [(c["name"], c["restartPolicy"]) for c in spec["initContainers"]] == [
        ("stunnel", "Always"),
        ("redis", "Always"),
    ]
    api = container(spec, "api")
    assert env(api)["REDIS_URL"]["value"].startswith("redis+unix://")
    socket = conf_lines(config_map(target, "redis-replica-config")["data"]["redis-replica.conf"])["unixsocket"]
    for name in ("api", "redis"):
        mounts = {m["mountPath"]: m["name"] for m in container(spec, name)["volumeMounts"]}
        assert mounts.get(str(Path(socket).parent)) == "redis-socket", f"{name} does not share the socket"


# --- network policies, on by default ----------------------------------------

MONITORING = [{"namespaceSelector": {"matchLabels": {"read-api.io/monitoring": "true"}}}]


def policies(target):
    return {o["metadata"]["name"]: o["spec"] for o in objects(target) if o["kind"] == "NetworkPolicy"}


def selects(selector, labels):
    """Whether a label selector (matchLabels, matchExpressions with In) selects these labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


@pytest.mark.parametrize("target", RENDERED)
def test_every_pod_is_isolated_both_ways(target):
    """Every pod of every render is selected by an ingress and an egress policy of the same render."""
    found = policies(target)
    for workload in workloads(target):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        for kind in ("Ingress", "Egress"):
            assert any(kind in p["policyTypes"] and selects(p["podSelector"], labels) for p in found.values()), (
                f"{target}: no {kind} policy selects {workload['metadata']['name']}"
            )


@pytest.mark.parametrize("target", OVERLAYS)
def test_api_pods_take_the_public_port_from_anywhere_the_rest_from_monitoring(target):
    ingress = policies(target)["read-api-ingress"]
    assert ingress["policyTypes"] == ["Ingress"]
    public, monitoring = ingress["ingress"]
    assert "from" not in public and [p["port"] for p in public["ports"]] == ["http"]
    assert monitoring["from"] == MONITORING
    assert sorted(p["port"] for p in monitoring["ports"]) == ["admin", "redis-metrics"]
    service = one(target, "Service", "read-api")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


@pytest.mark.parametrize("target", ["overlays/sidecar", "overlays/central"])
def test_api_pods_reach_only_dns_and_the_master(target):
    egress = policies(target)["read-api-egress"]
    assert egress["policyTypes"] == ["Egress"]
    dns, master = egress["egress"]
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert sorted((p["port"], p["protocol"]) for p in dns["ports"]) == [(53, "TCP"), (53, "UDP")]
    assert master["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis-master"}}}]
    conf = conf_lines(config_map("master", "redis-master-config")["data"]["redis-master.conf"])
    [port] = one("master", "Service", "redis-master")["spec"]["ports"]
    assert [(p["port"], p["protocol"]) for p in master["ports"]] == [(int(conf["tls-port"]), "TCP")]
    assert port["port"] == int(conf["tls-port"]), "the Service and the pod agree on the port egress names"
    for name in ("read-api", "read-api-heartbeat"):
        assert selects(egress["podSelector"], {"app.kubernetes.io/name": name}), name


DNS = [
    {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
]


# The shared replica of each topology, what the API pods reach instead of the master: (render, its name, kind).
SHARED = [("overlays/relay", "redis-relay", "StatefulSet"), ("overlays/node-local", "redis-node", "DaemonSet")]


@pytest.mark.parametrize("target,shared,kind", SHARED)
def test_api_pods_reach_only_dns_and_their_shared_replica(target, shared, kind):
    """Relay and node-local API pods never reach the master: DNS and the relays (or node replicas) on 6379."""
    found = policies(target)
    dns, replica = found["read-api-egress"]["egress"]
    assert dns["to"] == DNS
    assert replica["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": shared}}}]
    [port] = one(target, "Service", shared)["spec"]["ports"]
    assert replica["ports"] == [{"port": port["port"], "protocol": "TCP"}]
    workload = one(target, kind, shared)
    assert selects(replica["to"][0]["podSelector"], workload["spec"]["template"]["metadata"]["labels"])
    # The shared replica: in, the API pods on its port and metrics from monitoring; out, DNS and the master.
    clients, monitoring = found[f"{shared}-ingress"]["ingress"]
    assert clients["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "read-api"}}}]
    assert [p["port"] for p in clients["ports"]] == ["redis"]
    assert monitoring["from"] == MONITORING
    dns, master = found[f"{shared}-egress"]["egress"]
    assert dns["to"] == DNS
    assert master["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis-master"}}}]
    conf = conf_lines(config_map("master", "redis-master-config")["data"]["redis-master.conf"])
    assert master["ports"] == [{"port": int(conf["tls-port"]), "protocol": "TCP"}]
    # And the master lets it in.
    [source] = policies("master")["redis-master-ingress"]["ingress"][0]["from"]
    assert selects(source["podSelector"], {"app.kubernetes.io/name": shared})


def test_the_master_takes_only_api_pods_on_its_tls_port_and_connects_to_nothing():
    found = policies("master")
    ingress = found["redis-master-ingress"]
    clients, monitoring = ingress["ingress"]
    [source] = clients["from"]
    assert set(source) == {"podSelector"}, "pods of the master's namespace only"
    followers = ["read-api", "read-api-heartbeat", "redis-relay", "redis-node"]
    for name, allowed in [*((f, True) for f in followers), ("redis-master", False), ("x", False)]:
        assert selects(source["podSelector"], {"app.kubernetes.io/name": name}) is allowed, name
    assert [p["port"] for p in clients["ports"]] == ["redis-tls"]
    assert monitoring["from"] == MONITORING and [p["port"] for p in monitoring["ports"]] == ["redis-metrics"]
    egress = found["redis-master-egress"]
    assert egress["policyTypes"] == ["Egress"] and not egress.get("egress"), "no egress at all"
    api = pod_spec(one("overlays/sidecar", "Deployment", "read-api"))["containers"]
    assert all(p["name"] != "redis-tls" for c in api for p in c.get("ports", []))


def test_the_monitoring_selector_is_one_and_the_same_everywhere():
    selectors = [
        rule["from"]
        for target in ("tests/all-components", "master")
        for spec in policies(target).values()
        for rule in spec.get("ingress", [])
        if any("namespaceSelector" in f for f in rule.get("from", []))
    ]
    assert len(selectors) == 2 and all(s == MONITORING for s in selectors)


def test_pod_monitor_scrapes_the_admin_port():
    monitor = one("tests/all-components", "PodMonitor", "read-api")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    deployment = one("tests/all-components", "Deployment", "read-api")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"


def test_each_component_has_a_readme():
    for component in (DEPLOY / "components").iterdir():
        assert (component / "README.md").is_file(), component.name


# --- the make targets without a cluster ------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "deploy-sidecar",
        "deploy-central",
        "deploy-relay",
        "deploy-node-local",
        "deploy-master",
        "master-secret",
        "undeploy",
        "smoke",
        "port-forward",
        "seed KEY=known-key VALUE=v",
    ],
)
def test_deploy_targets_say_clearly_when_there_is_no_cluster(target, tmp_path):
    result = subprocess.run(
        ["make", "-s", *target.split()],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "KUBECONFIG": str(tmp_path / "none"), "HOME": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode != 0
    assert "reaches no cluster" in result.stderr, result.stderr


def test_render_sets_the_configured_images():
    result = subprocess.run(
        ["scripts/deploy.sh", "render", "sidecar"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "IMAGE_REGISTRY": "registry.example/team", "IMAGE_TAG": "9.9.9"},
    )
    assert result.returncode == 0, result.stderr
    images = set(re.findall(r"image: (\S+)", result.stdout))
    assert {"registry.example/team/read-api:9.9.9", "registry.example/team/read-api-stunnel:9.9.9"} <= images


def test_termination_grace_outlasts_the_api_drain_delay_and_grace():
    spec = pod_spec(one("base", "Deployment", "read-api"))
    api = env(container(spec, "api"))
    delay = int(api["SHUTDOWN_DELAY_SECONDS"]["value"])
    grace = int(api["SHUTDOWN_GRACE_SECONDS"]["value"])
    assert delay > 0, "SHUTDOWN_DELAY_SECONDS=0 refuses connections that arrive after SIGTERM"
    assert spec["terminationGracePeriodSeconds"] > delay + grace


def test_the_replica_and_tunnel_outlive_the_api_drain_delay():
    spec = pod_spec(one("overlays/sidecar", "Deployment", "read-api"))
    delay = int(env(container(spec, "api"))["SHUTDOWN_DELAY_SECONDS"]["value"])
    for name in ("redis", "stunnel"):
        command = container(spec, name)["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep" and delay < int(command[1]) < spec["terminationGracePeriodSeconds"], name
