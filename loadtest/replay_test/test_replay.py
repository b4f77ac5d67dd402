"""A quick make replay (1 and 2 pods, three 3-second steps): the harness runs
end to end on podman and writes every output. The figures themselves are
checked by the full run (README, "The original experiment, replayed")."""

import csv

import pytest

from loadtest import replay

pytestmark = pytest.mark.podman


def test_a_quick_replay_writes_every_output():
    summary = replay.main(["--pods", "1,2", "--seconds", "3", "--steps", "3", "--repeats", "1"])
    rows = list(csv.DictReader(open(replay.OUT / "results.csv")))
    assert len(rows) == 2 * 2 * 3, f"{len(rows)} rows"
    assert all(int(r["requests"]) > 0 for r in rows)
    assert all(0 <= float(r["master_throttled"]) <= 1 for r in rows)
    # One pod per topology to cost the API and the replica, then the master's own ladder at 2 pods.
    calibration = list(csv.DictReader(open(replay.OUT / "calibration.csv")))
    assert len(calibration) == 2 * 3 + len(replay.MASTER_LADDER), f"{len(calibration)} calibration rows"
    for topology in ("sidecar", "central"):
        for pods in (1, 2):
            held, best, predicted = summary[(topology, pods)]
            assert best > 0 and predicted > 0, (topology, pods)
    for name in ("report.md", "ladder.svg", "throughput.svg"):
        assert (replay.OUT / name).stat().st_size > 0, name
    report = (replay.OUT / "report.md").read_text()
    assert "| sidecar | 2 |" in report and "| central | 2 |" in report

    # The report rebuilt from the records alone (replay.py --report) is the one the run wrote.
    replay.main(["--report"])
    assert (replay.OUT / "report.md").read_text() == report
