#!/usr/bin/env bash
# Prints an image's version or full reference from deploy/images/images.yaml,
# the one home of the kit's image names and versions.
#
#   scripts/versions.sh tag read-api     -> 0.1.0
#   scripts/versions.sh image redis      -> docker.io/library/redis:7.2.12
set -euo pipefail

images="$(cd "$(dirname "$0")/.." && pwd)/deploy/images/images.yaml"

main() {
    local what=${1:-} name=${2:-} found
    [[ $what == tag || $what == image ]] && [[ -n $name ]] || {
        echo "usage: versions.sh tag|image NAME" >&2
        exit 2
    }
    # Each transformer's imageTag block: name, newName, newTag, in that order.
    found=$(awk -v want="$name" '
        $1 == "imageTag:" { block = 1; name = ""; next }
        block && $1 == "name:" { name = $2 }
        block && $1 == "newName:" && name == want { image = $2 }
        block && $1 == "newTag:" && name == want { print image ":" $2 }
    ' "$images")
    [[ -n $found ]] || { echo "versions.sh: no image named '$name' in $images" >&2; exit 1; }
    if [[ $what == tag ]]; then echo "${found##*:}"; else echo "$found"; fi
}

main "$@"
