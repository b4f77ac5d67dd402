#!/usr/bin/env bash
# The original experiment on a cluster: a rate ladder from PODS vegeta pods (a
# Kubernetes Job, loadtest/k8s) against svc/read-api, each pod at RATE/PODS.
# Each step's pod histograms merge into one result; the summary and the plot
# include every topology measured so far, for side-by-side comparison.
#
#   TOPOLOGY   label of this series: what is deployed (sidecar or central)
#   RATES      comma-separated total requests/s (default 5000,10000,20000,40000,60000,80000)
#   DURATION   seconds per step (default 30)
#   PODS       attacking pods (default 5)
#   TARGET     known-key | random | batch (default known-key)
#   NAMESPACE  (default read-api)
#   IMAGE_REGISTRY, IMAGE_TAG  where make images pushed read-api-vegeta (default localhost, the kit's tag)
# Results: target/loadtest-cluster/TOPOLOGY/summary.{jsonl,md}, target/loadtest-cluster/ladder.svg
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=../scripts/lib/kube.sh
source "$repo/scripts/lib/kube.sh"

TOPOLOGY=${TOPOLOGY:?set TOPOLOGY to the deployed topology (sidecar or central)}
RATES=${RATES:-5000,10000,20000,40000,60000,80000}
DURATION=${DURATION:-30}
PODS=${PODS:-5}
TARGET=${TARGET:-known-key}
NAMESPACE=${NAMESPACE:-read-api}
IMAGE_REGISTRY=${IMAGE_REGISTRY:-localhost}
IMAGE_TAG=${IMAGE_TAG:-$("$repo/scripts/versions.sh" tag read-api-vegeta)}
out="$repo/target/loadtest-cluster/$TOPOLOGY"
k=(kubectl -n "$NAMESPACE")
bench_py() { python3 "$here/lib/bench.py" "$@"; }

main() {
    require_cluster
    "${k[@]}" get deployment/read-api >/dev/null 2>&1 \
        || { echo "cluster: no deployment/read-api in namespace $NAMESPACE: make deploy-$TOPOLOGY first" >&2; exit 1; }
    mkdir -p "$out"
    summary="$out/summary.jsonl"
    : >"$summary"
    "$here/targets.sh" "$TARGET" "http://read-api.$NAMESPACE.svc.cluster.local" >"$out/targets.txt"

    IFS=',' read -ra rates <<<"$RATES"
    for rate in "${rates[@]}"; do
        step="$out/step-$rate"
        mkdir -p "$step"
        per_pod=$(((rate + PODS - 1) / PODS))
        cp "$out/targets.txt" "$step/targets.txt"
        bench_py render "$here/templates/cluster-step.kustomization.yaml" "$step/kustomization.yaml" \
            NAMESPACE="$NAMESPACE" IMAGE_REGISTRY="$IMAGE_REGISTRY" IMAGE_TAG="$IMAGE_TAG" PODS="$PODS" \
            per_pod="$per_pod" DURATION="$DURATION"
        echo "cluster: $TOPOLOGY at $rate/s ($PODS pods x $per_pod/s) for ${DURATION}s" >&2
        "${k[@]}" delete job vegeta-attack --ignore-not-found --wait >/dev/null
        kubectl kustomize "$step" | kubectl apply -f - >/dev/null
        if ! "${k[@]}" wait --for=condition=complete job/vegeta-attack --timeout="$((DURATION + 180))s" >/dev/null; then
            echo "cluster: the attack job did not complete; its pods:" >&2
            "${k[@]}" get pods -l job-name=vegeta-attack >&2
            exit 1
        fi
        rm -f "$step"/hist-*.txt
        for pod in $("${k[@]}" get pods -l job-name=vegeta-attack -o name); do
            "${k[@]}" logs "$pod" >"$step/hist-${pod#pod/}.txt"
        done
        python3 "$here/lib/results.py" hist "$step"/hist-*.txt --label "$TOPOLOGY" --rate "$rate" \
            --duration "$DURATION" | tee -a "$summary" >&2
    done
    "${k[@]}" delete job vegeta-attack --ignore-not-found >/dev/null

    python3 "$here/lib/results.py" table "$summary" | tee "$out/summary.md"
    "$here/plot.sh" "$repo/target/loadtest-cluster/ladder.svg" "$repo"/target/loadtest-cluster/*/summary.jsonl
}

main "$@"
