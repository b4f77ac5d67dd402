//! Hostile input while Redis is healthy: never a 5xx, never a panic, never a hang.

use std::time::Duration;

use crate::support::{RedisServer, TestApp};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Sends raw bytes and returns the status code of the answer, if any.
async fn raw_status(base: &str, request: &[u8]) -> Option<u16> {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may refuse mid-write; what matters is what it answers.
    let _ = stream.write_all(request).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer within 5s to {:?}",
        String::from_utf8_lossy(&request[..request.len().min(80)])
    );
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn odd_paths_get_4xx_or_200_never_5xx() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "k", "v"]);
    redis.cli(&["HSET", "h", "a", "1", "b", "2"]);
    redis.cli(&["SADD", "s", "a/b"]);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    let huge = "a".repeat(20_000);
    let paths = [
        "/v1/keys/%00",
        "/v1/keys/a%00b",
        "/v1/keys/%0D%0A",
        "/v1/keys/a%0d%0aSET%20x%20y",
        "/v1/keys/%",
        "/v1/keys/%%",
        "/v1/keys/%2",
        "/v1/keys/%u0041",
        "/v1/keys/%C0%80",
        "/v1/keys/%ED%A0%80",
        "/v1/keys/..%2F..%2Fetc%2Fpasswd",
        "/v1/keys/k?key=a",
        "/v1/keys/k;x",
        "/v1/keys/k#frag",
        "/v1/keys?key=%00&key=%0A",
        "/v1/keys?key",
        "/v1/keys?=&=&",
        "/v1/keys?key=a&&&key=b",
        "/v1//keys/k",
        "/v1/keys/k/",
        "/v1/keys/k/extra",
        // The shapes' routes and parameters.
        "/v1/keys/k?as=json",
        "/v1/keys/k?as=%00",
        "/v1/keys/k?as=json&as=json",
        "/v1/keys/k?as",
        "/v1/keys?key=k&as=json&as=",
        "/v1/keys/h/fields",
        "/v1/keys/h/fields?",
        "/v1/keys/h/fields?field",
        "/v1/keys/h/fields?field=%",
        "/v1/keys/h/fields?field=%00&field=%0D%0A",
        "/v1/keys/h/fields?field=a&&&field=b",
        "/v1/keys/h/fields/",
        "/v1/keys/h/fields/x",
        "/v1/keys/k/fields",
        "/v1/keys/h/members/%00",
        "/v1/keys/h/members/%",
        "/v1/keys/s/members/%ED%A0%80",
        "/v1/keys/s/members/a%2Fb",
        "/v1/keys/s/members//",
        "/v1/keys//members/x",
        "/v1/keys/%FF/fields",
        &format!("/v1/keys/h/fields?field={huge}"),
        &format!("/v1/keys/h/fields?{}", "field=a&".repeat(5000)),
        &format!(
            "/v1/keys/h/fields?{}",
            (0..2000).map(|i| format!("field={i}&")).collect::<String>()
        ),
        &format!("/v1/keys/s/members/{huge}"),
        &format!("/v1/keys/{huge}"),
        &format!("/v1/keys?key={huge}"),
        &format!("/v1/keys?{}", "key=a&".repeat(2000)),
    ];
    for path in paths {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let status = raw_status(&app.base, request.as_bytes()).await;
        let status = status.unwrap_or_else(|| panic!("no status for {:.60}", path));
        assert!(status < 500, "{status} for {:.60}", path);
    }
    // Redis was never the problem, and still answers.
    assert_eq!(app.get_json("/v1/keys/k").await.0, 200);
}

#[tokio::test]
async fn malformed_requests_are_refused_with_4xx() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis.url(), &[]).await;
    let huge_header = format!(
        "GET /v1/keys/k HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(100_000)
    );
    let many_headers = format!(
        "GET /v1/keys/k HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..500)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let requests: Vec<Vec<u8>> = vec![
        b"GET /v1/keys/k\r\n\r\n".to_vec(),
        b"GET /v1/keys/a\nb HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /v1/keys/a\x00b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /v1/keys/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /v1/keys/k HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(),
        b"GET /v1/keys/k HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n".to_vec(),
        b"GET /v1/keys/k HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
        b"GET /v1/keys/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n".to_vec(),
        b"BREW /v1/keys/k HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        huge_header.into_bytes(),
        many_headers.into_bytes(),
    ];
    for request in &requests {
        // No answer at all (the connection closed) is acceptable; a 5xx is not.
        if let Some(status) = raw_status(&app.base, request).await {
            assert!(
                status < 500,
                "{status} for {:?}",
                String::from_utf8_lossy(&request[..request.len().min(60)])
            );
        }
    }
    // The server survived all of it.
    assert_eq!(app.get_json("/v1/keys/k").await.0, 404);
}

#[tokio::test]
async fn odd_accept_values_choose_json_or_bytes_never_5xx() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "k", "v"]);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    let long_list = "application/octet-stream;q=0.5, ".repeat(1000);
    let accepts: Vec<Vec<u8>> = vec![
        b"application/octet-stream;q=999".to_vec(),
        b"application/octet-stream;q=-1".to_vec(),
        b"application/octet-stream;q=".to_vec(),
        b"application/octet-stream;;;q=0.1;q=0.9".to_vec(),
        b"application/octet-stream\xff\xfe".to_vec(),
        b"\xffoctet-stream".to_vec(),
        b",,,;;;octet-stream".to_vec(),
        b"OCTET-STREAM".to_vec(),
        long_list.into_bytes(),
    ];
    for accept in &accepts {
        let mut request =
            b"GET /v1/keys/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: ".to_vec();
        request.extend_from_slice(accept);
        request.extend_from_slice(b"\r\n\r\n");
        let status = raw_status(&app.base, &request).await;
        assert_eq!(
            status,
            Some(200),
            "{:?}",
            String::from_utf8_lossy(&accept[..accept.len().min(60)])
        );
    }
    // q above 1 is not a q value: the range counts with the default, 1.
    let response = app
        .send(
            reqwest::Method::GET,
            "/v1/keys/k",
            &[("accept", "application/octet-stream;q=999")],
        )
        .await;
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(response.bytes().await.unwrap(), "v");
}
