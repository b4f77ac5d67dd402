#!/usr/bin/env bash
# Deploys the kit to the cluster kubectl points at. The Makefile's deploy
# targets call this; each subcommand can be run alone.
#
#   render TARGET         print the manifests of sidecar|central|relay|node-local|master, with images set
#   master                in-cluster TLS master: certificates, Secrets, StatefulSet
#                         (CERT_MANAGER=1: cert-manager issues and renews the certificate)
#   master-secret         the redis-master Secret for a hosted master, from
#                         MASTER_HOST, MASTER_PORT, MASTER_PASSWORD, MASTER_CA [, MASTER_USER]
#                         [, MASTER_REPLICA_USER, MASTER_REPLICA_PASSWORD: the replicas' account]
#   sidecar | central | relay | node-local
#                         the API in that topology (needs the redis-master Secret);
#                         relay also deploys the relays, node-local the node replicas
#   undeploy              remove the API (every topology) and the in-cluster master;
#                         Secrets and the master's volume stay unless PURGE=1
#   kind-load             load the read-api images into the kind cluster of the current
#                         context (KIND_CLUSTER to name another), from CONTAINER_TOOL
#   port-forward          svc/read-api on localhost:$LOCAL_PORT (default 8080)
#   smoke                 curl known-key through a port-forward
#   seed KEY VALUE        write through the master
#
# Settings: NAMESPACE (read-api), IMAGE_REGISTRY (the one make images last used, recorded in
# target/images/registry, else localhost), IMAGE_TAG (the read-api tag in deploy/images),
# CERTS_DIR (target/certs), ROLLOUT_TIMEOUT (300s; make size gives it for other sizes),
# COMPONENTS (pdb,hpa,size,...: deploy/components/NAME, size: make size's target/size),
# SIZE (small: deploy/components/small, the default on kind; default: the kit's own sizes),
# STORAGE_CLASS (the claims' StorageClass; the cluster's default otherwise),
# IMAGE_PULL_SECRET (a Secret of the namespace to pull the images with),
# MASTER_CIDR (a hosted master's addresses, which the egress policy lets the pods reach).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
NAMESPACE=${NAMESPACE:-read-api}
COMPONENTS=${COMPONENTS:-}
IMAGES_RECORD=${IMAGES_RECORD:-$repo/target/images/registry}
if [[ -z ${IMAGE_REGISTRY:-} ]]; then
    IMAGE_REGISTRY=localhost
    [[ ! -s $IMAGES_RECORD ]] || IMAGE_REGISTRY=$(<"$IMAGES_RECORD")
fi
IMAGE_TAG=${IMAGE_TAG:-$("$repo/scripts/versions.sh" tag read-api)}
export NAMESPACE IMAGE_REGISTRY IMAGE_TAG
CERTS_DIR=${CERTS_DIR:-$repo/target/certs}
ROLLOUT_TIMEOUT=${ROLLOUT_TIMEOUT:-300s}
LOCAL_PORT=${LOCAL_PORT:-8080}
k=(kubectl -n "$NAMESPACE")

# shellcheck source=lib/kube.sh
source "$repo/scripts/lib/kube.sh"

say() { printf '%s\n' "deploy: $*" >&2; }
die() { say "$*"; exit 1; }

# Renders deploy/<dir> with the images from IMAGE_REGISTRY and IMAGE_TAG and the
# components asked for, through a generated kustomization, so the repository is
# never edited.
render() {
    local dir
    case $1 in
        sidecar | central | relay | node-local) dir=overlays/$1 ;;
        master | namespace | doctor) dir=$1 ;;
        *) die "render takes sidecar, central, relay, node-local or master, not '$1'" ;;
    esac
    # A directory of its own: two renders at once (make render beside a deploy,
    # the tests side by side) must not write into each other's kustomization.
    mkdir -p "$repo/target/deploy"
    local work
    work=$(mktemp -d "$repo/target/deploy/$1.XXXXXX")
    command -v envsubst >/dev/null || "$repo/scripts/install-deps.sh" envsubst
    local components=() name path
    if [[ $1 != namespace && $1 != doctor ]]; then
        [[ $1 == master && ${CERT_MANAGER:-0} == 1 ]] && components+=(../../../deploy/components/cert-manager)
        [[ $(size_profile) != small ]] || components+=("../../../deploy/components/small/$1")
        for name in ${COMPONENTS//,/ }; do
            path=$(component_path "$name") || exit 1
            # The size tool's component covers the master too; the others are the API's.
            [[ $1 != master || $name == size ]] || continue
            components+=("$path")
        done
        if [[ -n ${STORAGE_CLASS:-} && $1 =~ ^(master|relay)$ ]]; then
            generate storage-class "$work" '$STORAGE_CLASS'
            components+=(./storage-class)
        fi
        if [[ -n ${IMAGE_PULL_SECRET:-} ]]; then
            generate pull-secret "$work" '$IMAGE_PULL_SECRET'
            components+=(./pull-secret)
        fi
        if [[ -n ${MASTER_CIDR:-} && $1 != master ]]; then
            EGRESS_POLICY=$(egress_policy "$1") MASTER_PORT=${MASTER_PORT:-6380} \
                generate master-egress "$work" '$EGRESS_POLICY $MASTER_CIDR $MASTER_PORT'
            components+=(./master-egress)
        fi
    fi
    local IFS=,
    DIR=$dir READ_API_DIGEST=$(pushed_digest read-api) READ_API_STUNNEL_DIGEST=$(pushed_digest read-api-stunnel) \
        SECRETS_HASH=${SECRETS_HASH:-} COMPONENTS="${components[*]}" \
        envsubst '$DIR $NAMESPACE $IMAGE_REGISTRY $IMAGE_TAG $READ_API_DIGEST $READ_API_STUNNEL_DIGEST $SECRETS_HASH $COMPONENTS' \
        <"$repo/scripts/templates/render.kustomization.yaml" >"$work/kustomization.yaml"
    local status=0
    kubectl kustomize "$work" || status=$?
    rm -rf "$work"
    return "$status"
}

# generate NAME WORK VARIABLES: scripts/templates/components/NAME, filled in, as WORK/NAME.
generate() {
    mkdir -p "$2/$1"
    envsubst "$3" <"$repo/scripts/templates/components/$1/kustomization.yaml" >"$2/$1/kustomization.yaml"
}

# The path, from a render's work directory, of a component named in COMPONENTS.
component_path() {
    case $1 in
        size)
            [[ -r $repo/target/size/kustomization.yaml ]] \
                || die "COMPONENTS names size, but target/size has no component: run 'make size DATASET=… PODS=…' first"
            echo ../../size
            ;;
        */*)
            [[ -r $repo/$1/kustomization.yaml ]] || die "COMPONENTS names $1, which has no kustomization.yaml"
            echo "../../../$1"
            ;;
        *)
            [[ -r $repo/deploy/components/$1/kustomization.yaml ]] \
                || die "COMPONENTS names '$1', which is not in deploy/components ($(ls "$repo/deploy/components" | tr '\n' ' '))"
            echo "../../../deploy/components/$1"
            ;;
    esac
}

# The egress policy of the pods that follow the master in each topology.
egress_policy() {
    case $1 in
        relay) echo redis-relay-egress ;;
        node-local) echo redis-node-egress ;;
        *) echo read-api-egress ;;
    esac
}

# SIZE=small or default; unset, small on a laptop cluster (kind, minikube, ...) unless COMPONENTS has size.
size_profile() {
    case ${SIZE:-} in
        small | default) echo "$SIZE" ;;
        '') if [[ ,$COMPONENTS, != *,size,* ]] && local_cluster; then echo small; else echo default; fi ;;
        *) die "SIZE takes small or default, not '$SIZE' (make size writes other sizes: COMPONENTS=size)" ;;
    esac
}

# Whether the current context is a cluster on this machine, which can run localhost/ images.
local_cluster() {
    local context
    context=$(kubectl config current-context 2>/dev/null) || return 1
    [[ $context =~ ^kind-|^minikube$|^docker-desktop$|podman ]]
}

# The digest make images PUSH=1 recorded for $IMAGE_REGISTRY/NAME:$IMAGE_TAG, if any.
pushed_digest() {
    local file=${PUSHED_DIGESTS:-$repo/target/images/pushed-digests}
    [[ -r $file ]] || return 0
    awk -v image="$IMAGE_REGISTRY/$1:$IMAGE_TAG" '$1 == image { digest = $2 } END { print digest }' "$file"
}

# A short hash of the data of the given Secrets, as the cluster holds them now.
secrets_hash() {
    local name
    for name in "$@"; do
        printf '%s\n' "$name"
        "${k[@]}" get secret "$name" -o 'jsonpath={.data}'
        printf '\n'
    done | sha256sum | cut -c1-16
}

# Dots in a key are escaped: jsonpath reads {.data.ca.crt} as ca, then crt.
secret_value() {
    "${k[@]}" get secret "$1" -o "jsonpath={.data.${2//./\\.}}" 2>/dev/null | base64 -d 2>/dev/null || true
}

apply_secret() {
    kubectl create secret generic "$@" -n "$NAMESPACE" --dry-run=client -o yaml | ssa -f - >/dev/null
}

# Server-side apply: the API server merges by field owner, so a field the kit no
# longer sets (replicas, once the hpa component owns them) is left to its new owner
# instead of being reset, as client-side apply's last-applied annotation would.
ssa() {
    kubectl apply -n "$NAMESPACE" --server-side --field-manager=read-api-kit --force-conflicts "$@"
}

# Creates the namespace only when it is missing: a user with rights in the
# namespace alone may not read or patch Namespace objects.
ensure_namespace() {
    local out
    out=$(kubectl get namespace "$NAMESPACE" -o name 2>&1) && return 0
    if [[ $out == *NotFound* ]]; then
        render namespace | kubectl apply --server-side --field-manager=read-api-kit -f - >/dev/null
        say "created namespace $NAMESPACE"
    elif [[ $out == *Forbidden* ]]; then
        say "no right to read namespace $NAMESPACE: taking it as there (an administrator creates it)"
    else
        die "kubectl get namespace $NAMESPACE: $out"
    fi
}

# apply_rendered TARGET: the rendered TARGET without its Namespace, server-side.
apply_rendered() {
    local file="$repo/target/deploy/$1.yaml"
    render "$1" | drop_namespace >"$file"
    [[ $1 == master ]] || refuse_local_images "$file"
    [[ $1 == master ]] || hand_replicas_to_the_hpa "$file"
    local out
    if ! out=$(ssa -f "$file" 2>&1); then
        # A StatefulSet's volumeClaimTemplates cannot change (a size or a StorageClass):
        # replace the StatefulSet alone, its pods and claims stay and are adopted again.
        local names name
        names=$(grep -o 'The StatefulSet "[^"]*" is invalid: spec: Forbidden' <<<"$out" | cut -d'"' -f2) || true
        [[ -n $names ]] || { printf '%s\n' "$out" >&2; die "kubectl apply of $1 failed"; }
        for name in $names; do
            say "statefulset/$name: its volumeClaimTemplates changed, which the API server does not allow; replacing the StatefulSet, its pods and claims stay (existing claims keep their size: grow them with kubectl edit pvc where the StorageClass allows expansion)"
            "${k[@]}" delete statefulset "$name" --cascade=orphan >/dev/null
        done
        out=$(ssa -f "$file" 2>&1) || { printf '%s\n' "$out" >&2; die "kubectl apply of $1 failed"; }
    fi
    printf '%s\n' "$out"
}

# localhost/ images are on this machine only: a cluster elsewhere cannot pull them,
# and every pod would wait in ImagePullBackOff until the rollout times out.
refuse_local_images() {
    local image
    image=$(grep -m1 -oE 'image: localhost/[^ ]+' "$1" | cut -d' ' -f2) || true
    [[ -n $image ]] || return 0
    local_cluster && return 0
    die "the pods would run $image, which only this machine has (current context: $(kubectl config current-context 2>/dev/null || echo none)): push the images with 'make images IMAGE_REGISTRY=registry.example.com/team PUSH=1' (make deploy-* then uses that registry), or set IMAGE_REGISTRY to where they are"
}

# Before the first apply without replicas (the hpa component): a field manager of
# its own keeps the current count, so that the kit's apply, which no longer sets
# it, does not drop the Deployment to 1 pod; the HPA takes it over from there.
hand_replicas_to_the_hpa() {
    grep -q '^kind: HorizontalPodAutoscaler$' "$1" || return 0
    local replicas
    replicas=$("${k[@]}" get deployment read-api -o 'jsonpath={.spec.replicas}' 2>/dev/null) || return 0
    [[ -n $replicas ]] || return 0
    REPLICAS=$replicas envsubst '$REPLICAS' <"$repo/scripts/templates/hpa-handover.yaml" \
        | kubectl apply -n "$NAMESPACE" --server-side --field-manager=read-api-hpa-handover -f - >/dev/null
}

# rollout KIND/NAME: waits until it is ready; on timeout, says why from its pods.
rollout() {
    "${k[@]}" rollout status "$1" --timeout="$ROLLOUT_TIMEOUT" && return 0
    report_pods "${1#*/}"
    die "$1 was not ready within $ROLLOUT_TIMEOUT (ROLLOUT_TIMEOUT): its pods' events and last log lines are above"
}

# The events of the pods of NAME that are not ready, and the last log lines of
# their containers that are not (of the run before, too, when one restarted).
report_pods() {
    local selector=app.kubernetes.io/name=$1 pod container restarts shown=
    say "pods of $1:"
    "${k[@]}" get pods -l "$selector" -o wide >&2 || true
    while read -r pod container restarts; do
        if [[ $pod != "$shown" ]]; then
            say "events of pod $pod:"
            "${k[@]}" get events --field-selector "involvedObject.name=$pod" >&2 || true
            shown=$pod
        fi
        [[ $container != - ]] || continue
        say "last log lines of $pod, container $container:"
        "${k[@]}" logs "$pod" -c "$container" --tail=20 >&2 || true
        if ((restarts > 0)); then
            say "and of its run before the last restart:"
            "${k[@]}" logs "$pod" -c "$container" --tail=20 --previous >&2 || true
        fi
    done < <("${k[@]}" get pods -l "$selector" -o json | python3 "$repo/scripts/lib/unready.py")
}

# The value of KEY in Secret SECRET (redis-master by default), or a new random password if it has none.
# Hex: plain in redis.conf, and in the JSON map of the exporters without escaping.
kept_or_new_password() {
    local value
    value=$(secret_value "${2:-redis-master}" "$1")
    [[ -n $value ]] || value=$(openssl rand -hex 24)
    printf '%s' "$value"
}

# exporter_passwords PASSWORD ADDRESS...: the JSON map of --redis.password-file.
# Hex passwords need no JSON escaping.
exporter_passwords() {
    local password=$1 address entries=()
    shift
    for address; do entries+=("\"$address\": \"$password\""); done
    local IFS=,
    printf '{%s}' "${entries[*]}"
}

deploy_master() {
    require_cluster
    check_storage_class
    local cert_manager=${CERT_MANAGER:-0}
    if [[ $cert_manager == 1 ]]; then
        "${k[@]}" get crd certificates.cert-manager.io >/dev/null 2>&1 \
            || die "CERT_MANAGER=1: cert-manager is not installed in this cluster (no CRD certificates.cert-manager.io)"
    else
        CERTS_DIR=$CERTS_DIR "$repo/scripts/gen-certs.sh"
    fi
    ensure_namespace
    # admin-password: the admin (default user), for make seed and the probes beside it.
    # The others are the ACL users of deploy/config/redis-master/acl-users.conf: the
    # central API reads as "api" (user/password), replicas follow as "replica",
    # heartbeat and exporter run beside the master.
    local key value passwords=()
    for key in admin-password password replica-password heartbeat-password exporter-password; do
        value=$(kept_or_new_password "$key")
        passwords+=(--from-literal="$key=$value")
    done
    # redis_exporter reads its password from a JSON map keyed by the address it
    # scrapes: as the Debian build (1.45) and current ones look it up.
    passwords+=(--from-literal="exporter-passwords.json=$(exporter_passwords "$value" \
        rediss://localhost:6380 rediss://exporter@localhost:6380)")
    local connection=(--from-literal=host="redis-master.$NAMESPACE.svc.cluster.local" --from-literal=port=6380
        --from-literal=user=api --from-literal=replica-user=replica "${passwords[@]}")
    if [[ $cert_manager == 1 ]]; then
        # cert-manager writes redis-master-tls; the clients' CA comes from its CA Secret once issued.
        # Through files: $(...) would drop the PEM's last newline.
        local ca="$repo/target/deploy/cert-manager-ca.crt" known=()
        mkdir -p "${ca%/*}"
        secret_value redis-master-ca ca.crt >"$ca"
        [[ -s $ca ]] || secret_value redis-master ca.crt >"$ca"
        [[ ! -s $ca ]] || known=(--from-file=ca.crt="$ca")
        apply_secret redis-master "${connection[@]}" "${known[@]}"
        SECRETS_HASH=$(secrets_hash redis-master) apply_rendered master
        "${k[@]}" wait --for=condition=Ready certificate/redis-master --timeout="$ROLLOUT_TIMEOUT"
        secret_value redis-master-ca ca.crt >"$ca"
        [[ -s $ca ]] || die "cert-manager issued redis-master but Secret redis-master-ca has no ca.crt"
        # The master does not roll for it: its hash was taken before the CA was added.
        apply_secret redis-master "${connection[@]}" --from-file=ca.crt="$ca"
    else
        apply_secret redis-master-tls --from-file=tls.crt="$CERTS_DIR/master.crt" \
            --from-file=tls.key="$CERTS_DIR/master.key" --from-file=ca.crt="$CERTS_DIR/ca.crt"
        apply_secret redis-master "${connection[@]}" --from-file=ca.crt="$CERTS_DIR/ca.crt"
        SECRETS_HASH=$(secrets_hash redis-master redis-master-tls) apply_rendered master
    fi
    rollout statefulset/redis-master
    say "master ready at redis-master.$NAMESPACE.svc.cluster.local:6380 (TLS); Secret redis-master holds how to reach it"
}

# A hosted master: MASTER_USER/MASTER_PASSWORD are the account the central
# topology reads with (and make seed writes with); the replicas of the sidecar
# topology log in as MASTER_REPLICA_USER/MASTER_REPLICA_PASSWORD, the same
# account unless set (a user with +psync +replconf is enough for them).
master_secret() {
    require_cluster
    : "${MASTER_HOST:?set MASTER_HOST, MASTER_PORT, MASTER_PASSWORD and MASTER_CA (a PEM file)}"
    : "${MASTER_PORT:?set MASTER_PORT}" "${MASTER_PASSWORD:?set MASTER_PASSWORD}" "${MASTER_CA:?set MASTER_CA}"
    [[ -r $MASTER_CA ]] || die "MASTER_CA $MASTER_CA is not readable"
    if [[ -n ${MASTER_REPLICA_USER:-} && -z ${MASTER_REPLICA_PASSWORD:-} ]]; then
        die "MASTER_REPLICA_USER needs MASTER_REPLICA_PASSWORD"
    fi
    [[ -z ${MASTER_CIDR:-} ]] || valid_cidr "$MASTER_CIDR" || die "MASTER_CIDR '$MASTER_CIDR' is not an IPv4 CIDR such as 203.0.113.10/32"
    ensure_namespace
    local user=${MASTER_USER:-default}
    # MASTER_CIDR rides on the Secret, so that every later make deploy-* opens the same egress.
    kubectl create secret generic redis-master -n "$NAMESPACE" --dry-run=client -o yaml \
        --from-literal=host="$MASTER_HOST" --from-literal=port="$MASTER_PORT" \
        --from-literal=user="$user" --from-literal=password="$MASTER_PASSWORD" \
        --from-literal=replica-user="${MASTER_REPLICA_USER:-$user}" \
        --from-literal=replica-password="${MASTER_REPLICA_PASSWORD:-$MASTER_PASSWORD}" \
        --from-file=ca.crt="$MASTER_CA" \
        | kubectl annotate --local -f - -o yaml "read-api.io/master-cidr=${MASTER_CIDR:-}" | ssa -f - >/dev/null
    say "Secret redis-master now points at $MASTER_HOST:$MASTER_PORT (replicas log in as '${MASTER_REPLICA_USER:-$user}')"
    if [[ -z ${MASTER_CIDR:-} ]] && ! valid_cidr "$MASTER_HOST/32"; then
        say "MASTER_HOST is a name: make deploy-* needs MASTER_CIDR (the addresses it resolves to) for the egress NetworkPolicy; run this again with it, or give it to make deploy-*"
    fi
}

# The Secrets each topology's pods read: their hash goes into every pod template.
topology_secrets() {
    case $1 in
        central) echo redis-master ;;
        sidecar | node-local) echo redis-master read-api-replica ;;
        relay) echo redis-master read-api-replica redis-relay ;;
    esac
}

deploy_api() {
    local topology=$1
    require_cluster
    ensure_namespace
    "${k[@]}" get secret redis-master >/dev/null 2>&1 \
        || die "no Secret redis-master in namespace $NAMESPACE: run 'make deploy-master' (in-cluster master) or 'make master-secret MASTER_HOST=… MASTER_PORT=… MASTER_PASSWORD=… MASTER_CA=…' (hosted)"
    if [[ $topology != central && -z $(secret_value redis-master replica-password) ]]; then
        die "Secret redis-master has no replica-password (it predates the replicas' own user): run 'make deploy-master' or 'make master-secret …' again"
    fi
    if [[ $topology != central ]]; then
        local password
        password=$(secret_value read-api-replica password)
        [[ -n $password ]] || password=$(openssl rand -hex 24)
        apply_secret read-api-replica --from-literal=password="$password" \
            --from-literal=exporter-passwords.json="$(exporter_passwords "$password" redis://127.0.0.1:6379)"
    fi
    if [[ $topology == relay ]]; then
        # password: the relays' admin (their probes); replica-password: the user
        # "replica" the pods' replicas follow them as (config/redis-relay/acl-users.conf).
        local key passwords=()
        for key in password replica-password; do
            passwords+=(--from-literal="$key=$(kept_or_new_password "$key" redis-relay)")
        done
        apply_secret redis-relay "${passwords[@]}"
    fi
    [[ $topology != relay ]] || check_storage_class
    MASTER_CIDR=$(master_cidr)
    MASTER_PORT=${MASTER_PORT:-$(secret_value redis-master port)}
    export MASTER_CIDR MASTER_PORT
    local secrets
    read -ra secrets <<<"$(topology_secrets "$topology")"
    SECRETS_HASH=$(secrets_hash "${secrets[@]}") apply_rendered "$topology"
    # What the API pods read must be there first: they stay unready until it is.
    case $topology in
        relay) rollout statefulset/redis-relay ;;
        node-local) rollout daemonset/redis-node ;;
    esac
    rollout deployment/read-api
    say "$topology topology ready; try: make port-forward, then curl localhost:$LOCAL_PORT/v1/keys/known-key"
}

# The addresses of a hosted master, for the egress policy: MASTER_CIDR, else what
# make master-secret recorded, else the master's address itself; none for the
# in-cluster master, whose pods the policy names already.
master_cidr() {
    local host cidr
    host=$(secret_value redis-master host)
    if [[ -n ${MASTER_CIDR:-} ]]; then
        valid_cidr "$MASTER_CIDR" || die "MASTER_CIDR '$MASTER_CIDR' is not an IPv4 CIDR such as 203.0.113.10/32"
        echo "$MASTER_CIDR"
        return
    fi
    cidr=$("${k[@]}" get secret redis-master -o 'jsonpath={.metadata.annotations.read-api\.io/master-cidr}' 2>/dev/null) || true
    if [[ -n $cidr ]]; then
        echo "$cidr"
    elif valid_cidr "$host/32"; then
        echo "$host/32"
    elif [[ $host != *.svc.cluster.local && $host != *.svc ]]; then
        die "the master $host is outside the cluster, and the egress NetworkPolicy lets the pods reach only addresses it names: set MASTER_CIDR to the addresses $host resolves to (e.g. MASTER_CIDR=203.0.113.10/32; 0.0.0.0/0 for any)"
    fi
}

valid_cidr() {
    [[ $1 =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$ ]]
}

# A claim without a StorageClass needs the cluster's default one, which new EKS
# clusters lack: the master's and the relays' claims would stay Pending.
check_storage_class() {
    local out
    if [[ -n ${STORAGE_CLASS:-} ]]; then
        out=$(kubectl get storageclass "$STORAGE_CLASS" -o name 2>&1) && return 0
        [[ $out == *Forbidden* ]] && return 0
        die "STORAGE_CLASS $STORAGE_CLASS: no such StorageClass in this cluster (kubectl get storageclass lists them)"
    fi
    out=$(kubectl get storageclass -o name 2>&1) || return 0 # not ours to read: the claims will say
    local class names=()
    for class in $out; do
        [[ $(kubectl get "$class" -o 'jsonpath={.metadata.annotations.storageclass\.kubernetes\.io/is-default-class}') == true ]] \
            && return 0
        names+=("${class#*/}")
    done
    die "this cluster has no default StorageClass, so the volumes would stay Pending: set STORAGE_CLASS to one of: ${names[*]:-none (install a provisioner)} (kubectl get storageclass)"
}

kind_load() {
    command -v kind >/dev/null || die "kind is not installed (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
    local cluster=${KIND_CLUSTER:-} context name image
    if [[ -z $cluster ]]; then
        context=$(kubectl config current-context 2>/dev/null) || true
        [[ $context == kind-* ]] || die "the current context '${context:-none}' is not a kind cluster's: set KIND_CLUSTER to the cluster's name"
        cluster=${context#kind-}
    fi
    local tool=${CONTAINER_TOOL:-podman}
    mkdir -p "$repo/target/images"
    for name in read-api read-api-stunnel; do
        image=$IMAGE_REGISTRY/$name:$IMAGE_TAG
        if [[ $tool == docker ]]; then
            kind load docker-image "$image" --name "$cluster"
        else
            # kind reads docker's store only: other tools hand it an archive.
            "$tool" save -o "$repo/target/images/$name.tar" "$image"
            kind load image-archive "$repo/target/images/$name.tar" --name "$cluster"
        fi
    done
    say "loaded $IMAGE_REGISTRY/read-api and read-api-stunnel:$IMAGE_TAG into kind cluster $cluster"
}

undeploy() {
    require_cluster
    local target
    for target in sidecar central relay node-local master; do
        # Deleting the namespace is PURGE's business: keep it while rendering deletes.
        render "$target" | drop_namespace | kubectl delete --ignore-not-found -f - >/dev/null
    done
    if [[ -n ${PURGE:-} ]]; then
        kubectl delete namespace "$NAMESPACE" --ignore-not-found
        say "deleted namespace $NAMESPACE with its Secrets and volumes"
    else
        say "removed the API and the master; Secrets and the master's volume remain (PURGE=1 deletes the namespace)"
    fi
}

# Filters the Namespace object out of a rendered stream.
drop_namespace() {
    awk 'BEGIN { RS = "\n---\n"; ORS = "\n---\n" } !/(^|\n)kind: Namespace\n/'
}

port_forward() {
    require_cluster
    exec "${k[@]}" port-forward svc/read-api "$LOCAL_PORT:80"
}

smoke() {
    require_cluster
    "${k[@]}" port-forward svc/read-api "$LOCAL_PORT:80" >/dev/null 2>&1 &
    local forward=$!
    trap 'kill $forward 2>/dev/null' EXIT
    local deadline=$((SECONDS + 15))
    until curl -s -o /dev/null "localhost:$LOCAL_PORT/v1/keys/known-key"; do
        ((SECONDS < deadline)) || die "port-forward to svc/read-api did not come up"
        sleep 0.3
    done
    echo "\$ curl localhost:$LOCAL_PORT/v1/keys/known-key"
    curl -s -w '\nHTTP %{http_code}\n' "localhost:$LOCAL_PORT/v1/keys/known-key"
}

seed() {
    require_cluster
    local key=$1 value=$2
    if "${k[@]}" get statefulset/redis-master >/dev/null 2>&1; then
        # The admin's password is a file in the master's container (deploy/master).
        "${k[@]}" exec statefulset/redis-master -c redis -- sh -c \
            'read -r REDISCLI_AUTH </etc/redis/users/default; export REDISCLI_AUTH
            redis-cli --tls --cacert /etc/redis/tls/ca.crt -h localhost -p 6380 SET "$1" "$2"' _ "$key" "$value"
    else
        # A hosted master: write from here with what the Secret says.
        local ca
        ca=$(mktemp)
        trap 'rm -f "$ca"' RETURN
        secret_value redis-master ca.crt >"$ca"
        REDISCLI_AUTH=$(secret_value redis-master password) redis-cli --tls --cacert "$ca" \
            -h "$(secret_value redis-master host)" -p "$(secret_value redis-master port)" \
            --user "$(secret_value redis-master user)" --no-auth-warning SET "$key" "$value"
    fi
}

main() {
    size_profile >/dev/null
    case ${1:-} in
        render) render "${2:-}" ;;
        master) deploy_master ;;
        master-secret) master_secret ;;
        sidecar | central | relay | node-local) deploy_api "$1" ;;
        undeploy) undeploy ;;
        kind-load) kind_load ;;
        port-forward) port_forward ;;
        smoke) smoke ;;
        seed)
            [[ $# -eq 3 && -n $2 ]] || die "usage: $0 seed KEY VALUE"
            seed "$2" "$3"
            ;;
        *) die "usage: $0 render TARGET|master|master-secret|sidecar|central|relay|node-local|undeploy|kind-load|port-forward|smoke|seed KEY VALUE" ;;
    esac
}

main "$@"
