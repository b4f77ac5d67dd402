"""A master whose certificate another CA signed: the pod's stunnel must refuse
it, and the API must stay unready and say why."""

import time

from deploy.e2e import kit


def test_bad_certificate(kit_network, summary):
    kit.play(
        "master-bad",
        "master",
        "--rename",
        "redis-master=redis-master-bad",
        "--rename-config",
        "redis-master-tls=redis-master-bad-tls",
    )
    pod = kit.play_one(
        "read-api-badcert", "overlays/sidecar", kit.BADCERT_PORTS, "--rename-config", "redis-master=redis-master-bad"
    )
    kit.wait_for(
        "the badcert pod's replica to answer", lambda: pod.ready()[1]["reason"].startswith("replica_not_synced"), 60
    )
    for _ in range(40):
        status, body = pod.ready()
        assert status == 503 and body["reason"].startswith("replica_not_synced"), f"{status} {body}"
        time.sleep(0.2)
    stunnel = kit.podman("logs", "read-api-badcert-0-stunnel", check=False)
    logs = stunnel.stdout + stunnel.stderr
    assert "certificate verify failed" in logs, f"stunnel logs do not name the reason: {logs[-500:]}"
    assert pod.metric("read_api_replica_synced") == 0 and pod.metric("read_api_replica_link_up") == 0
    summary(
        "stunnel refused the certificate (logged 'certificate verify failed'); "
        "/readyz stayed 503, read_api_replica_synced 0"
    )
