"""A cluster made of files for the script tests: fake_kubectl.py first on PATH,
every object it holds one STATE/KIND.NAME.yaml, every call it took one line of
STATE/calls. deploy.sh (test_deploy.py) and doctor.py (test_doctor.py) run
against it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
FAKE_KUBECTL = Path(__file__).parent / "fake_kubectl.py"


class RecordingCluster:
    def __init__(self, root):
        self.root = Path(root)
        self.state = self.root / "state"
        self.bin_dir = self.root / "bin"
        self.state.mkdir()
        self.bin_dir.mkdir()
        kubectl = self.bin_dir / "kubectl"
        kubectl.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_KUBECTL} "$@"\n')
        kubectl.chmod(0o755)

    def env(self, **extra):
        """The environment a script sees: only the recording kubectl, a HOME of its own."""
        return {
            "PATH": f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.root),
            "FAKE_KUBE_STATE": str(self.state),
            "REAL_KUBECTL": shutil.which("kubectl"),
            "IMAGES_RECORD": str(self.root / "registry"),
            **extra,
        }

    def run(self, argv, timeout, **extra):
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=self.env(**extra), timeout=timeout)

    def store(self, obj):
        (self.state / f"{obj['kind']}.{obj['metadata']['name']}.yaml").write_text(yaml.safe_dump(obj))

    def stored(self, kind, name):
        return yaml.safe_load((self.state / f"{kind}.{name}.yaml").read_text())

    def remove(self, kind, name):
        (self.state / f"{kind}.{name}.yaml").unlink()

    def applied(self, kind):
        return [p.name for p in self.state.glob(f"{kind}.*.yaml")]

    def calls(self):
        return [json.loads(line) for line in (self.state / "calls").read_text().splitlines()]
