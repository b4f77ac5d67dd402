//! api/openapi.yaml is what the code answers, and docs/http-api.md agrees.
//!
//! What the code can answer is read from the code, not from a list kept here:
//! the public routes from the route labels the route table registers with
//! `Metrics::route` (exported at 0 from the start), the admin routes from
//! `admin::ROUTES`, the error codes, statuses and headers from
//! `ApiError::examples()` and each one's `error_response()`, and the methods,
//! statuses and headers of real answers from requests to the application on a
//! real redis-server. Each failure says what to add to (or remove from) the
//! document. docs/development.md, "Changing the HTTP contract", says how.

use std::collections::{BTreeMap, BTreeSet};

use actix_web::{body::MessageBody, ResponseError};
use read_api::{admin, error::ApiError};
use serde_json::Value;

use crate::support::{RedisServer, TestApp};

const HTTP_API: &str = include_str!("../../../docs/http-api.md");
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
];
/// Framing headers every answer may carry, which no document lists.
const FRAMING: [&str; 5] = [
    "content-length",
    "content-type",
    "date",
    "connection",
    "transfer-encoding",
];

/// Headers that middleware adds to answers, errors included.
const BY_MIDDLEWARE: [&str; 3] = ["x-request-id", "data-age", "replication-position"];

fn document() -> Value {
    serde_norway::from_str(admin::OPENAPI).expect("api/openapi.yaml is valid YAML")
}

/// `value`, or what its `$ref` points at.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => {
            let target = doc
                .pointer(pointer.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("api/openapi.yaml: {pointer} does not exist"));
            resolve(doc, target)
        }
        None => value,
    }
}

/// One documented answer: its header names (lower case, with `required`) and error codes.
#[derive(Debug, Default, Clone)]
struct Answer {
    headers: BTreeMap<String, bool>,
    codes: BTreeSet<String>,
}

fn answer(doc: &Value, response: &Value) -> Answer {
    let response = resolve(doc, response);
    let headers = response
        .get("headers")
        .and_then(Value::as_object)
        .map(|headers| {
            headers
                .iter()
                .map(|(name, header)| {
                    let header = resolve(doc, header);
                    let required = header["required"].as_bool().unwrap_or(false);
                    (name.to_lowercase(), required)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut codes = BTreeSet::new();
    if let Some(schema) = response.pointer("/content/application~1json/schema") {
        collect_codes(doc, resolve(doc, schema), &mut codes);
    }
    Answer { headers, codes }
}

/// The `error` enum of an error schema, through `allOf`.
fn collect_codes(doc: &Value, schema: &Value, codes: &mut BTreeSet<String>) {
    if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
        for part in parts {
            collect_codes(doc, resolve(doc, part), codes);
        }
    }
    if let Some(values) = schema
        .pointer("/properties/error/enum")
        .and_then(Value::as_array)
    {
        codes.extend(values.iter().filter_map(Value::as_str).map(str::to_owned));
    }
}

/// method → status → answer.
type Methods = BTreeMap<String, BTreeMap<u16, Answer>>;

/// path → (tag, its methods).
struct Operations(BTreeMap<String, (String, Methods)>);

fn operations(doc: &Value) -> Operations {
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let mut tag = None;
        let mut methods = BTreeMap::new();
        for (method, op) in item.as_object().unwrap() {
            if !METHODS.contains(&method.to_uppercase().as_str()) {
                continue;
            }
            let op = resolve(doc, op);
            let op_tag = op["tags"][0].as_str().expect("every operation has a tag");
            assert!(
                tag.is_none_or(|t| t == op_tag),
                "api/openapi.yaml: {path} mixes tags"
            );
            tag = Some(op_tag);
            let statuses = op["responses"]
                .as_object()
                .expect("responses")
                .iter()
                .map(|(status, response)| {
                    let status: u16 = status.parse().expect("numeric statuses only");
                    (status, answer(doc, response))
                })
                .collect();
            methods.insert(method.to_uppercase(), statuses);
        }
        out.insert(
            path.clone(),
            (tag.expect("a path with operations").to_owned(), methods),
        );
    }
    Operations(out)
}

impl Operations {
    fn paths(&self, tag: &str) -> BTreeSet<String> {
        self.0
            .iter()
            .filter(|(_, (t, _))| t == tag)
            .map(|(path, _)| path.clone())
            .collect()
    }
}

/// The route labels of `read_api_http_requests_total` in the exposition.
fn routes_in_metrics(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| line.starts_with("read_api_http_requests_total{"))
        .filter_map(|line| line.split("route=\"").nth(1)?.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// An answer the code gives for each `ApiError`: status, code, header names.
fn error_answers() -> Vec<(ApiError, u16, String, BTreeSet<String>)> {
    ApiError::examples()
        .into_iter()
        .map(|e| {
            let response = e.error_response();
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .keys()
                .map(|name| name.as_str().to_owned())
                .filter(|name| !FRAMING.contains(&name.as_str()))
                .collect();
            let body = response.into_body().try_into_bytes().expect("a full body");
            let body: Value = serde_json::from_slice(&body).expect("a JSON body");
            assert_eq!(body["error"], e.code());
            let code = e.code().to_owned();
            (e, status, code, headers)
        })
        .collect()
}

/// The answers of components/responses (not tied to one operation): 404 for
/// no route, 405 for another method.
fn component(doc: &Value, name: &str) -> Answer {
    let response = doc
        .pointer(&format!("/components/responses/{name}"))
        .unwrap_or_else(|| panic!("api/openapi.yaml: add components/responses/{name}"));
    answer(doc, response)
}

#[test]
fn every_error_code_status_and_header_is_documented_and_nothing_else() {
    let doc = document();
    let ops = operations(&doc);
    let public = ops.paths("public");
    // (status, code) → the documented answers that carry it.
    let mut documented: BTreeMap<(u16, String), Vec<(String, Answer)>> = BTreeMap::new();
    for path in &public {
        for (method, statuses) in &ops.0[path].1 {
            for (status, answer) in statuses {
                for code in &answer.codes {
                    documented
                        .entry((*status, code.clone()))
                        .or_default()
                        .push((format!("{method} {path}"), answer.clone()));
                }
            }
        }
    }
    for (name, status) in [("RouteNotFound", 404), ("MethodNotAllowed", 405)] {
        let answer = component(&doc, name);
        for code in &answer.codes {
            documented
                .entry((status, code.clone()))
                .or_default()
                .push((format!("components/responses/{name}"), answer.clone()));
        }
    }
    let mut problems = Vec::new();
    let mut in_code = BTreeSet::new();
    for (e, status, code, headers) in error_answers() {
        in_code.insert((status, code.clone()));
        let Some(places) = documented.get(&(status, code.clone())) else {
            problems.push(format!(
                "ApiError::{e:?} answers {status} `{code}`: add `{code}` to the error enum of a {status} response of the operations that can answer it"
            ));
            continue;
        };
        for (place, answer) in places {
            // Added by middleware, not by the error: x-request-id, and the
            // freshness headers of the key routes.
            let listed: BTreeSet<String> = answer
                .headers
                .keys()
                .filter(|name| !BY_MIDDLEWARE.contains(&name.as_str()))
                .cloned()
                .collect();
            for missing in headers.difference(&listed) {
                problems.push(format!(
                    "{place}: {status} `{code}` carries the header {missing}: add it to that response's headers"
                ));
            }
            for extra in listed.difference(&headers) {
                problems.push(format!(
                    "{place}: {status} `{code}` does not carry the header {extra}: remove it from that response's headers"
                ));
            }
        }
    }
    for ((status, code), places) in &documented {
        if !in_code.contains(&(*status, code.clone())) {
            let places: Vec<&str> = places.iter().map(|(p, _)| p.as_str()).collect();
            problems.push(format!(
                "{}: {status} `{code}` is documented but no ApiError answers it: remove it",
                places.join(", ")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "api/openapi.yaml:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_admin_routes_are_the_documented_ones() {
    let ops = operations(&document());
    let in_code: BTreeSet<String> = admin::ROUTES.iter().map(|(p, _)| p.to_string()).collect();
    let documented = ops.paths("admin");
    let missing: Vec<_> = in_code.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&in_code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "api/openapi.yaml: admin::ROUTES has {missing:?} without a path tagged admin (add them, GET and HEAD, with servers: *admin); \
         paths tagged admin {extra:?} are not in admin::ROUTES (remove them)"
    );
}

/// A request the probe makes, and the key it needs in Redis.
fn probe_path(path: &str) -> Vec<String> {
    match path {
        "/v1/keys/{key}" => [
            "text",
            "hash",
            "bytes",
            "nope",
            "%ZZ",
            "text?as=json",
            "text?as=xml",
            "text?max-staleness=soon",
            "text?max-staleness=1000",
        ]
        .map(|k| format!("/v1/keys/{k}"))
        .to_vec(),
        "/v1/keys/{key}/fields" => [
            "hash/fields",
            "hash/fields?field=f&field=x",
            "text/fields",
            "nope/fields",
            "hash/fields?other=1",
        ]
        .map(|k| format!("/v1/keys/{k}"))
        .to_vec(),
        "/v1/keys/{key}/members/{member}" => [
            "set/members/m",
            "nope/members/m",
            "text/members/m",
            "set/members/%ZZ",
        ]
        .map(|k| format!("/v1/keys/{k}"))
        .to_vec(),
        // Never a 200: a stream does not end.
        "/v1/watch" => ["", "?other=1", "?key=%ZZ"]
            .map(|q| format!("/v1/watch{q}"))
            .to_vec(),
        "/v1/keys" => ["?key=text&key=nope", "?key=bytes", "?key=", "?other=1", ""]
            .map(|q| format!("/v1/keys{q}"))
            .to_vec(),
        // A path with parameters that this probe does not know yet: one try
        // with "x" for each, which still checks methods and headers.
        other => vec![other
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/")],
    }
}

/// The real application: its routes, and every method of every documented
/// path, answer only what the document says, with the headers it lists.
#[tokio::test]
async fn the_running_application_answers_only_what_is_documented() {
    let doc = document();
    let ops = operations(&doc);
    let redis = RedisServer::start();
    redis.cli(&["SET", "text", "hello"]);
    redis.cli(&["HSET", "hash", "f", "v"]);
    redis.set_bytes("bytes", b"\xff\xfe");
    redis.cli(&["SADD", "set", "m"]);
    let app = TestApp::spawn(&redis.url(), &[]).await;
    app.wait_ready(200).await;

    let in_code = routes_in_metrics(&app.metrics().await);
    assert!(!in_code.is_empty(), "no route labels in /metrics");
    let documented = ops.paths("public");
    let missing: Vec<_> = in_code.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&in_code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "api/openapi.yaml: the route table serves {missing:?} (route labels of read_api_http_requests_total) without a path tagged public: add them; \
         paths tagged public {extra:?} are served by no route: remove them"
    );

    let not_allowed = component(&doc, "MethodNotAllowed");
    let mut problems = Vec::new();
    let mut seen_statuses = BTreeSet::new();
    for (path, (tag, methods)) in &ops.0 {
        let base = if tag == "admin" {
            &app.admin
        } else {
            &app.base
        };
        for target in probe_path(path) {
            let mut etag = None;
            for method in METHODS {
                let mut request = app.http.request(
                    method.parse().unwrap(),
                    format!("{base}{}", target.replace(' ', "%20")),
                );
                if let Some(etag) = &etag {
                    request = request.header("if-none-match", etag);
                }
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                seen_statuses.insert(status);
                let expected = match methods.get(method) {
                    Some(statuses) => match statuses.get(&status) {
                        Some(answer) => answer.clone(),
                        None => {
                            problems.push(format!(
                                "{method} {target} answered {status}: add a {status} response to {method} {path}"
                            ));
                            continue;
                        }
                    },
                    None if status == 405 => not_allowed.clone(),
                    None => {
                        problems.push(format!(
                            "{method} {target} answered {status}: {path} has no {method} operation (the code must answer 405, or document the operation)"
                        ));
                        continue;
                    }
                };
                let headers: BTreeSet<String> = response
                    .headers()
                    .keys()
                    .map(|n| n.as_str().to_owned())
                    .filter(|n| !FRAMING.contains(&n.as_str()))
                    .collect();
                for name in headers
                    .iter()
                    .filter(|n| !expected.headers.contains_key(*n))
                {
                    problems.push(format!(
                        "{method} {target} answered {status} with the header {name}: add it to that response in api/openapi.yaml"
                    ));
                }
                for (name, _) in expected
                    .headers
                    .iter()
                    .filter(|(n, required)| **required && !headers.contains(*n))
                {
                    problems.push(format!(
                        "{method} {target} answered {status} without the required header {name}: make it optional or fix the code"
                    ));
                }
                if !expected.codes.is_empty() && method != "HEAD" {
                    let body: Value = response.json().await.unwrap_or_default();
                    let code = body["error"].as_str().unwrap_or("(none)").to_owned();
                    if !expected.codes.contains(&code) {
                        problems.push(format!(
                            "{method} {target} answered {status} `{code}`: add `{code}` to that response's error enum"
                        ));
                    }
                } else if method == "GET" && status == 200 {
                    etag = headers
                        .contains("etag")
                        .then(|| response.headers()["etag"].to_str().unwrap().to_owned());
                    // Again, revalidating: the 304 must be documented too.
                    if let Some(etag) = &etag {
                        let again = app
                            .http
                            .get(format!("{base}{target}"))
                            .header("if-none-match", etag)
                            .send()
                            .await
                            .unwrap();
                        let status = again.status().as_u16();
                        seen_statuses.insert(status);
                        if !methods["GET"].contains_key(&status) {
                            problems.push(format!(
                                "GET {target} with its ETag answered {status}: add a {status} response to GET {path}"
                            ));
                        }
                    }
                }
            }
        }
    }
    for status in [200, 304, 400, 404, 405, 409] {
        assert!(
            seen_statuses.contains(&status),
            "the probe never saw {status}: {seen_statuses:?}"
        );
    }
    let served = app
        .http
        .get(format!("{}/openapi.yaml", app.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served, admin::OPENAPI, "/openapi.yaml serves the file");
    let nowhere = app.get("/v2/nothing").await;
    assert_eq!(nowhere.status(), 404);
    app.stop().await;
    assert!(
        problems.is_empty(),
        "api/openapi.yaml:\n{}",
        problems.join("\n")
    );
}

/// docs/http-api.md's two route tables list the documented paths, and every
/// error code it names is one the code answers, and the other way round.
#[test]
fn the_http_reference_agrees_with_the_document() {
    let ops = operations(&document());
    let mut listed = BTreeSet::new();
    for line in HTTP_API.lines().filter(|l| l.starts_with("| `")) {
        let cell = line.split('`').nth(1).unwrap();
        let path = cell.trim_start_matches("GET ").split('?').next().unwrap();
        if path.starts_with('/') {
            listed.insert(path.to_owned());
        }
    }
    let documented: BTreeSet<String> = ops.0.keys().cloned().collect();
    assert_eq!(
        listed, documented,
        "docs/http-api.md's route tables (rows \"| `GET /path`\" or \"| `/path`\") must list the paths of api/openapi.yaml"
    );
    let in_code: BTreeSet<String> = ApiError::examples()
        .iter()
        .map(|e| e.code().to_owned())
        .collect();
    // Codes are written as "NNN `code`" in the page.
    let text = HTTP_API.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut named = BTreeSet::new();
    for (i, _) in text.match_indices(" `") {
        let before = &text[i.saturating_sub(3)..i];
        if before.len() == 3 && before.bytes().all(|b| b.is_ascii_digit()) {
            let code = text[i + 2..].split('`').next().unwrap();
            if !code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                continue;
            }
            named.insert(code.to_owned());
        }
    }
    let missing: Vec<_> = in_code.difference(&named).collect();
    let extra: Vec<_> = named.difference(&in_code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/http-api.md: name the codes {missing:?} as \"<status> `code`\"; {extra:?} are answered by no ApiError"
    );
}

/// The limits the document states are the code's defaults: schemathesis
/// found a key of 300 characters accepted where the document said 256.
#[test]
fn the_documented_limits_are_the_defaults() {
    let doc = document();
    let settings = read_api::config::Settings::from_vars(Vec::new()).unwrap();
    let key = &doc["components"]["parameters"]["Key"]["schema"];
    let keys = &doc["components"]["parameters"]["Keys"]["schema"];
    assert_eq!(
        key["maxLength"], settings.max_key_bytes,
        "Key maxLength is MAX_KEY_BYTES"
    );
    assert_eq!(
        keys["items"]["maxLength"], settings.max_key_bytes,
        "Keys items maxLength is MAX_KEY_BYTES"
    );
    assert_eq!(
        keys["maxItems"], settings.max_batch_keys,
        "Keys maxItems is MAX_BATCH_KEYS"
    );
    assert_eq!(
        (key["minLength"].as_u64(), keys["minItems"].as_u64()),
        (Some(1), Some(1))
    );
}
