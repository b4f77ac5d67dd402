#!/usr/bin/env bash
# Builds the images the manifests reference, tagged $IMAGE_REGISTRY/NAME:$IMAGE_TAG.
#
#   CONTAINER_TOOL  podman or docker (default podman)
#   IMAGE_BUILD     source: compile inside the build (api/Containerfile, needs the
#                   Rust image); prebuilt: compile the static binary here first
#                   (api/Containerfile.prebuilt, needs only this machine). Default source.
#   PUSH=1          push both images after building
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
CONTAINER_TOOL=${CONTAINER_TOOL:-podman}
IMAGE_REGISTRY=${IMAGE_REGISTRY:-localhost}
IMAGE_TAG=${IMAGE_TAG:-$("$repo/scripts/versions.sh" tag read-api)}
IMAGE_BUILD=${IMAGE_BUILD:-source}
main() {
    if ! command -v "$CONTAINER_TOOL" >/dev/null; then
        case $CONTAINER_TOOL in
            podman) "$repo/scripts/install-deps.sh" podman runc catatonit ;;
            *) echo "images: $CONTAINER_TOOL is not installed (install it, or set CONTAINER_TOOL=podman to have it installed)" >&2; exit 1 ;;
        esac
    fi

    api_image="$IMAGE_REGISTRY/read-api:$IMAGE_TAG"
    stunnel_image="$IMAGE_REGISTRY/read-api-stunnel:$IMAGE_TAG"
    vegeta_image="$IMAGE_REGISTRY/read-api-vegeta:$IMAGE_TAG"

    case $IMAGE_BUILD in
        source) containerfile=api/Containerfile ;;
        prebuilt)
            "$repo/scripts/build-static.sh"
            containerfile=api/Containerfile.prebuilt
            ;;
        *) echo "images: IMAGE_BUILD must be source or prebuilt, got '$IMAGE_BUILD'" >&2; exit 1 ;;
    esac

    echo "images: building $api_image from $containerfile"
    "$CONTAINER_TOOL" build -f "$containerfile" -t "$api_image" .
    echo "images: building $stunnel_image"
    "$CONTAINER_TOOL" build -f deploy/images/stunnel/Containerfile -t "$stunnel_image" deploy/images/stunnel
    echo "images: building $vegeta_image (for make loadtest-cluster)"
    "$CONTAINER_TOOL" build -f loadtest/k8s/vegeta/Containerfile -t "$vegeta_image" loadtest/k8s/vegeta

    if [[ -n ${PUSH:-} ]]; then
        "$CONTAINER_TOOL" push "$api_image"
        "$CONTAINER_TOOL" push "$stunnel_image"
        "$CONTAINER_TOOL" push "$vegeta_image"
    fi
    "$CONTAINER_TOOL" images --filter "reference=$IMAGE_REGISTRY/read-api*"
}

main "$@"
