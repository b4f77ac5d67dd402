#!/usr/bin/env python3
"""A kubectl for scripts/deploy.sh without a cluster (test_deploy.py puts it
first on PATH). It answers as a cluster holding the objects applied so far:

- `version`, `rollout ...`: succeed;
- `kustomize`, `create ... --dry-run=client`: the real kubectl (REAL_KUBECTL);
- `apply -f -`: stores each object in FAKE_KUBE_STATE/<kind>.<name>.yaml;
- `get secret NAME [-o jsonpath={.data} or {.data.KEY}]`: from what was stored;
- `get crd NAME`: found if NAME is in FAKE_CRDS (space-separated);
- `wait ...`: succeeds at once (whatever it waits for is ready);
- anything else: fails, so that a test sees an unexpected call.
"""

import json
import os
import re
import sys
from pathlib import Path

import yaml

STATE = Path(os.environ["FAKE_KUBE_STATE"])


def stored(kind, name):
    path = STATE / f"{kind}.{name}.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else None


def main(argv):
    args, i = [], 0
    while i < len(argv):
        if argv[i] in ("-n", "--namespace"):
            i += 2
            continue
        if not argv[i].startswith("--request-timeout"):
            args.append(argv[i])
        i += 1
    verb = args[0] if args else ""
    if verb in ("version", "rollout", "wait"):
        return 0
    if verb in ("kustomize", "create"):
        os.execv(os.environ["REAL_KUBECTL"], [os.environ["REAL_KUBECTL"], *argv])
    if verb == "apply" and args[1:] == ["-f", "-"]:
        for doc in yaml.safe_load_all(sys.stdin):
            if doc:
                (STATE / f"{doc['kind']}.{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))
        return 0
    if verb == "get" and len(args) >= 3 and args[1] == "secret":
        secret = stored("Secret", args[2])
        if secret is None:
            print(f'Error from server (NotFound): secrets "{args[2]}" not found', file=sys.stderr)
            return 1
        output = next((a for a in args if a.startswith("jsonpath=")), None)
        if "-o" in args:
            output = args[args.index("-o") + 1]
        if output == "jsonpath={.data}":
            print(json.dumps(secret.get("data", {}), sort_keys=True), end="")
        elif output:
            key = re.fullmatch(r"jsonpath=\{\.data\.(.+)\}", output).group(1)
            print(secret.get("data", {}).get(key, ""), end="")
        return 0
    if verb == "get" and args[1:2] == ["crd"]:
        return 0 if args[2] in os.environ.get("FAKE_CRDS", "").split() else 1
    if verb == "get":
        return 1
    print(f"fake kubectl: unexpected call: kubectl {' '.join(argv)}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
