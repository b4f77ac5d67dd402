//! Redis loss, slowness and return: 503 with Retry-After within the timeout, then recovery.

use std::time::{Duration, Instant};

use read_api::{config::Settings, metrics::Metrics, store::StoreConfig};

use crate::support::{self, wait_for, RedisServer, TestApp};

#[tokio::test]
async fn redis_down_is_a_fast_503_and_its_return_is_noticed() {
    let mut redis = RedisServer::start();
    redis.cli(&["SET", "k", "v1"]);
    let app = TestApp::spawn(&redis.url(), &[("REDIS_TIMEOUT_MS", "300")]).await;
    app.wait_ready(200).await;
    assert_eq!(app.get_json("/v1/keys/k").await.0, 200);

    redis.kill();
    // The value cache answers until its tracking connection sees the close.
    wait_for("the first 503", Duration::from_secs(5), || async {
        (app.get("/v1/keys/k").await.status() == 503).then_some(())
    })
    .await;
    for _ in 0..5 {
        let started = Instant::now();
        let response = app.get("/v1/keys/k").await;
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unavailable");
        assert!(
            !body["message"].as_str().unwrap().contains("127.0.0.1"),
            "no internals: {body}"
        );
        // The timeout bounds the wait; the margin is for a loaded test machine.
        assert!(
            elapsed < Duration::from_millis(300 + 1500),
            "took {elapsed:?}"
        );
    }
    app.wait_not_ready("redis_unreachable").await;
    assert_eq!(app.metric("read_api_redis_up").await, Some(0.0));
    assert!(app
        .metrics()
        .await
        .contains("read_api_redis_errors_total{kind="));

    redis.restart();
    redis.cli(&["SET", "k", "v2"]);
    wait_for("reads to recover", Duration::from_secs(10), || async {
        let (status, body) = app.get_json("/v1/keys/k").await;
        (status == 200 && body["value"] == "v2").then_some(())
    })
    .await;
    app.wait_ready(200).await;
}

#[tokio::test]
async fn slow_redis_is_a_503_within_the_timeout_and_reads_resume() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "k", "v"]);
    // The read path's own timeout: the value cache would answer `k` from
    // memory while Redis is frozen (tests/value_cache.rs covers that case).
    let app = TestApp::spawn(
        &redis.url(),
        &[("REDIS_TIMEOUT_MS", "250"), ("CACHE_MAX_BYTES", "0")],
    )
    .await;
    assert_eq!(app.get_json("/v1/keys/k").await.0, 200);

    redis.pause();
    let started = Instant::now();
    let (single, batch) = tokio::join!(app.get("/v1/keys/k"), app.get("/v1/keys?key=k"));
    let elapsed = started.elapsed();
    redis.resume();
    assert_eq!(
        (single.status().as_u16(), batch.status().as_u16()),
        (503, 503)
    );
    assert!(
        elapsed < Duration::from_millis(250 + 1500),
        "took {elapsed:?}"
    );
    assert!(app
        .metrics()
        .await
        .contains(r#"read_api_redis_errors_total{kind="timeout"}"#));

    wait_for("reads to resume", Duration::from_secs(10), || async {
        (app.get_json("/v1/keys/k").await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_api_may_start_before_redis() {
    let port = support::free_port();
    let app = TestApp::spawn(&format!("redis://127.0.0.1:{port}"), &[]).await;
    app.wait_not_ready("redis_unreachable").await;
    assert_eq!(app.get_json("/v1/keys/k").await.0, 503);

    let redis = RedisServer::start_with_port(port);
    redis.cli(&["SET", "k", "late"]);
    app.wait_ready(200).await;
    assert_eq!(app.get_json("/v1/keys/k").await.1["value"], "late");
}

/// Each worker's pool reconnects on its own backoff: readiness must wait for
/// every worker, not only for the monitor's connection.
#[tokio::test]
async fn readiness_counts_every_worker_pool_and_forgets_dead_ones() {
    let redis = RedisServer::start();
    let config = store_config(&redis.url(), 2);
    let pools = config.worker_pools();
    let first = config.connect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pools.all_connected(), "one worker of two has started");

    let second = config.connect();
    wait_for(
        "both workers to connect",
        Duration::from_secs(5),
        || async { pools.all_connected().then_some(()) },
    )
    .await;

    drop(second);
    assert!(
        !pools.all_connected(),
        "a dead worker's pool counts for nothing"
    );
    let _restarted = config.connect();
    wait_for(
        "the restarted worker to connect",
        Duration::from_secs(5),
        || async { pools.all_connected().then_some(()) },
    )
    .await;
    drop(first);
}

#[tokio::test]
async fn a_worker_that_cannot_reach_redis_is_not_connected() {
    let config = store_config(&format!("redis://127.0.0.1:{}", support::free_port()), 1);
    let _worker = config.connect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!config.worker_pools().all_connected());
}

/// What the application builds its workers' stores from, for WORKERS workers.
fn store_config(redis_url: &str, workers: usize) -> StoreConfig {
    let settings = Settings::from_vars([
        ("REDIS_URL".to_string(), redis_url.to_string()),
        ("WORKERS".into(), workers.to_string()),
    ])
    .unwrap();
    StoreConfig::new(&settings, Metrics::new()).unwrap()
}
