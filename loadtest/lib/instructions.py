#!/usr/bin/env python3
"""What one request costs the API in CPU instructions, counted by callgrind.

Instruction counts, unlike requests per second, hardly move with the other
work on a shared machine, so a change to the request path shows as a change in
instructions per request. The API (the release build) runs under callgrind
against a real redis-server of its own, one worker, and answers `known-key`
(a 100-byte value) sequentially over one kept-alive connection:

  hit   the value cache on, the key in it: every request answered from memory
  miss  the value cache off: every request a read of Redis

Each path runs twice, with SHORT and LONG requests after the same start-up, and
the per-request count is the difference divided by the difference in requests:
start-up and shutdown cancel out (callgrind_control cannot reach the process in
a container, so it cannot zero the counters after start-up instead).

  instructions.py run OUT.json              measure
  instructions.py check OUT.json BASELINE   exit 1 when a path costs more than
                                            the baseline's tolerance above it
  instructions.py profile DIR               keep the callgrind files (callgrind.PATH.N);
                                            `instructions.py diff A B` gives each
                                            function's instructions per request
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# READ_API_BIN: another build of the API, to profile (a debug build has symbols).
API = Path(os.environ.get("READ_API_BIN", REPO / "target/release/read-api"))
SHORT, LONG = 300, 1300
VALUE = "v" * 100


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what, ready, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"instructions: {what} not ready within {timeout} s")


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def requests(port, n):
    """n sequential GETs of known-key on one kept-alive connection; all must be 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(n):
        conn.request("GET", "/v1/keys/known-key")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"instructions: known-key answered {response.status}")
    conn.close()


def total_instructions(path):
    for line in Path(path).read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"instructions: no totals in {path}")


def one_run(redis_port, cache, n, out_file):
    """Starts the API under callgrind, sends n requests, stops it; its total instructions."""
    port, admin = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}",
        "LISTEN_ADDR": f"127.0.0.1:{port}",
        "ADMIN_ADDR": f"127.0.0.1:{admin}",
        "WORKERS": "1",
        "LOG_FORMAT": "json",
        "RUST_LOG": "warn",
        "CACHE_MAX_BYTES": str(16 << 20 if cache else 0),
        "SHUTDOWN_DELAY_SECONDS": "0",
        "SHUTDOWN_GRACE_SECONDS": "5",
    }
    api = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", str(API)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait("the API", lambda: get(admin, "/readyz")[0] == 200)
        if cache:
            wait("the value cache", lambda: b"read_api_cache_tracking_up 1" in get(admin, "/metrics")[1])
        requests(port, n)
        api.send_signal(signal.SIGTERM)
        _, err = api.communicate(timeout=120)
        if api.returncode != 0:
            raise SystemExit(f"instructions: the API exited {api.returncode}: {err.decode()[-2000:]}")
    finally:
        if api.poll() is None:
            api.kill()
            api.wait()
    return total_instructions(out_file)


def measure(keep=None):
    if not API.exists():
        raise SystemExit(f"instructions: {API} missing: cargo build --release -p read-api")
    for tool in ("valgrind", "redis-server", "redis-cli"):
        if not shutil.which(tool):
            raise SystemExit(f"instructions: {tool} missing (scripts/install-deps.sh)")
    redis_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            cli = ["redis-cli", "-p", str(redis_port)]
            wait("redis-server", lambda: subprocess.run([*cli, "ping"], capture_output=True).stdout == b"PONG\n")
            subprocess.run([*cli, "set", "known-key", VALUE], check=True, capture_output=True)
            result = {"requests": LONG - SHORT}
            for path, cache in (("hit", True), ("miss", False)):
                counts = {}
                for n in (SHORT, LONG):
                    out = Path(tmp) / f"callgrind.{path}.{n}"
                    counts[n] = one_run(redis_port, cache, n, out)
                    if keep:
                        shutil.copy(out, Path(keep) / f"callgrind.{path}.{n}")
                result[path] = round((counts[LONG] - counts[SHORT]) / (LONG - SHORT))
        finally:
            redis.terminate()
            redis.wait()
    return result


def functions(path):
    """Exclusive instructions by function, from callgrind_annotate."""
    out = subprocess.run(
        ["callgrind_annotate", "--auto=no", "--threshold=100", str(path)], capture_output=True, text=True, check=True
    ).stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].replace(",", "").isdigit() and parts[1].startswith("("):
            counts[parts[2]] = counts.get(parts[2], 0) + int(parts[0].replace(",", ""))
    return counts


def per_function(short, long, top=40):
    """The functions that grow with the requests, by instructions per request (LONG - SHORT)."""
    a, b = functions(short), functions(long)
    grown = sorted(((b[f] - a.get(f, 0)) / (LONG - SHORT), f) for f in b)
    return [f"{n:10.0f}  {f[:200]}" for n, f in reversed(grown[-top:])]


def check(measured, baseline):
    """The lines of the verdict, and whether every path is within its tolerance."""
    tolerance = baseline["tolerance"]
    lines, ok = [], True
    for path in ("hit", "miss"):
        limit = baseline[path] * (1 + tolerance)
        within = measured[path] <= limit
        ok &= within
        lines.append(
            f"{path}: {measured[path]} instructions/request, baseline {baseline[path]} "
            f"({measured[path] / baseline[path] - 1:+.1%}; at most +{tolerance:.0%}): "
            + ("ok" if within else "REGRESSION")
        )
    return lines, ok


def main(argv):
    if len(argv) >= 2 and argv[0] == "run":
        result = measure()
        Path(argv[1]).parent.mkdir(parents=True, exist_ok=True)
        Path(argv[1]).write_text(json.dumps(result) + "\n")
        print(json.dumps(result))
    elif len(argv) >= 3 and argv[0] == "check":
        lines, ok = check(json.loads(Path(argv[1]).read_text()), json.loads(Path(argv[2]).read_text()))
        print("\n".join(lines))
        return 0 if ok else 1
    elif len(argv) >= 3 and argv[0] == "diff":
        print("\n".join(per_function(Path(argv[1]), Path(argv[2]))))
    elif len(argv) >= 2 and argv[0] == "profile":
        Path(argv[1]).mkdir(parents=True, exist_ok=True)
        print(json.dumps(measure(keep=argv[1])))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
