"""The kit's monitoring against the live pods, through the real Prometheus of
conftest's `prometheus` fixture (deploy/e2e/monitoring.py): a replica restart
shows as 5xx and Redis errors, every API pod deleted fires
ReadApiNoPodReady (the absent() guard), every dashboard panel returns series,
every metric and label a rule or a panel names is one the running pods expose,
and the sync and memory alerts stayed silent through the run. conftest runs
this module last, so that the last two see the whole e2e."""

import json
import re
import secrets
import time

import pytest

from deploy.e2e import kit, monitoring
from deploy.e2e.monitoring import DASHBOARD
from deploy.monitoring import promql

# kube-state-metrics' series for init containers (the native-sidecars component): podman
# plays no native sidecars, so the `or` branch of the memory alerts that reads it has no series here.
NOT_ON_PODMAN = {"kube_pod_init_container_resource_limits"}


def selector(prometheus):
    return f'job="{prometheus.jobs["api"]}", namespace="{prometheus.namespace}"'


def test_a_replica_restart_shows_as_5xx_and_redis_errors(prometheus, pods, summary):
    """What the 5xx ratio and Redis errors panels exist for: the replica of read-api-0 stopped
    under reads, then started again (it resyncs, and the pod turns ready)."""
    pod = pods[0]
    where = f'{selector(prometheus)}, pod="{pod.name}"'
    statuses = {}
    kit.podman("stop", "-t", "5", f"{pod.name}-redis")
    try:

        def seen_by_prometheus():
            # Keys never read before: the value cache cannot answer them, Redis must.
            status, _ = pod.get(f"/v1/keys/missing:{secrets.token_hex(4)}")
            statuses[status] = statuses.get(status, 0) + 1
            five = prometheus.query(f'sum(read_api_http_requests_total{{{where}, status=~"5.."}})')
            errors = prometheus.query(f"sum by (kind) (read_api_redis_errors_total{{{where}}})")
            return five and errors and (five, errors)

        five, errors = kit.wait_for("Prometheus to scrape 5xx and Redis errors from read-api-0", seen_by_prometheus, 30)
    finally:
        kit.podman("start", f"{pod.name}-redis")
    kit.wait_for(f"{pod.name} ready again", lambda: pod.ready()[0] == 200, 120, every=0.25)
    assert any(status >= 500 for status in statuses), statuses
    kinds = ", ".join(f"{e['metric'].get('kind')}={float(e['value'][1]):.0f}" for e in errors)
    summary(f"{pod.name}'s replica stopped: answers {statuses}; Prometheus scraped the 5xx and Redis errors ({kinds})")


def test_no_pod_ready_fires_when_every_api_pod_is_gone(prometheus, pods, api_pods_deleted, summary):
    """Every API pod deleted (conftest's api_pods_deleted, at the first test of the run): their
    targets vanish from Prometheus, as a deleted pod's do from its discovery, no read_api_ready
    is left to be 0, and the absent() branch of ReadApiNoPodReady fires. Then the pods are
    played again, are scraped again, and it resolves. Runs before the sidecar module, which
    reads through the pods."""
    alerts, started = prometheus.alerts, api_pods_deleted["started"]

    def episodes():
        return alerts.since(started, "ReadApiNoPodReady")

    try:
        alerts.wait("ReadApiNoPodReady to fire", lambda: any(e["firing"] for e in episodes()), 150)
        # The targets are gone, not down: no up series is left for them, and it is the absent()
        # branch that fires, not a sum of zeros.
        assert not prometheus.query(f'up{{job="{prometheus.jobs["api"]}"}}'), "an API target is still scraped"
        assert prometheus.query(f"absent(read_api_ready{{{selector(prometheus)}}})"), "read_api_ready is still there"
        assert not any(e["resolved"] for e in episodes()), f"resolved with every pod gone: {episodes()}"
    finally:
        kit.play_sidecar_pods()
        prometheus.watch(api_pods_deleted["targets"])
        for pod in pods:
            kit.wait_for(f"{pod.name} ready again", lambda pod=pod: pod.ready()[0] == 200, 120, every=0.25)
    back = time.time()
    alerts.wait("ReadApiNoPodReady to resolve", lambda: all(e["resolved"] for e in episodes()), 60)
    [episode] = [e for e in episodes() if e["firing"]]
    assert episode["labels"]["namespace"] == prometheus.namespace and episode["labels"]["job"] == prometheus.jobs["api"]
    assert episode["pending"] < episode["firing"] < episode["resolved"]
    # Its `for: 1m` held between pending and firing, and the pods' return (not a lost alert) resolved it.
    assert episode["firing"] - episode["pending"] >= 60 - 2 * monitoring.AlertLog.EVERY, episode
    assert episode["resolved"] > back, episode
    rows = monitoring.timeline_rows("every API pod deleted", started, episodes())
    kit.add_rows("Alerts", monitoring.TIMELINE_HEADER, rows)
    pending, firing, resolved = (episode[state] - started for state in ("pending", "firing", "resolved"))
    summary(
        f"ReadApiNoPodReady pending +{pending:.1f} s, firing +{firing:.1f} s, resolved +{resolved:.1f} s "
        f"after the {len(pods)} API pods were deleted and their targets vanished "
        f"(ready again at +{back - started:.1f} s)"
    )


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def variables(prometheus) -> dict[str, str]:
    """The dashboard's template variables as Grafana would fill them from this server: each query
    variable's label_values() asked of it, every value of a multi-value one (Grafana's (a|b) form)."""
    step = monitoring.SCRAPE_SECONDS
    filled = {"datasource": "prometheus", "__interval": f"{step}s", "__range": "1h"}
    # Grafana's $__rate_interval: four scrape intervals at least.
    filled["__rate_interval"] = f"{4 * step}s"
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
        values = prometheus.label_values(match.group(2), substitute(match.group(1), filled))
        assert values, f"variable {variable['name']}: {variable['definition']} has no values"
        if variable["name"] == "namespace":
            assert prometheus.namespace in values, values
            values = [prometheus.namespace]
        filled[variable["name"]] = values[0] if not variable.get("multi") else "(" + "|".join(values) + ")"
    return filled


def substitute(expr: str, filled: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", lambda m: filled[m.group(1) or m.group(2)], expr)


def panel_series(prometheus, filled):
    """Each panel's series over the run so far, and the queries that returned none."""
    end = time.time()
    rows, empty = [], []
    for panel in dashboard()["panels"]:
        counts = []
        for target in panel["targets"]:
            series = prometheus.query_range(substitute(target["expr"], filled), prometheus.started, end, 5)
            counts.append(len(series))
            if not series:
                empty.append(f"{panel['title']} ({target['refId']}): {substitute(target['expr'], filled)}")
        rows.append([panel["title"], str(sum(counts)), " + ".join(map(str, counts))])
    return end, rows, empty


def test_every_dashboard_panel_returns_series(prometheus, summary):
    filled = variables(prometheus)
    end, rows, empty = panel_series(prometheus, filled)
    # A rate needs two scrapes of a series: one that appeared in the last
    # seconds (the Redis errors of the test before) gets them, then counts.
    deadline = time.monotonic() + 20
    while empty and time.monotonic() < deadline:
        time.sleep(2)
        end, rows, empty = panel_series(prometheus, filled)
    kit.add_rows("Dashboard panels", ["panel", "series", "per query"], rows)
    assert not empty, "panels with no series from the live pods:\n" + "\n".join(empty)
    summary(
        f"{len(rows)} panels, every query returned series over {end - prometheus.started:.0f} s "
        f"(pod={filled['pod']}); series per panel in the panels table"
    )


def exposed(prometheus, metric, matchers, filled):
    """The label sets of the live series METRIC{MATCHERS} selects; regex matchers only need their label."""
    exact = [(label, op, value) for label, op, value in promql.matchers(matchers) if op in ("=", "!=")]
    text = ", ".join(f'{label}{op}"{substitute(value, filled)}"' for label, op, value in exact)
    found = prometheus.series(f"{metric}{{{text}}}")
    missing = {label for label, _, _ in promql.matchers(matchers)} - {name for s in found for name in s}
    return found, missing


def unexposed(prometheus, named, filled) -> list[str]:
    """What the (name, expression, annotations) of NAMED select that the live series lack."""
    problems = []
    for what, expr, annotations in named:
        labels = set()
        for metric, matchers in promql.vector_selectors(expr):
            if metric in NOT_ON_PODMAN:
                continue
            found, missing = exposed(prometheus, metric, matchers, filled)
            if not found:
                problems.append(f"{what}: {metric}{{{substitute(matchers, filled)}}} selects no live series")
            elif missing:
                problems.append(f"{what}: {metric} has no label {sorted(missing)}")
            labels |= {name for s in found for name in s}
        wanted = promql.grouping_labels(expr) | set(promql.ANNOTATION_LABEL.findall(annotations))
        if labels and wanted - labels:
            problems.append(f"{what}: groups or describes by {sorted(wanted - labels)}, which no series it reads has")
    return problems


def test_every_metric_and_label_named_is_exposed_by_the_running_pods(prometheus, summary):
    """Fails when a rule or a panel names a metric, a label or a label value the pods, their
    exporters and the limits do not expose: a rename in the API or the exporter breaks this."""
    filled = variables(prometheus)
    named = [(f"alert {r['alert']}", r["expr"], " ".join(r["annotations"].values())) for r in monitoring.rules()]
    named += [(f"panel {p['title']}", t["expr"], "") for p in dashboard()["panels"] for t in p["targets"]]
    problems = unexposed(prometheus, named, filled)
    assert not problems, "\n".join(problems)
    # The check itself: a renamed metric, a label value no series has, a grouping label nobody exports.
    sel = selector(prometheus)
    wrong = [
        ("renamed", f"read_api_readyz{{{sel}}} == 0", ""),
        ("value", f'redis_instance_info{{job="{prometheus.jobs["exporter"]}", role="replica"}}', ""),
        ("grouping", f"sum by (shard) (read_api_ready{{{sel}}})", "{{ $labels.cluster }}"),
    ]
    caught = unexposed(prometheus, wrong, filled)
    assert [p.split(":")[0] for p in caught] == ["renamed", "value", "grouping"], caught
    summary(f"{len(named)} rules and panel queries: every metric, label and value they select is live")


SILENT = {
    # A sync that never finishes; a replica restarted here resyncs, so pending is allowed, firing is not.
    "ReadApiReplicaNeverSynced": "firing",
    "ReadApiReplicaMemoryHigh": "pending",
    "ReadApiReplicaMemoryCritical": "pending",
}


def test_sync_and_memory_alerts_stayed_silent_through_the_run(prometheus, summary):
    """Over the whole e2e (this module runs last). The memory ratio is checked to exist, so
    that silence is not the silence of a missing series."""
    ratio = monitoring.compared(monitoring.rule("ReadApiReplicaMemoryHigh")["expr"])
    now = prometheus.query(ratio)
    assert now, f"the memory alerts' ratio has no series: {ratio}"
    peak = prometheus.query(f"max(max_over_time(({ratio})[{time.time() - prometheus.started:.0f}s:5s]))")
    loud = []
    for name, worst in SILENT.items():
        for episode in prometheus.alerts.since(prometheus.started, name):
            if worst == "pending" or episode["firing"]:
                loud.append(f"{name} {episode['labels'].get('pod')}: {episode}")
    assert not loud, "\n".join(loud)
    assert prometheus.alerts.errors < 10, f"{prometheus.alerts.errors} polls of /api/v1/alerts failed"
    summary(
        f"{', '.join(SILENT)} silent for {time.time() - prometheus.started:.0f} s; replica memory at most "
        f"{float(peak[0]['value'][1]):.1%} of its limit ({len(now)} replicas)"
    )


@pytest.fixture(autouse=True)
def _targets_up(prometheus):
    """Each test starts with every target answering, so one test's failure is not the next one's."""
    try:
        kit.wait_for("every Prometheus target up", lambda: set(prometheus.targets_up().values()) == {"up"}, 60, 0.5)
    except AssertionError as error:
        down = {target: health for target, health in prometheus.targets_up().items() if health != "up"}
        raise AssertionError(f"{error}: {down}") from None
