//! Freshness on every answer and read-your-writes, on real parts: the local
//! topology (TLS master, stunnel, replica, the API binary) with the tunnel
//! frozen (SIGSTOP) to hold the replica behind, and a plain master/replica
//! pair whose master restarts into a new replication history.

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::support::{self, repo_root, topology::Topology, wait_for, RedisServer, TestApp};

const DEADLINE: Duration = Duration::from_secs(15);

/// `scripts/position.sh`: runs `write` (if any) and prints the token.
fn position(options: &[String], auth: Option<&str>, write: &[&str]) -> String {
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("scripts/position.sh"))
        .args(options);
    if !write.is_empty() {
        command.arg("--").args(write);
    }
    if let Some(auth) = auth {
        command.env("REDISCLI_AUTH", auth);
    }
    let out = command.output().expect("run scripts/position.sh");
    assert!(
        out.status.success(),
        "position.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn plain(server: &RedisServer) -> Vec<String> {
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        server.port.to_string(),
    ]
}

/// The topology's master, over TLS, as its admin.
fn master_options(topology: &Topology) -> (Vec<String>, String) {
    let ca = topology.state.path().join("certs/ca.crt");
    let options = vec![
        "--tls".into(),
        "--cacert".into(),
        ca.display().to_string(),
        "-h".into(),
        "localhost".into(),
        "-p".into(),
        topology.var("MASTER_PORT"),
    ];
    (options, topology.password("MASTER_PASSWORD"))
}

/// The heartbeat container's loop, every 200 ms, until dropped.
struct Heartbeat(Arc<AtomicBool>);

impl Heartbeat {
    fn start(options: Vec<String>, auth: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_millis();
                let _ = Command::new("redis-cli")
                    .args(&options)
                    .args(["SET", "read-api:heartbeat", &now.to_string()])
                    .env("REDISCLI_AUTH", &auth)
                    .output();
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Self(stop)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A read of `path` with extra headers: status, `Data-Age`, `Replication-Position`, body.
struct Answer {
    status: u16,
    age: Option<f64>,
    position: Option<String>,
    retry_after: Option<String>,
    body: serde_json::Value,
}

async fn read(http: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = http.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the api answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (age, position, retry_after) = (
        header("data-age").map(|v| v.parse().expect("Data-Age is a number")),
        header("replication-position"),
        header("retry-after"),
    );
    Answer {
        status: response.status().as_u16(),
        age,
        position,
        retry_after,
        body: response.json().await.unwrap_or_default(),
    }
}

async fn sidecar(extra: &[(&'static str, &str)]) -> Topology {
    let mut topology = Topology::new("sidecar");
    for (variable, value) in extra {
        topology.set(variable, value);
    }
    topology.up();
    topology
}

#[tokio::test]
async fn data_age_rises_while_the_link_is_frozen_and_max_staleness_follows() {
    let topology = sidecar(&[]).await;
    let (options, auth) = master_options(&topology);
    let _heartbeat = Heartbeat::start(options, auth);
    topology.seed("k", "v");
    let http = reqwest::Client::new();
    let url = format!("{}/v1/keys/k", topology.api);
    wait_for("a fresh Data-Age", DEADLINE, || async {
        let answer = read(&http, &url, &[]).await;
        (answer.status == 200 && answer.age.is_some_and(|a| a < 1.0)).then_some(())
    })
    .await;
    let fresh = read(&http, &url, &[("max-staleness", "2")]).await;
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    assert!(fresh.position.is_some_and(|p| p.contains(':')));

    let stunnel = topology.pid("stunnel").unwrap();
    assert!(support::signal(stunnel, "STOP"));
    let early = wait_for("Data-Age to pass 1 s", DEADLINE, || async {
        read(&http, &url, &[]).await.age.filter(|a| *a > 1.0)
    })
    .await;
    let late = wait_for("Data-Age to pass 2.5 s", DEADLINE, || async {
        read(&http, &url, &[]).await.age.filter(|a| *a > 2.5)
    })
    .await;
    assert!(late > early, "{late} after {early}");
    // Stale reads are still served to whoever does not mind.
    assert_eq!(read(&http, &url, &[]).await.status, 200);
    for refused in [
        read(&http, &url, &[("max-staleness", "2")]).await,
        read(&http, &format!("{url}?max-staleness=2"), &[]).await,
        read(
            &http,
            &format!("{}/v1/keys?key=k&max-staleness=2", topology.api),
            &[],
        )
        .await,
    ] {
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert_eq!(refused.body["error"], "too_stale");
        assert_eq!(refused.retry_after.as_deref(), Some("1"));
        assert!(
            refused.age.is_some_and(|a| a > 2.0),
            "the refusal says how old"
        );
    }
    let metrics = topology.metrics().await;
    assert!(
        metrics.contains("read_api_consistency_refusals_total{reason=\"too_stale\"} 3"),
        "{metrics}"
    );

    assert!(support::signal(stunnel, "CONT"));
    wait_for("Data-Age to fall back", DEADLINE, || async {
        read(&http, &url, &[]).await.age.filter(|a| *a < 1.0)
    })
    .await;
    let again = read(&http, &format!("{url}?max-staleness=2"), &[]).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["value"], "v");
}

#[tokio::test]
async fn a_read_with_a_token_waits_for_the_write_and_gives_up_at_its_bound() {
    let topology = sidecar(&[("POSITION_MAX_WAIT_MS", "20000")]).await;
    let (options, auth) = master_options(&topology);
    topology.seed("k", "v1");
    let http = reqwest::Client::new();
    let url = format!("{}/v1/keys/k", topology.api);
    wait_for("v1 through the replica", DEADLINE, || async {
        (topology.value("k").await.as_deref() == Some("v1")).then_some(())
    })
    .await;

    let stunnel = topology.pid("stunnel").unwrap();
    assert!(support::signal(stunnel, "STOP"));
    let token = position(&options, Some(&auth), &["SET", "k", "v2"]);
    let (replid, offset) = token.split_once(':').unwrap();
    assert_eq!(replid.len(), 40, "{token}");
    let wanted: i64 = offset.parse().unwrap();
    // Without the token: the old value, at once.
    assert_eq!(read(&http, &url, &[]).await.body["value"], "v1");

    let started = Instant::now();
    let waiting = tokio::spawn({
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move { read(&http, &url, &[("min-position", &token), ("max-wait", "15")]).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !waiting.is_finished(),
        "answered while the replica was held"
    );
    assert!(support::signal(stunnel, "CONT"));
    let answer = waiting.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["value"], "v2", "the write, not the cached v1");
    assert!(started.elapsed() >= Duration::from_millis(800));
    let reached = answer.position.unwrap();
    let (at_replid, at) = reached.split_once(':').unwrap();
    assert_eq!(at_replid, replid);
    assert!(at.parse::<i64>().unwrap() >= wanted, "{reached} vs {token}");
    // Reached: a batch with the token answers at once.
    let batch = read(
        &http,
        &format!("{}/v1/keys?key=k&min-position={token}", topology.api),
        &[],
    )
    .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    assert_eq!(batch.body["values"]["k"], "v2");

    // Held past the client's bound: 503 and the position reached.
    assert!(support::signal(stunnel, "STOP"));
    let token = position(&options, Some(&auth), &["SET", "k", "v3"]);
    let started = Instant::now();
    let refused = read(
        &http,
        &url,
        &[("min-position", &token), ("max-wait", "0.5")],
    )
    .await;
    let took = started.elapsed();
    assert!(support::signal(stunnel, "CONT"));
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"], "position_not_reached");
    assert_eq!(refused.retry_after.as_deref(), Some("1"));
    let message = refused.body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("it is at {reached}")) || message.contains(replid),
        "{message}"
    );
    assert!(refused.position.is_some_and(|p| p != token));
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let metrics = topology.metrics().await;
    assert!(
        metrics.contains("read_api_consistency_refusals_total{reason=\"position_not_reached\"} 1"),
        "{metrics}"
    );
    assert!(support::metric_value(&metrics, "read_api_position_waits_total").unwrap() >= 2.0);
}

/// A master and its replica, plain, and the API on the replica.
async fn pair(master_args: &[&str]) -> (RedisServer, RedisServer, TestApp) {
    let master = RedisServer::start_with(master_args);
    let port = master.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    wait_for("the replica to sync", DEADLINE, || async {
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
            .then_some(())
    })
    .await;
    let app = TestApp::spawn(&replica.url(), &[("POSITION_MAX_WAIT_MS", "10000")]).await;
    app.wait_ready(200).await;
    (master, replica, app)
}

fn info_field(server: &RedisServer, field: &str) -> String {
    server
        .cli(&["INFO", "replication"])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn a_token_from_before_a_master_restart_counts_only_if_the_new_history_kept_it() {
    // No PING into the stream while the test runs: the replica's offset
    // stays where the save left it, so the restarted master can continue it.
    let (mut master, replica, app) = pair(&["--repl-ping-replica-period", "3600"]).await;
    let kept = position(&plain(&master), None, &["SET", "k", "saved"]);
    let with = |token: &str| format!("/v1/keys/k?min-position={token}&max-wait=5");
    assert_eq!(app.get_json(&with(&kept)).await.0, 200);
    assert_eq!(master.cli(&["SAVE"]), "OK");
    let before = info_field(&master, "master_replid");

    // Restarted from its RDB file: a new id, the old one kept as the history
    // it continues up to the save; the replica follows with a partial sync.
    master.restart();
    wait_for("the replica to follow the new id", DEADLINE, || async {
        let id = info_field(&replica, "master_replid");
        (!id.is_empty() && id != before && info_field(&replica, "master_link_status") == "up")
            .then_some(())
    })
    .await;
    assert_eq!(info_field(&replica, "master_replid2"), before);
    let (status, body) = app.get_json(&with(&kept)).await;
    assert_eq!((status, &body["value"]), (200, &serde_json::json!("saved")));

    // A write after which the master restarts without its data: lost. The
    // new history's offsets soon pass the old token's; it still does not count.
    let lost = position(&plain(&master), None, &["SET", "k", "lost"]);
    let lost_offset: i64 = lost.split_once(':').unwrap().1.parse().unwrap();
    assert_eq!(app.get_json(&with(&lost)).await.1["value"], "lost");
    std::fs::remove_file(master.dir.path().join("dump.rdb")).unwrap();
    let previous = info_field(&master, "master_replid");
    master.restart();
    let filler = "x".repeat(4096);
    wait_for(
        "the new history to pass the old offset",
        DEADLINE,
        || async {
            master.cli(&["SET", "filler", &filler]);
            let id = info_field(&replica, "master_replid");
            let offset: i64 = info_field(&replica, "slave_repl_offset")
                .parse()
                .unwrap_or(0);
            if id == previous || id == before || offset <= lost_offset {
                return None;
            }
            // The pod's own snapshot too (the INFO poll's, up to
            // REPLICA_POLL_MS old): until then it still holds the lost
            // history, in which the token is reached.
            let response = app.send(reqwest::Method::GET, "/v1/keys/filler", &[]).await;
            let seen = response
                .headers()
                .get("replication-position")?
                .to_str()
                .ok()?;
            seen.starts_with(&format!("{id}:")).then_some(())
        },
    )
    .await;
    let started = Instant::now();
    let response = app
        .send(
            reqwest::Method::GET,
            "/v1/keys/k",
            &[("min-position", &lost), ("max-wait", "0.3")],
        )
        .await;
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "position_other_history", "{body}");
    assert_eq!(app.get_json("/v1/keys/k").await.0, 404, "the write is gone");
}

/// A master the API reads directly, with a replica connected, so that it
/// keeps a backlog and counts its writes (see scripts/position.sh).
async fn master_counting_its_writes() -> (RedisServer, RedisServer) {
    let master = RedisServer::start();
    let port = master.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    wait_for("a replica to connect", DEADLINE, || async {
        (info_field(&master, "connected_slaves") == "1").then_some(())
    })
    .await;
    (master, replica)
}

#[tokio::test]
async fn on_the_master_a_token_is_decided_at_once() {
    let (master, _replica) = master_counting_its_writes().await;
    let app = TestApp::spawn(&master.url(), &[("POSITION_MAX_WAIT_MS", "10000")]).await;
    app.wait_ready(200).await;
    let token = position(&plain(&master), None, &["SET", "k", "v"]);
    let started = Instant::now();
    let (status, body) = app
        .get_json(&format!("/v1/keys/k?min-position={token}"))
        .await;
    assert_eq!((status, &body["value"]), (200, &serde_json::json!("v")));
    let other = format!("{}:1", "ab".repeat(20));
    let response = app
        .send(
            reqwest::Method::GET,
            "/v1/keys/k",
            &[("min-position", &other)],
        )
        .await;
    assert_eq!(response.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a master does not wait: {:?}",
        started.elapsed()
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "position_other_history");
    // No heartbeat here: the age is unknown, and so is any bound on it.
    let (status, body) = app.get_json("/v1/keys/k?max-staleness=60").await;
    assert_eq!((status, body["error"].as_str()), (503, Some("age_unknown")));
    let (status, body) = app.get_json("/v1/keys/k?max-staleness=soon").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
}

/// Every shape's route takes the consistency parameters beside its own.
#[tokio::test]
async fn the_value_shapes_take_the_consistency_parameters() {
    let (master, _replica) = master_counting_its_writes().await;
    let app = TestApp::spawn(&master.url(), &[("CACHE_MAX_BYTES", "1048576")]).await;
    app.wait_ready(200).await;
    master.cli(&["HSET", "h", "a", "1"]);
    master.cli(&["SADD", "s", "m"]);
    master.cli(&["SET", "doc", "{\"n\": 1}"]);
    // Cached first, then changed: the token read sees the change.
    assert_eq!(
        app.get_json("/v1/keys/h/fields?field=a").await.1["fields"]["a"],
        "1"
    );
    let token = position(&plain(&master), None, &["HSET", "h", "a", "2"]);
    let (status, body) = app
        .get_json(&format!("/v1/keys/h/fields?field=a&min-position={token}"))
        .await;
    assert_eq!(
        (status, &body["fields"]["a"]),
        (200, &serde_json::json!("2"))
    );
    let (status, body) = app
        .get_json(&format!(
            "/v1/keys/s/members/m?min-position={token}&max-wait=1"
        ))
        .await;
    assert_eq!(
        (status, &body["is_member"]),
        (200, &serde_json::json!(true))
    );
    let (status, body) = app
        .get_json(&format!("/v1/keys/doc?as=json&min-position={token}"))
        .await;
    assert_eq!((status, &body["value"]["n"]), (200, &serde_json::json!(1)));
    let (status, body) = app
        .get_json(&format!("/v1/keys?key=doc&as=json&min-position={token}"))
        .await;
    assert_eq!(
        (status, &body["values"]["doc"]["n"]),
        (200, &serde_json::json!(1))
    );
    // No heartbeat: every shape refuses a bound on the age it cannot know.
    for path in [
        "/v1/keys/h/fields",
        "/v1/keys/s/members/m",
        "/v1/keys/doc?as=json",
    ] {
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, body) = app.get_json(&format!("{path}{sep}max-staleness=60")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("age_unknown")),
            "{path}"
        );
    }
    let (status, body) = app.get_json("/v1/keys/s/members/m?other=1").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
}

/// Another method is a 405 whatever consistency it asks: the contract probe
/// found the middleware answering 400 (a malformed `max-staleness`) or 503
/// (no heartbeat) to a POST before the route could refuse the method.
#[tokio::test]
async fn another_method_is_405_whatever_it_asks() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis.url(), &[]).await;
    app.wait_ready(200).await;
    let other = format!("{}:1", "ab".repeat(20));
    for (method, path, headers) in [
        (
            reqwest::Method::POST,
            "/v1/keys/k?max-staleness=soon",
            vec![],
        ),
        (
            reqwest::Method::PUT,
            "/v1/keys?key=k&max-staleness=60",
            vec![],
        ),
        (
            reqwest::Method::DELETE,
            "/v1/keys/k/fields",
            vec![("min-position", other.as_str())],
        ),
        (
            reqwest::Method::PATCH,
            "/v1/keys/k/members/m",
            vec![("max-wait", "x")],
        ),
    ] {
        let response = app.send(method.clone(), path, &headers).await;
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], "GET, HEAD");
        assert!(
            response.headers().contains_key("replication-position"),
            "{method} {path}: a key route's answer"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "method_not_allowed");
    }
}
