"""The central overlay on podman: the API reads the master itself over TLS."""

import kit


def test_central_overlay(master, summary):
    master.set("known-key", "read from the master itself")
    pod = kit.play_one("read-api-central", "overlays/central", kit.CENTRAL_PORTS)
    kit.wait_for("the central pod to be ready", lambda: pod.ready()[0] == 200, 60)
    assert pod.value("known-key") == "read from the master itself"
    assert pod.metric("read_api_replica_role") == 0
    summary("read-api-central-0 reads known-key from the master over TLS")
