#!/usr/bin/env python3
"""The images the e2e builds from this machine's Debian binaries, and the kit
image each one stands in for: the one mapping between the two.

No registry is reachable here, so build-images.sh builds Redis, stunnel and
redis_exporter images from the binaries Debian installed, and podmanize.py
rewrites the rendered manifests' images to them. Each has a name of its own,
saying what it is (Debian's build, and the version build-images.sh checks the
binary against), so that it never shadows the image a cluster pulls under the
name the manifests use, nor claims that image's version.

The API image is built from the kit's own Containerfile (api/Containerfile.prebuilt)
and keeps its name.

Run alone, prints `NAME IMAGE UID VERSION` lines for build-images.sh.
"""

from pathlib import Path

import yaml

IMAGES_YAML = Path(__file__).resolve().parents[1] / "images/images.yaml"

# The name in deploy/images/images.yaml -> the e2e's image, the user it runs as
# (the manifests' runAsUser for that image; a manifest test keeps them equal),
# and the version of the Debian binary that the tag claims.
E2E_IMAGES = {
    "redis": ("localhost/e2e-redis:debian-7.0", 10002, "7.0"),
    "read-api-stunnel": ("localhost/e2e-stunnel:debian-5.68", 10001, "5.68"),
    "redis-exporter": ("localhost/e2e-redis-exporter:debian-1.45", 59000, "1.45"),
}


def repository(image):
    """The image without its tag or digest: docker.io/library/redis:7.4.2@sha256:… -> docker.io/library/redis."""
    image = image.split("@", 1)[0]
    name, _, tag = image.rpartition(":")
    return name if name and "/" not in tag else image


def stand_ins():
    """Rendered repository (the newName of deploy/images) -> the e2e image that replaces it."""
    transformers = [doc for doc in yaml.safe_load_all(IMAGES_YAML.read_text()) if doc]
    new_names = {t["imageTag"]["name"]: t["imageTag"]["newName"] for t in transformers}
    return {new_names[name]: image for name, (image, _, _) in E2E_IMAGES.items()}


def e2e_image(image, mapping):
    """What a rendered container image becomes on podman: its stand-in, if the e2e builds one."""
    return mapping.get(repository(image), image)


if __name__ == "__main__":
    for name, (image, uid, version) in E2E_IMAGES.items():
        print(name, image, uid, version)
