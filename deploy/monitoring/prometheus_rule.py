#!/usr/bin/env python3
"""Writes the prometheus-rules component's PrometheusRule from read-api.rules.yaml.

The plain rule file is the one home of the rules (promtool checks and tests
it); the PrometheusRule carries the same groups under `spec:`, comments
included. deploy/tests/test_monitoring.py fails when the two differ.

Usage: python3 deploy/monitoring/prometheus_rule.py [--check]
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RULES = HERE / "read-api.rules.yaml"
TARGET = HERE.parent / "components" / "prometheus-rules" / "prometheus-rule.yaml"

HEADER = """\
# Generated from deploy/monitoring/read-api.rules.yaml by
# deploy/monitoring/prometheus_rule.py: edit the rule file, then run
#   python3 deploy/monitoring/prometheus_rule.py
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


def render() -> str:
    lines = RULES.read_text().splitlines()
    # The rule file's own header comment explains the file, not the resource.
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = [("  " + line) if line else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main() -> int:
    text = render()
    if sys.argv[1:] == ["--check"]:
        if TARGET.read_text() != text:
            script = Path(__file__).relative_to(HERE.parents[1])
            print(f"{TARGET} is out of date: run python3 {script}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
