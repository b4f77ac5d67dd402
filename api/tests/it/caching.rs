//! HTTP caching on both routes: strong ETags, 304 on If-None-Match,
//! Cache-Control, and HEAD.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::support::{wait_for, RedisServer, TestApp};

const ONE: &str = "/v1/keys/k";
const BATCH: &str = "/v1/keys?key=k&key=other";

async fn etag(app: &TestApp, path: &str) -> String {
    let response = app.get(path).await;
    assert_eq!(response.status(), 200, "{path}");
    let tag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        tag.starts_with('"') && tag.ends_with('"') && !tag.starts_with("W/"),
        "a strong tag: {tag}"
    );
    tag
}

#[tokio::test]
async fn etag_follows_the_body_and_a_match_is_a_304_without_body() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "k", "v1"]);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    for path in [ONE, BATCH] {
        let tag = etag(&app, path).await;
        assert_eq!(etag(&app, path).await, tag, "same body, same tag");

        let response = app
            .send(Method::GET, path, &[("if-none-match", &tag)])
            .await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(response.headers()["etag"], tag.as_str());
        assert_eq!(response.headers()["cache-control"], "no-cache");
        assert!(response.bytes().await.unwrap().is_empty());

        // Weak comparison, lists, several header lines, and *.
        let weak = format!("W/{tag}");
        let listed = format!("\"nope\", {weak}");
        for headers in [
            vec![("if-none-match", weak.as_str())],
            vec![("if-none-match", listed.as_str())],
            vec![
                ("if-none-match", "\"nope\""),
                ("if-none-match", tag.as_str()),
            ],
            vec![("if-none-match", "*")],
        ] {
            let response = app.send(Method::GET, path, &headers).await;
            assert_eq!(response.status(), 304, "{path} {headers:?}");
        }
        let response = app
            .send(
                Method::GET,
                path,
                &[("if-none-match", "\"nope\", W/\"other\"")],
            )
            .await;
        assert_eq!(response.status(), 200, "{path}");
    }

    // A new value is a new body: the old tag no longer matches.
    let old_one = etag(&app, ONE).await;
    let old_batch = etag(&app, BATCH).await;
    redis.cli(&["SET", "k", "v2"]);
    for (path, old) in [(ONE, &old_one), (BATCH, &old_batch)] {
        // The value cache may answer the old value until the write's
        // invalidation arrives, a few milliseconds later.
        let response = wait_for(
            &format!("{path} to change"),
            Duration::from_secs(5),
            || async {
                let response = app.send(Method::GET, path, &[("if-none-match", old)]).await;
                (response.status() != 304).then_some(response)
            },
        )
        .await;
        assert_eq!(response.status(), 200, "{path}");
        assert_ne!(response.headers()["etag"], old.as_str());
    }

    // Errors carry no ETag and are never 304.
    let response = app
        .send(Method::GET, "/v1/keys/missing", &[("if-none-match", "*")])
        .await;
    assert_eq!(response.status(), 404);
    assert!(response.headers().get("etag").is_none());
}

#[tokio::test]
async fn the_etag_is_a_hash_of_the_exact_body() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "k", "v"]);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    let response = app.get(ONE).await;
    let tag = response.headers()["etag"].to_str().unwrap().to_owned();
    let body = response.bytes().await.unwrap();
    assert_eq!(tag, read_api::routes::etag_of(&body));
}

#[tokio::test]
async fn cache_control_is_configurable_and_empty_means_none() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "k", "v"]);
    let app = TestApp::spawn(&redis.url(), &[("CACHE_CONTROL", "max-age=5, public")]).await;
    for path in [ONE, BATCH] {
        assert_eq!(
            app.get(path).await.headers()["cache-control"],
            "max-age=5, public"
        );
    }
    let app = TestApp::spawn(&redis.url(), &[("CACHE_CONTROL", "")]).await;
    for path in [ONE, BATCH] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("cache-control").is_none());
        assert!(response.headers().get("etag").is_some());
    }
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "k", "some value"]);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    for path in [ONE, BATCH] {
        let get = app.get(path).await;
        let head = app.send(Method::HEAD, path, &[]).await;
        assert_eq!(head.status(), 200, "{path}");
        for name in ["etag", "cache-control", "content-type", "content-length"] {
            assert_eq!(
                head.headers().get(name),
                get.headers().get(name),
                "{path} {name}"
            );
        }
        let length: usize = get.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(get.bytes().await.unwrap().len(), length);
        assert!(head.bytes().await.unwrap().is_empty());

        let tag = app.get(path).await.headers()["etag"].clone();
        let head = app
            .send(
                Method::HEAD,
                path,
                &[("if-none-match", tag.to_str().unwrap())],
            )
            .await;
        assert_eq!(head.status(), 304, "{path}");
    }
    let head = app.send(Method::HEAD, "/v1/keys/missing", &[]).await;
    assert_eq!(head.status(), 404);
    assert!(head.bytes().await.unwrap().is_empty());
}
