#!/usr/bin/env python3
"""The open-loop generator of the kit's load tests where vegeta is not installed:
oha driven with vegeta's semantics, its results turned into vegeta's JSON report.

vegeta's semantics, and how oha keeps them:
  - arrivals at the offered rate whatever the answers: `-q RATE` ticks on a clock
    into an unbounded queue, whatever the server does;
  - in flight bounded only by a large cap: `-c MAX_IN_FLIGHT` workers take the
    ticks (vegeta's -max-workers); `--latency-correction` counts a tick's wait for
    a worker in its latency, so a cap reached shows instead of hiding (and ticks
    still waiting when arrivals stop are counted, as `unsent`). The cap's default
    is 1.25 × rate × timeout (more than can ever be in flight: a request ends by
    its timeout) up to DEFAULT_CAP, because oha hands ticks to its workers in turn
    and each opens its own connection on first use: a cap of 7500 opens 7500
    connections where vegeta, reusing idle ones, opens about as many as are in
    flight, and a server limited to a tenth of a core spends its CPU accepting them;
  - a per-request timeout: `-t`;
  - requests still in flight at the end are waited for (`-w`), as vegeta's attack does.

The report is `vegeta report -type=json`'s shape (latencies in ns, total, mean,
50th, 90th, 95th, 99th, max, min; bytes_in, bytes_out, earliest, latest, end,
duration, wait, requests, rate, throughput, success, status_codes, errors), plus
`latencies_by_status`: the same latencies for the answers of each status code,
from oha's record of every answered request (`--db-url`). A request that got no
answer is status 0, as in vegeta; a timeout counts at the timeout in the overall
latencies (vegeta measures it about so), any other failure at 0 (oha keeps no
time for it: refused and reset connections fail at once). One more field, `unsent`:
the ticks oha had not sent when arrivals stopped (its workers behind, on a machine
too busy for the rate); vegeta would have sent them, so a report with many says
the generator, not the server, set the pace.

  openloop.py attack --rate R --duration S [--timeout 1] [--max-in-flight N]
                     [--worker-threads N] --out PREFIX (URL | --urls FILE)
        runs oha; writes PREFIX.oha.json, PREFIX.db and PREFIX.json (the report)
  openloop.py report OHA_JSON DB --started EPOCH_S --timeout S --rate R --duration S
        the report of a finished oha run, on stdout
"""

import argparse
import http
import json
import math
import resource
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

# vegeta counts a response as a success when its status is in [200, 400).
SUCCESS = range(200, 400)
NS = 1e9
# Far above what a server that answers or refuses in time has in flight (rate × latency).
DEFAULT_CAP = 1000


def oha_command(rate, duration, timeout, cap, json_out, db, target, urls_file=False, worker_threads=None):
    """oha's arguments for one open-loop attack (see the module's doc for why each)."""
    command = [
        "oha", "--no-tui", "--output-format", "json", "-o", str(json_out),
        "-z", f"{duration}s", "-q", str(rate), "-c", str(cap), "-t", f"{timeout}s",
        "--latency-correction", "-w", "--db-url", str(db),
    ]  # fmt: skip
    if worker_threads:
        command += ["--worker-threads", str(worker_threads)]
    if urls_file:
        command.append("--urls-from-file")
    return command + [str(target)]


def max_in_flight(rate, timeout, cap=None):
    """CAP, or by default 1.25 × what can be in flight at once up to DEFAULT_CAP; within the file descriptors
    oha may open (the soft limit raised to the hard one: a connection each, and a few spare)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    wanted = cap or min(max(100, math.ceil(1.25 * rate * timeout)), DEFAULT_CAP)
    return min(wanted, max(hard - 200, 1))


def quantile(ordered, q):
    """Nearest rank: the smallest value with at least Q of them at or below it."""
    if not ordered:
        return 0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latencies(values_ns):
    ordered = sorted(values_ns)
    total = sum(ordered)
    return {
        "total": total,
        "mean": round(total / len(ordered)) if ordered else 0,
        "50th": quantile(ordered, 0.50),
        "90th": quantile(ordered, 0.90),
        "95th": quantile(ordered, 0.95),
        "99th": quantile(ordered, 0.99),
        "max": ordered[-1] if ordered else 0,
        "min": ordered[0] if ordered else 0,
    }


def rfc3339(epoch_s):
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


def answered(db):
    """(scheduled start s, end s, latency ns, status, bytes) of every answered request, from
    the start of the run; the start is the tick's time, not the send's (latency correction)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT COALESCE(start_latency_correction, start), end, duration, status, len_bytes FROM oha"
        ).fetchall()
    return [(start, end, round(duration * NS), status, size) for start, end, duration, status, size in rows]


def report(oha_json, db, started, timeout, rate, seconds):
    """vegeta's JSON report of an oha run of RATE for SECONDS that began at STARTED (epoch s)."""
    data = json.loads(Path(oha_json).read_text())
    rows = answered(db)
    codes = {}
    by_status = {}
    for _, _, latency, status, _ in rows:
        codes[str(status)] = codes.get(str(status), 0) + 1
        by_status.setdefault(str(status), []).append(latency)
    failures = {e: n for e, n in data.get("errorDistribution", {}).items() if n}
    failed = sum(failures.values())
    if failed:
        codes["0"] = failed
    timeouts = sum(n for e, n in failures.items() if e == "timeout")
    every = [latency for _, _, latency, _, _ in rows] + [round(timeout * NS)] * timeouts + [0] * (failed - timeouts)
    requests = len(rows) + failed
    # Unanswered requests have no times of their own, but oha's ticks do: the first at 0, the
    # rest 1/RATE apart; and the run ends when its last request has (oha's total).
    earliest = 0.0 if failed else min((r[0] for r in rows), default=0.0)
    latest = max((r[0] for r in rows), default=0.0)
    end = max((r[1] for r in rows), default=0.0)
    if failed:
        latest = max(latest, (requests - 1) / rate)
        end = max(end, data["summary"]["total"])
    duration, wait = latest - earliest, max(end - latest, 0.0)
    successes = sum(1 for r in rows if r[3] in SUCCESS)
    errors = sorted(failures) + [
        f"{code} {http.HTTPStatus(code).phrase}" if code in http.HTTPStatus._value2member_map_ else str(code)
        for code in sorted({r[3] for r in rows if r[3] not in SUCCESS})
    ]
    bytes_in = sum(r[4] for r in rows)
    return {
        "latencies": latencies(every),
        "latencies_by_status": {code: latencies(values) for code, values in sorted(by_status.items())},
        "bytes_in": {"total": bytes_in, "mean": bytes_in / requests if requests else 0.0},
        "bytes_out": {"total": 0, "mean": 0.0},
        "earliest": rfc3339(started + earliest),
        "latest": rfc3339(started + latest),
        "end": rfc3339(started + end),
        "duration": round(duration * NS),
        "wait": round(wait * NS),
        "requests": requests,
        "rate": requests / duration if duration else 0.0,
        "throughput": successes / (duration + wait) if duration + wait else 0.0,
        "success": successes / requests if requests else 0.0,
        "status_codes": codes,
        "errors": errors,
        "unsent": max(math.floor(rate * seconds) - requests, 0),
    }


def timeline(dbs, rate, seconds):
    """Second by second of one step, by the ticks' times: what was offered (RATE per source, each
    database one source, the same clock start for all), the share answered 200 and 503 and not
    at all (the ticks of that second no answer came for), and the p50 and p99 of the 200s in ms."""
    answers = {second: [] for second in range(math.ceil(seconds))}
    for db in dbs:
        for start, _, latency, status, _ in answered(db):
            if int(start) in answers:
                answers[int(start)].append((status, latency))
    out = []
    for second, got in answers.items():
        offered = rate * len(dbs) * min(1.0, seconds - second)
        ok = sorted(latency for status, latency in got if status == 200)
        shed = sum(1 for status, _ in got if status == 503)
        out.append({
            "second": second,
            "offered": offered,
            "ok": len(ok) / offered if offered else 0.0,
            "shed": shed / offered if offered else 0.0,
            "unanswered": max(offered - len(got), 0) / offered if offered else 0.0,
            "p50_ms": quantile(ok, 0.5) / 1e6,
            "p99_ms": quantile(ok, 0.99) / 1e6,
        })  # fmt: skip
    return out


def attack(rate, duration, timeout, cap, out, target, urls_file=False, worker_threads=None, pin=()):
    """One open-loop attack: OUT.oha.json and OUT.db (oha's), OUT.json (the vegeta-shaped report);
    CAP in flight at most (None: see max_in_flight)."""
    out = str(out)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    oha_json, db = Path(out + ".oha.json"), Path(out + ".db")
    db.unlink(missing_ok=True)  # oha appends to an existing database
    cap = max_in_flight(rate, timeout, cap)
    command = oha_command(rate, duration, timeout, cap, oha_json, db, target, urls_file, worker_threads)
    started = time.time()
    result = subprocess.run([*pin, *command], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"openloop: oha failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    if not db.exists():
        # oha writes no database when nothing was answered.
        sqlite3.connect(db).execute(
            "CREATE TABLE oha (url TEXT, start REAL, start_latency_correction REAL, end REAL, duration REAL,"
            " status INTEGER, len_bytes INTEGER, run INTEGER)"
        ).connection.close()
    result = report(oha_json, db, started, timeout, rate, duration)
    Path(out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attack")
    a.add_argument("--rate", type=float, required=True, help="offered requests/s")
    a.add_argument("--duration", type=float, required=True, help="seconds of arrivals")
    a.add_argument("--timeout", type=float, default=1.0, help="seconds per request (default 1)")
    a.add_argument("--max-in-flight", type=int, help=f"the cap (default 1.25 × rate × timeout, up to {DEFAULT_CAP})")
    a.add_argument("--worker-threads", type=int, help="oha's threads (default: one per core)")
    a.add_argument("--out", required=True, help="PREFIX of the files written")
    a.add_argument("--urls", help="a file of URLs, one a line, taken in turn")
    a.add_argument("url", nargs="?")
    r = sub.add_parser("report")
    r.add_argument("oha_json")
    r.add_argument("db")
    r.add_argument("--started", type=float, required=True, help="epoch seconds oha started at")
    r.add_argument("--timeout", type=float, required=True)
    r.add_argument("--rate", type=float, required=True)
    r.add_argument("--duration", type=float, required=True)
    args = parser.parse_args(argv)
    if args.command == "report":
        result = report(args.oha_json, args.db, args.started, args.timeout, args.rate, args.duration)
        print(json.dumps(result, indent=1))
        return
    if bool(args.urls) == bool(args.url):
        parser.error("attack takes one URL or --urls FILE")
    if args.rate <= 0 or args.duration <= 0 or args.timeout <= 0 or (args.max_in_flight or 1) <= 0:
        parser.error("--rate, --duration, --timeout and --max-in-flight must be positive")
    result = attack(args.rate, args.duration, args.timeout, args.max_in_flight, args.out,
                    args.urls or args.url, bool(args.urls), args.worker_threads)  # fmt: skip
    print(json.dumps({k: result[k] for k in ("requests", "rate", "throughput", "success", "status_codes")}))


if __name__ == "__main__":
    main(sys.argv[1:])
