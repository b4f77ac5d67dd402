"""The in-cluster master's ACL users on real servers.

A TLS master started by start-redis.sh from deploy/config/redis-master (its
redis.conf and acl-users.conf, passwords from a users directory as the pod
mounts them), and a replica from deploy/config/redis-replica following it
through a stunnel client as the user "replica", as in the sidecar pod. The
heartbeat script and the exporter run with the commands, arguments and users
the rendered master manifest gives them. Each user must do its job without one
refusal in the master's ACL LOG, and nothing else.
"""

import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import redis
import yaml

from deploy.e2e.kit import wait_for

REPO = Path(__file__).resolve().parents[2]

CONFIG = REPO / "deploy/config"
USERS_FILE = CONFIG / "redis-master/acl-users.conf"

for tool in ("redis-server", "redis-cli", "stunnel", "openssl"):
    if not shutil.which(tool):
        pytest.skip(f"{tool} is missing (make deps)", allow_module_level=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Processes started for one module, each logging to a file, all stopped at the end."""

    def __init__(self, work):
        self.work, self.running = work, []

    def start(self, name, args, env):
        log = open(self.work / f"{name}.log", "w")
        proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        self.running.append((proc, log))
        return proc

    def log(self, name):
        return (self.work / f"{name}.log").read_text()

    def stop(self):
        for proc, log in reversed(self.running):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def rendered_master():
    out = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "deploy/master")], capture_output=True, text=True, check=True
    ).stdout
    statefulset = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "StatefulSet")
    return {c["name"]: c for c in statefulset["spec"]["template"]["spec"]["containers"]}


def env_value(container, name):
    return next(e["value"] for e in container["env"] if e["name"] == name)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    path = tmp_path_factory.mktemp("acl")
    processes = Processes(path)
    yield path, processes
    processes.stop()


@pytest.fixture(scope="module")
def master(work):
    """The master as deploy/master runs it, on loopback: TLS only, the ACL users of acl-users.conf."""
    path, processes = work
    certs = path / "certs"
    subprocess.run(
        ["bash", REPO / "scripts/gen-certs.sh"],
        env={**os.environ, "CERTS_DIR": str(certs), "MASTER_HOSTS": "localhost,127.0.0.1"},
        check=True,
        capture_output=True,
    )
    passwords = {name: secrets.token_hex(16) for name in ("admin", "api", "replica", "heartbeat", "exporter")}
    # As the pod mounts them: one file per user, the admin's as "default", no trailing newline.
    users = path / "users"
    users.mkdir(mode=0o700)
    for name in ("api", "replica", "heartbeat", "exporter"):
        (users / name).write_text(passwords[name])
    (users / "default").write_text(passwords["admin"])
    (path / "master").mkdir()
    port = free_port()
    processes.start(
        "master",
        ["sh", CONFIG / "redis-start/start-redis.sh", CONFIG / "redis-master/redis-master.conf"]
        + ["--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(path / "master")]
        + ["--tls-cert-file", str(certs / "master.crt"), "--tls-key-file", str(certs / "master.key")]
        + ["--tls-ca-cert-file", str(certs / "ca.crt")],
        {
            "REDIS_PASSWORD_FILE": str(users / "default"),
            "REDIS_USERS_FILE": str(USERS_FILE),
            "REDIS_USERS_DIR": str(users),
            "REDIS_RUN_DIR": str(path / "run-master"),
        },
    )
    master = {"port": port, "ca": str(certs / "ca.crt"), "passwords": passwords, "work": path, "users": users}
    admin = client(master, "default", passwords["admin"])
    wait_for("the master", admin.ping)
    master["admin"] = admin
    yield master
    admin.close()


def client(master, user, password):
    # No CLIENT SETINFO on connect: the restricted users may not run it.
    return redis.Redis(
        host="localhost",
        port=master["port"],
        username=user,
        password=password,
        ssl=True,
        ssl_ca_certs=master["ca"],
        decode_responses=True,
        lib_name=None,
        lib_version=None,
        socket_timeout=10,
    )


def cli(master, user, password, *args):
    """redis-cli as the containers beside the master call it (REDISCLI_AUTH, --user)."""
    return subprocess.run(
        ["redis-cli", "--tls", "--cacert", master["ca"], "-h", "localhost", "-p", str(master["port"])]
        + ["--user", user, *args],
        env={**os.environ, "REDISCLI_AUTH": password},
        capture_output=True,
        text=True,
        timeout=15,
    ).stdout.strip()


@pytest.fixture
def no_refusals(master):
    """Fails the test if the master refused any command of any user meanwhile."""
    master["admin"].execute_command("ACL", "LOG", "RESET")
    yield
    log = master["admin"].execute_command("ACL", "LOG")
    assert not log, f"the master refused: {log}"


@pytest.fixture(scope="module")
def replica(master, work):
    """A replica from redis-replica.conf, through stunnel, logged in as "replica"."""
    path, processes = work
    tunnel, port = free_port(), free_port()
    processes.start(
        "stunnel",
        ["sh", CONFIG / "stunnel/start-stunnel.sh", CONFIG / "stunnel/stunnel.conf"],
        {
            "MASTER_HOST": "localhost",
            "MASTER_PORT": str(master["port"]),
            "STUNNEL_CA_FILE": master["ca"],
            "STUNNEL_ACCEPT": f"127.0.0.1:{tunnel}",
            "STUNNEL_RUN_DIR": str(path / "run-stunnel"),
        },
    )
    (path / "replica").mkdir()
    (path / "replica-password").write_text(master["passwords"]["replica"])
    processes.start(
        "replica",
        ["sh", CONFIG / "redis-start/start-redis.sh", CONFIG / "redis-replica/redis-replica.conf"]
        + ["--port", str(port), "--replicaof", "127.0.0.1", str(tunnel)]
        + ["--unixsocket", str(path / "replica.sock"), "--dir", str(path / "replica")],
        {
            "MASTER_USER": "replica",
            "MASTER_PASSWORD_FILE": str(path / "replica-password"),
            "REDIS_RUN_DIR": str(path / "run-replica"),
        },
    )
    local = redis.Redis(port=port, decode_responses=True, socket_timeout=10)
    wait_for("the replica's link up", lambda: local.info("replication")["master_link_status"] == "up")
    yield local
    local.close()


# --- the users the master creates -------------------------------------------


def test_the_master_creates_the_users_of_acl_users_conf(master):
    defined = set(re.findall(r"^user (\S+) ", USERS_FILE.read_text(), re.M))
    assert defined == {"api", "replica", "heartbeat", "exporter"}
    assert set(master["admin"].acl_users()) == defined | {"default"}
    for user in defined:
        assert "+@all" not in " ".join(master["admin"].acl_getuser(user)["commands"])


def test_a_user_without_a_password_file_is_not_created(tmp_path):
    users = tmp_path / "users"
    users.mkdir()
    (users / "replica").write_text("only-the-replica\n")
    port = free_port()
    proc = subprocess.Popen(
        ["sh", CONFIG / "redis-start/start-redis.sh", CONFIG / "redis-master/redis-master.conf"]
        + ["--port", str(port), "--tls-port", "0", "--bind", "127.0.0.1", "--dir", str(tmp_path)],
        env={
            **os.environ,
            "REDIS_PASSWORD": "admin",
            "REDIS_USERS_FILE": str(USERS_FILE),
            "REDIS_USERS_DIR": str(users),
            "REDIS_RUN_DIR": str(tmp_path / "run"),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        admin = redis.Redis(port=port, password="admin", decode_responses=True)
        wait_for("the server", admin.ping)
        assert sorted(admin.acl_users()) == ["default", "replica"]
        # The trailing newline of the file is not part of the password.
        assert redis.Redis(port=port, username="replica", password="only-the-replica").ping()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "no password for ACL user 'heartbeat'" in err


@pytest.mark.parametrize("variable", ["REDIS_PASSWORD_FILE", "MASTER_PASSWORD_FILE"])
def test_an_empty_password_file_is_refused(tmp_path, variable):
    """Read as no password, it would start a Redis open to anyone, or a replica that never logs in."""
    empty = tmp_path / "password"
    empty.write_text("\n")
    result = subprocess.run(
        ["sh", CONFIG / "redis-start/start-redis.sh", CONFIG / "redis-replica/redis-replica.conf"]
        + ["--port", str(free_port()), "--dir", str(tmp_path)],
        env={**os.environ, variable: str(empty), "REDIS_RUN_DIR": str(tmp_path / "run")},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 2, result
    assert result.stderr.strip() == f"start-redis: {variable} {empty} is empty"


def test_the_masters_readiness_probe_logs_in_with_the_admins_password_file(master):
    redis = rendered_master()["redis"]
    users_dir = env_value(redis, "REDIS_USERS_DIR")
    [script] = redis["readinessProbe"]["exec"]["command"][2:]
    script = script.replace(f"{users_dir}/", f"{master['users']}/").replace("/etc/redis/tls/ca.crt", master["ca"])
    script = script.replace("-p 6380", f"-p {master['port']}")
    assert subprocess.run(["sh", "-c", script], env={"PATH": os.environ["PATH"]}, timeout=15).returncode == 0
    wrong = script.replace(f"{master['users']}/default", f"{master['users']}/heartbeat")
    assert subprocess.run(["sh", "-c", wrong], env={"PATH": os.environ["PATH"]}, timeout=15).returncode != 0


# --- the replica user ---------------------------------------------------------


def test_a_replica_follows_the_master_as_the_replica_user(master, replica, no_refusals):
    master["admin"].set("known-key", "through stunnel, as replica")
    wait_for("the write on the replica", lambda: replica.get("known-key") == "through stunnel, as replica")
    [link] = master["admin"].client_list(_type="replica")
    assert link["user"] == "replica"


def test_a_dropped_link_resumes_with_a_partial_resync(master, replica, no_refusals):
    before = master["admin"].info("stats")
    master["admin"].execute_command("CLIENT", "KILL", "TYPE", "replica")
    master["admin"].set("after-the-drop", "1")
    wait_for("the replica back", lambda: replica.get("after-the-drop") == "1")
    after = master["admin"].info("stats")
    assert after["sync_partial_ok"] == before["sync_partial_ok"] + 1
    assert after["sync_full"] == before["sync_full"]


@pytest.mark.parametrize(
    "command",
    [
        ["GET", "known-key"],
        ["SET", "known-key", "overwritten"],
        ["KEYS", "*"],
        ["SCAN", "0"],
        ["CONFIG", "GET", "requirepass"],
        ["INFO"],
        ["FLUSHALL"],
        ["SYNC"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_the_replica_user_runs_no_ordinary_command(master, command):
    user = client(master, "replica", master["passwords"]["replica"])
    try:
        assert user.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.execute_command(*command)
    finally:
        user.close()


# --- the central API's user ---------------------------------------------------


def read_script():
    """The API's batch script, as api/src/store.rs sends it."""
    source = (REPO / "api/src/store.rs").read_text()
    return re.search(r'const READ_SCRIPT: &str = r#"(.*?)"#;', source, re.S).group(1)


def test_the_api_user_runs_what_the_api_sends(master, no_refusals):
    admin = master["admin"]
    admin.set("known-key", "hello")
    admin.set("other-key", "x" * 10)
    api = client(master, "api", master["passwords"]["api"])
    try:
        assert api.ping() and api.client_id()
        assert api.getrange("known-key", 0, 1024) == "hello"
        assert api.strlen("known-key") == 5
        assert api.info("replication")["role"] == "master"
        script = read_script()
        args = [2, "known-key", "other-key", 1 << 20, 8 << 20, "1"]
        # EVAL_RO when the master has forgotten the script, EVALSHA_RO once it knows it.
        assert api.execute_command("EVAL_RO", script, *args) == [0, "hello", "x" * 10]
        sha = admin.script_load(script)
        assert api.execute_command("EVALSHA_RO", sha, *args) == [0, "hello", "x" * 10]
    finally:
        api.close()


def hash_script():
    """The API's hash script, as api/src/store/shapes.rs sends it."""
    source = (REPO / "api/src/store/shapes.rs").read_text()
    return re.search(r'const HASH_SCRIPT: &str = r#"(.*?)"#;', source, re.S).group(1)


def test_the_api_user_reads_every_value_shape(master, no_refusals):
    admin = master["admin"]
    admin.hset("a-hash", mapping={"a": "1", "b": "22"})
    admin.sadd("a-set", "member")
    api = client(master, "api", master["passwords"]["api"])
    try:
        assert api.sismember("a-set", "member") and not api.sismember("a-set", "other")
        assert api.type("a-hash") == "hash"
        script = hash_script()
        whole = api.execute_command("EVAL_RO", script, 1, "a-hash", 1 << 20, 1024)
        assert whole[0] == 0 and dict(zip(whole[1][::2], whole[1][1::2], strict=True)) == {"a": "1", "b": "22"}
        sha = admin.script_load(script)
        assert api.execute_command("EVALSHA_RO", sha, 1, "a-hash", 1 << 20, 1024, "b", "x") == [0, ["22", None]]
        assert api.execute_command("EVALSHA_RO", sha, 1, "a-set", 1 << 20, 1024) == [4, "set"]
    finally:
        api.close()


def test_the_api_user_tracks_what_its_cache_holds(master, no_refusals):
    """The value cache's tracking connection, as api/src/cache/tracking.rs opens it: BCAST
    tracking redirected to itself, and the invalidation channel subscribed."""
    api = client(master, "api", master["passwords"]["api"])
    connection = api.connection_pool.get_connection("PING")
    try:
        connection.send_command("CLIENT", "ID")
        own_id = connection.read_response()
        connection.send_command("CLIENT", "SETNAME", "read-api-tracking")
        assert connection.read_response() in (b"OK", "OK")
        connection.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", own_id, "BCAST")
        assert connection.read_response() in (b"OK", "OK")
        connection.send_command("SUBSCRIBE", "__redis__:invalidate")
        assert connection.read_response()[0] == "subscribe"
        master["admin"].set("known-key", "changed")
        kind, channel, keys = connection.read_response()
        assert (kind, channel, keys) == ("message", "__redis__:invalidate", ["known-key"])
    finally:
        connection.disconnect()
        api.connection_pool.release(connection)
        api.close()


@pytest.mark.parametrize(
    "command",
    [
        ["SET", "known-key", "x"],
        ["DEL", "known-key"],
        ["FLUSHALL"],
        ["CONFIG", "GET", "requirepass"],
        ["EVAL", "return 1", "0"],
        ["KEYS", "*"],
        ["ACL", "LIST"],
        ["SUBSCRIBE", "other-channel"],
        ["CLIENT", "KILL", "TYPE", "normal"],
    ],
)
def test_the_api_user_reads_and_nothing_else(master, command):
    api = client(master, "api", master["passwords"]["api"])
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            api.execute_command(*command)
    finally:
        api.close()


def test_a_script_cannot_write_for_the_api_user(master):
    api = client(master, "api", master["passwords"]["api"])
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="can't run this command"):
            api.execute_command("EVAL_RO", "return redis.call('SET', KEYS[1], 'x')", 1, "known-key")
    finally:
        api.close()


# --- the heartbeat and exporter users -----------------------------------------


def test_the_heartbeat_script_writes_as_its_user(master, work, no_refusals):
    """The heartbeat container's own script, with its arguments and user from the manifest."""
    path, processes = work
    heartbeat = rendered_master()["heartbeat"]
    run = path / "run-heartbeat"
    run.mkdir()
    command = [part.replace("/run/heartbeat", str(run)) for part in heartbeat["command"]]
    args = heartbeat["args"]
    args[args.index("--cacert") + 1] = master["ca"]
    args[args.index("-p") + 1] = str(master["port"])
    master["admin"].delete("read-api:heartbeat")
    password = run / "password"
    password.write_text(master["passwords"]["heartbeat"])
    assert "REDISCLI_AUTH" not in {e["name"] for e in heartbeat["env"]}, "a file, not the environment"
    proc = processes.start(
        "heartbeat",
        command + args,
        {"REDIS_USER": env_value(heartbeat, "REDIS_USER"), "REDISCLI_AUTH_FILE": str(password)},
    )
    try:
        written = wait_for("a heartbeat", lambda: master["admin"].get("read-api:heartbeat"))
        assert abs(int(written) / 1000 - time.time()) < 5
        wait_for("the probes' ok file", (run / "ok").exists)
    finally:
        proc.terminate()
        proc.wait(10)
    assert "SET read-api:heartbeat: OK" in processes.log("heartbeat")


def test_the_heartbeat_user_sets_its_key_and_nothing_else(master):
    password = master["passwords"]["heartbeat"]
    assert cli(master, "heartbeat", password, "SET", "read-api:heartbeat", "1") == "OK"
    for command in (["GET", "read-api:heartbeat"], ["SET", "known-key", "x"], ["DEL", "read-api:heartbeat"]):
        assert cli(master, "heartbeat", password, *command).startswith("NOPERM"), command
    assert cli(master, "heartbeat", password, "CONFIG", "GET", "requirepass").startswith("NOPERM")


@pytest.mark.skipif(not shutil.which("prometheus-redis-exporter"), reason="prometheus-redis-exporter missing")
def test_the_exporter_scrapes_as_its_user(master, work):
    """redis_exporter with the master manifest's flags and user: every metric it
    asks for is allowed (Debian's 1.45 build; v1.88 sends the same commands,
    and skips CONFIG outright with --config-command=-)."""
    path, processes = work
    exporter = rendered_master()["redis-exporter"]
    port = free_port()
    flags = {
        "--redis.addr": f"rediss://localhost:{master['port']}",
        "--tls-ca-cert-file": master["ca"],
        "--web.listen-address": f"127.0.0.1:{port}",
    }
    args = [
        f"{flag}={flags[flag]}" if flag in flags else arg for arg in exporter["args"] for flag in [arg.split("=", 1)[0]]
    ]
    assert "--config-command=-" in args, "CONFIG GET would answer requirepass"
    master["admin"].execute_command("ACL", "LOG", "RESET")
    processes.start(
        "exporter",
        ["prometheus-redis-exporter", *args],
        {"REDIS_USER": env_value(exporter, "REDIS_USER"), "REDIS_PASSWORD": master["passwords"]["exporter"]},
    )

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    metrics = wait_for("the exporter", scrape)
    assert re.search(r"^redis_up 1$", metrics, re.M), "the exporter cannot read the master"
    assert re.search(r"^redis_memory_max_bytes [1-9]", metrics, re.M), "maxmemory comes from INFO"
    assert not master["admin"].execute_command("ACL", "LOG"), "the master refused the exporter a command"
    user = client(master, "exporter", master["passwords"]["exporter"])
    try:
        for command in (["CONFIG", "GET", "requirepass"], ["GET", "known-key"], ["KEYS", "*"]):
            with pytest.raises(redis.exceptions.NoPermissionError):
                user.execute_command(*command)
    finally:
        user.close()


# --- check-master -------------------------------------------------------------


def check_master(master, user, password):
    return subprocess.run(
        ["bash", REPO / "scripts/check-master.sh"],
        env={
            "PATH": os.environ["PATH"],
            "MASTER_HOST": "localhost",
            "MASTER_PORT": str(master["port"]),
            "MASTER_CA": master["ca"],
            "MASTER_USER": user,
            "MASTER_PASSWORD": password,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_master_accepts_the_replica_user(master, no_refusals):
    result = check_master(master, "replica", master["passwords"]["replica"])
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for step in ("TLS handshake", "AUTH as 'replica'", "REPLCONF", "PSYNC ? -1", "received a snapshot", "+CONTINUE"):
        assert any(line.startswith("  ok    ") and step in line for line in lines), f"{step}: {result.stdout}"
    assert "A replica can follow localhost:" in result.stdout


@pytest.mark.parametrize("user", ["heartbeat", "reader"])
def test_check_master_refuses_a_user_without_the_replication_rules(master, user):
    if user == "reader":
        # As a hosted service's usual application user: it reads everything, replicates nothing.
        master["admin"].acl_setuser("reader", enabled=True, passwords=["+reader-pw"], keys=["*"], commands=["+@read"])
        master["passwords"]["reader"] = "reader-pw"
    result = check_master(master, user, master["passwords"][user])
    assert result.returncode == 1
    [failure] = [line for line in result.stdout.splitlines() if "FAIL" in line]
    assert failure.startswith("  FAIL  replication sync refused at REPLCONF: NOPERM"), failure
    assert failure.endswith("(a replica's user needs +psync +replconf)"), failure
    assert "A replica cannot follow localhost:" in result.stdout
