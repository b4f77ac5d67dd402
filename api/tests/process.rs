//! The real binary: configuration errors before serving, and draining on SIGTERM.

mod support;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{free_port, signal, wait_for, RedisServer};

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
