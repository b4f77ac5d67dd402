//! The value shapes against a real Redis, with the value cache on and off:
//! hashes (whole and chosen fields), set membership, JSON documents and raw
//! bytes; their bounds, their errors, HTTP caching, HEAD and metrics.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{wait_for, RedisServer, TestApp};

const OCTET: (&str, &str) = ("accept", "application/octet-stream");

/// The same checks with the value cache on (the default) and off.
const CACHE: [&[(&str, &str)]; 2] = [&[], &[("CACHE_MAX_BYTES", "0")]];

async fn app_with(redis: &RedisServer, cache: &[(&str, &str)], extra: &[(&str, &str)]) -> TestApp {
    let mut vars = cache.to_vec();
    vars.extend_from_slice(extra);
    TestApp::spawn(&redis.url(), &vars).await
}

/// The error code and message of a JSON error answer, with its status.
async fn error(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let response = app.send(Method::GET, path, headers).await;
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
        body["message"].as_str().unwrap_or_default().to_owned(),
    )
}

fn seed(redis: &RedisServer) {
    redis.cli(&["HSET", "h", "b", "two", "a", "1", "c", "café"]);
    redis.cli(&["SADD", "tokens", "t-1", "t/2"]);
    redis.cli(&["SET", "s", "plain"]);
    redis.cli(&[
        "SET",
        "doc",
        " {\"a\": [1, 2.5, null], \"b\": {\"c\": \"d\"}}\n",
    ]);
    redis.cli(&["SET", "not-doc", "{\"a\": "]);
    redis.cli(&["RPUSH", "list", "x"]);
    redis.set_bytes("bin", &[0xff, 0x00, 0xfe, b'\n']);
}

#[tokio::test]
async fn a_hash_reads_whole_sorted_or_by_chosen_fields() {
    let redis = RedisServer::start();
    seed(&redis);
    for cache in CACHE {
        let app = app_with(&redis, cache, &[]).await;
        // Twice: the second may come from the cache.
        for _ in 0..2 {
            let response = app.get("/v1/keys/h/fields").await;
            assert_eq!(response.status(), 200, "{cache:?}");
            let body = response.text().await.unwrap();
            assert_eq!(
                body, r#"{"key":"h","fields":{"a":"1","b":"two","c":"café"}}"#,
                "fields sorted by name, whatever Redis's order"
            );
            let (status, body) = app
                .get_json("/v1/keys/h/fields?field=c&field=nope&field=a&field=c")
                .await;
            assert_eq!(status, 200);
            assert_eq!(
                body,
                json!({"key": "h", "fields": {"c": "café", "nope": null, "a": "1"}})
            );
            let text = app
                .get("/v1/keys/h/fields?field=c&field=nope&field=a")
                .await
                .text()
                .await
                .unwrap();
            assert!(
                text.find("\"c\"") < text.find("\"a\""),
                "request order: {text}"
            );
        }
        // Percent-decoded field names, + as a space.
        redis.cli(&["HSET", "odd", "a/b c", "v"]);
        let (_, body) = app.get_json("/v1/keys/odd/fields?field=a%2Fb+c").await;
        assert_eq!(body["fields"]["a/b c"], "v");

        for path in ["/v1/keys/none/fields", "/v1/keys/none/fields?field=a"] {
            let (status, code, message) = error(&app, path, &[]).await;
            assert_eq!((status, code.as_str()), (404, "not_found"), "{path}");
            assert!(message.contains("none"), "{message}");
        }
    }
}

#[tokio::test]
async fn wrong_type_says_what_the_key_holds_and_which_shape_reads_it() {
    let redis = RedisServer::start();
    seed(&redis);
    for cache in CACHE {
        let app = app_with(&redis, cache, &[]).await;
        let cases = [
            ("/v1/keys/h", "a hash", "/v1/keys/{key}/fields"),
            ("/v1/keys/h?as=json", "a hash", "/v1/keys/{key}/fields"),
            ("/v1/keys/h/members/a", "a hash", "/v1/keys/{key}/fields"),
            ("/v1/keys/tokens", "a set", "/members/{member}"),
            ("/v1/keys/tokens/fields", "a set", "/members/{member}"),
            ("/v1/keys/s/fields", "a string", "GET /v1/keys/{key}"),
            ("/v1/keys/s/members/x", "a string", "GET /v1/keys/{key}"),
            ("/v1/keys/list", "a list, which no route reads", ""),
            ("/v1/keys/list/fields?field=a", "a list", ""),
            ("/v1/keys/list/members/x", "a list", ""),
        ];
        // Twice: the second from what the cache kept of the first.
        for _ in 0..2 {
            for (path, holds, how) in cases {
                let (status, code, message) = error(&app, path, &[]).await;
                assert_eq!((status, code.as_str()), (409, "wrong_type"), "{path}");
                assert!(message.contains(holds), "{path}: {message}");
                assert!(message.contains(how), "{path}: {message}");
            }
            // Bytes of a key that is not a string: the same 409, as JSON.
            let (status, code, _) = error(&app, "/v1/keys/h", &[OCTET]).await;
            assert_eq!((status, code.as_str()), (409, "wrong_type"));
        }
    }
}

#[tokio::test]
async fn a_hash_is_measured_inside_redis_before_it_is_read() {
    let redis = RedisServer::start();
    let big = "x".repeat(100);
    redis.cli(&["HSET", "wide", "a", "1", "b", "2", "c", "3", "d", "4"]);
    redis.cli(&["HSET", "heavy", "small", "ok", "big", &big]);
    redis.cli(&["HSET", "long-name", &"n".repeat(100), "v"]);
    // A field that is not UTF-8, through redis-cli's escapes.
    redis.cli(&[
        "EVAL",
        "redis.call('HSET', KEYS[1], 'f', '\\255') return 1",
        "1",
        "bin-hash",
    ]);
    for cache in CACHE {
        let app = app_with(
            &redis,
            cache,
            &[("MAX_VALUE_BYTES", "64"), ("MAX_HASH_FIELDS", "3")],
        )
        .await;
        for _ in 0..2 {
            let (status, code, message) = error(&app, "/v1/keys/wide/fields", &[]).await;
            assert_eq!((status, code.as_str()), (409, "value_too_large"));
            assert!(message.contains("MAX_HASH_FIELDS (3)"), "{message}");
            for path in ["/v1/keys/heavy/fields", "/v1/keys/long-name/fields"] {
                let (status, code, message) = error(&app, path, &[]).await;
                assert_eq!((status, code.as_str()), (409, "value_too_large"), "{path}");
                assert!(message.contains("MAX_VALUE_BYTES (64 bytes)"), "{message}");
                assert!(message.contains("?field="), "{message}");
            }
        }
        // Chosen fields are measured alone.
        let (status, body) = app.get_json("/v1/keys/wide/fields?field=a&field=d").await;
        assert_eq!(
            (status, body["fields"].clone()),
            (200, json!({"a": "1", "d": "4"}))
        );
        let (status, body) = app.get_json("/v1/keys/heavy/fields?field=small").await;
        assert_eq!(
            (status, body["fields"]["small"].clone()),
            (200, json!("ok"))
        );
        let (status, code, message) = error(&app, "/v1/keys/heavy/fields?field=big", &[]).await;
        assert_eq!((status, code.as_str()), (409, "value_too_large"));
        assert!(message.contains("ask for fewer"), "{message}");
        // Bad requests.
        for path in [
            "/v1/keys/wide/fields?field=a&field=b&field=c&field=d",
            "/v1/keys/wide/fields?key=a",
            "/v1/keys/wide/fields?field=",
            "/v1/keys/wide/fields?field=%FF",
            "/v1/keys/wide/fields?field=%zz",
        ] {
            let (status, code, _) = error(&app, path, &[]).await;
            assert_eq!((status, code.as_str()), (400, "bad_request"), "{path}");
        }
        // Repeated fields count once.
        let (status, _) = app
            .get_json("/v1/keys/wide/fields?field=a&field=a&field=a&field=a")
            .await;
        assert_eq!(status, 200);
        for path in [
            "/v1/keys/bin-hash/fields",
            "/v1/keys/bin-hash/fields?field=f",
        ] {
            let (status, code, _) = error(&app, path, &[]).await;
            assert_eq!((status, code.as_str()), (409, "value_not_utf8"), "{path}");
        }
    }
}

#[tokio::test]
async fn a_large_hash_in_redis_s_hashtable_encoding_reads_whole() {
    let redis = RedisServer::start();
    // Past hash-max-listpack-entries (128): Redis's other encoding.
    let mut args = vec!["HSET".to_string(), "big".into()];
    for i in 0..300 {
        args.push(format!("f{i:03}"));
        args.push(format!("value {i}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    redis.cli(&args);
    for cache in CACHE {
        let app = app_with(&redis, cache, &[]).await;
        let (status, body) = app.get_json("/v1/keys/big/fields").await;
        assert_eq!(status, 200);
        let fields = body["fields"].as_object().unwrap();
        assert_eq!(fields.len(), 300);
        assert_eq!(fields["f299"], "value 299");
        let app = app_with(&redis, cache, &[("MAX_HASH_FIELDS", "299")]).await;
        assert_eq!(error(&app, "/v1/keys/big/fields", &[]).await.0, 409);
    }
}

#[tokio::test]
async fn membership_is_a_boolean_and_a_missing_key_is_an_empty_set() {
    let redis = RedisServer::start();
    seed(&redis);
    for cache in CACHE {
        let app = app_with(&redis, cache, &[("MAX_KEY_BYTES", "16")]).await;
        for _ in 0..2 {
            for (path, member, is_member) in [
                ("/v1/keys/tokens/members/t-1", "t-1", true),
                ("/v1/keys/tokens/members/t%2F2", "t/2", true),
                ("/v1/keys/tokens/members/t-3", "t-3", false),
            ] {
                assert_eq!(
                    app.get_json(path).await,
                    (
                        200,
                        json!({"key": "tokens", "member": member, "is_member": is_member})
                    ),
                    "{path}"
                );
            }
            assert_eq!(
                app.get_json("/v1/keys/none/members/x").await,
                (
                    200,
                    json!({"key": "none", "member": "x", "is_member": false})
                )
            );
        }
        for (path, status, expected) in [
            ("/v1/keys/tokens/members/t-1?x=1", 400, "bad_request"),
            ("/v1/keys/tokens/members/%FF", 400, "bad_key"),
            ("/v1/keys/tokens/members/a%2", 400, "bad_key"),
            (
                &format!("/v1/keys/tokens/members/{}", "m".repeat(17)),
                400,
                "bad_key",
            ),
            ("/v1/keys/tokens/members/", 404, "not_found"),
            ("/v1/keys/tokens/members/a/b", 404, "not_found"),
            ("/v1/keys/tokens/members", 404, "not_found"),
            ("/v1/keys/tokens/other", 404, "not_found"),
            ("/v1/keys/tokens/fields/x", 404, "not_found"),
        ] {
            let (got, code, message) = error(&app, path, &[]).await;
            assert_eq!(
                (got, code.as_str()),
                (status, expected),
                "{path}: {message}"
            );
        }
        let (_, _, message) = error(&app, "/v1/keys/tokens/members/%FF", &[]).await;
        assert!(message.starts_with("member"), "{message}");
    }
}

#[tokio::test]
async fn a_json_document_is_served_as_json_or_refused_with_409() {
    let redis = RedisServer::start();
    seed(&redis);
    redis.cli(&["SET", "deep", &("[".repeat(300) + &"]".repeat(300))]);
    redis.cli(&["SET", "number", "12345678901234567890.5e3"]);
    for cache in CACHE {
        let app = app_with(&redis, cache, &[]).await;
        for _ in 0..2 {
            let response = app.get("/v1/keys/doc?as=json").await;
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "application/json");
            let body = response.text().await.unwrap();
            assert_eq!(
                body, r#"{"key":"doc","value":{"a": [1, 2.5, null], "b": {"c": "d"}}}"#,
                "the document as stored, without its surrounding whitespace"
            );
            // The number keeps every digit: the document is not re-encoded.
            let body = app
                .get("/v1/keys/number?as=json")
                .await
                .text()
                .await
                .unwrap();
            assert_eq!(body, r#"{"key":"number","value":12345678901234567890.5e3}"#);
            // Plain reads are unchanged.
            assert_eq!(
                app.get_json("/v1/keys/doc").await.1["value"]
                    .as_str()
                    .unwrap()
                    .trim_start()
                    .chars()
                    .next(),
                Some('{')
            );
        }
        // Any depth: the document is checked, never built.
        let response = app.get("/v1/keys/deep?as=json").await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.text().await.unwrap().len(),
            600 + r#"{"key":"deep","value":}"#.len()
        );
        for key in ["not-doc", "bin", "s"] {
            let (status, code, message) =
                error(&app, &format!("/v1/keys/{key}?as=json"), &[]).await;
            assert_eq!((status, code.as_str()), (409, "value_not_json"), "{key}");
            assert!(message.contains(key), "{message}");
        }
        for path in [
            "/v1/keys/doc?as=xml",
            "/v1/keys/doc?as",
            "/v1/keys/doc?as=json&x",
            "/v1/keys/doc?key=a",
        ] {
            let (status, code, _) = error(&app, path, &[]).await;
            assert_eq!((status, code.as_str()), (400, "bad_request"), "{path}");
        }
        // as=json wins over Accept.
        let response = app
            .send(Method::GET, "/v1/keys/doc?as=json", &[OCTET])
            .await;
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(error(&app, "/v1/keys/none?as=json", &[]).await.0, 404);
    }
}

#[tokio::test]
async fn a_batch_serves_documents_with_as_json() {
    let redis = RedisServer::start();
    seed(&redis);
    redis.cli(&["SET", "n", "7"]);
    for cache in CACHE {
        let app = app_with(&redis, cache, &[]).await;
        for _ in 0..2 {
            let response = app
                .get("/v1/keys?key=doc&key=none&key=h&key=n&as=json")
                .await;
            assert_eq!(response.status(), 200);
            assert_eq!(
                response.text().await.unwrap(),
                r#"{"values":{"doc":{"a": [1, 2.5, null], "b": {"c": "d"}},"none":null,"h":null,"n":7}}"#
            );
            for key in ["not-doc", "bin"] {
                let (status, code, _) =
                    error(&app, &format!("/v1/keys?as=json&key=doc&key={key}"), &[]).await;
                assert_eq!((status, code.as_str()), (409, "value_not_json"), "{key}");
            }
        }
        assert_eq!(error(&app, "/v1/keys?key=doc&as=yaml", &[]).await.0, 400);
        // Bytes have no batch shape: a batch is JSON whatever Accept says.
        let response = app.send(Method::GET, "/v1/keys?key=s", &[OCTET]).await;
        assert_eq!(response.headers()["content-type"], "application/json");
    }
}

#[tokio::test]
async fn raw_bytes_are_served_as_stored() {
    let redis = RedisServer::start();
    seed(&redis);
    redis.set_bytes("big-bin", &[0xffu8; 65]);
    for cache in CACHE {
        let app = app_with(&redis, cache, &[("MAX_VALUE_BYTES", "64")]).await;
        for _ in 0..2 {
            for (key, bytes) in [("bin", &b"\xff\x00\xfe\n"[..]), ("s", b"plain")] {
                let response = app
                    .send(Method::GET, &format!("/v1/keys/{key}"), &[OCTET])
                    .await;
                assert_eq!(response.status(), 200, "{key}");
                assert_eq!(
                    response.headers()["content-type"],
                    "application/octet-stream"
                );
                assert_eq!(response.headers()["vary"], "accept");
                assert_eq!(&response.bytes().await.unwrap()[..], bytes, "{key}");
            }
            // Without the Accept value, as before.
            assert_eq!(error(&app, "/v1/keys/bin", &[]).await.1, "value_not_utf8");
            let response = app
                .send(
                    Method::GET,
                    "/v1/keys/bin",
                    &[("accept", "application/octet-stream;q=0.5, application/json")],
                )
                .await;
            assert_eq!(response.status(), 409);
        }
        assert_eq!(error(&app, "/v1/keys/none", &[OCTET]).await.0, 404);
        let (status, code, _) = error(&app, "/v1/keys/big-bin", &[OCTET]).await;
        assert_eq!((status, code.as_str()), (409, "value_too_large"));
    }
}

#[tokio::test]
async fn every_shape_has_an_etag_a_304_and_a_head() {
    let redis = RedisServer::start();
    seed(&redis);
    for cache in CACHE {
        let app = app_with(&redis, cache, &[]).await;
        let shapes: [(&str, &[(&str, &str)]); 6] = [
            ("/v1/keys/h/fields", &[]),
            ("/v1/keys/h/fields?field=a", &[]),
            ("/v1/keys/tokens/members/t-1", &[]),
            ("/v1/keys/doc?as=json", &[]),
            ("/v1/keys?key=doc&as=json", &[]),
            ("/v1/keys/bin", &[OCTET]),
        ];
        let mut tags = Vec::new();
        for (path, headers) in shapes {
            let get = app.send(Method::GET, path, headers).await;
            assert_eq!(get.status(), 200, "{path}");
            let tag = get.headers()["etag"].to_str().unwrap().to_owned();
            let length = get.headers()["content-length"].clone();
            let body = get.bytes().await.unwrap();
            assert_eq!(tag, read_api::routes::etag_of(&body), "{path}");
            tags.push(tag.clone());

            let head = app.send(Method::HEAD, path, headers).await;
            assert_eq!(head.status(), 200, "{path}");
            assert_eq!(head.headers()["etag"], tag.as_str());
            assert_eq!(head.headers()["content-length"], length);
            assert!(head.bytes().await.unwrap().is_empty());

            let mut conditional = headers.to_vec();
            conditional.push(("if-none-match", &tag));
            for method in [Method::GET, Method::HEAD] {
                let response = app.send(method, path, &conditional).await;
                assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{path}");
                assert_eq!(response.headers()["etag"], tag.as_str());
                assert_eq!(response.headers()["cache-control"], "no-cache");
            }
        }
        // The string, its document and its bytes are three representations.
        let plain = app.get("/v1/keys/doc").await.headers()["etag"].clone();
        let raw = app
            .send(Method::GET, "/v1/keys/doc", &[OCTET])
            .await
            .headers()["etag"]
            .clone();
        assert_ne!(plain, tags[3].as_str());
        assert_ne!(plain, raw);
        assert_eq!(app.get("/v1/keys/doc").await.headers()["vary"], "accept");
    }
}

#[tokio::test]
async fn each_shape_is_counted_under_its_own_route() {
    let redis = RedisServer::start();
    seed(&redis);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    app.get("/v1/keys/h/fields").await;
    app.get("/v1/keys/h/fields?field=a").await;
    app.get("/v1/keys/tokens/members/t-1").await;
    app.get("/v1/keys/tokens/members/%FF").await;
    app.get("/v1/keys/s").await;
    let metrics = app.metrics().await;
    for line in [
        r#"read_api_http_requests_total{route="/v1/keys/{key}/fields",status="200"} 2"#,
        r#"read_api_http_requests_total{route="/v1/keys/{key}/members/{member}",status="200"} 1"#,
        r#"read_api_http_requests_total{route="/v1/keys/{key}/members/{member}",status="400"} 1"#,
        r#"read_api_http_requests_total{route="/v1/keys/{key}",status="200"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

/// Reads `path` until its body satisfies `check`.
async fn until(app: &TestApp, path: &str, check: impl Fn(&serde_json::Value) -> bool) {
    wait_for(path, Duration::from_secs(10), || async {
        let (_, body) = app.get_json(path).await;
        check(&body).then_some(())
    })
    .await;
}

async fn hits(app: &TestApp) -> f64 {
    app.metric("read_api_cache_hits_total").await.unwrap_or(0.0)
}

#[tokio::test]
async fn every_shape_reads_through_the_cache_and_a_write_invalidates_it() {
    let redis = RedisServer::start();
    seed(&redis);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    wait_for("the cache to serve", Duration::from_secs(10), || async {
        (app.metric("read_api_cache_tracking_up").await == Some(1.0)).then_some(())
    })
    .await;
    for path in [
        "/v1/keys/h/fields",
        "/v1/keys/h/fields?field=a&field=zz",
        "/v1/keys/tokens/members/t-1",
        "/v1/keys/tokens/members/new",
        "/v1/keys/doc?as=json",
    ] {
        // A read may cross the invalidation of the seeding write and not be
        // kept: read until one is a hit.
        wait_for(
            &format!("{path} cached"),
            Duration::from_secs(10),
            || async {
                let before = hits(&app).await;
                assert_eq!(app.get(path).await.status(), 200, "{path}");
                (hits(&app).await > before).then_some(())
            },
        )
        .await;
    }
    redis.cli(&["HSET", "h", "a", "changed", "zz", "new"]);
    redis.cli(&["SADD", "tokens", "new"]);
    redis.cli(&["SREM", "tokens", "t-1"]);
    redis.cli(&["SET", "doc", "[\"new\"]"]);
    until(&app, "/v1/keys/h/fields", |b| b["fields"]["a"] == "changed").await;
    until(&app, "/v1/keys/h/fields?field=a&field=zz", |b| {
        b["fields"]["zz"] == "new"
    })
    .await;
    until(&app, "/v1/keys/tokens/members/t-1", |b| {
        b["is_member"] == false
    })
    .await;
    until(&app, "/v1/keys/tokens/members/new", |b| {
        b["is_member"] == true
    })
    .await;
    until(&app, "/v1/keys/doc?as=json", |b| {
        b["value"] == json!(["new"])
    })
    .await;
    // A key that changes type is read again in its new shape.
    redis.cli(&["DEL", "h"]);
    redis.cli(&["SET", "h", "now a string"]);
    until(&app, "/v1/keys/h", |b| b["value"] == "now a string").await;
    assert_eq!(error(&app, "/v1/keys/h/fields", &[]).await.1, "wrong_type");
}
