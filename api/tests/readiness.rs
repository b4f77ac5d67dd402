//! Readiness with a real replica: it gates on the first full sync, then
//! prefers stale reads to no reads.

mod support;

use std::time::Duration;

use support::{free_port, wait_for, RedisServer, TestApp};

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

    master.kill();
    wait_for(
        "the replica to see its master gone",
        Duration::from_secs(10),
        || async { (app.metric("read_api_replica_link_up").await == Some(0.0)).then_some(()) },
    )
    .await;
    assert_eq!(app.readyz().await.0, 200, "stale reads beat no reads");
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
