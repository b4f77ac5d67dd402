#!/usr/bin/env python3
"""Admission settings side by side on a busy machine: interleaved rounds in which each configuration
of the release API (WORKERS=1, no cache, its own redis-server) runs in a cgroup (v1) of CPU of one
core, gets its closed-loop capacity measured (wrk, 32 connections), then the open-loop generator
(openloop.py, 1 s timeout) at FACTORS times that capacity. One JSON line per step on stdout:
200/s, 503/s, failed/s, p99 of the 200s and of the 503s, ticks the generator left unsent, and the
API's user and system CPU ticks. Figures of one configuration are only comparable with the other
configurations' of the same round.

  python3 -m loadtest.lib.overload_rounds CONFIGS_JSON FACTORS ROUNDS [SECONDS]
  e.g. '{"off":{"ADMISSION":"off"},"fixed":{},"conn32":{"ADMISSION_MAX_CONNECTIONS":"32"}}' 0.5,2,5 2 4
  CPU=0.1 (cores of the cgroup), OUT=target/overload-rounds
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from loadtest.lib import openloop

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / "target/release/read-api"
OUT = Path(os.environ.get("OUT", REPO / "target/overload-rounds"))
CG = Path("/sys/fs/cgroup/cpu/read-api-overload-rounds")
REDIS_PORT = 36379
API = "127.0.0.1:38080"
ADMIN = "127.0.0.1:39090"
URL = f"http://{API}/v1/keys/hot"


def wait(url, deadline=10):
    end = time.time() + deadline
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"{url} never answered")


def api(env):
    full = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{REDIS_PORT}", LISTEN_ADDR=API, ADMIN_ADDR=ADMIN,
                WORKERS="1", CACHE_MAX_BYTES="0", RUST_LOG="warn", LOG_FORMAT="json", **env)  # fmt: skip
    proc = subprocess.Popen([str(BIN)], env=full, stdout=subprocess.DEVNULL, stderr=open(OUT / "api.log", "a"))
    (CG / "cgroup.procs").write_text(str(proc.pid))
    wait(f"http://{ADMIN}/readyz")
    wait(URL)
    return proc


def cpu_ticks(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[11]), int(f[12])  # utime, stime


def capacity(seconds):
    out = subprocess.run(["wrk", "-t", "1", "-c", "32", "-d", f"{int(seconds)}s", URL], capture_output=True, text=True)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1))


def step(name, factor, cap, seconds, rnd, pid):
    rate = round(cap * factor)
    u0, s0 = cpu_ticks(pid)
    r = openloop.attack(rate, seconds, 1.0, None, OUT / f"{name}-{factor}-{rnd}", URL, worker_threads=2)
    u1, s1 = cpu_ticks(pid)
    by = r["latencies_by_status"]
    codes = r["status_codes"]
    row = {
        "config": name, "round": rnd, "factor": factor, "capacity": round(cap), "rate": rate,
        "ok_per_s": round(codes.get("200", 0) / seconds), "ok_ratio": round(codes.get("200", 0) / seconds / cap, 3),
        "shed_per_s": round(codes.get("503", 0) / seconds), "failed_per_s": round(codes.get("0", 0) / seconds),
        "p99_200_ms": round(by.get("200", {}).get("99th", 0) / 1e6, 2),
        "p50_200_ms": round(by.get("200", {}).get("50th", 0) / 1e6, 2),
        "p99_503_ms": round(by.get("503", {}).get("99th", 0) / 1e6, 2),
        "unsent": r["unsent"], "utime": u1 - u0, "stime": s1 - s0,
    }  # fmt: skip
    print(json.dumps(row), flush=True)
    wait(URL, 30)
    time.sleep(1)
    return row


def main():
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    configs = json.loads(sys.argv[1])  # {"name": {env}}
    factors = [float(f) for f in sys.argv[2].split(",")]
    rounds = int(sys.argv[3])
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 5
    cpu = float(os.environ.get("CPU", "0.1"))
    OUT.mkdir(parents=True, exist_ok=True)
    CG.mkdir(exist_ok=True)
    (CG / "cpu.cfs_period_us").write_text("10000")
    (CG / "cpu.cfs_quota_us").write_text(str(round(cpu * 10000)))
    redis = subprocess.Popen(["redis-server", "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.5)
        subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "SET", "hot", "v" * 100], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        for rnd in range(rounds):
            for name, env in configs.items():
                proc = api(env)
                try:
                    cap = capacity(seconds)
                    print(json.dumps({"config": name, "round": rnd, "closed_loop": round(cap)}), flush=True)
                    for factor in factors:
                        step(name, factor, cap, seconds, rnd, proc.pid)
                finally:
                    proc.terminate()
                    proc.wait()
    finally:
        redis.terminate()
        redis.wait()
        time.sleep(0.5)
        CG.rmdir()


if __name__ == "__main__":
    main()
