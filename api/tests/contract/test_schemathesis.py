"""schemathesis against the running API, from api/openapi.yaml, every check on.

The real read-api binary (target/debug, or READ_API_BIN) on a real
redis-server holding a string, a hash, bytes that are not UTF-8 and a value
over MAX_VALUE_BYTES, each listener on a free loopback port. schemathesis
generates requests from the document (its examples, its coverage phase, then
random ones, valid and invalid) and checks every answer against it: status,
headers, content type, body schema, 5xx, and that undocumented methods get 405.
The number of examples is bounded so that the run takes well under a minute.
GET /v1/watch is left out: its 200 is a stream that does not end, which
schemathesis would wait on until its timeout; api/tests/it/contract.rs probes
that route's errors and methods, api/tests/it/watch.rs its stream.
"""

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parents[3]
DOCUMENT = REPO / "api" / "openapi.yaml"
HERE = Path(__file__).resolve().parent
SCHEMATHESIS = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "schemathesis"
API_BIN = Path(os.environ.get("READ_API_BIN", REPO / "target" / "debug" / "read-api"))
# Per operation; the coverage phase adds its own cases on top.
MAX_EXAMPLES = int(os.environ.get("CONTRACT_MAX_EXAMPLES", "100"))
# A fixed seed: a failure here is the same failure on a rerun.
SEED = os.environ.get("CONTRACT_SEED", "26")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, deadline=15.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if check():
                return
        except (OSError, redis.ConnectionError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        wait_for("redis-server", client.ping)
        client.set("known-key", "hello")
        client.set("doc", '{"a": [1, "x\\u00e9"]}')
        client.set("café au lait", "utf8 key")
        client.set("a/b", "slash")
        client.set("bytes", b"\xff\xfe\x00")
        client.set("large", "x" * 4096)
        client.hset("hash", mapping={"f": "v"})
        client.sadd("set", "m")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def api(redis_server, tmp_path_factory):
    if not API_BIN.exists():
        pytest.fail(f"{API_BIN} is missing: cargo build -p read-api (make test-contract does)")
    public, admin = free_port(), free_port()
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_URL": f"redis://127.0.0.1:{redis_server}",
        "LISTEN_ADDR": f"127.0.0.1:{public}",
        "ADMIN_ADDR": f"127.0.0.1:{admin}",
        "WORKERS": "2",
        "LOG_FORMAT": "text",
        "RUST_LOG": "warn",
        "MAX_VALUE_BYTES": "1024",
        "MAX_BATCH_RESPONSE_BYTES": "2048",
        "SHUTDOWN_DELAY_SECONDS": "0",
        "SHUTDOWN_GRACE_SECONDS": "1",
        # A Min-Position that is never reached waits this long before its 503.
        "POSITION_MAX_WAIT_MS": "50",
    }
    log = tmp_path_factory.mktemp("api") / "api.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(API_BIN)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for("/readyz 200", lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz").status == 200)
        yield {"public": f"http://127.0.0.1:{public}", "admin": f"http://127.0.0.1:{admin}", "log": log}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("tag", ["public", "admin"])
def test_schemathesis_finds_nothing(api, tag, tmp_path):
    """0 failures, every check, on the operations of one listener."""
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            str(DOCUMENT),
            "--url",
            api[tag],
            "--include-tag",
            tag,
            "--exclude-operation-id",
            "watch",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            SEED,
            # ASCII: maxLength then counts bytes, as MAX_KEY_BYTES does (UTF-8
            # keys are the Rust tests' and the fuzz targets' business).
            "--generation-codec",
            "ascii",
            "--workers",
            "2",
            "--request-timeout",
            "5",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HERE / "schemathesis_hooks.py")},
        timeout=300,
    )
    output = result.stdout + result.stderr
    print(output)
    log = api["log"].read_text()
    assert result.returncode == 0, f"schemathesis on the {tag} listener:\n{output}\n--- API log:\n{log}"
    assert "No issues found" in output, output
