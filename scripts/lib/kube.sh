# shellcheck shell=bash
# Sourced by the scripts that talk to a cluster.

# Stops with a clear message when kubectl cannot reach a cluster.
require_cluster() {
    command -v kubectl >/dev/null || { echo "${0##*/}: kubectl is not installed" >&2; exit 1; }
    if ! kubectl version --request-timeout=5s >/dev/null 2>&1; then
        local context
        context=$(kubectl config current-context 2>/dev/null || echo none)
        echo "${0##*/}: kubectl reaches no cluster (current context: $context). Point it at one (kubectl config use-context NAME, or KUBECONFIG) and run this again." >&2
        exit 1
    fi
}
