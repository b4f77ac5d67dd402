#!/usr/bin/env python3
"""make pin-images: resolves the tag of every third-party image in
deploy/images/images.yaml to the digest its registry serves now, and writes it
into that image's transformer (`digest:`), so that every cluster runs the same
bytes whatever the tag points to later. Kustomize then renders NAME:TAG@DIGEST.

Needs a registry and one of two tools, whichever is installed:
  skopeo   skopeo inspect --raw docker://IMAGE, then skopeo manifest-digest
  crane    crane digest IMAGE
Both give the digest of what the tag names: for a multi-architecture image, its
index, so that every node pulls its own architecture from it.

Third party: every image not under localhost/, which `make images` builds and
pushes under IMAGE_REGISTRY (its digests: scripts/images.sh, PUSH=1). Each digest
line says which tag it was resolved from; a manifest test fails when the tag has
changed since, so run this again after changing a tag. Nothing is written unless
every image resolves.

Usage: pin_images.py [--images deploy/images/images.yaml]
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[1] / "deploy/images/images.yaml"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
OURS = "localhost/"


class Failed(Exception):
    pass


def transformers(lines):
    """(name, newName, newTag, first line, end line) of the fields of each imageTag block."""
    found, i = [], 0
    while i < len(lines):
        if not lines[i].startswith("imageTag:"):
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].startswith(" "):
            end += 1
        fields = {}
        for line in lines[i + 1 : end]:
            key, _, value = line.strip().partition(":")
            fields[key] = value.split("#")[0].strip()
        found.append((fields["name"], fields["newName"], fields["newTag"], i + 1, end))
        i = end
    return found


def run(*args):
    result = subprocess.run(args, capture_output=True, timeout=120)
    return result.returncode, result.stdout.decode().strip(), result.stderr.decode().strip()


def resolve(tool, image):
    if tool == "crane":
        code, out, err = run("crane", "digest", image)
    else:
        raw = subprocess.run(["skopeo", "inspect", "--raw", f"docker://{image}"], capture_output=True, timeout=120)
        code, out, err = raw.returncode, "", raw.stderr.decode().strip()
        if code == 0:
            with tempfile.NamedTemporaryFile() as manifest:
                manifest.write(raw.stdout)
                manifest.flush()
                code, out, err = run("skopeo", "manifest-digest", manifest.name)
    if code != 0 or not DIGEST.fullmatch(out):
        last = (err.splitlines() or [out or "no output"])[-1]
        raise Failed(f"{tool} could not resolve {image}: {last}")
    return out


def pin(text, digests):
    """The file with a `digest:` line, naming the tag it was resolved from, after each pinned newTag."""
    lines = text.splitlines()
    for name, _, tag, start, end in reversed(transformers(lines)):
        if name not in digests:
            continue
        block = [line for line in lines[start:end] if not line.strip().startswith("digest:")]
        at = next(i for i, line in enumerate(block) if line.strip().startswith("newTag:"))
        indent = block[at][: len(block[at]) - len(block[at].lstrip())]
        block.insert(at + 1, f"{indent}digest: {digests[name]}  # of {tag}, make pin-images")
        lines[start:end] = block
    return "\n".join(lines) + "\n"


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=IMAGES)
    args = parser.parse_args(argv)
    tool = next((t for t in ("skopeo", "crane") if shutil.which(t)), None)
    if tool is None:
        raise Failed(
            "neither skopeo nor crane is installed: install one (apt-get install skopeo, or crane from "
            "github.com/google/go-containerregistry) on a machine that reaches the registries, and run it again"
        )
    text = args.images.read_text()
    digests = {}
    for name, new_name, tag, _, _ in transformers(text.splitlines()):
        if new_name.startswith(OURS):
            continue
        image = f"{new_name}:{tag}"
        digests[name] = resolve(tool, image)
        print(f"pin-images: {image}@{digests[name]} ({tool})")
    args.images.write_text(pin(text, digests))
    print(f"pin-images: wrote {len(digests)} digests into {args.images}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Failed as e:
        print(f"pin-images: {e}", file=sys.stderr)
        sys.exit(1)
