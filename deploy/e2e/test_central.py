"""The central overlay on podman: the API reads the master itself over TLS."""

import json

from deploy.e2e import kit


def test_central_overlay(master, summary):
    master.set("known-key", "read from the master itself")
    pod = kit.play_one("read-api-central", "overlays/central", kit.CENTRAL_PORTS)
    kit.wait_for("the central pod to be ready", lambda: pod.ready()[0] == 200, 60)
    assert pod.value("known-key") == "read from the master itself"
    assert pod.metric("read_api_replica_role") == 0
    master.set("other-key", "2")
    status, body = pod.get("/v1/keys?key=known-key&key=other-key")
    assert status == 200 and json.loads(body)["values"]["other-key"] == "2", body
    # As the read-only user "api" (acl-users.conf), its value cache tracking the master: nothing refused.
    kit.wait_for("the cache to track the master", lambda: pod.metric("read_api_cache_tracking_up") == 1, 30)
    refused = [entry for entry in master.acl_log() if entry.get("username") == "api"]
    assert not refused, refused
    summary("read-api-central-0 reads known-key and a batch from the master over TLS as user api, nothing refused")
