"""The load-test kit on this machine: the oha stand-in path of attack.sh against
the real local topology, result normalisation, histogram merging, the plot, the
quick bench, the model, and the cluster Job manifests."""

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from loadtest import model, replay
from loadtest.lib import bench, instructions, results

REPO = Path(__file__).resolve().parents[2]
LOADTEST = REPO / "loadtest"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, env=None, timeout=600, check=True):
    result = subprocess.run(
        [str(a) for a in args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check:
        assert result.returncode == 0, f"{args}: {result.stderr[-3000:]}"
    return result


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    """The sidecar topology from scripts/local-topology.sh, with a seeded keyspace."""
    state = tmp_path_factory.mktemp("topology")
    api, admin = free_port(), free_port()
    env = {
        "STATE_DIR": str(state),
        "MASTER_PORT": str(free_port()),
        "STUNNEL_PORT": str(free_port()),
        "REPLICA_PORT": str(free_port()),
        "API_ADDR": f"127.0.0.1:{api}",
        "API_ADMIN_ADDR": f"127.0.0.1:{admin}",
        "WORKERS": "1",
    }
    run(["cargo", "build", "--release", "--locked", "-p", "read-api"], timeout=900)
    run([REPO / "scripts/local-topology.sh", "up"], env)
    run([LOADTEST / "seed-keys.sh"], {**env, "KEYSPACE": "200"})
    yield {"env": env, "base": f"http://127.0.0.1:{api}"}
    run([REPO / "scripts/local-topology.sh", "down"], env)


@pytest.mark.load
@pytest.mark.parametrize("target", ["known-key", "random", "batch"])
def test_attack_ladder_with_the_oha_stand_in(topology, target, tmp_path):
    out = tmp_path / target
    env = {
        **topology["env"],
        "BASE_URL": topology["base"],
        "TARGET": target,
        "KEYSPACE": "200",
        "RATES": "200,400",
        "DURATION": "1",
        "CONNECTIONS": "4",
        "OUT": str(out),
        "ENGINE": "auto",
        "PATH": os.environ["PATH"].replace(":/usr/local/bin/vegeta", ""),
    }
    result = run([LOADTEST / "attack.sh"], env)
    assert "engine=oha" in result.stderr, "without vegeta on PATH the stand-in runs, and says so"
    rows = jsonl(out / "summary.jsonl")
    assert [r["offered_rate"] for r in rows] == [200, 400]
    for r in rows:
        assert r["engine"] == "oha" and r["label"] == target
        assert r["success_ratio"] == 1.0, r
        assert r["requests"] > 0.5 * r["offered_rate"] * r["duration_s"], r
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert (out / "step-200.json").is_file() and (out / "step-400.json").is_file()
    table = (out / "summary.md").read_text()
    assert table.count("\n| " + target) == 2


@pytest.mark.load
def test_plot_draws_one_line_per_series(topology, tmp_path):
    for label, rates in [("central", "300"), ("sidecar", "300")]:
        env = {
            **topology["env"],
            "BASE_URL": topology["base"],
            "RATES": rates,
            "DURATION": "1",
            "CONNECTIONS": "2",
            "LABEL": label,
            "OUT": str(tmp_path / label),
            "ENGINE": "oha",
        }
        run([LOADTEST / "attack.sh"], env)
    svg = tmp_path / "ladder.svg"
    run([LOADTEST / "plot.sh", svg, tmp_path / "central/summary.jsonl", tmp_path / "sidecar/summary.jsonl"])
    text = svg.read_text()
    assert text.startswith("<?xml") and "<svg" in text
    assert "central" in text and "sidecar" in text


def test_oha_results_count_only_http_200_as_success(tmp_path):
    report = {
        "summary": {"successRate": 1.0, "total": 2.0, "slowest": 0.004, "fastest": 0.0001, "average": 0.001},
        "latencyPercentiles": {"p50": 0.001, "p95": 0.002, "p99": 0.003},
        "statusCodeDistribution": {"200": 90, "503": 6},
        "errorDistribution": {"connection refused": 4, "aborted due to deadline": 7},
    }
    path = tmp_path / "oha.json"
    path.write_text(json.dumps(report))
    r = results.from_oha(path, "x", 50)
    assert (r["requests"], r["ok"], r["success_ratio"], r["throughput"]) == (100, 90, 0.9, 45.0)
    assert (r["p50_ms"], r["p99_ms"], r["max_ms"]) == (1.0, 3.0, 4.0)


def test_vegeta_reports_normalise_the_same_way(tmp_path):
    report = {
        "latencies": {"50th": 1_000_000, "95th": 2_000_000, "99th": 3_000_000, "max": 9_000_000},
        "requests": 200,
        "duration": 1_900_000_000,
        "wait": 100_000_000,
        "status_codes": {"200": 150, "0": 50},
    }
    path = tmp_path / "vegeta.json"
    path.write_text(json.dumps(report))
    r = results.from_vegeta(path, "x", 100)
    assert (r["requests"], r["ok"], r["success_ratio"], r["throughput"]) == (200, 150, 0.75, 75.0)
    assert (r["p50_ms"], r["p95_ms"], r["p99_ms"]) == (1.0, 2.0, 3.0)


# vegeta is not installable here: this stand-in records how attack.sh calls it and
# answers in vegeta's documented formats (a JSON report; plot reads result files).
VEGETA_STAND_IN = """#!/usr/bin/env bash
echo "$*" >>"$VEGETA_CALLS"
case $1 in
    attack) echo "result-stream" ;;
    report)
        if [[ $* == *-type=json* ]]; then
            echo '{"latencies": {"50th": 1000000, "95th": 2000000, "99th": 3000000, "max": 4000000},
                   "requests": 10, "duration": 1000000000, "wait": 0, "status_codes": {"200": 10}}'
        else
            echo "Requests [total] 10"
        fi ;;
    plot) for f in "${@:2}"; do [[ $f == -* || $f == "$LABEL" ]] || [[ -s $f ]] || exit 3; done; echo "<html>" ;;
esac
"""


def test_the_vegeta_path_holds_the_rate_and_plots_from_its_files(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vegeta").write_text(VEGETA_STAND_IN)
    (bin_dir / "vegeta").chmod(0o755)
    calls, out = tmp_path / "calls.txt", tmp_path / "out"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "VEGETA_CALLS": str(calls), "ENGINE": "vegeta",
           "RATES": "100,200", "DURATION": "1", "OUT": str(out), "LABEL": "x"}  # fmt: skip
    run([LOADTEST / "attack.sh"], env)
    lines = calls.read_text().splitlines()
    attacks = [line for line in lines if line.startswith("attack")]
    assert len(attacks) == 2 and all("-max-workers" not in a for a in attacks), attacks
    [plot] = [line for line in lines if line.startswith("plot")]
    assert plot.split()[-2:] == [str(out / "step-100.bin"), str(out / "step-200.bin")], plot
    rows = jsonl(out / "summary.jsonl")
    assert [r["offered_rate"] for r in rows] == [100, 200] and rows[0]["p99_ms"] == 3.0


def test_pod_histograms_merge_into_one_result(tmp_path):
    # Two pods; latency buckets are 10 µs. 98 answers at 1 ms, one at 5 ms, one transport error at 1 s.
    (tmp_path / "a.txt").write_text("H 200 99 50\nH 200 499 1\n")
    (tmp_path / "b.txt").write_text("noise from the shell\nH 200 99 48\nH 0 99999 1\n")
    r = results.from_histograms([tmp_path / "a.txt", tmp_path / "b.txt"], "sidecar", 50, 2.0)
    assert (r["requests"], r["ok"], r["success_ratio"], r["throughput"]) == (100, 99, 0.99, 49.5)
    assert r["p50_ms"] == pytest.approx(1.0)
    assert r["p99_ms"] == pytest.approx(5.0)
    assert r["max_ms"] == pytest.approx(1000.0)


def test_bench_costs_pair_cpu_marks_with_their_operations(tmp_path):
    ticks = os.sysconf("SC_CLK_TCK")
    marks = [
        # Two rounds of the API in one phase: 2 and 3 seconds of CPU over 1000 + 4000 requests.
        ("api-sidecar-tcp", "api", 0, None),
        ("api-sidecar-tcp", "api", 2 * ticks, None),
        ("api-sidecar-tcp", "api", 10 * ticks, None),
        ("api-sidecar-tcp", "api", 13 * ticks, None),
        # stunnel: one second for 500 writes, counted by the closing mark.
        ("replication-writes", "stunnel", 5, None),
        ("replication-writes", "stunnel", 5 + ticks, 500),
    ]
    (tmp_path / "cpu.jsonl").write_text(
        "".join(
            json.dumps({"phase": p, "process": n, "ticks": t} | ({"units": u} if u else {})) + "\n"
            for p, n, t, u in marks
        )
    )
    (tmp_path / "points.jsonl").write_text(
        json.dumps({"label": "api-sidecar-tcp", "requests": 1000, "throughput": 1.0})
        + "\n"
        + json.dumps({"label": "api-sidecar-tcp", "requests": 4000, "throughput": 3.0})
        + "\n"
    )
    bench.costs(tmp_path, ["connections=32", 'ladder="0.5,1"'])
    costs = json.loads((tmp_path / "costs.json").read_text())
    assert costs["api_cpu_us_per_read"] == 1000.0  # 5 s / 5000 requests
    assert costs["stunnel_cpu_us_per_write"] == 2000.0  # 1 s / 500 writes
    assert "master_tls_cpu_us_per_read" not in costs
    assert (costs["connections"], costs["ladder"]) == (32, "0.5,1")
    assert bench.ladder_rates(bench.jsonl(tmp_path / "points.jsonl"), "api-sidecar-tcp", "0.5,1") == "1,2"


def test_bench_templates_name_every_field(tmp_path):
    out = tmp_path / "nginx.conf"
    bench.render(LOADTEST / "templates/nginx.conf", out, ["dir=/d", "port=1", "body={}"])
    assert "listen 127.0.0.1:1;" in out.read_text() and "$" not in out.read_text()
    with pytest.raises(KeyError):
        bench.render(LOADTEST / "templates/webdis.json", out, ["dir=/d"])


@pytest.mark.load
def test_quick_bench_produces_every_output():
    result = run([LOADTEST / "bench.sh"], {"BENCH_QUICK": "1"}, timeout=1200)
    bench = REPO / "target/bench"
    report = (bench / "report.md").read_text()
    assert report.strip() in result.stdout
    rows = ["loopback TCP", "unix socket", "central: master over TLS", "webdis", "nginx", "redis-benchmark"]
    rows += ["value cache, sidecar: the same hot key", "value cache: Zipf keyspace larger than the cache"]
    rows += ["OpenResty, per-worker cache kept by CLIENT TRACKING", "OpenResty, lua-resty-redis", "hyper 1 + fred 10"]
    for row in rows:
        assert row in report, row
    for ratio in [
        "API sidecar TCP / webdis",
        "API sidecar TCP / HTTP ceiling",
        "API with cache, hot key / webdis",
        "API with cache, hot key / OpenResty with its tracking cache",
        "API without cache / minimal hyper + fred",
        "API with cache, hot key / nginx `return 200`",
        "instructions per request",
        "hit ratio",
        "p99 at 0.5 × the max rate",
        "peak resident memory",
    ]:
        assert ratio in report, ratio
    hit_ratio = float(re.search(r"hit ratio \| ([0-9.]+) \|", report).group(1))
    assert 0 < hit_ratio < 1, "a keyspace larger than the cache: some hits, some misses"
    lines = (bench / "results.csv").read_text().splitlines()
    assert lines[0].startswith("system,") and len(lines) == 1 + len(rows)
    for line in lines[1:]:
        assert float(line.split(",")[2]) > 0, line
    costs = json.loads((bench / "costs.json").read_text())
    for key in ["api_cpu_us_per_read", "replica_cpu_us_per_read", "master_tls_cpu_us_per_read"]:
        assert costs[key] > 0, key
    # A quick run's few thousand writes may cost stunnel under one 10 ms clock tick.
    assert costs["stunnel_cpu_us_per_write"] is None or costs["stunnel_cpu_us_per_write"] > 0
    svg = (bench / "ladder.svg").read_text()
    assert "central" in svg and "sidecar" in svg
    for label in ["central", "sidecar"]:
        rows = jsonl(bench / f"ladder-{label}.jsonl")
        assert len(rows) == 5 and all(r["requests"] > 0 for r in rows)
    # Overload: the API at three multiples of its capacity, webdis at two, in the same limit.
    overload = jsonl(bench / "overload.jsonl")
    assert [(r["label"], r["factor"]) for r in overload] == [("api", 0.5), ("api", 2), ("api", 5), ("webdis", 2)]
    assert all(r["requests"] > 0 and r["engine"] == "oha" for r in overload)
    assert all(abs(r["offered_rate"] - r["factor"] * r["capacity"]) <= r["factor"] + 1 for r in overload)
    for line in ["answered 200/s at 2 × capacity, API / webdis", "API at 5 ×: p99 of the 503s"]:
        assert line in report, line
    assert not list(Path("/sys/fs/cgroup/cpu").glob("bench-overload-*")), "the bench removes its cgroups"
    # Nothing the bench started is left running.
    assert not any(
        "target/bench" in Path(f"/proc/{p}/cmdline").read_text(errors="ignore")
        for p in os.listdir("/proc")
        if p.isdigit() and Path(f"/proc/{p}/cmdline").exists()
    )


def test_the_instruction_check_fails_past_the_tolerance_only():
    baseline = {"hit": 1000, "miss": 2000, "tolerance": 0.05}
    lines, ok = instructions.check({"hit": 1049, "miss": 1500}, baseline)
    assert ok and all(line.endswith("ok") for line in lines), lines
    lines, ok = instructions.check({"hit": 1051, "miss": 2000}, baseline)
    assert not ok and lines[0].endswith("REGRESSION") and lines[1].endswith("ok"), lines


@pytest.mark.load
def test_instructions_per_request_within_the_baseline(tmp_path):
    """callgrind's count of the API's hit and miss paths against the committed baseline."""
    result = run([LOADTEST / "instructions.sh", tmp_path / "result.json"], timeout=600)
    assert "hit:" in result.stdout and "miss:" in result.stdout
    measured = json.loads((tmp_path / "result.json").read_text())
    assert 0 < measured["hit"] < measured["miss"], measured


def test_model_reproduces_the_original_experiment():
    out = run([LOADTEST / "model", "--scenario", "original"]).stdout
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("12 "))
    sidecar, central = (float(v.replace(",", "")) for v in row[1:3])
    assert central == pytest.approx(15000, rel=0.05)
    assert sidecar > 60000
    assert row[3] == "master"


def test_model_scales_sidecar_linearly_and_caps_central():
    out = run(
        [
            LOADTEST / "model",
            "--pods",
            "1",
            "2",
            "4",
            "--api-us",
            "20",
            "--replica-us",
            "5",
            "--central-api-us",
            "20",
            "--master-ops",
            "50000",
            "--writes",
            "0",
        ]
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    sidecar = [float(r[1].replace(",", "")) for r in rows]
    central = [float(r[2].replace(",", "")) for r in rows]
    assert sidecar == pytest.approx([40000, 80000, 160000])
    assert central == pytest.approx([50000, 50000, 50000])


def test_cluster_ladder_needs_a_cluster(tmp_path):
    result = run([LOADTEST / "cluster.sh"], {"TOPOLOGY": "sidecar", "KUBECONFIG": str(tmp_path / "none")}, check=False)
    assert result.returncode != 0
    assert "reaches no cluster" in result.stderr


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_cluster_job_renders_and_validates(version, tmp_path):
    manifest = tmp_path / "job.yaml"
    manifest.write_text(run(["kubectl", "kustomize", LOADTEST / "k8s"]).stdout)
    run([REPO / ".venv/bin/kubernetes-validate", "--strict", "-k", version, "--quiet", manifest])
    text = manifest.read_text()
    assert "completionMode: Indexed" in text and "image: localhost/read-api-vegeta:" in text
    assert "max-workers" not in text, "a worker cap turns the open-model attack into a closed one"


def test_cluster_step_renders_the_rate_pods_and_image_of_the_step():
    step = REPO / "target/loadtest-cluster/test/step-3000"
    step.mkdir(parents=True, exist_ok=True)
    (step / "targets.txt").write_text("GET http://read-api/v1/keys/known-key\n")
    fields = ["NAMESPACE=team-a", "IMAGE_REGISTRY=reg.example/t", "IMAGE_TAG=9", "PODS=3", "per_pod=1000", "DURATION=7"]
    bench.render(LOADTEST / "templates/cluster-step.kustomization.yaml", step / "kustomization.yaml", fields)
    job = next(d for d in yaml.safe_load_all(run(["kubectl", "kustomize", step]).stdout) if d["kind"] == "Job")
    assert (job["metadata"]["namespace"], job["spec"]["parallelism"], job["spec"]["completions"]) == ("team-a", 3, 3)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reg.example/t/read-api-vegeta:9"
    assert [e["value"] for e in container["env"][:2]] == ["1000", "7s"]


def test_central_pods_serve_what_their_apis_allow_up_to_the_master():
    m = model
    limits = dict(api_cores=0.05, replica_cores=1.0, master_cores=0.025, api_us=50.0, replica_us=10.0)
    capacity = [m.predict_limits(n, "central", master_us=12.5, **limits) for n in (1, 2, 4)]
    # 1,000 reads/s per API; the master's 25,000 µs of CPU a second at 12.5 µs a read.
    assert capacity == pytest.approx([1000, 2000, 2000])
    assert m.predict_limits(4, "sidecar", master_us=12.5, **limits) == pytest.approx(4000)


def test_past_capacity_the_model_serves_the_sustained_share():
    m = model
    assert m.served(800, 1000, 0.9) == 800
    assert m.served(1000, 1000, 0.9) == 1000
    assert m.served(1500, 1000, 0.9) == pytest.approx(900)


def test_the_replay_takes_each_point_as_the_median_of_its_repeats():
    def step(repeat, offered, served, p99):
        return {"topology": "central", "pods": 2, "offered": offered, "repeat": repeat, "requests": 10,
                "throughput": served, "success": 1.0, "p99_ms": p99}  # fmt: skip

    rows = replay.median_rows([step(0, 1000.0, 990.0, 4.0), step(1, 1000.0, 900.0, 6.0),
                               step(2, 1000.0, 1100.0, 5.0), step(0, 2000.0, 1500.0, 9.0)])  # fmt: skip
    first, second = sorted(rows, key=lambda r: r["offered"])
    assert (first["pods"], first["throughput"], first["p99_ms"], first["repeats"]) == (2, 990.0, 5.0, 3)
    assert first["spread"] == pytest.approx(1100 / 900 - 1)
    assert (second["throughput"], second["spread"], second["repeats"]) == (1500.0, 0.0, 1)

    costs = replay.median_costs([
        {"central": {"master_us": 10.0, "master_measured": {2: 12.0, 8: 10.0}}},
        {"central": {"master_us": 14.0, "master_measured": {2: 16.0, 8: 11.0}}},
    ])  # fmt: skip
    assert costs["central"] == {"master_us": 12.0, "master_measured": {2: 14.0, 8: 10.5}}


def test_a_figure_measured_at_some_pod_counts_is_linear_between_them():
    master_us = {2: 15.4, 4: 12.2, 8: 14.4}
    assert [replay.at_pods(master_us, n) for n in (1, 2, 3, 4, 6, 8, 12)] == pytest.approx(
        [15.4, 15.4, 13.8, 12.2, 13.3, 14.4, 14.4]
    )
    assert replay.at_pods({2: 1.03}, 8) == 1.03
