#!/usr/bin/env python3
"""A kubectl for scripts/deploy.sh and scripts/doctor.py without a cluster
(test_deploy.py puts it first on PATH). It answers as a cluster holding the
objects applied (or stored by a test) so far, and appends every call, as a JSON
list of its arguments, to FAKE_KUBE_STATE/calls:

- `version`, `wait`: succeed (whatever is waited for is ready), except
  `wait ... job/NAME` when NAME is in FAKE_JOB_FAILS;
- `rollout status KIND/NAME`: succeeds, unless NAME is in FAKE_ROLLOUT_FAILS;
- `config current-context`: FAKE_CONTEXT (default kind-read-api);
- `kustomize`, `create ... --dry-run=client`, `annotate --local`: the real kubectl (REAL_KUBECTL);
- `apply [--server-side ...] -f -|FILE`: stores each object in FAKE_KUBE_STATE/<Kind>.<name>.yaml;
  a StatefulSet whose volumeClaimTemplates differ from the stored one is refused,
  as the API server does;
- `get KIND [NAME] [-l SELECTOR] [-o json|name|jsonpath={.a.b}]`: from what is stored
  (Secrets, Nodes, StorageClasses, Pods, Events, ...); `get crd NAME`: found if
  NAME is in FAKE_CRDS (space-separated); a kind (plural, lower case) in
  FAKE_FORBIDDEN answers Forbidden;
- `delete KIND NAME ...`: removes it; `delete -f -`: succeeds;
- `auth can-i VERB RESOURCE`: yes, unless "VERB RESOURCE" is in FAKE_DENY (comma-separated);
- `logs POD -c CONTAINER ...`: the text stored as Log.<POD>.<CONTAINER>.txt;
  `logs job/NAME`: FAKE_JOB_LOG;
- anything else: fails, so that a test sees an unexpected call.
"""

import json
import os
import re
import sys
from pathlib import Path

import yaml

STATE = Path(os.environ["FAKE_KUBE_STATE"])
KINDS = {
    "secret": "Secret",
    "namespace": "Namespace",
    "node": "Node",
    "storageclass": "StorageClass",
    "pod": "Pod",
    "event": "Event",
    "deployment": "Deployment",
    "statefulset": "StatefulSet",
    "daemonset": "DaemonSet",
    "job": "Job",
    "apiservice": "APIService",
    "configmap": "ConfigMap",
    "persistentvolumeclaim": "PersistentVolumeClaim",
}
PLURAL = {"storageclass": "storageclasses"}


def kind_of(word):
    word = word.lower().split(".")[0]
    singular = word[:-1] if word.endswith("s") and word[:-1] in KINDS else word
    singular = "storageclass" if word == "storageclasses" else singular
    return singular, KINDS.get(singular)


def stored(kind, name):
    path = STATE / f"{kind}.{name}.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else None


def all_stored(kind):
    return [yaml.safe_load(p.read_text()) for p in sorted(STATE.glob(f"{kind}.*.yaml"))]


def store(doc):
    (STATE / f"{doc['kind']}.{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))


def jsonpath(obj, expression):
    """{.a.b} with backslash-escaped dots in keys: enough for the scripts' look-ups."""
    path = re.fullmatch(r"\{\.(.*)\}", expression).group(1)
    for key in re.split(r"(?<!\\)\.", path):
        key = key.replace("\\.", ".")
        obj = obj.get(key) if isinstance(obj, dict) else None
        if obj is None:
            return ""
    return json.dumps(obj, sort_keys=True) if isinstance(obj, (dict, list)) else str(obj)


def matches(obj, selector):
    labels = obj.get("metadata", {}).get("labels", {})
    return all(labels.get(k) == v for k, v in (p.split("=", 1) for p in selector.split(",") if p))


def output(args):
    for i, a in enumerate(args):
        if a == "-o":
            return args[i + 1]
        if a.startswith("-o"):
            return a[2:].lstrip("=")
        if a.startswith("--output="):
            return a.split("=", 1)[1]
    return None


def option(args, name):
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def forbidden(singular, verb="get"):
    plural = PLURAL.get(singular, singular + "s")
    if plural in os.environ.get("FAKE_FORBIDDEN", "").split():
        print(
            f'Error from server (Forbidden): {plural} is forbidden: User "u" cannot {verb} resource "{plural}"',
            file=sys.stderr,
        )
        return True
    return False


def get(args):
    words = [a for a in args[1:] if not a.startswith("-")]
    # the values of -o, -l and --field-selector are not words
    for flag in ("-o", "-l", "--selector", "--field-selector", "--sort-by"):
        if flag in args:
            value = args[args.index(flag) + 1]
            words = [w for w in words if w != value]
    if not words:
        return 1
    if "/" in words[0]:
        words = words[0].split("/", 1)
    singular, kind = kind_of(words[0])
    if singular == "crd":
        return 0 if words[1] in os.environ.get("FAKE_CRDS", "").split() else 1
    if kind is None:
        print(f"fake kubectl: unknown kind {words[0]}", file=sys.stderr)
        return 3
    if forbidden(singular):
        return 1
    out = output(args)
    if len(words) > 1:
        obj = stored(kind, words[1])
        if obj is None:
            print(f'Error from server (NotFound): {words[0]} "{words[1]}" not found', file=sys.stderr)
            return 1
        if out == "json":
            print(json.dumps(obj))
        elif out == "name":
            print(f"{singular}/{words[1]}")
        elif out and out.startswith("jsonpath="):
            print(jsonpath(obj, out[len("jsonpath=") :]), end="")
        else:
            print(f"{words[1]}")
        return 0
    items = all_stored(kind)
    selector = option(args, "-l") or option(args, "--selector")
    if selector:
        items = [o for o in items if matches(o, selector)]
    fields = option(args, "--field-selector")
    if fields:
        for condition in fields.split(","):
            key, value = condition.split("=", 1)
            items = [o for o in items if jsonpath(o, "{." + key + "}") == value]
    if out == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    elif out == "name":
        print("".join(f"{singular}/{o['metadata']['name']}\n" for o in items), end="")
    elif kind == "Event":
        for e in items:
            print(f"{e.get('type', 'Normal')}  {e.get('reason', '')}  {e['involvedObject']['name']}  {e['message']}")
    else:
        print("".join(f"{o['metadata']['name']}\n" for o in items), end="")
    return 0


def apply(args, namespace):
    source = option(args, "-f") or option(args, "--filename")
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        if doc["kind"] == "Namespace" and forbidden("namespace", "patch"):
            return 1
        old = stored(doc["kind"], doc["metadata"]["name"])
        if doc["kind"] == "StatefulSet" and old:
            if old["spec"].get("volumeClaimTemplates") != doc["spec"].get("volumeClaimTemplates"):
                print(
                    f'The StatefulSet "{doc["metadata"]["name"]}" is invalid: spec: Forbidden: updates to '
                    "statefulset spec for fields other than 'replicas', 'ordinals', 'template', "
                    "'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                    file=sys.stderr,
                )
                return 1
    for doc in docs:
        if namespace and doc["kind"] != "Namespace":
            doc["metadata"].setdefault("namespace", namespace)
        old = stored(doc["kind"], doc["metadata"]["name"])
        if old and "--server-side" in args:
            # Server-side apply merges: a partial object updates what it names.
            merged = old
            for key, value in doc.get("spec", {}).items():
                merged.setdefault("spec", {})[key] = value
            for key, value in doc.items():
                if key != "spec":
                    merged[key] = value
            doc = merged
        store(doc)
    return 0


def main(argv):
    with (STATE / "calls").open("a") as calls:
        calls.write(json.dumps(argv) + "\n")
    args, i, namespace = [], 0, None
    while i < len(argv):
        if argv[i] in ("-n", "--namespace"):
            namespace = argv[i + 1]
            i += 2
            continue
        if argv[i].startswith("--namespace="):
            namespace = argv[i].split("=", 1)[1]
        elif not argv[i].startswith("--request-timeout"):
            args.append(argv[i])
        i += 1
    verb = args[0] if args else ""
    if verb == "version":
        return 0
    if verb == "wait":
        job = next((a[4:] for a in args if a.startswith("job/")), None)
        return 1 if job and job in os.environ.get("FAKE_JOB_FAILS", "").split() else 0
    if verb == "rollout":
        name = args[2].split("/")[-1] if len(args) > 2 else ""
        if name in os.environ.get("FAKE_ROLLOUT_FAILS", "").split():
            print(f"error: timed out waiting for the condition on {args[2]}", file=sys.stderr)
            return 1
        return 0
    if verb == "config" and args[1:2] == ["current-context"]:
        print(os.environ.get("FAKE_CONTEXT", "kind-read-api"))
        return 0
    if verb in ("kustomize", "create") or (verb == "annotate" and "--local" in args):
        os.execv(os.environ["REAL_KUBECTL"], [os.environ["REAL_KUBECTL"], *argv])
    if verb == "apply":
        return apply(args, namespace)
    if verb == "get":
        return get(args)
    if verb == "delete":
        words = [a for a in args[1:] if not a.startswith("-")]
        if "-f" in args:
            return 0
        if "/" in words[0]:
            words = words[0].split("/", 1)
        _, kind = kind_of(words[0])
        path = STATE / f"{kind}.{words[1]}.yaml"
        if path.exists():
            path.unlink()
        return 0
    if verb == "auth" and args[1:2] == ["can-i"]:
        asked = " ".join(a for a in args[2:4])
        denied = {d.strip() for d in os.environ.get("FAKE_DENY", "").split(",") if d.strip()}
        print("no" if asked in denied else "yes")
        return 1 if asked in denied else 0
    if verb == "logs":
        target = args[1]
        if target.startswith("job/"):
            print(os.environ.get("FAKE_JOB_LOG", ""))
            return 0
        path = STATE / f"Log.{target}.{option(args, '-c')}.txt"
        print(path.read_text() if path.exists() else "", end="")
        return 0
    print(f"fake kubectl: unexpected call: kubectl {' '.join(argv)}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
