"""The open-loop generator (loadtest/lib/openloop.py): oha keeps vegeta's semantics
against servers that stall, and its results become vegeta's JSON report."""

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from loadtest.lib import openloop, results

REPO = Path(__file__).resolve().parents[2]


class Server:
    """A real HTTP/1.1 server on a loopback port that records when each request arrives,
    and answers after DELAY seconds (None: never)."""

    def __init__(self, delay):
        self.delay, self.arrivals, self.connections = delay, [], 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _serve(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                self.arrivals.append(time.monotonic())
                if self.delay is None:
                    await reader.read()  # hold the connection until the client gives up
                    return
                await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    def stop(self):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def server(request):
    s = Server(request.param)
    yield s
    s.stop()


def busiest_second(arrivals):
    """The most arrivals in any one second after the first: how fast the generator sent."""
    start = arrivals[0]
    counts = {}
    for t in arrivals:
        counts[int(t - start)] = counts.get(int(t - start), 0) + 1
    return max(counts.values())


@pytest.mark.load
@pytest.mark.parametrize("server", [None], indirect=True)
def test_arrivals_keep_the_offered_rate_when_nothing_is_answered(server, tmp_path):
    report = openloop.attack(300, 3, 0.5, 2000, tmp_path / "stall", f"http://127.0.0.1:{server.port}/")
    # 900 ticks in 3 s; a closed loop of 2000 would send as many, a cap of 50 a sixth.
    assert len(server.arrivals) >= 0.9 * 900, len(server.arrivals)
    span = server.arrivals[-1] - server.arrivals[0]
    assert 2.5 <= span <= 3.5, span
    assert report["requests"] == len(server.arrivals) or report["requests"] >= 0.9 * 900
    assert report["status_codes"] == {"0": report["requests"]} and report["success"] == 0
    assert report["errors"] == ["timeout"]
    # Every timeout counts at the timeout in the latencies, as vegeta measures it.
    assert report["latencies"]["50th"] == report["latencies"]["max"] == 500_000_000


@pytest.mark.load
@pytest.mark.parametrize("server", [None], indirect=True)
def test_a_small_cap_bounds_what_is_in_flight(server, tmp_path):
    # With 20 in flight at most and 0.5 s to wait for each, no more than 40 leave a second.
    openloop.attack(300, 2, 0.5, 20, tmp_path / "capped", f"http://127.0.0.1:{server.port}/")
    assert busiest_second(server.arrivals) <= 45, busiest_second(server.arrivals)


@pytest.mark.load
@pytest.mark.parametrize("server", [0.3], indirect=True)
def test_slow_answers_neither_slow_the_arrivals_nor_are_lost(server, tmp_path):
    report = openloop.attack(200, 2, 1.0, 2000, tmp_path / "slow", f"http://127.0.0.1:{server.port}/")
    assert len(server.arrivals) >= 0.9 * 400, len(server.arrivals)
    # About 60 in flight at once, each on its own connection.
    assert server.connections >= 40, server.connections
    # All answered in time but a few on this shared machine, whose server thread can stall.
    assert report["status_codes"]["200"] >= 0.95 * report["requests"], report["status_codes"]
    by_200 = report["latencies_by_status"]["200"]
    assert 300e6 <= by_200["50th"] <= by_200["99th"] < 1e9, by_200
    # Requests in flight when arrivals stop are waited for, as vegeta's attack does.
    assert report["wait"] >= 250e6, report["wait"]


def oha_run(tmp_path, rows, errors, total=2.0):
    """An oha run's JSON summary and its database of answered requests, as oha writes them."""
    (tmp_path / "run.oha.json").write_text(json.dumps({"summary": {"total": total}, "errorDistribution": errors}))
    db = tmp_path / "run.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE oha (url TEXT NOT NULL, start REAL NOT NULL, start_latency_correction REAL, end REAL NOT"
            " NULL, duration REAL NOT NULL, status INTEGER NOT NULL, len_bytes INTEGER NOT NULL, run INTEGER NOT NULL)"
        )
        conn.executemany("INSERT INTO oha VALUES ('http://x/', ?, ?, ?, ?, ?, ?, 1)", rows)
    return tmp_path / "run.oha.json", db


def test_the_report_has_vegetas_shape_and_each_status_its_own_latencies(tmp_path):
    # 100 answers: 60 200s of 1..60 ms, 40 503s of 0.1..4 ms; their ticks 10 ms apart from 0.
    rows = []
    for i in range(100):
        status, latency = (200, (i + 1) / 1000) if i < 60 else (503, (i - 59) / 10000)
        tick = i / 100
        rows.append((tick + 0.0005, tick, tick + latency, latency, status, 10))
    oha_json, db = oha_run(tmp_path, rows, {"timeout": 3, "connection refused": 1, "aborted due to deadline": 0})
    r = openloop.report(oha_json, db, started=1_700_000_000.0, timeout=1.0, rate=100, seconds=1.1)
    assert set(r) >= {"latencies", "bytes_in", "bytes_out", "earliest", "latest", "end", "duration", "wait",
                      "requests", "rate", "throughput", "success", "status_codes", "errors"}  # fmt: skip
    assert set(r["latencies"]) == {"total", "mean", "50th", "90th", "95th", "99th", "max", "min"}
    assert r["requests"] == 104 and r["status_codes"] == {"200": 60, "503": 40, "0": 4}
    assert r["success"] == pytest.approx(60 / 104)
    assert r["errors"] == ["connection refused", "timeout", "503 Service Unavailable"]
    ok, shed = r["latencies_by_status"]["200"], r["latencies_by_status"]["503"]
    assert (ok["min"], ok["50th"], ok["99th"], ok["max"]) == (1_000_000, 30_000_000, 60_000_000, 60_000_000)
    assert (shed["min"], shed["50th"], shed["99th"], shed["max"]) == (100_000, 2_000_000, 4_000_000, 4_000_000)
    # The three timeouts at the timeout, the refusal at 0.
    assert r["latencies"]["max"] == 1_000_000_000 and r["latencies"]["min"] == 0
    assert r["bytes_in"]["total"] == 1000
    # The first tick to the last, the 104th at 1.03 s; then to the end of the run, oha's total.
    assert (r["duration"], r["wait"]) == (1_030_000_000, 970_000_000)
    assert r["earliest"] == "2023-11-14T22:13:20Z" and r["latest"].startswith("2023-11-14T22:13:21.03")
    assert r["rate"] == pytest.approx(104 / 1.03)
    assert r["throughput"] == pytest.approx(60 / 2.0)
    assert r["unsent"] == 110 - 104


def test_a_run_answered_in_full_spans_its_answers(tmp_path):
    rows = [(i / 100, i / 100, i / 100 + 0.004, 0.004, 200, 1) for i in range(100)]
    oha_json, db = oha_run(tmp_path, rows, {})
    r = openloop.report(oha_json, db, started=0.0, timeout=1.0, rate=100, seconds=1.0)
    assert (r["duration"], r["wait"], r["unsent"]) == (990_000_000, 4_000_000, 0)
    assert r["throughput"] == pytest.approx(100 / 0.994)


def test_a_run_answered_by_nothing_spans_the_run(tmp_path):
    oha_json, db = oha_run(tmp_path, [], {"timeout": 50}, total=3.0)
    r = openloop.report(oha_json, db, started=0.0, timeout=1.0, rate=25, seconds=2)
    assert r["requests"] == 50 and r["status_codes"] == {"0": 50} and r["latencies_by_status"] == {}
    assert (r["duration"], r["wait"], r["throughput"]) == (1_960_000_000, 1_040_000_000, 0.0)


def test_vegeta_reports_normalise_with_the_latencies_of_each_status(tmp_path):
    rows = [(i / 100, i / 100, i / 100 + 0.002, 0.002, 200 if i % 2 else 503, 5) for i in range(100)]
    oha_json, db = oha_run(tmp_path, rows, {})
    path = tmp_path / "report.json"
    path.write_text(json.dumps(openloop.report(oha_json, db, started=0.0, timeout=1.0, rate=100, seconds=1)))
    r = results.from_vegeta(path, "x", 100)
    assert (r["requests"], r["ok"], r["shed"]) == (100, 50, 50)
    assert r["p99_ms_200"] == r["p99_ms_503"] == 2.0


def test_attack_names_what_it_needs(tmp_path):
    with pytest.raises(SystemExit):
        openloop.main(["attack", "--rate", "10", "--duration", "1", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        openloop.main(["attack", "--rate", "0", "--duration", "1", "--out", str(tmp_path / "x"), "http://127.0.0.1:1/"])


def test_a_timeline_shares_each_seconds_ticks_among_200_503_and_no_answer(tmp_path):
    # Two sources at 10/s for 2 s. Second 0: all 200s of 5 ms. Second 1: one source's ten are
    # 503s, the other's five 200s of 50 ms and five never answered.
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    ok = [(i / 10, i / 10, i / 10 + 0.005, 0.005, 200, 1) for i in range(10)]
    _, a = oha_run(first, ok + [(1 + i / 10, 1 + i / 10, 1 + i / 10 + 0.001, 0.001, 503, 1) for i in range(10)], {})
    _, b = oha_run(second, ok + [(1 + i / 10, 1 + i / 10, 1 + i / 10 + 0.05, 0.05, 200, 1) for i in range(5)], {})
    rows = openloop.timeline([a, b], 10, 2)
    assert [(r["second"], r["offered"], r["ok"], r["shed"], r["unanswered"]) for r in rows] == [
        (0, 20, 1.0, 0.0, 0.0),
        (1, 20, 0.25, 0.5, 0.25),
    ]
    assert (rows[0]["p99_ms"], rows[1]["p50_ms"]) == (5.0, 50.0)
