#!/usr/bin/env bash
# Builds the images the manifests reference, tagged $IMAGE_REGISTRY/NAME:$IMAGE_TAG.
#
#   CONTAINER_TOOL  podman or docker (default podman)
#   IMAGE_BUILD     source: compile inside the build (api/Containerfile, needs the
#                   Rust image); prebuilt: compile the static binary here first
#                   (api/Containerfile.prebuilt, needs only this machine). Default source.
#   PUSH=1          push the images after building, and record the digest the
#                   registry gave each in $PUSHED_DIGESTS (target/images/pushed-digests):
#                   scripts/deploy.sh render pins the images to them when it renders
#                   the same IMAGE_REGISTRY and IMAGE_TAG
#   PLATFORMS       linux/amd64,linux/arm64 (or one of them): a manifest list of
#                   both (--platform; PUSH=1 pushes it with every image). Default:
#                   this machine's platform alone, an ordinary image.
#
# IMAGE_REGISTRY is recorded in target/images/registry: make deploy-* and make
# render use it when no IMAGE_REGISTRY is given.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
CONTAINER_TOOL=${CONTAINER_TOOL:-podman}
IMAGE_REGISTRY=${IMAGE_REGISTRY:-localhost}
IMAGE_TAG=${IMAGE_TAG:-$("$repo/scripts/versions.sh" tag read-api)}
IMAGE_BUILD=${IMAGE_BUILD:-source}
PUSHED_DIGESTS=${PUSHED_DIGESTS:-$repo/target/images/pushed-digests}
IMAGES_RECORD=${IMAGES_RECORD:-$repo/target/images/registry}
PLATFORMS=${PLATFORMS:-}

# Pushes IMAGE and prints "IMAGE DIGEST": the digest of the manifest the registry now holds.
push() {
    local image=$1 digest
    if [[ -n $PLATFORMS ]]; then
        local file
        file=$(mktemp)
        if [[ $CONTAINER_TOOL == podman ]]; then
            podman manifest push --all --digestfile "$file" "$image" "docker://$image" >&2
        else
            "$CONTAINER_TOOL" buildx imagetools inspect "$image" --format '{{json .Manifest.Digest}}' | tr -d '"' >"$file"
        fi
        digest=$(<"$file")
        rm -f "$file"
    elif [[ $CONTAINER_TOOL == podman ]]; then
        local file
        file=$(mktemp)
        "$CONTAINER_TOOL" push --digestfile "$file" "$image" >&2
        digest=$(<"$file")
        rm -f "$file"
    else
        "$CONTAINER_TOOL" push "$image" >&2
        digest=$("$CONTAINER_TOOL" image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$image" \
            | awk -v repo="${image%:*}" 'index($0, repo "@") == 1 { sub(/.*@/, ""); print; exit }')
    fi
    [[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "images: no digest for $image after pushing it (got '$digest')" >&2; exit 1; }
    echo "$image $digest"
}

# Replaces the lines of the images just pushed in PUSHED_DIGESTS, keeping the others.
record() {
    local line image
    mkdir -p "$(dirname "$PUSHED_DIGESTS")"
    touch "$PUSHED_DIGESTS"
    for line in "$@"; do
        image=${line%% *}
        awk -v image="$image" '$1 != image' "$PUSHED_DIGESTS" >"$PUSHED_DIGESTS.new"
        echo "$line" >>"$PUSHED_DIGESTS.new"
        mv "$PUSHED_DIGESTS.new" "$PUSHED_DIGESTS"
    done
    echo "images: digests of the pushed images in $PUSHED_DIGESTS (make render and the deploy targets pin to them)"
}

# build IMAGE CONTAINERFILE CONTEXT: one image, or a manifest list of PLATFORMS.
build() {
    local image=$1 containerfile=$2 context=$3
    if [[ -z $PLATFORMS ]]; then
        "$CONTAINER_TOOL" build -f "$containerfile" -t "$image" "$context"
    elif [[ $CONTAINER_TOOL == podman ]]; then
        # A manifest list: one image per platform, under the one name.
        podman manifest rm "$image" >/dev/null 2>&1 || true
        podman build --platform "$PLATFORMS" --manifest "$image" -f "$containerfile" "$context"
    else
        # buildx keeps a multi-platform build in the registry only: it is pushed as it is built.
        [[ -n ${PUSH:-} ]] || { echo "images: docker builds PLATFORMS=$PLATFORMS only with PUSH=1 (buildx)" >&2; exit 1; }
        docker buildx build --platform "$PLATFORMS" --push -f "$containerfile" -t "$image" "$context"
    fi
}

# The Go-style architectures of PLATFORMS (amd64 arm64), for the static binaries.
archs() {
    local platform out=()
    for platform in ${PLATFORMS//,/ }; do
        [[ $platform =~ ^linux/(amd64|arm64)$ ]] || { echo "images: PLATFORMS takes linux/amd64 and linux/arm64, not '$platform'" >&2; exit 1; }
        out+=("${platform#linux/}")
    done
    echo "${out[*]}"
}

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
            if [[ -n $PLATFORMS ]]; then
                ARCHS=$(archs) "$repo/scripts/build-static.sh"
            else
                "$repo/scripts/build-static.sh"
            fi
            containerfile=api/Containerfile.prebuilt
            ;;
        *) echo "images: IMAGE_BUILD must be source or prebuilt, got '$IMAGE_BUILD'" >&2; exit 1 ;;
    esac

    [[ -z $PLATFORMS ]] || archs >/dev/null
    echo "images: building $api_image from $containerfile${PLATFORMS:+ for $PLATFORMS}"
    build "$api_image" "$containerfile" .
    echo "images: building $stunnel_image"
    build "$stunnel_image" deploy/images/stunnel/Containerfile deploy/images/stunnel
    echo "images: building $vegeta_image (for make loadtest-cluster)"
    build "$vegeta_image" loadtest/k8s/vegeta/Containerfile loadtest/k8s/vegeta
    mkdir -p "$(dirname "$IMAGES_RECORD")"
    echo "$IMAGE_REGISTRY" >"$IMAGES_RECORD"
    echo "images: make deploy-* and make render now use IMAGE_REGISTRY=$IMAGE_REGISTRY (recorded in ${IMAGES_RECORD#"$repo"/})"

    if [[ -n ${PUSH:-} ]]; then
        local pushed=() image entry
        for image in "$api_image" "$stunnel_image" "$vegeta_image"; do
            entry=$(push "$image")
            pushed+=("$entry")
        done
        record "${pushed[@]}"
    fi
    "$CONTAINER_TOOL" images --filter "reference=$IMAGE_REGISTRY/read-api*"
}

main "$@"
