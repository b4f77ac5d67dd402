"""A real Prometheus watching the e2e's pods: Debian's `prometheus` on a free
loopback port, scraping the ports podman publishes, with the kit's own rule
file loaded as it is. Its targets carry the labels the Prometheus Operator
would give them, with the job and namespace names of
deploy/monitoring/config.yaml, so the rules' and the dashboard's selectors
match as they would on a cluster.

The targets come from files (file_sd_configs), as a cluster's come from its pods: watch()
rewrites them, and a pod taken out of them vanishes from Prometheus as a deleted pod does,
where a stopped one would only turn its target down.

kube-state-metrics has no podman equivalent: PodLimits serves its two series
the memory alerts read, kube_pod_container_resource_limits, from the limits
podman enforces on each container (`podman inspect`), labelled as
kube-state-metrics labels them.
"""

import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from deploy.e2e import kit

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy/monitoring/read-api.rules.yaml"
CONFIG = REPO / "deploy/monitoring/config.yaml"
DASHBOARD = REPO / "deploy/components/grafana-dashboard/read-api-dashboard.json"
# Short, so that an alert's `for:` is what its timing is made of: the rules' own
# durations stay as they are.
SCRAPE_SECONDS = 2
EVALUATION_SECONDS = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def monitoring_config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def rules() -> list[dict]:
    """Every alert of the kit's rule file."""
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def rule(alert: str) -> dict:
    return next(r for r in rules() if r["alert"] == alert)


def compared(expr: str) -> str:
    """An alert's expression without its final `> threshold`: the value it compares."""
    return re.sub(r"\s*>\s*[0-9.]+\s*$", "", expr.strip())


class Target:
    """One scrape target: a published port and the labels the Operator would add."""

    def __init__(self, job: str, port: int, pod: str, container: str):
        self.job, self.port, self.pod, self.container = job, port, pod, container


def targets(pods: list, exporter_ports: dict[str, int], master_exporter_port: int | None) -> list[Target]:
    """Every API pod's admin port, its replica's exporter, and the master's exporter."""
    config = monitoring_config()
    jobs, containers = config["jobs"], config["containers"]
    found = [Target(jobs["api"], pod.admin, pod.name, containers["api"]) for pod in pods]
    found += [Target(jobs["exporter"], port, name, containers["exporter"]) for name, port in exporter_ports.items()]
    if master_exporter_port:
        found.append(Target(jobs["exporter"], master_exporter_port, "redis-master", containers["exporter"]))
    return found


def sidecar_targets(pods: list, master_exporter: bool = True) -> list[Target]:
    """The e2e's sidecar pods (kit.play_sidecar_pods), read-api-N with its exporter on
    EXPORTER_PORT+N, and the master's exporter."""
    exporters = {pod.name: kit.EXPORTER_PORT + int(pod.name.rsplit("-", 1)[1]) for pod in pods}
    return targets(pods, exporters, kit.MASTER_EXPORTER_PORT if master_exporter else None)


class PodLimits(threading.Thread):
    """kube-state-metrics' memory limits of PODS' containers, as podman enforces them."""

    # podman is slow to ask on a busy machine, slower than a scrape's timeout: the limits are
    # read again in the background this often, and every scrape gets the last reading.
    REFRESH_SECONDS = 15

    def __init__(self, pods: list[str]):
        super().__init__(daemon=True)
        self.pods = list(pods)
        self.namespace = monitoring_config()["namespace"]
        self.body = self.read().encode()
        self.stopped = threading.Event()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def read(self) -> str:
        """Two podman calls whatever the number of pods: their containers, then every limit."""
        lines = ["# TYPE kube_pod_container_resource_limits gauge"]
        listed = subprocess.run(["podman", "ps", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
        containers = {}  # podman's name -> (pod, the manifests' container name)
        for name in listed.split():
            # podman names a pod's containers POD-CONTAINER (its infra container matches no pod)
            pods = [pod for pod in self.pods if name.startswith(f"{pod}-")]
            if pods:
                pod = max(pods, key=len)
                containers[name] = (pod, name.removeprefix(f"{pod}-"))
        if not containers:
            return "\n".join(lines) + "\n"
        inspected = subprocess.run(
            ["podman", "inspect", *containers, "--format", "{{.Name}} {{.HostConfig.Memory}}"],
            capture_output=True, text=True,
        ).stdout.splitlines()  # fmt: skip
        for line in inspected:
            name, _, memory = line.partition(" ")
            if name in containers and memory.isdigit() and int(memory) > 0:
                pod, container = containers[name]
                labels = (
                    f'namespace="{self.namespace}",pod="{pod}",uid="",container="{container}",'
                    f'node="podman",resource="memory",unit="byte"'
                )
                lines.append(f"kube_pod_container_resource_limits{{{labels}}} {memory}")
        return "\n".join(lines) + "\n"

    def handler(self):
        limits = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = limits.body
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except BrokenPipeError:  # a scrape that timed out
                    pass

            def log_message(self, *args):
                pass

        return Handler

    def run(self):
        while not self.stopped.wait(self.REFRESH_SECONDS):
            self.body = self.read().encode()

    def watch(self, pods: list[str]):
        """Describe PODS from now on (read at once: a new pod's limit is there for its first scrape)."""
        self.pods = list(pods)
        self.body = self.read().encode()

    def stop(self):
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


def scraped_jobs() -> list[str]:
    jobs = monitoring_config()["jobs"]
    return [jobs["api"], jobs["exporter"]]


def targets_file(directory: Path, job: str) -> Path:
    return directory / f"targets-{job}.json"


def write_targets(directory: Path, scrape: list[Target]):
    """Each job's targets file (file_sd) rewritten whole, with the labels the Operator gives pod
    targets; renamed into place, so that Prometheus never reads half of one."""
    namespace = monitoring_config()["namespace"]
    for job in scraped_jobs():
        groups = [
            {
                "targets": [f"127.0.0.1:{t.port}"],
                "labels": {"namespace": namespace, "pod": t.pod, "container": t.container},
            }
            for t in scrape
            if t.job == job
        ]
        path = targets_file(directory, job)
        path.with_suffix(".tmp").write_text(json.dumps(groups))
        path.with_suffix(".tmp").rename(path)


class Prometheus:
    """The server, its HTTP API, and the alert log it feeds."""

    def __init__(self, directory: Path, scrape: list[Target], limits: PodLimits | None = None):
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is missing: scripts/install-deps.sh prometheus (Debian package prometheus)")
        self.directory, self.port = directory, free_port()
        settings = monitoring_config()
        self.namespace, self.jobs = settings["namespace"], settings["jobs"]
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        self.limits = limits
        self.watch(scrape)
        config = self.config(directory, limits)
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = open(directory / "prometheus.log", "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.started = time.time()
        self.alerts = None  # started by wait_ready()

    def watch(self, scrape: list[Target]):
        """Scrape SCRAPE from now on, and nothing else (write_targets). Prometheus sees the change
        within its discovery's 5 s; the limits stand-in describes the same API pods."""
        self.watched = list(scrape)
        write_targets(self.directory, scrape)
        if self.limits:
            self.limits.watch(sorted({t.pod for t in scrape if t.job == self.jobs["api"]}))

    @staticmethod
    def config(directory: Path, limits: PodLimits | None) -> dict:
        """Prometheus's configuration: the API and exporter jobs from DIRECTORY's targets files."""
        config = monitoring_config()
        scrape_configs = [
            {"job_name": job, "file_sd_configs": [{"files": [str(targets_file(directory, job))]}]}
            for job in scraped_jobs()
        ]
        if limits:
            # kube-state-metrics' own namespace and pod labels name the pods it describes.
            scrape_configs.append(
                {
                    "job_name": config["jobs"]["kube_state_metrics"],
                    "honor_labels": True,
                    "static_configs": [{"targets": [f"127.0.0.1:{limits.port}"]}],
                }
            )
        return {
            "global": {
                "scrape_interval": f"{SCRAPE_SECONDS}s",
                "scrape_timeout": f"{SCRAPE_SECONDS}s",
                "evaluation_interval": f"{EVALUATION_SECONDS}s",
            },
            "rule_files": [str(RULES)],
            "scrape_configs": scrape_configs,
        }

    def get(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        url = f"http://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"prometheus {path} {params}: {error.code} {error.read().decode()[:300]}") from None
        assert body["status"] == "success", body
        return body["data"]

    def wait_ready(self, deadline=60.0):
        started = time.monotonic()
        while True:
            assert self.process.poll() is None, f"prometheus exited: {self.log_tail()}"
            try:
                if self.get("/api/v1/targets")["activeTargets"] and self.rules_loaded():
                    self.alerts = AlertLog(self)
                    return self
            except (OSError, ValueError):
                pass
            assert time.monotonic() - started < deadline, f"prometheus not ready in {deadline:.0f}s: {self.log_tail()}"
            time.sleep(0.25)

    def rules_loaded(self) -> bool:
        return any(group["rules"] for group in self.get("/api/v1/rules")["groups"])

    def log_tail(self, lines=10) -> str:
        self.log.flush()
        return "\n".join((self.directory / "prometheus.log").read_text().splitlines()[-lines:])

    def targets_up(self) -> dict[str, str]:
        """pod/job -> health of every target."""
        return {
            f"{t['labels']['job']}/{t['labels'].get('pod', '')}": t["health"]
            for t in self.get("/api/v1/targets")["activeTargets"]
        }

    def wait_watched(self, up=True, deadline=30.0):
        """Until Prometheus's targets are the ones watch() last named (and, if UP, each answers)."""
        want = {f"{t.job}/{t.pod}" for t in self.watched}

        def seen():
            found = {k: v for k, v in self.targets_up().items() if not k.startswith(self.jobs["kube_state_metrics"])}
            return set(found) == want and (not up or set(found.values()) == {"up"} or not found)

        started = time.monotonic()
        while not seen():
            assert time.monotonic() - started < deadline, (
                f"prometheus does not scrape {sorted(want)} in {deadline:.0f}s: {self.targets_up()}"
            )
            time.sleep(0.25)

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self.get("/api/v1/query_range", query=expr, start=start, end=end, step=step)["result"]

    def series(self, match: str, start: float | None = None) -> list[dict]:
        return self.get("/api/v1/series", **{"match[]": match, "start": start or self.started, "end": time.time()})

    def label_values(self, label: str, match: str) -> list[str]:
        return self.get(f"/api/v1/label/{label}/values", **{"match[]": match, "start": self.started})

    def stop(self):
        if self.alerts:
            self.alerts.stop()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class AlertLog(threading.Thread):
    """Polls /api/v1/alerts and keeps, for every alert (name and labels), when
    it was first seen pending, first seen firing, and seen gone again."""

    EVERY = 0.5

    def __init__(self, prometheus: Prometheus):
        super().__init__(daemon=True)
        self.prometheus, self.stopped = prometheus, threading.Event()
        self.lock = threading.Lock()
        self.episodes: list[dict] = []  # {name, labels, pending, firing, resolved}: Unix times or None
        self.open: dict[tuple, dict] = {}
        self.errors = 0
        self.start()

    def run(self):
        while not self.stopped.wait(self.EVERY):
            try:
                alerts = self.prometheus.get("/api/v1/alerts")["alerts"]
            except (OSError, ValueError, AssertionError):
                self.errors += 1
                continue
            now = time.time()
            seen = set()
            with self.lock:
                for alert in alerts:
                    labels = dict(alert["labels"])
                    key = tuple(sorted(labels.items()))
                    seen.add(key)
                    episode = self.open.get(key)
                    if episode is None:
                        episode = {"name": labels["alertname"], "labels": labels, "pending": None, "firing": None}
                        episode["resolved"] = None
                        self.open[key] = episode
                        self.episodes.append(episode)
                    if episode["pending"] is None:
                        episode["pending"] = now
                    if alert["state"] == "firing" and episode["firing"] is None:
                        episode["firing"] = now
                for key in list(self.open):
                    if key not in seen:
                        self.open.pop(key)["resolved"] = now

    def stop(self):
        self.stopped.set()
        self.join(timeout=5)

    def since(self, start: float, name: str | None = None) -> list[dict]:
        """Episodes of NAME (every alert if None) active at or after START."""
        with self.lock:
            return [
                dict(e)
                for e in self.episodes
                if (name is None or e["name"] == name) and (e["resolved"] is None or e["resolved"] >= start)
            ]

    def wait(self, what: str, check, deadline: float):
        started = time.monotonic()
        while not check():
            assert time.monotonic() - started < deadline, f"timed out after {deadline:.0f}s waiting for {what}"
            time.sleep(self.EVERY)


def pods_in(episodes: list[dict], state: str) -> set[str]:
    """The pods of EPISODES that reached STATE (pending, firing or resolved)."""
    return {e["labels"].get("pod") for e in episodes if e[state]}


TIMELINE_HEADER = ["scenario", "alert", "series", "pending", "firing", "resolved"]


def timeline_rows(scenario: str, start: float, episodes: list[dict]) -> list[list[str]]:
    """One row per alert name: when the first went pending and firing, and the last resolved, in
    seconds from START, with how many series (pods) it covered."""
    rows = []
    for name in sorted({e["name"] for e in episodes}):
        mine = [e for e in episodes if e["name"] == name]

        def at(times, pick):
            times = [t for t in times if t is not None]
            return f"+{pick(times) - start:.1f}" if times else "-"

        resolved = [e["resolved"] for e in mine]
        rows.append(
            [
                scenario,
                name,
                str(len(mine)),
                at([e["pending"] for e in mine], min),
                at([e["firing"] for e in mine], min),
                at(resolved, max) if None not in resolved else "still active",
            ]
        )
    return rows
