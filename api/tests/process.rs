//! The real binary: configuration errors before serving, and draining on SIGTERM.

mod support;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{free_port, signal, wait_for, ApiProcess, RedisServer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const BINARY: &str = env!("CARGO_BIN_EXE_read-api");

fn run_with(vars: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(BINARY);
    command.env_clear().envs(vars.iter().copied());
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let output = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    output
}

#[test]
fn bad_configuration_stops_the_process_with_one_line_naming_the_variable() {
    let cases = [
        ("REDIS_URL", "memcached://x"),
        ("REDIS_POOL_SIZE", "lots"),
        ("WORKERS", "0"),
        ("LOG_FORMAT", "xml"),
        ("REDIS_CA_FILE", "/nonexistent/ca.pem"),
        ("READY_MAX_LINK_DOWN_SECONDS", "-1"),
        ("SHUTDOWN_DELAY_SECONDS", "-1"),
        ("MAX_VALUE_BYTES", "0"),
        ("MAX_BATCH_RESPONSE_BYTES", "lots"),
        ("CACHE_CONTROL", "max-age = 5"),
        ("ADMISSION_MIN_IN_FLIGHT", "none"),
    ];
    for (variable, value) in cases {
        let output = run_with(&[(variable, value)]);
        assert_eq!(output.status.code(), Some(2), "{variable}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{variable}={value}: {stderr}");
        assert!(lines[0].contains(variable), "{variable}={value}: {stderr}");
    }
}

#[test]
fn an_unreadable_ca_file_is_named_before_serving() {
    let output = run_with(&[
        ("REDIS_URL", "rediss://localhost:6380"),
        ("REDIS_CA_FILE", "/nonexistent/ca.pem"),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("REDIS_CA_FILE") && stderr.contains("/nonexistent/ca.pem"),
        "{stderr}"
    );
}

#[test]
fn a_port_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let admin = format!("127.0.0.1:{}", free_port());
    let output = run_with(&[("LISTEN_ADDR", &addr), ("ADMIN_ADDR", &admin)]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("LISTEN_ADDR") && stderr.contains(&addr),
        "{stderr}"
    );
}

struct Api(Child);

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sigterm_fails_readiness_at_once_and_lets_in_flight_requests_finish() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "k", "v"]);
    let (port, admin_port) = (free_port(), free_port());
    let mut api = Api(Command::new(BINARY)
        .env_clear()
        .envs([
            ("REDIS_URL", redis.url()),
            ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("ADMIN_ADDR", format!("127.0.0.1:{admin_port}")),
            ("REDIS_TIMEOUT_MS", "10000".into()),
            ("SHUTDOWN_GRACE_SECONDS", "8".into()),
            ("SHUTDOWN_DELAY_SECONDS", "0".into()),
            ("REPLICA_POLL_MS", "100".into()),
            ("WORKERS", "1".into()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let http = reqwest::Client::new();
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    wait_for("the api to be ready", Duration::from_secs(10), || async {
        let status = http.get(&readyz).send().await.ok()?.status();
        (status == 200).then_some(())
    })
    .await;

    // Freeze Redis so that a request is held in flight.
    redis.pause();
    let in_flight = tokio::spawn({
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}/v1/keys/k"))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(signal(api.0.id(), "TERM"));

    let answer = wait_for("readiness to fail", Duration::from_secs(2), || async {
        let response = http.get(&readyz).send().await.ok()?;
        (response.status() == 503).then_some(response.json::<serde_json::Value>().await.ok()?)
    })
    .await;
    assert_eq!(answer["reason"], "shutting_down");

    redis.resume();
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["value"],
        "v"
    );

    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = api.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the process did not exit"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(exit.success(), "{exit:?}");
}

/// What one request on a new connection got.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Status(u16),
    Refused,
    Failed(String),
}

async fn one_request_on_a_new_connection(addr: &str) -> Outcome {
    let attempt = async {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
            Err(e) => return Outcome::Failed(format!("connect: {e}")),
        };
        let request = b"GET /v1/keys/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        if let Err(e) = stream.write_all(request).await {
            return Outcome::Failed(format!("write: {e}"));
        }
        let mut answer = Vec::new();
        if let Err(e) = stream.read_to_end(&mut answer).await {
            return Outcome::Failed(format!("read: {e}"));
        }
        let head = String::from_utf8_lossy(&answer);
        match head.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            Some(status) => Outcome::Status(status),
            None => Outcome::Failed(format!("no status in {:?}", &head[..head.len().min(60)])),
        }
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .unwrap_or_else(|_| Outcome::Failed("no answer within 3s".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_accepting_new_connections_through_the_delay_then_drains() {
    const DELAY: Duration = Duration::from_secs(3);
    const GRACE: Duration = Duration::from_secs(2);
    // Attempts this close to the end of the delay may meet the closing listener.
    const MARGIN: Duration = Duration::from_millis(200);
    let redis = RedisServer::start();
    redis.cli(&["SET", "k", "v"]);
    let mut api = ApiProcess::spawn(&[
        ("REDIS_URL", &redis.url()),
        ("SHUTDOWN_DELAY_SECONDS", "3"),
        ("SHUTDOWN_GRACE_SECONDS", "2"),
    ]);
    api.wait_ready().await;
    let addr = api.base.trim_start_matches("http://").to_owned();

    // A new connection every 20 ms, from 1 s before SIGTERM to 1.5 s after the delay.
    let lead = Duration::from_secs(1);
    let load = tokio::spawn({
        let addr = addr.clone();
        async move {
            let started = Instant::now();
            let mut ticks = tokio::time::interval(Duration::from_millis(20));
            let mut attempts = Vec::new();
            while started.elapsed() < lead + DELAY + Duration::from_millis(1500) {
                ticks.tick().await;
                let addr = addr.clone();
                attempts.push(tokio::spawn(async move {
                    let at = Instant::now();
                    (at, one_request_on_a_new_connection(&addr).await)
                }));
            }
            let mut outcomes = Vec::new();
            for attempt in attempts {
                outcomes.push(attempt.await.unwrap());
            }
            outcomes
        }
    });
    tokio::time::sleep(lead).await;
    let sigterm_at = Instant::now();
    assert!(signal(api.pid(), "TERM"));

    let not_ready_after = wait_for("readiness to fail", Duration::from_secs(2), || async {
        (api.readyz().await == Some(503)).then(|| sigterm_at.elapsed())
    })
    .await;
    assert!(
        not_ready_after < Duration::from_millis(500),
        "{not_ready_after:?}"
    );
    // Through the delay: readiness stays 503, and a keep-alive client is asked to close.
    let mut mid_delay_checks = 0;
    while sigterm_at.elapsed() + Duration::from_millis(500) < DELAY {
        let response = api
            .http
            .get(format!("{}/readyz", api.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["reason"], "shutting_down");
        let response = api.get("/v1/keys/k").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["connection"], "close");
        mid_delay_checks += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(mid_delay_checks >= 4, "{mid_delay_checks}");

    let outcomes = load.await.unwrap();
    let until_delay_end: Vec<&Outcome> = outcomes
        .iter()
        .filter(|(at, _)| *at + MARGIN < sigterm_at + DELAY)
        .map(|(_, outcome)| outcome)
        .collect();
    let during_delay = outcomes
        .iter()
        .filter(|(at, _)| *at >= sigterm_at && *at + MARGIN < sigterm_at + DELAY)
        .count();
    let bad: Vec<&&Outcome> = until_delay_end
        .iter()
        .filter(|o| ***o != Outcome::Status(200))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} attempts before the delay ended were not 200: {:?}",
        bad.len(),
        until_delay_end.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(
        during_delay >= 100,
        "only {during_delay} attempts during the delay"
    );
    // After the delay the listener is closed: new connections are refused.
    let late: Vec<&Outcome> = outcomes
        .iter()
        .filter(|(at, _)| *at > sigterm_at + DELAY + Duration::from_millis(700))
        .map(|(_, outcome)| outcome)
        .collect();
    assert!(
        !late.is_empty() && late.iter().all(|o| **o == Outcome::Refused),
        "{late:?}"
    );

    let exit = api.wait_exit(DELAY + GRACE + Duration::from_secs(3)).await;
    assert!(exit.success(), "{exit:?}");
    assert!(
        sigterm_at.elapsed() < DELAY + GRACE + Duration::from_secs(3),
        "exited {:?} after SIGTERM",
        sigterm_at.elapsed()
    );
}

#[tokio::test]
async fn a_failed_request_is_logged_with_its_request_id() {
    let nobody = free_port();
    let api = ApiProcess::spawn(&[
        ("REDIS_URL", &format!("redis://127.0.0.1:{nobody}")),
        ("REDIS_TIMEOUT_MS", "200"),
        ("LOG_FORMAT", "json"),
    ]);
    wait_for("the api to listen", Duration::from_secs(10), || async {
        api.readyz().await.map(|_| ())
    })
    .await;
    let response = api
        .http
        .get(format!("{}/v1/keys/k", api.base))
        .header("x-request-id", "trace-7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-request-id"], "trace-7");
    let line = wait_for(
        "the failure to be logged",
        Duration::from_secs(5),
        || async {
            api.log()
                .lines()
                .find(|l| l.contains("request failed"))
                .map(str::to_owned)
        },
    )
    .await;
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(event["span"]["request_id"], "trace-7", "{line}");
    assert_eq!(event["status"], 503, "{line}");
}
