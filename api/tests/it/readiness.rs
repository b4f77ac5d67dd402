//! Readiness with a real replica: it gates on the first full sync, then
//! prefers stale reads to no reads.

use std::time::Duration;

use crate::support::{self, free_port, wait_for, RedisServer, TestApp};

fn replica_of(master_port: u16) -> RedisServer {
    RedisServer::start_with(&["--replicaof", "127.0.0.1", &master_port.to_string()])
}

#[tokio::test]
async fn a_replica_that_never_synced_is_not_ready() {
    let nobody = free_port();
    let replica = replica_of(nobody);
    let app = TestApp::spawn(&replica.url(), &[]).await;
    app.wait_not_ready("replica_not_synced").await;
    // Several polls later, still not ready.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.readyz().await.0, 503);
    assert_eq!(app.metric("read_api_replica_role").await, Some(1.0));
    assert_eq!(app.metric("read_api_replica_synced").await, Some(0.0));
    assert_eq!(app.metric("read_api_replica_link_up").await, Some(0.0));
    assert_eq!(app.metric("read_api_ready").await, Some(0.0));
    // Redis says -1 for a link it never had; the API counts from its own start.
    wait_for(
        "link_down_seconds to count up from the api's start",
        Duration::from_secs(10),
        || async {
            let down = app.metric("read_api_replica_link_down_seconds").await?;
            (down >= 1.0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn synced_replica_is_ready_and_stays_ready_without_its_master() {
    let mut master = RedisServer::start();
    master.cli(&["SET", "known-key", "from-master"]);
    let mut replica = replica_of(master.port);
    let app = TestApp::spawn(&replica.url(), &[]).await;
    app.wait_ready(200).await;
    assert_eq!(
        app.get_json("/v1/keys/known-key").await.1["value"],
        "from-master"
    );
    assert_eq!(app.metric("read_api_replica_link_up").await, Some(1.0));
    assert_eq!(app.metric("read_api_replica_synced").await, Some(1.0));
    assert_eq!(
        app.metric("read_api_replica_link_down_seconds").await,
        Some(0.0)
    );

    master.kill();
    wait_for(
        "the replica to see its master gone",
        Duration::from_secs(10),
        || async { (app.metric("read_api_replica_link_up").await == Some(0.0)).then_some(()) },
    )
    .await;
    assert_eq!(app.readyz().await.0, 200, "stale reads beat no reads");
    wait_for(
        "link_down_seconds to count from when the link was seen down",
        Duration::from_secs(10),
        || async {
            let down = app.metric("read_api_replica_link_down_seconds").await?;
            (down >= 1.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        app.get_json("/v1/keys/known-key").await.1["value"],
        "from-master"
    );

    // A restarted replica is empty: its earlier sync no longer counts.
    replica.restart();
    app.wait_not_ready("replica_not_synced").await;
}

#[tokio::test]
async fn bounded_staleness_fails_readiness_after_the_limit() {
    let mut master = RedisServer::start();
    let replica = replica_of(master.port);
    let app = TestApp::spawn(&replica.url(), &[("READY_MAX_LINK_DOWN_SECONDS", "1")]).await;
    app.wait_ready(200).await;
    master.kill();
    app.wait_not_ready("master_link_down").await;
    assert!(
        app.metric("read_api_replica_link_down_seconds")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn a_sync_in_progress_does_not_count_as_synced() {
    let master = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    master.cli(&["DEBUG", "POPULATE", "3000", "key", "10"]);
    // Slow the snapshot down so the sync stays visibly in progress for a while.
    master.cli(&["CONFIG", "SET", "rdb-key-save-delay", "1000"]);
    let replica = replica_of(master.port);
    let app = TestApp::spawn(&replica.url(), &[("REPLICA_POLL_MS", "50")]).await;
    wait_for(
        "a poll that sees the sync in progress",
        Duration::from_secs(10),
        || async {
            (app.metric("read_api_replica_sync_in_progress").await == Some(1.0)).then_some(())
        },
    )
    .await;
    let (status, body) = app.readyz().await;
    assert_eq!(status, 503, "{body}");
    app.wait_ready(200).await;
    assert_eq!(
        app.metric("read_api_replica_sync_in_progress").await,
        Some(0.0)
    );
    assert_eq!(app.get_json("/v1/keys/key:2999").await.0, 200);
}

fn now_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[tokio::test]
async fn heartbeat_age_is_read_from_the_unprefixed_key_or_is_minus_one() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis.url(), &[("KEY_PREFIX", "tenant:")]).await;
    app.wait_ready(200).await;
    assert_eq!(
        app.metric("read_api_replica_heartbeat_age_seconds").await,
        Some(-1.0)
    );

    let five_seconds_ago = (now_millis() - 5_000).to_string();
    redis.cli(&["SET", "read-api:heartbeat", &five_seconds_ago]);
    let age = wait_for("the heartbeat age", Duration::from_secs(10), || async {
        let age = app.metric("read_api_replica_heartbeat_age_seconds").await?;
        (age >= 0.0).then_some(age)
    })
    .await;
    assert!((4.9..8.0).contains(&age), "{age}");

    redis.cli(&["SET", "read-api:heartbeat", "not a time"]);
    wait_for(
        "-1 for a value that is not a time",
        Duration::from_secs(10),
        || async {
            (app.metric("read_api_replica_heartbeat_age_seconds").await == Some(-1.0)).then_some(())
        },
    )
    .await;

    let custom = TestApp::spawn(&redis.url(), &[("HEARTBEAT_KEY", "hb")]).await;
    redis.cli(&["SET", "hb", &now_millis().to_string()]);
    let age = wait_for(
        "the custom heartbeat key",
        Duration::from_secs(10),
        || async {
            let age = custom
                .metric("read_api_replica_heartbeat_age_seconds")
                .await?;
            (age >= 0.0).then_some(age)
        },
    )
    .await;
    assert!(age < 3.0, "{age}");

    let disabled = TestApp::spawn(&redis.url(), &[("HEARTBEAT_KEY", "")]).await;
    redis.cli(&["SET", "read-api:heartbeat", &now_millis().to_string()]);
    disabled.wait_ready(200).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        disabled
            .metric("read_api_replica_heartbeat_age_seconds")
            .await,
        Some(-1.0)
    );
}

#[tokio::test]
async fn replica_offset_is_in_bytes_and_process_metrics_are_exported() {
    let master = RedisServer::start();
    let replica = replica_of(master.port);
    let app = TestApp::spawn(&replica.url(), &[]).await;
    app.wait_ready(200).await;
    master.cli(&["SET", "k", "v"]);
    wait_for("the offset to move", Duration::from_secs(10), || async {
        let offset = app.metric("read_api_replica_offset_bytes").await?;
        (offset > 0.0).then_some(())
    })
    .await;
    let text = app.metrics().await;
    assert!(
        !text.contains("read_api_replica_offset "),
        "the old name is gone"
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let value =
            support::metric_value(&text, name).unwrap_or_else(|| panic!("{name} in:\n{text}"));
        assert!(
            value > 0.0 || name == "process_cpu_seconds_total",
            "{name} {value}"
        );
    }
}
