//! The public routes against a real Redis: every status and the batch route.

use serde_json::json;

use crate::support::{Certs, RedisServer, TestApp};

#[tokio::test]
async fn reads_a_string_value() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "known-key", "hello"]);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    let (status, body) = app.get_json("/v1/keys/known-key").await;
    assert_eq!(
        (status, body),
        (200, json!({"key": "known-key", "value": "hello"}))
    );
}

#[tokio::test]
async fn percent_decoded_segment_is_the_key() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "a/b", "slash"]);
    redis.cli(&["SET", "café au lait", "utf8"]);
    redis.cli(&["SET", "a+b", "plus"]);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    assert_eq!(app.get_json("/v1/keys/a%2Fb").await.1["value"], "slash");
    assert_eq!(
        app.get_json("/v1/keys/caf%C3%A9%20au%20lait").await.1["value"],
        "utf8"
    );
    assert_eq!(app.get_json("/v1/keys/a+b").await.1["value"], "plus");
}

#[tokio::test]
async fn missing_key_is_404_with_a_json_error() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis.url(), &[]).await;
    let (status, body) = app.get_json("/v1/keys/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    assert!(body["message"].as_str().unwrap().contains("nope"));
}

#[tokio::test]
async fn non_string_and_non_text_values_are_409() {
    let redis = RedisServer::start();
    redis.cli(&["RPUSH", "a-list", "x"]);
    redis.set_bytes("binary", &[0xff, 0xfe, 0x00]);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    let (status, body) = app.get_json("/v1/keys/a-list").await;
    assert_eq!((status, body["error"].as_str()), (409, Some("wrong_type")));
    let (status, body) = app.get_json("/v1/keys/binary").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("value_not_utf8"))
    );
}

#[tokio::test]
async fn bad_keys_are_400() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis.url(), &[("MAX_KEY_BYTES", "16")]).await;
    let too_long = "k".repeat(17);
    let just_fits = "k".repeat(16);
    redis.cli(&["SET", &just_fits, "ok"]);
    for path in [
        "/v1/keys/%FF",
        "/v1/keys/%zz",
        "/v1/keys/%4",
        &format!("/v1/keys/{too_long}"),
    ] {
        let (status, body) = app.get_json(path).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_key")),
            "{path}"
        );
    }
    assert_eq!(app.get_json(&format!("/v1/keys/{just_fits}")).await.0, 200);
    // An empty segment does not match the route at all.
    assert_eq!(app.get_json("/v1/keys/").await.0, 404);
}

#[tokio::test]
async fn other_methods_are_405_and_other_paths_404() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis.url(), &[]).await;
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        for path in ["/v1/keys/k", "/v1/keys?key=k"] {
            let response = app
                .http
                .request(method.clone(), format!("{}{path}", app.base))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 405, "{method} {path}");
            assert_eq!(response.headers()["allow"], "GET, HEAD");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"], "method_not_allowed");
        }
    }
    for path in ["/v2/keys/k", "/v1/keys/a/b", "/v1/keysk", "/v1/keys//k"] {
        let (status, body) = app.get_json(path).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
    }
    // No route comes before a wrong method, as the router decides.
    let response = app
        .http
        .post(format!("{}/v1/keys/a/b", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn batch_reads_many_keys_in_one_call() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "a", "1"]);
    redis.cli(&["SET", "b c", "2"]);
    redis.cli(&["RPUSH", "list", "x"]);
    let app = TestApp::spawn(&redis.url(), &[("MAX_BATCH_KEYS", "4")]).await;
    let (status, body) = app
        .get_json("/v1/keys?key=a&key=b+c&key=missing&key=list")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"values": {"a": "1", "b c": "2", "missing": null, "list": null}})
    );

    for bad in [
        "/v1/keys",
        "/v1/keys?",
        "/v1/keys?key=a&key=b&key=c&key=d&key=e",
        "/v1/keys?keys=a",
        "/v1/keys?key=%FF",
    ] {
        let (status, body) = app.get_json(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["message"].is_string());
    }
}

#[tokio::test]
async fn key_prefix_is_prepended_and_hidden() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "tenant:k", "prefixed"]);
    redis.cli(&["SET", "k", "bare"]);
    let app = TestApp::spawn(&redis.url(), &[("KEY_PREFIX", "tenant:")]).await;
    assert_eq!(
        app.get_json("/v1/keys/k").await.1,
        json!({"key": "k", "value": "prefixed"})
    );
    assert_eq!(
        app.get_json("/v1/keys?key=k").await.1,
        json!({"values": {"k": "prefixed"}})
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "k", "v"]);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    app.get("/v1/keys/k").await;
    app.get("/v1/keys/k").await;
    app.get("/v1/keys/nope").await;
    app.get("/v1/keys?key=k").await;
    let text = app.metrics().await;
    for line in [
        r#"read_api_http_requests_total{route="/v1/keys/{key}",status="200"} 2"#,
        r#"read_api_http_requests_total{route="/v1/keys/{key}",status="404"} 1"#,
        r#"read_api_http_requests_total{route="/v1/keys",status="200"} 1"#,
        r#"read_api_http_request_duration_seconds_bucket{route="/v1/keys/{key}",le="0.00005"}"#,
        r#"read_api_build_info{version=""#,
        "read_api_replica_role 0",
    ] {
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }
}

#[tokio::test]
async fn central_mode_reads_a_tls_master_and_checks_its_certificate() {
    let certs = Certs::generate("localhost,127.0.0.1");
    let master = RedisServer::start_tls(certs.path());
    master.cli(&["SET", "known-key", "over-tls"]);
    let ca = certs.path().join("ca.crt").display().to_string();
    let url = format!("rediss://localhost:{}", master.addr().port());
    let app = TestApp::spawn(&url, &[("REDIS_CA_FILE", &ca)]).await;
    app.wait_ready(200).await;
    assert_eq!(
        app.get_json("/v1/keys/known-key").await.1["value"],
        "over-tls"
    );

    // The same master, but trusted through a CA that did not sign it: refused.
    let other = Certs::generate("localhost,127.0.0.1");
    let wrong_ca = other.path().join("ca.crt").display().to_string();
    let app = TestApp::spawn(&url, &[("REDIS_CA_FILE", &wrong_ca)]).await;
    let (status, body) = app.get_json("/v1/keys/known-key").await;
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    assert_eq!(app.readyz().await.0, 503);
}

#[tokio::test]
async fn values_over_the_limits_are_409_and_the_limits_are_exact() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "fits", &"a".repeat(10)]);
    redis.cli(&["SET", "over", &"a".repeat(11)]);
    redis.cli(&["SET", "empty", ""]);
    redis.cli(&["RPUSH", "list", "x"]);
    let app = TestApp::spawn(
        &redis.url(),
        &[
            ("MAX_VALUE_BYTES", "10"),
            ("MAX_BATCH_RESPONSE_BYTES", "100"),
        ],
    )
    .await;
    assert_eq!(app.get_json("/v1/keys/fits").await.0, 200);
    let (status, body) = app.get_json("/v1/keys/over").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("value_too_large"))
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("MAX_VALUE_BYTES"),
        "{body}"
    );
    // An empty string is a value, a missing key is not.
    assert_eq!(
        app.get_json("/v1/keys/empty").await,
        (200, json!({"key": "empty", "value": ""}))
    );
    assert_eq!(app.get_json("/v1/keys/missing").await.0, 404);
    assert_eq!(app.get_json("/v1/keys/list").await.0, 409);

    // In a batch: one value over the limit fails the batch; the sum has its own limit.
    let (status, body) = app.get_json("/v1/keys?key=fits&key=over").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("value_too_large")),
        "{body}"
    );
    assert_eq!(
        app.get_json("/v1/keys?key=fits&key=empty&key=missing&key=list")
            .await,
        (
            200,
            json!({"values": {"fits": "aaaaaaaaaa", "empty": "", "missing": null, "list": null}})
        )
    );
    // 50 bytes of values: within 100 in Redis, 112 once encoded.
    let (status, body) = app
        .get_json("/v1/keys?key=fits&key=fits&key=fits&key=fits&key=fits")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("response_too_large")),
        "{body}"
    );
    // 110 bytes of values: refused in Redis.
    let eleven = ["key=fits"; 11].join("&");
    let (status, body) = app.get_json(&format!("/v1/keys?{eleven}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("response_too_large")),
        "{body}"
    );
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("MAX_BATCH_RESPONSE_BYTES"));
}

#[tokio::test]
async fn a_redis_that_forgot_the_read_script_gets_it_again() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "a", "1"]);
    redis.cli(&["SET", "empty", ""]);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    for _ in 0..2 {
        redis.cli(&["SCRIPT", "FLUSH"]);
        assert_eq!(
            app.get_json("/v1/keys?key=a").await,
            (200, json!({"values": {"a": "1"}}))
        );
        redis.cli(&["SCRIPT", "FLUSH"]);
        assert_eq!(app.get_json("/v1/keys/empty").await.0, 200);
    }
    assert!(!app
        .metrics()
        .await
        .contains("read_api_redis_errors_total{kind=\"unexpected\"}"));
}

#[tokio::test]
async fn the_read_script_works_on_a_read_only_replica() {
    let master = RedisServer::start();
    master.cli(&["SET", "a", "from-master"]);
    master.cli(&["SET", "empty", ""]);
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let app = TestApp::spawn(&replica.url(), &[]).await;
    app.wait_ready(200).await;
    assert_eq!(
        app.get_json("/v1/keys?key=a&key=b").await,
        (200, json!({"values": {"a": "from-master", "b": null}}))
    );
    assert_eq!(app.get_json("/v1/keys/empty").await.0, 200);
    assert_eq!(app.get_json("/v1/keys/missing").await.0, 404);
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "k", "v"]);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    let mut seen = std::collections::HashSet::new();
    for (method, path) in [
        (reqwest::Method::GET, "/v1/keys/k"),
        (reqwest::Method::GET, "/v1/keys/missing"),
        (reqwest::Method::GET, "/v1/keys?key=k"),
        (reqwest::Method::HEAD, "/v1/keys/k"),
        (reqwest::Method::POST, "/v1/keys/k"),
        (reqwest::Method::GET, "/elsewhere"),
    ] {
        let response = app.send(method.clone(), path, &[]).await;
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            !id.is_empty() && seen.insert(id),
            "{method} {path}: a new id each time"
        );
    }
    // A client's own id is echoed; a hostile one is replaced.
    let response = app
        .send(
            reqwest::Method::GET,
            "/v1/keys/k",
            &[("x-request-id", "trace-42")],
        )
        .await;
    assert_eq!(response.headers()["x-request-id"], "trace-42");
    let long = "x".repeat(500);
    let response = app
        .send(
            reqwest::Method::GET,
            "/v1/keys/k",
            &[("x-request-id", &long)],
        )
        .await;
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(id.len() < 100 && id != long);
    let response = app
        .http
        .get(format!("{}/livez", app.admin))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn a_batch_longer_than_the_scripts_chunk_keeps_its_order() {
    let redis = RedisServer::start();
    redis.cli(&[
        "EVAL",
        "for i = 1, 1500 do if i % 7 ~= 0 then redis.call('SET', 'k' .. i, i) end end",
        "0",
    ]);
    let app = TestApp::spawn(&redis.url(), &[("MAX_BATCH_KEYS", "1500")]).await;
    let query = (1..=1500)
        .map(|i| format!("key=k{i}"))
        .collect::<Vec<_>>()
        .join("&");
    let (status, body) = app.get_json(&format!("/v1/keys?{query}")).await;
    assert_eq!(status, 200, "{body}");
    let values = body["values"].as_object().unwrap();
    assert_eq!(values.len(), 1500);
    for i in 1..=1500 {
        let expected = if i % 7 == 0 {
            json!(null)
        } else {
            json!(i.to_string())
        };
        assert_eq!(values[&format!("k{i}")], expected, "k{i}");
    }
}
