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
RENDERED = ["base", "overlays/sidecar", "overlays/central", "master", "tests/all-components"]
# Kinds that come from CRDs, which the validator has no schema for.
CRD_KINDS = {"PodMonitor", "PrometheusRule"}
# Secrets the user (or make deploy-*) creates; the manifests only refer to them.
SECRETS = {
    "redis-master": {"host", "port", "user", "password", "ca.crt"},
    "read-api-replica": {"password"},
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
    return [o for o in objects(target) if o["kind"] in ("Deployment", "StatefulSet")]


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
    "master": {"redis-start": "redis-start/start-redis.sh", "redis-master-config": "redis-master/redis-master.conf"},
    "overlays/central": {},
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


def test_replica_follows_the_master_through_stunnel():
    spec = pod_spec(one("overlays/sidecar", "Deployment", "read-api"))
    replica = conf_lines(config_map("overlays/sidecar", "redis-replica-config")["data"]["redis-replica.conf"])
    stunnel = container(spec, "stunnel")
    accept = env(stunnel)["STUNNEL_ACCEPT"]["value"]
    assert replica["replicaof"].replace(" ", ":") == accept
    assert accept.startswith("127.0.0.1:"), "the tunnel's plaintext end stays inside the pod"
    stunnel_conf = config_map("overlays/sidecar", "stunnel-config")["data"]["stunnel.conf"]
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


def test_stunnel_verifies_the_ca_from_the_master_secret():
    spec = pod_spec(one("overlays/sidecar", "Deployment", "read-api"))
    stunnel = container(spec, "stunnel")
    ca_file = env(stunnel)["STUNNEL_CA_FILE"]["value"]
    mount = next(m for m in stunnel["volumeMounts"] if ca_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "redis-master"
    assert [i["key"] for i in volume["secret"]["items"]] == ["ca.crt"]
    for variable, key in [("MASTER_HOST", "host"), ("MASTER_PORT", "port")]:
        assert env(stunnel)[variable]["valueFrom"]["secretKeyRef"] == {"name": "redis-master", "key": key}


def test_api_reads_the_local_replica():
    spec = pod_spec(one("overlays/sidecar", "Deployment", "read-api"))
    replica = conf_lines(config_map("overlays/sidecar", "redis-replica-config")["data"]["redis-replica.conf"])
    url = env(container(spec, "api"))["REDIS_URL"]["value"]
    assert url == f"redis://:$(REPLICA_PASSWORD)@127.0.0.1:{replica['port']}"
    assert replica["bind"].split()[0] == "127.0.0.1" and "0.0.0.0" not in replica["bind"]
    assert replica["replica-read-only"] == "yes"
    assert replica["replica-serve-stale-data"] == "yes"
    assert replica["save"] == '""' and replica["appendonly"] == "no"


def test_replica_and_master_passwords_come_from_separate_secrets():
    spec = pod_spec(one("overlays/sidecar", "Deployment", "read-api"))
    redis = env(container(spec, "redis"))
    assert redis["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "read-api-replica", "key": "password"}
    assert redis["MASTER_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis-master", "key": "password"}
    api = env(container(spec, "api"))
    assert api["REPLICA_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "read-api-replica", "key": "password"}


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


def test_in_cluster_master_is_tls_only_with_a_secret_password_and_a_volume():
    master = one("master", "StatefulSet", "redis-master")
    conf = conf_lines(config_map("master", "redis-master-config")["data"]["redis-master.conf"])
    assert conf["port"] == "0", "no plaintext listener"
    service = one("master", "Service", "redis-master")
    assert [p["port"] for p in service["spec"]["ports"]] == [int(conf["tls-port"])]
    redis = container(pod_spec(master), "redis")
    assert env(redis)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "redis-master"
    # Snapshots keep the replication ID across a restart (an AOF would not): replicas resume partially.
    assert conf["appendonly"] == "no" and conf["save"]
    assert conf["client-output-buffer-limit"] == "replica 256mb 0 0"
    data = next(m for m in redis["volumeMounts"] if m["name"] == "data")
    assert data["mountPath"] == redis["workingDir"]
    assert [t["metadata"]["name"] for t in master["spec"]["volumeClaimTemplates"]] == ["data"]


# --- production defaults, every container of every workload ---------------


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
    assert (security.get("runAsUser") or pod_security.get("runAsUser", 0)) != 0
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


@pytest.mark.parametrize("target", RENDERED)
def test_pods_spread_and_outlive_the_api_drain(target):
    for workload in workloads(target):
        spec = pod_spec(workload)
        if workload["kind"] == "Deployment":
            assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
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


def test_network_policy_lets_only_api_pods_reach_the_master():
    policies = {o["metadata"]["name"]: o for o in objects("tests/all-components") if o["kind"] == "NetworkPolicy"}
    master = policies["redis-master-ingress"]["spec"]
    assert master["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "redis-master"}
    rule, metrics = master["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "read-api"}}}]
    assert [p["port"] for p in rule["ports"]] == ["redis-tls"]
    assert "from" not in metrics and [p["port"] for p in metrics["ports"]] == ["redis-metrics"]
    api = policies["read-api-ingress"]["spec"]
    assert sorted(p["port"] for p in api["ingress"][0]["ports"]) == ["admin", "http", "redis-metrics"]


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
