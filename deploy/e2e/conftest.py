"""Fixtures of the e2e: the master and three sidecar pods played once per run,
torn down at the end even when a test fails (E2E_KEEP=1 leaves them up; make
e2e-down removes them). Each test records one line of figures with `summary`,
printed as a table after the run."""

import os
import secrets
import time

import pytest

from deploy.e2e import kit, monitoring

SCALE = kit.REPO / "deploy/e2e/scale"


# The test that needs a minute without any API pod (ReadApiNoPodReady's `for:`).
NO_POD_READY = "test_no_pod_ready_fires_when_every_api_pod_is_gone"


def run_order(item):
    """The modules that do not use the sidecar pods first (the pods are deleted meanwhile, see
    _api_pods_deleted_early), then the no-pod-ready test, which plays them again, then the
    sidecar module, and the other live monitoring checks last: their panels and silent alerts
    cover the whole run."""
    if item.originalname == NO_POD_READY:
        return 1
    return {"test_sidecar.py": 2, "test_monitoring_live.py": 3}.get(item.path.name, 0)


def pytest_collection_modifyitems(items):
    for item in items:
        if kit.E2E in item.path.parents:
            item.add_marker(pytest.mark.podman)
    items.sort(key=run_order)


@pytest.fixture(scope="session", autouse=True)
def podman_ready():
    if not os.environ.get("CONTAINERS_CONF"):
        pytest.exit("e2e: run through make e2e, which prepares podman (CONTAINERS_CONF)", returncode=2)


@pytest.fixture(scope="session")
def passwords():
    """master: the admin (default user); replica: the pod-local replicas' own;
    api, master-replica, heartbeat, exporter: the master's ACL users (acl-users.conf)."""
    names = ("master", "replica", "api", "master-replica", "heartbeat", "exporter")
    return {name: secrets.token_hex(16) for name in names}


@pytest.fixture(scope="session")
def kit_network(passwords):
    """Certificates, the Secrets as ConfigMaps, and the podman network; everything removed after."""
    kit.WORK.mkdir(parents=True, exist_ok=True)
    kit.teardown()
    kit.certificates()
    users = {
        "api": passwords["api"],
        "replica": passwords["master-replica"],
        "heartbeat": passwords["heartbeat"],
        "exporter": passwords["exporter"],
    }
    kit.secret_config_maps(passwords["master"], passwords["replica"], users)
    kit.podman("network", "create", kit.NETWORK)
    try:
        yield
    finally:
        if os.environ.get("E2E_KEEP"):
            # The ports are this run's own (kit.host_ports): say where each listener is.
            print("\ne2e: E2E_KEEP=1, pods left running:", ", ".join(kit.pod_names()))
            print(
                f"  master TLS 127.0.0.1:{kit.MASTER_PORT}; read-api-N: API 127.0.0.1:{kit.API_PORT}+N, "
                f"admin {kit.ADMIN_PORT}+N, redis_exporter {kit.EXPORTER_PORT}+N\n"
                f"  curl 127.0.0.1:{kit.API_PORT}/v1/keys/known-key   "
                f"curl 127.0.0.1:{kit.ADMIN_PORT}/metrics   podman port -a   make e2e-down"
            )
        else:
            kit.teardown()


@pytest.fixture(scope="session")
def master(kit_network, passwords):
    """deploy/master played as pod redis-master, and a TLS client of it."""
    kit.play(
        "master", "master", "--publish", f"redis-tls={kit.MASTER_PORT}",
        "--publish", f"redis-metrics={kit.MASTER_EXPORTER_PORT}",
    )  # fmt: skip
    client = kit.master_client(passwords["master"])
    kit.wait_for("the master's TLS port", client.ping, 60, every=0.5)
    yield client
    client.close()


@pytest.fixture(scope="session")
def pods(master):
    """deploy/overlays/sidecar with the redis-exporter component (deploy/e2e/sidecar)
    played as read-api-0..2, each ready."""
    pods = kit.play_sidecar_pods()
    try:
        for pod in pods:
            kit.wait_for(f"{pod.name} to be ready", lambda pod=pod: pod.ready()[0] == 200, 120, every=0.25)
    except AssertionError:
        for name in kit.pod_names():
            print(f"--- podman pod logs {name} (last lines)\n{kit.pod_logs(name)}")
        raise
    return pods


@pytest.fixture(scope="session")
def prometheus(pods):
    """A real Prometheus (monitoring.py) scraping the sidecar pods and the master, with the kit's rules."""
    limits = monitoring.PodLimits([])
    limits.start()
    server = monitoring.Prometheus(kit.WORK / "prometheus", monitoring.sidecar_targets(pods), limits)
    try:
        server.wait_ready()
        server.wait_watched(deadline=30)
        yield server
    finally:
        server.stop()
        limits.stop()


@pytest.fixture(scope="session")
def api_pods_deleted(prometheus, pods):
    """Every sidecar API pod deleted, and its targets taken out of Prometheus's discovery, as a
    cluster's vanish with their pods: when, and the targets to watch again once they are back."""
    everything = list(prometheus.watched)
    names = {pod.name for pod in pods}
    prometheus.watch([t for t in everything if t.pod not in names])
    started = time.time()
    kit.remove_pods(*names)
    prometheus.wait_watched(up=False)
    return {"started": started, "targets": everything}


@pytest.fixture(scope="session", autouse=True)
def _api_pods_deleted_early(request):
    """The no-pod-ready test waits a minute (the alert's `for:`) with no API pod: the pods are
    deleted at the first test, so that the modules which do not use them (relay, node-local,
    central, bad certificate, preflight) run during that minute instead of after it."""
    if any(getattr(item, "originalname", None) == NO_POD_READY for item in request.session.items):
        request.getfixturevalue("api_pods_deleted")


@pytest.fixture
def summary(request):
    """Records this test's figures for the table printed after the run."""

    def record(line):
        request.node.user_properties.append(("summary", line))

    return record


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        detail = dict(report.user_properties).get("summary", "")
        if report.failed:
            detail = str(report.longrepr).strip().splitlines()[-1][:200]
        kit.RESULTS.append((report.nodeid.split("::")[-1], report.outcome.upper(), report.duration, detail))


def pytest_terminal_summary(terminalreporter):
    if kit.RESULTS:
        terminalreporter.write_line("\n" + kit.results_table())


def pytest_sessionfinish(session):
    # target/e2e/report.md, for make publish-results; make scale and make
    # compare-topologies write reports of their own.
    if not kit.RESULTS or any(SCALE in item.path.parents for item in session.items):
        return
    selection = f"`-k {session.config.option.keyword}`" if session.config.option.keyword else "every check"
    out = kit.REPO / "target/e2e"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(f"# make e2e\n\n{os.cpu_count()} CPUs; {selection}.\n\n{kit.results_table()}\n")
