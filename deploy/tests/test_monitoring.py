"""What operators see: the alert rules and their unit tests (promtool), the
dashboard's queries (promtool), the exporters and heartbeat writers in the
rendered manifests, and the Datadog annotations."""

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from deploy.tests.test_manifests import conf_lines

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MONITORING = DEPLOY / "monitoring"
RULES = MONITORING / "read-api.rules.yaml"
RULE_TESTS = MONITORING / "read-api.rules.test.yaml"
PROMETHEUS_RULE = DEPLOY / "components/prometheus-rules/prometheus-rule.yaml"
DASHBOARD = DEPLOY / "components/grafana-dashboard/read-api-dashboard.json"
KUBERNETES_VERSIONS = ["1.29.0", "1.33.0"]
# The monitoring components; all-components lists those that compose with the
# manifest tests as they stand, the others are added here (see composition()).
COMPONENTS = ["redis-exporter", "heartbeat", "prometheus-rules", "grafana-dashboard", "datadog"]
CRD_KINDS = {"PodMonitor", "PrometheusRule"}
NAMESPACE = "read-api"

# Flags that both the redis_exporter image (v1.88) and Debian's
# prometheus-redis-exporter (1.45, which the e2e runs) accept: 1.45's --help,
# all of them still in 1.88's main.go.
EXPORTER_FLAGS = set(
    """
    check-key-groups check-keys check-keys-batch-size check-single-keys check-single-streams
    check-streams config-command connection-timeout count-keys debug export-client-list
    export-client-port include-config-metrics include-system-metrics is-cluster is-tile38 log-format
    max-distinct-key-groups namespace ping-on-connect redact-config-metrics redis-only-metrics
    redis.addr redis.password redis.password-file redis.user script set-client-name
    skip-tls-verification tls-ca-cert-file tls-client-cert-file tls-client-key-file
    tls-server-ca-cert-file tls-server-cert-file tls-server-key-file tls-server-min-version version
    web.listen-address web.telemetry-path
    """.split()
)
# Series the queries and the Datadog list use from redis_exporter, as 1.45
# exports them for a replica and a master (the replication ones only for a replica).
EXPORTER_SERIES = set(
    """
    redis_up redis_memory_used_bytes redis_memory_used_rss_bytes redis_memory_max_bytes
    redis_connected_clients redis_commands_processed_total redis_keyspace_hits_total
    redis_keyspace_misses_total redis_db_keys redis_instance_info redis_master_link_up
    redis_master_last_io_seconds_ago redis_master_sync_in_progress redis_slave_repl_offset
    redis_connected_slaves redis_master_repl_offset
    """.split()
)
KUBE_STATE_SERIES = {"kube_pod_container_resource_limits", "kube_pod_init_container_resource_limits"}
# Values for Grafana's variables when the dashboard's queries are checked.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "namespace": NAMESPACE,
    "pod": "read-api-0|read-api-1",
    "datasource": "prometheus",
}


# --- helpers ---------------------------------------------------------------


@cache
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: scripts/install-deps.sh promtool installs it (Debian package prometheus)")
    return path


def run_promtool(*args, cwd=MONITORING):
    result = subprocess.run([promtool(), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{result.stdout}{result.stderr}"
    return result.stdout


def kustomize(path: Path) -> list[dict]:
    result = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"kubectl kustomize {path}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def write_kustomization(directory: Path, resources: list[Path], components: list[Path] = (), namespace=None):
    """A kustomization in `directory` over the kit's directories (kustomize wants relative paths)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(p, directory) for p in resources],
        "components": [os.path.relpath(p, directory) for p in components],
    }
    if namespace:
        text["namespace"] = namespace
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(text))
    return directory


def listed_in_all_components() -> set[str]:
    kustomization = yaml.safe_load((DEPLOY / "tests/all-components/kustomization.yaml").read_text())
    return {Path(c).name for c in kustomization.get("components", [])}


@pytest.fixture(scope="session")
def composition(tmp_path_factory) -> Path:
    """all-components plus the monitoring components it does not list yet."""
    missing = [DEPLOY / "components" / c for c in COMPONENTS if c not in listed_in_all_components()]
    return write_kustomization(tmp_path_factory.mktemp("full"), [DEPLOY / "tests/all-components"], missing)


@pytest.fixture(scope="session")
def rendered(composition) -> list[dict]:
    return kustomize(composition)


@pytest.fixture(scope="session")
def master() -> list[dict]:
    return kustomize(DEPLOY / "master")


def one(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def containers(spec):
    return spec.get("initContainers", []) + spec["containers"]


def container(spec, name):
    found = [c for c in containers(spec) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name}, found {[c['name'] for c in containers(spec)]}"
    return found[0]


def env(c):
    return {e["name"]: e for e in c.get("env", [])}


def flags(c) -> dict[str, str]:
    parsed = {}
    for arg in c.get("args", []):
        assert arg.startswith("--"), f"{c['name']}: {arg}: one --flag[=value] per argument"
        name, _, value = arg[2:].partition("=")
        parsed[name] = value
    return parsed


def config_file(name: str) -> dict[str, str]:
    return conf_lines((DEPLOY / "config" / name).read_text())


def mounted_file(spec, c, path) -> dict:
    """The volume that holds `path` in container `c`, with the key it maps to."""
    mount = next((m for m in c.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    assert mount, f"{c['name']}: nothing mounted at {path}"
    return next(v for v in spec["volumes"] if v["name"] == mount["name"])


def duration_seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)([smhd])", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"duration {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


# --- alert rules -----------------------------------------------------------


def alert_names() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check():
    assert f"SUCCESS: {len(alert_names())} rules found" in run_promtool("check", "rules", RULES.name)


def test_rule_unit_tests_pass():
    run_promtool("test", "rules", RULE_TESTS.name)


@pytest.mark.parametrize("alert", alert_names())
def test_each_alert_fires_and_then_clears_in_the_unit_tests(alert):
    """An alert that never fires in a test proves nothing; one that never clears may be stuck."""
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    for group in tests["tests"]:
        cases = [c for c in group.get("alert_rule_test", []) if c["alertname"] == alert]
        fired = [duration_seconds(c["eval_time"]) for c in cases if c["exp_alerts"]]
        cleared = [duration_seconds(c["eval_time"]) for c in cases if not c["exp_alerts"]]
        if fired and any(t > min(fired) for t in cleared):
            return
    pytest.fail(f"{alert}: no test where it fires and clears later on the same series")


def test_every_alert_says_what_and_how_bad():
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def load_generator():
    from deploy.monitoring import generate

    return generate


def monitoring_config() -> dict:
    return load_generator().load_config()


def test_every_generated_file_is_what_the_templates_and_the_config_make():
    for path, text in load_generator().render().items():
        assert path.read_text() == text, (
            f"{path.relative_to(REPO)} differs from deploy/monitoring/templates and config.yaml: "
            "run .venv/bin/python deploy/monitoring/generate.py"
        )
    result = subprocess.run(
        [sys.executable, "-m", "deploy.monitoring.generate", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_prometheus_rule_is_the_rule_file():
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["spec"] == yaml.safe_load(RULES.read_text())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.pop("namespace"), "namespace must be a name"),
        (lambda c: c["jobs"].update(api='read-api", job=~".*'), "jobs.api must be a name"),
        (lambda c: c["containers"].pop("redis"), "containers.redis must be a name"),
        (lambda c: c.update(runbook_url="https://example.com/runbooks.md#top"), "runbook_url must be the address"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_field(edit, message, tmp_path):
    config = yaml.safe_load((MONITORING / "config.yaml").read_text())
    edit(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    generator = load_generator()
    with pytest.raises(generator.ConfigError, match=message) as error:
        generator.load_config(path)
    assert "\n" not in str(error.value)


def test_every_template_placeholder_is_known():
    generator = load_generator()
    known = set(generator.values(monitoring_config()))
    for template in generator.TEMPLATES.iterdir():
        unknown = set(generator.PLACEHOLDER.findall(template.read_text())) - known
        assert not unknown, f"{template.name}: {sorted(unknown)}"


# Another kit's settings: every name differs from the defaults.
OTHER_CONFIG = {
    "namespace": "team-a",
    "jobs": {"api": "team-a-api", "exporter": "team-a-exporters", "kube_state_metrics": "ksm"},
    "containers": {"api": "app", "redis": "replica", "exporter": "exporter"},
    "runbook_url": "https://wiki.example.com/read-api/runbooks.md",
}


def test_the_selectors_come_from_the_config_alone(tmp_path):
    """With other settings, the rules select only those, and their unit tests still pass: nothing in
    the templates names a job, namespace or container by itself."""
    generator = load_generator()
    outputs = generator.render(OTHER_CONFIG)
    defaults = monitoring_config()
    rules = yaml.safe_load(outputs[generator.RULES])
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    exprs += [expr for _, expr in panel_queries(json.loads(outputs[DASHBOARD]))]
    default_names = [defaults["namespace"], *defaults["jobs"].values(), defaults["containers"]["redis"]]
    for expr in exprs:
        for name in default_names:
            assert f'"{name}"' not in expr, f"{name!r} is written into {expr!r} instead of coming from config.yaml"
    (tmp_path / RULES.name).write_text(outputs[generator.RULES])
    (tmp_path / RULE_TESTS.name).write_text(outputs[generator.FILES[RULE_TESTS.name + ".in"]])
    run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    monitors = list(yaml.safe_load_all(outputs[generator.FILES["pod-monitor.yaml.in"]]))
    assert [m["spec"]["podMetricsEndpoints"][0]["relabelings"] for m in monitors] == [
        [{"targetLabel": "job", "replacement": "team-a-api"}],
        [{"targetLabel": "job", "replacement": "team-a-exporters"}],
    ]
    for name, container in (("datadog-api.yaml.in", "app"), ("datadog-redis-exporter.yaml.in", "exporter")):
        annotations = yaml.safe_load(outputs[generator.FILES[name]])["spec"]["template"]["metadata"]["annotations"]
        assert list(annotations) == [f"ad.datadoghq.com/{container}.checks"]


def vector_selectors(expr: str) -> list[tuple[str, str]]:
    from deploy.monitoring import promql

    return promql.vector_selectors(expr)


def job_of(metric: str) -> str:
    jobs = monitoring_config()["jobs"]
    return (
        jobs["api"]
        if metric.startswith("read_api_")
        else jobs["kube_state_metrics" if metric.startswith("kube_") else "exporter"]
    )


def test_every_rule_selects_its_job_and_the_namespace():
    namespace = monitoring_config()["namespace"]
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            for metric, matchers in vector_selectors(rule["expr"]):
                assert f'job="{job_of(metric)}"' in matchers, f"{rule['alert']}: {metric}{{{matchers}}} selects no job"
                assert f'namespace="{namespace}"' in matchers, f"{rule['alert']}: {metric}{{{matchers}}}"


def test_every_dashboard_query_selects_its_job():
    queries = panel_queries() + [
        (v["name"], v["definition"]) for v in dashboard()["templating"]["list"] if v["type"] == "query"
    ]
    for title, expr in queries:
        for metric, matchers in vector_selectors(expr):
            assert f'job="{job_of(metric)}"' in matchers, f"{title}: {metric}{{{matchers}}} selects no job"


def test_the_configured_containers_are_the_api_pods_containers(rendered):
    """kube-state-metrics labels the memory limit with the redis container's name, and Datadog's
    annotations are keyed by container: the names in config.yaml must be the pods' own."""
    containers = monitoring_config()["containers"]
    spec = pod_spec(one(rendered, "Deployment", "read-api"))
    for name in containers.values():
        container(spec, name)
    assert "redis-replica.conf" in " ".join(container(spec, containers["redis"])["command"]), "not the replica"
    for rule in [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]:
        for metric, matchers in vector_selectors(rule["expr"]):
            if metric.startswith("kube_"):
                assert f'container="{containers["redis"]}"' in matchers, rule["alert"]


# --- runbooks ---------------------------------------------------------------

RUNBOOKS = REPO / "docs/runbooks.md"
RUNBOOK_PARTS = ["**Symptom.**", "**Likely causes.**", "**Confirm.**", "**Fix.**"]


def runbook_sections() -> dict[str, str]:
    text = RUNBOOKS.read_text()
    parts = re.split(r"^## (\w+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_alert_links_its_runbook_section():
    base = monitoring_config()["runbook_url"]
    assert base.endswith("docs/runbooks.md") or base.endswith("/runbooks.md"), base
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["annotations"].get("runbook_url") == f"{base}#{rule['alert'].lower()}", rule["alert"]


def test_the_runbooks_have_one_section_per_alert_and_no_other():
    assert list(runbook_sections()) == alert_names(), (
        "docs/runbooks.md: one ## section per alert, in the rule file's order"
    )


@pytest.mark.parametrize("alert", alert_names())
def test_each_runbook_says_symptom_causes_how_to_confirm_and_the_fix(alert):
    section = runbook_sections()[alert]
    at = [section.find(part) for part in RUNBOOK_PARTS]
    assert -1 not in at and at == sorted(at), f"{alert}: needs {', '.join(RUNBOOK_PARTS)}, in that order"
    confirm = section[at[2] : at[3]]
    assert "```sh" in confirm, f"{alert}: the Confirm part gives the commands to run"


def test_the_prometheus_rule_has_the_shape_the_operator_reads(rendered):
    """No schema for this CRD in the validator: the fields are checked here."""
    rule = one(rendered, "PrometheusRule", "read-api")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"} and set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for r in group["rules"]:
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert isinstance(r["expr"], str) and all(isinstance(v, str) for v in r.get("annotations", {}).values())


# --- the dashboard ---------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries(board: dict | None = None) -> list[tuple[str, str]]:
    found = []
    for panel in (board or dashboard())["panels"]:
        for target in panel.get("targets", []):
            found.append((f"{panel['title']} ({target['refId']})", target["expr"]))
    return found


def substitute(expr: str) -> str:
    def value(match):
        name = match.group(1) or match.group(2) or match.group(3)
        assert name in GRAFANA_VARIABLES, f"unknown Grafana variable {match.group(0)} in {expr}"
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def test_dashboard_is_one_grafana_dashboard():
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace"} <= variables
    for panel in board["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


def test_dashboard_shows_what_operators_ask_for():
    queries = " ".join(expr for _, expr in panel_queries())
    for metric in [
        "read_api_http_requests_total",
        "read_api_http_request_duration_seconds_bucket",
        "read_api_ready",
        "read_api_replica_link_up",
        "read_api_replica_synced",
        "read_api_replica_heartbeat_age_seconds",
        "redis_memory_used_bytes",
        "kube_pod_container_resource_limits",
        "redis_commands_processed_total",
        "redis_connected_clients",
    ]:
        assert metric in queries, f"no panel shows {metric}"
    assert "histogram_quantile(0.5," in queries and "histogram_quantile(0.99," in queries


def test_every_dashboard_query_passes_promtool(tmp_path):
    """Each query becomes a recording rule: promtool parses it as Prometheus would."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute(expr), "labels": {"panel": title}}
        for i, (title, expr) in enumerate(panel_queries())
    ]
    # The variables' queries: label_values(SELECTOR, label) runs SELECTOR.
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["definition"])
            assert match, variable["definition"]
            rules.append({"record": f"dashboard:variable_{variable['name']}", "expr": substitute(match.group(1))})
    for rule in rules:
        assert "$" not in rule["expr"], rule["expr"]
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool("check", "rules", path, cwd=tmp_path)


def test_a_bad_query_would_fail_the_check(tmp_path):
    path = tmp_path / "bad.rules.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "bad",
                        "rules": [
                            {
                                "record": "dashboard:bad",
                                "expr": substitute('sum by (pod (read_api_ready{namespace="$namespace"})'),
                            }
                        ],
                    }
                ]
            }
        )
    )
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode != 0


def api_metric_names() -> set[str]:
    source = (REPO / "api/src/metrics.rs").read_text()
    names = set(re.findall(r'pub const \w+: &str = "(read_api_\w+)"', source))
    histograms = {n for n in names if n.endswith("_seconds") and "duration" in n}
    return names | {h + suffix for h in histograms for suffix in ("_bucket", "_count", "_sum")}


def metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"\b((?:read_api|redis|kube)_[a-zA-Z0-9_]+)\b", without_strings))


def test_queries_and_alerts_use_only_series_that_exist():
    known = api_metric_names() | EXPORTER_SERIES | KUBE_STATE_SERIES
    exprs = [expr for _, expr in panel_queries()]
    exprs += [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    for expr in exprs:
        unknown = metric_names(expr) - known
        assert not unknown, f"{sorted(unknown)} in {expr!r}: not from the API, redis_exporter or kube-state-metrics"


def test_dashboard_config_map_is_the_file_for_the_grafana_sidecar(rendered):
    config_map = one(rendered, "ConfigMap", "read-api-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"] == {DASHBOARD.name: DASHBOARD.read_text()}


# --- exporters -------------------------------------------------------------


def test_the_replica_exporter_reads_the_pod_local_replica(rendered):
    spec = pod_spec(one(rendered, "Deployment", "read-api"))
    # Appended after the API, so components that move containers by index still find theirs.
    assert [c["name"] for c in spec["containers"]] == ["api", "redis-exporter"]
    exporter = container(spec, "redis-exporter")
    replica = config_file("redis-replica/redis-replica.conf")
    assert flags(exporter)["redis.addr"] == f"redis://127.0.0.1:{replica['port']}"
    assert replica["bind"].split()[0] == "127.0.0.1"
    assert_password_map(spec, exporter, "read-api-replica", ["redis://127.0.0.1:6379"])


def test_the_master_exporter_reads_the_master_over_tls_with_the_ca_only(master):
    spec = pod_spec(one(master, "StatefulSet", "redis-master"))
    exporter = container(spec, "redis-exporter")
    conf = config_file("redis-master/redis-master.conf")
    assert conf["port"] == "0", "no plaintext port: the exporter must use TLS"
    assert flags(exporter)["redis.addr"] == f"rediss://localhost:{conf['tls-port']}"
    volume = mounted_file(spec, exporter, flags(exporter)["tls-ca-cert-file"])
    assert volume["secret"]["secretName"] == "redis-master-tls"
    assert [i["key"] for i in volume["secret"]["items"]] == ["ca.crt"], "the master's key stays in its own container"
    # Its own ACL user (acl-users.conf), never the admin: test_acl.py runs it.
    assert env(exporter)["REDIS_USER"]["value"] == "exporter"
    assert_password_map(spec, exporter, "redis-master", ["rediss://localhost:6380", "rediss://exporter@localhost:6380"])


def assert_password_map(spec, exporter, secret, addresses):
    """The exporter's password: a file (REDIS_PASSWORD_FILE), the JSON map make deploy-* and the e2e
    write, with the address the exporter scrapes as the keys its builds look up."""
    path = env(exporter)["REDIS_PASSWORD_FILE"]["value"]
    volume = mounted_file(spec, exporter, path)
    assert volume["secret"]["secretName"] == secret
    [item] = volume["secret"]["items"]
    assert (item["key"], item["path"]) == ("exporter-passwords.json", Path(path).name)
    from deploy.e2e import kit

    assert list(json.loads(kit.exporter_passwords("pw", *addresses))) == addresses
    script = subprocess.run(
        ["bash", "-c", f'source <(sed -n "/^exporter_passwords()/,/^}}/p" {REPO}/scripts/deploy.sh); '
         f'exporter_passwords pw {" ".join(addresses)}'],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(script) == dict.fromkeys(addresses, "pw")
    assert flags(exporter)["redis.addr"] in addresses


def exporters(rendered, master):
    yield pod_spec(one(rendered, "Deployment", "read-api")), "replica"
    yield pod_spec(one(master, "StatefulSet", "redis-master")), "master"


def test_exporters_use_flags_both_builds_accept_and_serve_redis_metrics(rendered, master):
    for spec, where in exporters(rendered, master):
        exporter = container(spec, "redis-exporter")
        assert exporter["command"] == ["/redis_exporter"], where
        assert set(flags(exporter)) <= EXPORTER_FLAGS, f"{where}: {set(flags(exporter)) - EXPORTER_FLAGS}"
        assert "redis.password" not in flags(exporter), f"{where}: the password comes from the environment"
        [port] = exporter["ports"]
        assert port["name"] == "redis-metrics"
        assert flags(exporter)["web.listen-address"] == f":{port['containerPort']}"
        # No probe: a network one would cross the NetworkPolicy (test_first_deploy.py).
        assert "livenessProbe" not in exporter and "readinessProbe" not in exporter, where


def test_new_containers_follow_the_production_defaults(rendered, master):
    workloads = [
        (pod_spec(one(rendered, "Deployment", "read-api")), ["redis-exporter"]),
        (pod_spec(one(master, "StatefulSet", "redis-master")), ["redis-exporter", "heartbeat"]),
        (pod_spec(one(rendered, "Deployment", "read-api-heartbeat")), ["heartbeat", "stunnel"]),
    ]
    for spec, names in workloads:
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for name in names:
            c = container(spec, name)
            security = c["securityContext"]
            assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, name
            assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name} resources.{kind}"
            if name != "redis-exporter":  # no shell, and a network probe crosses the policy
                assert "livenessProbe" in c and "readinessProbe" in c, name
            # Pinned by deploy/images/images.yaml, the one home of image versions.
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: {image} not pinned"


def test_pod_monitor_scrapes_both_exporters(rendered, master):
    monitor = one(rendered, "PodMonitor", "read-api-redis")
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "redis-metrics" and endpoint["path"] == "/metrics"
    [expression] = monitor["spec"]["selector"]["matchExpressions"]
    assert expression["operator"] == "In"
    for workload in (one(rendered, "Deployment", "read-api"), one(master, "StatefulSet", "redis-master")):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert labels[expression["key"]] in expression["values"], workload["metadata"]["name"]
        assert workload["metadata"]["namespace"] == monitor["metadata"]["namespace"]


# --- heartbeat writers -----------------------------------------------------


def heartbeat_key() -> str:
    [key] = re.findall(r'DEFAULT_HEARTBEAT_KEY: &str = "([^"]+)"', (REPO / "api/src/config.rs").read_text())
    return key


def test_both_heartbeat_writers_run_one_script_on_the_key_the_api_reads(rendered, master):
    in_master = container(pod_spec(one(master, "StatefulSet", "redis-master")), "heartbeat")
    hosted = container(pod_spec(one(rendered, "Deployment", "read-api-heartbeat")), "heartbeat")
    assert in_master["command"] == hosted["command"], "the two heartbeat scripts differ"
    script = in_master["command"][2]
    assert in_master["command"][:2] == ["sh", "-c"]
    assert f"SET {heartbeat_key()} " in script
    # Podman expands no $(VAR) in commands and arguments (the kubelet does): the
    # script reads the environment itself. $(command args) is the shell's.
    for c in (in_master, hosted):
        for arg in c["command"] + c["args"]:
            assert not re.search(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", arg), f"{c['name']}: $(VAR) in {arg!r}"


def test_the_master_heartbeat_writes_to_its_tls_port_with_the_ca(master):
    spec = pod_spec(one(master, "StatefulSet", "redis-master"))
    heartbeat = container(spec, "heartbeat")
    args = heartbeat["args"]
    conf = config_file("redis-master/redis-master.conf")
    assert "--tls" in args and args[args.index("-p") + 1] == conf["tls-port"]
    assert args[args.index("-h") + 1] == "localhost"
    volume = mounted_file(spec, heartbeat, args[args.index("--cacert") + 1])
    assert volume["secret"] == {"secretName": "redis-master-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    # Its own ACL user (acl-users.conf), never the admin: test_acl.py runs it.
    assert env(heartbeat)["REDIS_USER"]["value"] == "heartbeat"
    assert "REDISCLI_AUTH" not in env(heartbeat), "the password is a file, not in the environment"
    password = env(heartbeat)["REDISCLI_AUTH_FILE"]["value"]
    volume = mounted_file(spec, heartbeat, password)
    assert volume["secret"]["secretName"] == "redis-master"
    assert volume["secret"]["items"] == [{"key": "heartbeat-password", "path": password.rsplit("/", 1)[1]}]


def test_the_hosted_master_heartbeat_goes_through_a_stunnel_like_the_replicas(rendered):
    spec = pod_spec(one(rendered, "Deployment", "read-api-heartbeat"))
    heartbeat, stunnel = container(spec, "heartbeat"), container(spec, "stunnel")
    accept = env(stunnel)["STUNNEL_ACCEPT"]["value"]
    assert accept.startswith("127.0.0.1:")
    args = heartbeat["args"]
    assert f"{args[args.index('-h') + 1]}:{args[args.index('-p') + 1]}" == accept
    password = env(heartbeat)["REDISCLI_AUTH_FILE"]["value"]
    volume = mounted_file(spec, heartbeat, password)
    assert volume["secret"]["secretName"] == "redis-master"
    assert volume["secret"]["items"] == [{"key": "password", "path": password.rsplit("/", 1)[1]}]
    assert env(heartbeat)["REDIS_USER"]["valueFrom"]["secretKeyRef"] == {"name": "redis-master", "key": "user"}
    # The same stunnel as in an API pod: image, command, settings, mounts.
    api_spec = pod_spec(one(rendered, "Deployment", "read-api"))
    theirs = container(api_spec, "stunnel")
    for field in ("image", "command", "env", "volumeMounts", "securityContext"):
        assert stunnel[field] == theirs[field], f"stunnel {field} differs from the API pod's"
    for mount in stunnel["volumeMounts"]:
        ours = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert ours == next(v for v in api_spec["volumes"] if v["name"] == mount["name"])
    assert container(spec, "heartbeat")["image"] == container(api_spec, "redis")["image"]


def test_the_heartbeat_script_sets_the_time_in_milliseconds(master, tmp_path):
    """The script itself, in sh, with stand-ins for redis-cli and sleep."""
    script = container(pod_spec(one(master, "StatefulSet", "redis-master")), "heartbeat")["command"][2]
    run = tmp_path / "run"
    run.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-cli").write_text(f'#!/bin/sh\necho "$REDISCLI_AUTH $*" >>{tmp_path}/calls\necho OK\n')
    # The first sleep ends the loop the way the kubelet does: SIGTERM to the shell.
    (bin_dir / "sleep").write_text("#!/bin/sh\nkill -TERM $PPID\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    (tmp_path / "password").write_text("from-the-file")  # as a Secret's key: no newline
    result = subprocess.run(
        ["sh", "-c", script.replace("/run/heartbeat", str(run)), "heartbeat", "-h", "127.0.0.1", "-p", "6390"],
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "REDIS_USER": "writer",
            "REDISCLI_AUTH_FILE": str(tmp_path / "password"),
        },
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    [call] = (tmp_path / "calls").read_text().splitlines()
    match = re.fullmatch(
        rf"from-the-file --user writer -h 127\.0\.0\.1 -p 6390 SET {re.escape(heartbeat_key())} (\d+)", call
    )
    assert match, call
    millis = match.group(1)
    assert len(millis) == 13, f"{millis} is not Unix time in milliseconds"
    assert (run / "loop").read_text().strip() == millis[:-3] == (run / "ok").read_text().strip()
    assert "OK" in result.stderr, "the first answer is logged"


# --- Datadog ---------------------------------------------------------------


def datadog_checks(workload) -> dict[str, dict]:
    annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
    checks = {}
    for key, value in annotations.items():
        match = re.fullmatch(r"ad\.datadoghq\.com/([a-z0-9-]+)\.checks", key)
        if match:
            checks[match.group(1)] = json.loads(value)
    return checks


def check_openmetrics(workload, name, config):
    spec = pod_spec(workload)
    c = container(spec, name)
    [instance] = config["openmetrics"]["instances"]
    url = urlsplit(instance["openmetrics_endpoint"])
    assert url.hostname == "%%host%%" and url.path == "/metrics", instance["openmetrics_endpoint"]
    assert url.port in {p["containerPort"] for p in c["ports"]}, f"{name}: port {url.port} is not one of its ports"
    assert instance["namespace"] and instance["metrics"]
    return instance


def test_datadog_annotations_are_openmetrics_checks_on_real_ports(rendered):
    deployment = one(rendered, "Deployment", "read-api")
    checks = datadog_checks(deployment)
    names = monitoring_config()["containers"]
    assert set(checks) == {names["api"], names["exporter"]}
    api = check_openmetrics(deployment, names["api"], checks[names["api"]])
    admin = next(p for p in container(pod_spec(deployment), "api")["ports"] if p["name"] == "admin")
    assert urlsplit(api["openmetrics_endpoint"]).port == admin["containerPort"] == 9090
    assert api["namespace"] == "read_api" and api["raw_metric_prefix"] == "read_api_"
    redis = check_openmetrics(deployment, names["exporter"], checks[names["exporter"]])
    prefix = redis["raw_metric_prefix"]
    for metric in redis["metrics"]:
        # Counters are named without _total in the openmetrics check.
        assert {prefix + metric, prefix + metric + "_total"} & EXPORTER_SERIES, metric


def test_datadog_annotates_the_master_exporter_too(tmp_path):
    directory = write_kustomization(tmp_path / "master", [DEPLOY / "master"], [DEPLOY / "components/datadog"])
    statefulset = one(kustomize(directory), "StatefulSet", "redis-master")
    checks = datadog_checks(statefulset)
    assert set(checks) == {"redis-exporter"}
    check_openmetrics(statefulset, "redis-exporter", checks["redis-exporter"])


# --- the components together ------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_everything_together_validates_strictly(composition, version, tmp_path):
    manifest = tmp_path / "manifest.yaml"
    result = subprocess.run(["kubectl", "kustomize", str(composition)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    manifest.write_text(result.stdout)
    result = subprocess.run(
        [REPO / ".venv/bin/kubernetes-validate", "--strict", "-k", version, "--quiet", str(manifest)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    unknown = set(re.findall(r"schema for kind (\w+)", result.stdout + result.stderr))
    assert unknown <= CRD_KINDS, f"no schema checked for {unknown - CRD_KINDS}"


def added_by_components(objects):
    names = {
        ("Deployment", "read-api-heartbeat"),
        ("PodMonitor", "read-api"),
        ("PodMonitor", "read-api-redis"),
        ("PrometheusRule", "read-api"),
        ("ConfigMap", "read-api-dashboard"),
    }
    found = [o for o in objects if (o["kind"], o["metadata"]["name"]) in names]
    assert len(found) == len(names)
    return found


def test_component_objects_land_in_the_overlays_namespace(rendered):
    for obj in added_by_components(rendered):
        assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"


def test_component_objects_follow_a_namespace_of_yours(composition, tmp_path):
    objects = kustomize(write_kustomization(tmp_path / "yours", [composition], namespace="team-a"))
    for obj in added_by_components(objects):
        assert obj["metadata"]["namespace"] == "team-a", f"{obj['kind']}/{obj['metadata']['name']}"
    config_maps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    heartbeat = pod_spec(one(objects, "Deployment", "read-api-heartbeat"))
    for volume in heartbeat["volumes"]:
        if "configMap" in volume:
            assert volume["configMap"]["name"] in config_maps, f"{volume['configMap']['name']} unresolved"


# --- the e2e's Prometheus ----------------------------------------------------


def e2e_monitoring():
    from deploy.e2e import monitoring

    return monitoring


def test_the_e2e_prometheus_loads_the_rule_file_as_it_is_with_targets_labelled_from_the_config(tmp_path):
    """What the e2e's Prometheus is given (deploy/e2e/monitoring.py), checked by promtool: the kit's
    own rule file, unchanged, and targets whose job and namespace labels are the ones it selects."""
    module = e2e_monitoring()

    class Pod:
        def __init__(self, name, admin):
            self.name, self.admin = name, admin

    pods = [Pod("read-api-0", 19080), Pod("read-api-1", 19081)]
    targets = module.targets(pods, {"read-api-0": 17080, "read-api-1": 17081}, 17090)
    config = module.Prometheus.config(tmp_path, limits=None)
    module.write_targets(tmp_path, targets)
    assert config["rule_files"] == [str(RULES)]
    settings = monitoring_config()
    jobs = {
        c["job_name"]: [g for f in c["file_sd_configs"][0]["files"] for g in json.loads(Path(f).read_text())]
        for c in config["scrape_configs"]
    }
    assert set(jobs) == {settings["jobs"]["api"], settings["jobs"]["exporter"]}
    for static in jobs.values():
        for entry in static:
            assert entry["labels"]["namespace"] == settings["namespace"]
            assert entry["labels"]["container"] in settings["containers"].values()
    assert [e["labels"]["pod"] for e in jobs[settings["jobs"]["exporter"]]] == [
        "read-api-0",
        "read-api-1",
        "redis-master",
    ]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    out = run_promtool("check", "config", path, cwd=tmp_path)
    assert f"SUCCESS: {len(alert_names())} rules found" in out
