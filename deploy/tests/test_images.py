"""Images pinned by digest: make pin-images for the third-party ones, make
images PUSH=1 for ours, and what every render puts in front of a cluster. No
registry is reachable here: skopeo, crane and podman are stand-ins that print
what a registry would answer."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.tests.test_manifests import RENDERED

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "deploy/images/images.yaml"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def transformers(path=IMAGES):
    return {doc["imageTag"]["name"]: doc["imageTag"] for doc in yaml.safe_load_all(path.read_text()) if doc}


def ours():
    """The images scripts/images.sh builds: $IMAGE_REGISTRY/NAME, which images.yaml names localhost/NAME."""
    script = (REPO / "scripts/images.sh").read_text()
    return set(re.findall(r'_image="\$IMAGE_REGISTRY/([\w-]+):\$IMAGE_TAG"', script))


def rendered_images():
    for target in RENDERED:
        out = subprocess.run(
            ["kubectl", "kustomize", str(REPO / "deploy" / target)], capture_output=True, text=True, check=True
        ).stdout
        for doc in yaml.safe_load_all(out):
            if doc and "template" in doc.get("spec", {}):
                spec = doc["spec"]["template"]["spec"]
                for c in spec.get("initContainers", []) + spec["containers"]:
                    yield target, c["image"]


def test_ours_are_exactly_the_localhost_images():
    """pin-images skips localhost/: those must be the images make images builds, and no other."""
    local = {
        t["newName"].removeprefix("localhost/")
        for t in transformers().values()
        if t["newName"].startswith("localhost/")
    }
    assert local == ours() == {"read-api", "read-api-stunnel", "read-api-vegeta"}


UNPINNED = not any("digest" in t for t in transformers().values())


@pytest.mark.xfail(
    UNPINNED,
    strict=True,
    reason="no digest in deploy/images/images.yaml yet: run make pin-images where a registry is reachable",
)
def test_every_rendered_image_is_pinned_by_digest_or_built_by_make_images():
    for target, image in rendered_images():
        repository = image.split("@")[0].rpartition(":")[0]
        if repository.startswith("localhost/") and repository.removeprefix("localhost/") in ours():
            continue
        assert DIGEST.search(image), f"{target}: {image} is neither pinned by digest nor built by make images"


def test_each_digest_was_resolved_from_the_tag_beside_it():
    """pin-images notes the tag each digest came from: a tag changed since needs make pin-images again."""
    text = IMAGES.read_text()
    for name, tag in transformers().items():
        if "digest" in tag:
            line = next(li for li in text.splitlines() if tag["digest"] in li)
            assert line.endswith(f"# of {tag['newTag']}, make pin-images"), f"{name}: {line.strip()}"


# --- make pin-images ----------------------------------------------------------


def tool_dir(tmp_path, **scripts):
    """A PATH directory with the usual tools, but no skopeo or crane unless given here."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "bash", "sh", "env", "awk", "dirname", "sed", "grep", "cat", "mktemp", "rm"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    # The interpreter itself, not a wrapper such as a pyenv shim: pin_images.py needs only its standard library.
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def pin_images(path, images):
    return subprocess.run(
        ["python3", REPO / "scripts/pin_images.py", "--images", images],
        capture_output=True,
        text=True,
        env={"PATH": path, "HOME": "/nonexistent"},
        timeout=60,
    )


def test_make_pin_images_says_it_needs_skopeo_or_crane(tmp_path):
    result = subprocess.run(
        ["make", "-s", "pin-images"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": tool_dir(tmp_path), "HOME": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()[:1]
    assert line.startswith("pin-images: neither skopeo nor crane is installed"), result.stderr
    assert "skopeo" in line and "crane" in line


def test_pin_images_writes_the_digest_of_each_third_party_tag(tmp_path):
    copy = tmp_path / "images.yaml"
    shutil.copy(IMAGES, copy)
    # A crane that knows two images: the digest is sha256 of the reference, as a registry's would be of its index.
    crane = (
        'case $2 in *redis:*|*redis_exporter:*) printf "sha256:%s\\n" "$(printf %s "$2" | sha256sum | cut -c1-64)" ;;'
    )
    crane += ' *) echo "MANIFEST_UNKNOWN: $2" >&2; exit 1 ;; esac\n'
    path = tool_dir(tmp_path, crane=crane)
    for tool in ("sha256sum", "cut"):
        os.symlink(shutil.which(tool), Path(path) / tool)
    result = pin_images(path, copy)
    assert result.returncode == 0, result.stderr
    before, after = transformers(), transformers(copy)
    pinned = {name for name, t in after.items() if "digest" in t}
    assert pinned == {name for name, t in before.items() if not t["newName"].startswith("localhost/")}
    for name in pinned:
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", after[name]["digest"])
        assert {k: v for k, v in after[name].items() if k != "digest"} == before[name]
    assert f"# of {before['redis']['newTag']}, make pin-images" in copy.read_text()

    # A second run replaces the digests instead of adding lines.
    assert pin_images(path, copy).returncode == 0
    assert copy.read_text().count("digest:") == len(pinned)


def test_pin_images_writes_nothing_unless_every_image_resolves(tmp_path):
    copy = tmp_path / "images.yaml"
    shutil.copy(IMAGES, copy)
    skopeo = 'echo "pinging container registry registry-1.docker.io: connection refused" >&2; exit 1\n'
    result = pin_images(tool_dir(tmp_path, skopeo=skopeo), copy)
    assert result.returncode == 1
    assert result.stderr.startswith("pin-images: skopeo could not resolve docker.io/")
    assert "connection refused" in result.stderr
    assert copy.read_text() == IMAGES.read_text()


# --- make images PUSH=1, and the renders that use its digests -------------------


def test_make_images_records_the_digests_it_pushed(tmp_path):
    """images.sh with a podman that builds nothing and pushes to nowhere, answering a digest per image."""
    podman = (
        'case $1 in push) [ "$2" = --digestfile ] && printf "sha256:%s" "$(printf %s "$4" | sha256sum | cut -c1-64)"'
        ' >"$3" ;; esac\nexit 0\n'
    )
    path = tool_dir(tmp_path, podman=podman)
    for tool in ("sha256sum", "cut", "mv", "touch", "mkdir"):
        os.symlink(shutil.which(tool), Path(path) / tool)
    digests = tmp_path / "pushed-digests"
    digests.write_text("other/read-api:1.0 sha256:" + "d" * 64 + "\nreg/t/read-api:9.9.9 sha256:" + "e" * 64 + "\n")
    env = {
        "PATH": path,
        "HOME": str(tmp_path),
        "PUSH": "1",
        "IMAGE_REGISTRY": "reg/t",
        "IMAGE_TAG": "9.9.9",
        "PUSHED_DIGESTS": str(digests),
    }
    result = subprocess.run(["bash", "scripts/images.sh"], cwd=REPO, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split() for line in digests.read_text().splitlines())
    assert set(lines) == {"other/read-api:1.0"} | {f"reg/t/{name}:9.9.9" for name in ours()}
    assert lines["reg/t/read-api:9.9.9"] != "sha256:" + "e" * 64, "the new push replaces the old digest"

    # make render pins our images to them, for that registry and tag only.
    def images(tag):
        out = subprocess.run(
            ["scripts/deploy.sh", "render", "sidecar"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            env={
                "PATH": os.environ["PATH"],
                "IMAGE_REGISTRY": "reg/t",
                "IMAGE_TAG": tag,
                "PUSHED_DIGESTS": str(digests),
            },
        ).stdout
        return set(re.findall(r"image: (\S+)", out))

    assert f"reg/t/read-api:9.9.9@{lines['reg/t/read-api:9.9.9']}" in images("9.9.9")
    assert f"reg/t/read-api-stunnel:9.9.9@{lines['reg/t/read-api-stunnel:9.9.9']}" in images("9.9.9")
    assert "reg/t/read-api:9.9.8" in images("9.9.8")
