#!/usr/bin/env python3
"""Writes the kit's monitoring files from templates/ and config.yaml.

config.yaml is the one home of what the monitoring selects (namespace, job
names, container names, where runbooks live); the templates hold the rules, the
rules' unit tests, the PodMonitors, the dashboard and the Datadog annotations
with placeholders such as %(apiSelector)s (named .in: no YAML or JSON until
filled). The outputs are committed, so that
a kustomization or a Prometheus reads them as they are;
deploy/tests/test_monitoring.py fails when one differs from what this writes.

Usage: .venv/bin/python deploy/monitoring/generate.py [--check]  (make venv makes .venv)
"""

import json
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIG = HERE / "config.yaml"
TEMPLATES = HERE / "templates"
COMPONENTS = REPO / "deploy/components"
RULES = HERE / "read-api.rules.yaml"
PROMETHEUS_RULE = COMPONENTS / "prometheus-rules/prometheus-rule.yaml"
# template -> output; the PrometheusRule is made from the rule file (prometheus_rule()).
FILES = {
    "read-api.rules.yaml.in": RULES,
    "read-api.rules.test.yaml.in": HERE / "read-api.rules.test.yaml",
    "pod-monitor.yaml.in": COMPONENTS / "pod-monitor/pod-monitor.yaml",
    "datadog-api.yaml.in": COMPONENTS / "datadog/api.yaml",
    "datadog-redis-exporter.yaml.in": COMPONENTS / "datadog/redis-exporter.yaml",
    "read-api-dashboard.json.in": COMPONENTS / "grafana-dashboard/read-api-dashboard.json",
}
PLACEHOLDER = re.compile(r"%\((\w+)\)s")
# A label value that goes between double quotes in PromQL and into a Kubernetes name unescaped.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
REGENERATE = ".venv/bin/python deploy/monitoring/generate.py"

PROMETHEUS_RULE_HEADER = """\
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: read-api
  # The overlays' namespace: objects that a component adds are not moved by
  # the overlay's namespace field (yours, if you set one, moves them).
  namespace: read-api
  labels:
    app.kubernetes.io/name: read-api
    app.kubernetes.io/part-of: read-api
spec:
"""


class ConfigError(Exception):
    pass


def load_config(path: Path = CONFIG) -> dict:
    config = yaml.safe_load(path.read_text()) or {}

    def name(*keys):
        value = config
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        field = ".".join(keys)
        if not isinstance(value, str) or not NAME.fullmatch(value):
            raise ConfigError(
                f"{path.name}: {field} must be a name such as read-api (letters, digits, . _ / -), got {value!r}"
            )
        return value

    jobs = {key: name("jobs", key) for key in ("api", "exporter", "kube_state_metrics")}
    containers = {key: name("containers", key) for key in ("api", "redis", "exporter")}
    runbook = config.get("runbook_url")
    if not isinstance(runbook, str) or not runbook.endswith("runbooks.md") or "#" in runbook:
        raise ConfigError(
            f"{path.name}: runbook_url must be the address of docs/runbooks.md, no #anchor, got {runbook!r}"
        )
    return {"namespace": name("namespace"), "jobs": jobs, "containers": containers, "runbook_url": runbook}


def values(config: dict) -> dict[str, str]:
    """What the placeholders stand for."""
    namespace, jobs, containers = config["namespace"], config["jobs"], config["containers"]
    found = {
        "namespace": namespace,
        "runbookUrl": config["runbook_url"],
        "apiContainer": containers["api"],
        "redisContainer": containers["redis"],
        "exporterContainer": containers["exporter"],
    }
    for key, job in (
        ("api", jobs["api"]),
        ("exporter", jobs["exporter"]),
        ("kubeStateMetrics", jobs["kube_state_metrics"]),
    ):
        found[f"{key}Job"] = job
        # The dashboard picks the namespace with a variable; the rules select the configured one.
        found[f"{key}JobSelector"] = f'job="{job}"'
        found[f"{key}Selector"] = f'job="{job}", namespace="{namespace}"'
    return found


def fill(text: str, filled: dict[str, str], where: str) -> str:
    def one(match):
        if match.group(1) not in filled:
            raise ConfigError(f"{where}: unknown placeholder {match.group(0)} (known: {', '.join(sorted(filled))})")
        return filled[match.group(1)]

    return PLACEHOLDER.sub(one, text)


def generated_header(template: str) -> str:
    return (
        f"# Generated from deploy/monitoring/templates/{template} and deploy/monitoring/config.yaml:\n"
        f"# edit those, then run {REGENERATE}\n"
    )


def render_template(template: str, filled: dict[str, str]) -> str:
    text = (TEMPLATES / template).read_text()
    if template.endswith(".json.in"):
        # JSON has no comments; strings are filled after parsing, so a quote in a selector stays escaped.
        def walk(node):
            if isinstance(node, dict):
                return {k: walk(v) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v) for v in node]
            return fill(node, filled, template) if isinstance(node, str) else node

        return json.dumps(walk(json.loads(text)), indent=2, ensure_ascii=False) + "\n"
    return generated_header(template) + fill(text, filled, template)


def prometheus_rule(rules: str) -> str:
    """The rule file's groups under a PrometheusRule's spec:, comments included."""
    lines = rules.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = [("  " + line) if line else "" for line in lines[start:]]
    return generated_header("read-api.rules.yaml.in") + PROMETHEUS_RULE_HEADER + "\n".join(body) + "\n"


def render(config: dict | None = None) -> dict[Path, str]:
    """Every output file and its text."""
    filled = values(config or load_config())
    out = {path: render_template(template, filled) for template, path in FILES.items()}
    out[PROMETHEUS_RULE] = prometheus_rule(out[RULES])
    return out


def main() -> int:
    try:
        outputs = render()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    if sys.argv[1:] == ["--check"]:
        stale = [path for path, text in outputs.items() if not path.exists() or path.read_text() != text]
        for path in stale:
            print(f"{path.relative_to(REPO)} is out of date: run {REGENERATE}", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
