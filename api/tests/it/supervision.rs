//! Each long-lived task of the real binary made to fail, and what the process
//! does about it (docs/supervision.md). The faults are injected through
//! `READ_API_FAULT` and `SIGUSR1` (see `read_api::fault`), which only debug
//! builds, such as this test's binary, honour.

use std::time::Duration;

use crate::support::{self, signal, wait_for, ApiProcess, RedisServer};

const DEADLINE: Duration = Duration::from_secs(15);

/// The binary with `fault` armed, against `redis`, ready.
async fn armed(redis: &RedisServer, fault: &str) -> ApiProcess {
    let api = ApiProcess::spawn(&[
        ("REDIS_URL", &redis.url()),
        ("READ_API_FAULT", fault),
        ("LOG_FORMAT", "text"),
        ("SHUTDOWN_DELAY_SECONDS", "1"),
        ("SHUTDOWN_GRACE_SECONDS", "1"),
    ]);
    api.wait_ready().await;
    api
}

/// Fires the armed fault, once the process logs that it did.
async fn fire(api: &ApiProcess) {
    assert!(signal(api.pid(), "USR1"), "signal the api");
    wait_for("the fault to be injected", DEADLINE, || async {
        api.log().contains("injecting a fault").then_some(())
    })
    .await;
}

/// Waits for the exit and checks it says which task ended, and how.
async fn assert_exits_naming(api: &mut ApiProcess, task: &str, how: &str) {
    let exit = api.wait_exit(DEADLINE).await;
    let log = api.log();
    assert_eq!(exit.code(), Some(1), "{exit:?}; log:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("a supervised task ended"))
        .unwrap_or_else(|| panic!("no line says a task ended; log:\n{log}"));
    assert!(
        line.contains(&format!("task=\"{task}\"")) && line.contains(how),
        "{line}"
    );
}

fn tracking_client_id(redis: &RedisServer) -> Option<String> {
    support::tracking_client_id(&redis.cli(&["CLIENT", "LIST"]))
}

#[tokio::test]
async fn a_panic_in_the_tracking_session_drops_the_cache_until_tracking_is_back() {
    let redis = RedisServer::start();
    let mut api = armed(&redis, "tracking").await;
    wait_for("the cache to serve", DEADLINE, || async {
        (api.metric("read_api_cache_tracking_up").await == Some(1.0)).then_some(())
    })
    .await;
    redis.cli(&["SET", "k", "old"]);
    let hits = api.metric("read_api_cache_hits_total").await;
    // Not at the first read: the SET's own invalidation may still be on its
    // way, and a read that crossed it is not kept.
    wait_for("k to be served from the cache", DEADLINE, || async {
        assert_eq!(api.value("k").await.as_deref(), Some("old"));
        (api.metric("read_api_cache_hits_total").await > hits).then_some(())
    })
    .await;
    let first = tracking_client_id(&redis).expect("a tracking connection");

    fire(&api).await;
    // The write's invalidation went to the session that died: only a cache
    // dropped with it, and one that serves again only with tracking back, reads it.
    redis.cli(&["SET", "k", "new"]);
    wait_for("the new value, not the cached one", DEADLINE, || async {
        (api.value("k").await.as_deref() == Some("new")).then_some(())
    })
    .await;
    let second = wait_for("a new tracking connection", DEADLINE, || async {
        tracking_client_id(&redis).filter(|id| *id != first)
    })
    .await;
    assert_ne!(second, first);
    wait_for("the cache to serve again", DEADLINE, || async {
        (api.metric("read_api_cache_tracking_up").await == Some(1.0)).then_some(())
    })
    .await;
    // And invalidations flow on the new session.
    assert_eq!(api.value("k").await.as_deref(), Some("new"));
    redis.cli(&["SET", "k", "newer"]);
    wait_for("the newer value", DEADLINE, || async {
        (api.value("k").await.as_deref() == Some("newer")).then_some(())
    })
    .await;
    assert!(api.exited().is_none(), "the process serves on");
    let log = api.log();
    assert!(
        log.contains("the tracking session panicked: injected fault"),
        "{log}"
    );
}

#[tokio::test]
async fn a_panic_in_the_replica_monitor_fails_readiness_and_stops_the_process() {
    let redis = RedisServer::start();
    let mut api = armed(&redis, "replica_monitor").await;
    fire(&api).await;
    wait_for("readiness to fail", DEADLINE, || async {
        (api.readyz().await != Some(200)).then_some(())
    })
    .await;
    assert_exits_naming(&mut api, "replica monitor", "panicked: injected fault").await;
}

#[tokio::test]
async fn an_admin_listener_that_ends_stops_the_process() {
    let redis = RedisServer::start();
    let mut api = armed(&redis, "admin_listener").await;
    fire(&api).await;
    assert_exits_naming(&mut api, "admin listener", "stopped on its own").await;
}

#[tokio::test]
async fn a_public_server_that_ends_stops_the_process_with_an_error() {
    let redis = RedisServer::start();
    let mut api = armed(&redis, "public_server").await;
    fire(&api).await;
    assert_exits_naming(&mut api, "public server", "stopped on its own").await;
}
