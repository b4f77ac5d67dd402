//! The API logs in with a password read from a file (`REDIS_PASSWORD_FILE`), as
//! a Secret mounted as a file gives it, on a real password-protected Redis.

use crate::support::{RedisServer, TestApp};

fn password_file(dir: &tempfile::TempDir, password: &str) -> String {
    let path = dir.path().join("password");
    // A Secret's key often ends without a newline, an edited file with one.
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_password_from_a_file_logs_the_url_user_in() {
    let redis = RedisServer::start_with(&["--requirepass", "admin-pw"]);
    redis.cli(&[
        "-a", "admin-pw", "ACL", "SETUSER", "api", "on", ">api-pw", "~*", "+@read", "+info",
        "+ping",
    ]);
    redis.cli(&["-a", "admin-pw", "SET", "greeting", "hello"]);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://api@{}", redis.addr());
    let app = TestApp::spawn(
        &url,
        &[("REDIS_PASSWORD_FILE", &password_file(&dir, "api-pw"))],
    )
    .await;
    app.wait_ready(200).await;
    let (status, body) = app.get_json("/v1/keys/greeting").await;
    assert_eq!(
        (status, body["value"].as_str()),
        (200, Some("hello")),
        "{body}"
    );
}

#[tokio::test]
async fn a_wrong_password_keeps_the_pod_unready_and_answers_503() {
    let redis = RedisServer::start_with(&["--requirepass", "admin-pw"]);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://{}", redis.addr());
    let app = TestApp::spawn(
        &url,
        &[("REDIS_PASSWORD_FILE", &password_file(&dir, "wrong"))],
    )
    .await;
    app.wait_ready(503).await;
    let (status, body) = app.get_json("/v1/keys/greeting").await;
    assert_eq!(status, 503, "{body}");
}
