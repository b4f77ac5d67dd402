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
#   port-forward          svc/read-api on localhost:$LOCAL_PORT (default 8080)
#   smoke                 curl known-key through a port-forward
#   seed KEY VALUE        write through the master
#
# Settings: NAMESPACE (read-api), IMAGE_REGISTRY (localhost), IMAGE_TAG (the read-api tag in deploy/images),
# CERTS_DIR (target/certs), ROLLOUT_TIMEOUT (300s; make size gives it for other sizes).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
NAMESPACE=${NAMESPACE:-read-api}
IMAGE_REGISTRY=${IMAGE_REGISTRY:-localhost}
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

# Renders deploy/<dir> with the images from IMAGE_REGISTRY and IMAGE_TAG,
# through a generated kustomization, so the repository is never edited.
render() {
    local dir
    case $1 in
        sidecar | central | relay | node-local) dir=overlays/$1 ;;
        master) dir=master ;;
        *) die "render takes sidecar, central, relay, node-local or master, not '$1'" ;;
    esac
    local work="$repo/target/deploy/$1"
    mkdir -p "$work"
    command -v envsubst >/dev/null || "$repo/scripts/install-deps.sh" envsubst
    local components=
    [[ $1 == master && ${CERT_MANAGER:-0} == 1 ]] && components=../../../deploy/components/cert-manager
    DIR=$dir READ_API_DIGEST=$(pushed_digest read-api) READ_API_STUNNEL_DIGEST=$(pushed_digest read-api-stunnel) \
        SECRETS_HASH=${SECRETS_HASH:-} COMPONENTS=$components \
        envsubst '$DIR $NAMESPACE $IMAGE_REGISTRY $IMAGE_TAG $READ_API_DIGEST $READ_API_STUNNEL_DIGEST $SECRETS_HASH $COMPONENTS' \
        <"$repo/scripts/templates/render.kustomization.yaml" >"$work/kustomization.yaml"
    kubectl kustomize "$work"
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

secret_value() {
    "${k[@]}" get secret "$1" -o "jsonpath={.data.$2}" 2>/dev/null | base64 -d 2>/dev/null || true
}

apply_secret() {
    kubectl create secret generic "$@" -n "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}

ensure_namespace() {
    kubectl kustomize "$repo/deploy/namespace" | kubectl apply -f - >/dev/null
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
        SECRETS_HASH=$(secrets_hash redis-master) render master | kubectl apply -f -
        "${k[@]}" wait --for=condition=Ready certificate/redis-master --timeout="$ROLLOUT_TIMEOUT"
        secret_value redis-master-ca ca.crt >"$ca"
        [[ -s $ca ]] || die "cert-manager issued redis-master but Secret redis-master-ca has no ca.crt"
        # The master does not roll for it: its hash was taken before the CA was added.
        apply_secret redis-master "${connection[@]}" --from-file=ca.crt="$ca"
    else
        apply_secret redis-master-tls --from-file=tls.crt="$CERTS_DIR/master.crt" \
            --from-file=tls.key="$CERTS_DIR/master.key" --from-file=ca.crt="$CERTS_DIR/ca.crt"
        apply_secret redis-master "${connection[@]}" --from-file=ca.crt="$CERTS_DIR/ca.crt"
        SECRETS_HASH=$(secrets_hash redis-master redis-master-tls) render master | kubectl apply -f -
    fi
    "${k[@]}" rollout status statefulset/redis-master --timeout="$ROLLOUT_TIMEOUT"
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
    ensure_namespace
    local user=${MASTER_USER:-default}
    apply_secret redis-master --from-literal=host="$MASTER_HOST" --from-literal=port="$MASTER_PORT" \
        --from-literal=user="$user" --from-literal=password="$MASTER_PASSWORD" \
        --from-literal=replica-user="${MASTER_REPLICA_USER:-$user}" \
        --from-literal=replica-password="${MASTER_REPLICA_PASSWORD:-$MASTER_PASSWORD}" \
        --from-file=ca.crt="$MASTER_CA"
    say "Secret redis-master now points at $MASTER_HOST:$MASTER_PORT (replicas log in as '${MASTER_REPLICA_USER:-$user}')"
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
    local secrets
    read -ra secrets <<<"$(topology_secrets "$topology")"
    SECRETS_HASH=$(secrets_hash "${secrets[@]}") render "$topology" | kubectl apply -f -
    # What the API pods read must be there first: they stay unready until it is.
    case $topology in
        relay) "${k[@]}" rollout status statefulset/redis-relay --timeout="$ROLLOUT_TIMEOUT" ;;
        node-local) "${k[@]}" rollout status daemonset/redis-node --timeout="$ROLLOUT_TIMEOUT" ;;
    esac
    "${k[@]}" rollout status deployment/read-api --timeout="$ROLLOUT_TIMEOUT"
    say "$topology topology ready; try: make port-forward, then curl localhost:$LOCAL_PORT/v1/keys/known-key"
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
    case ${1:-} in
        render) render "${2:-}" ;;
        master) deploy_master ;;
        master-secret) master_secret ;;
        sidecar | central | relay | node-local) deploy_api "$1" ;;
        undeploy) undeploy ;;
        port-forward) port_forward ;;
        smoke) smoke ;;
        seed)
            [[ $# -eq 3 && -n $2 ]] || die "usage: $0 seed KEY VALUE"
            seed "$2" "$3"
            ;;
        *) die "usage: $0 render TARGET|master|master-secret|sidecar|central|relay|node-local|undeploy|port-forward|smoke|seed KEY VALUE" ;;
    esac
}

main "$@"
