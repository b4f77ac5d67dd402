#!/usr/bin/env python3
"""Reads `kubectl get pods -o json` on stdin and prints, for scripts/deploy.sh's
report on a rollout that timed out, one line per container that is not ready:
POD CONTAINER RESTARTS; a pod with no container started yet (Pending, pulling)
prints POD - 0, so that its events are shown."""

import json
import sys


def main():
    for pod in json.load(sys.stdin).get("items", []):
        name = pod["metadata"]["name"]
        statuses = pod.get("status", {}).get("initContainerStatuses", []) + pod.get("status", {}).get(
            "containerStatuses", []
        )
        # A finished init container is done, not failing.
        done = lambda s: s.get("state", {}).get("terminated", {}).get("reason") == "Completed"  # noqa: E731
        unready = [s for s in statuses if not s.get("ready") and not done(s)]
        if not statuses:
            print(name, "-", 0)
        for status in unready:
            print(name, status["name"], status.get("restartCount", 0))


if __name__ == "__main__":
    main()
