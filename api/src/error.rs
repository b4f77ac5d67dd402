//! Every failure a client can see, mapped to HTTP in one place.
//!
//! The body is always `{"error": "<code>", "message": "<one line>"}`. Causes
//! from Redis never reach the client; `routes::observe` logs them in full.

use actix_web::{
    http::{header, StatusCode},
    HttpResponse, ResponseError,
};
use serde::Serialize;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadKey(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("key {0:?} does not exist")]
    KeyNotFound(String),
    #[error("no route for this path; see /v1/keys/{{key}}, /v1/keys/{{key}}/fields, /v1/keys/{{key}}/members/{{member}} and /v1/keys?key=...")]
    RouteNotFound,
    /// Another method than the path's; `allow` is the `Allow` header, the
    /// methods it serves ([`ApiError::GET_HEAD`] on every path but `/v1/watch`).
    #[error("only {allow} allowed here")]
    MethodNotAllowed { allow: &'static str },
    /// The key holds a type the route does not read; `holds` is what `TYPE` says.
    #[error("key {key:?} holds {}", holds_message(holds))]
    WrongType { key: String, holds: String },
    #[error("key {0:?} holds bytes that are not UTF-8 text; ask with Accept: application/octet-stream for them as they are")]
    ValueNotUtf8(String),
    /// `as=json` on a string that is not one JSON text.
    #[error("key {key:?} does not hold a JSON document: {why}")]
    ValueNotJson { key: String, why: String },
    /// A hash over `MAX_VALUE_BYTES` or `MAX_HASH_FIELDS`.
    #[error("key {key:?} holds a hash {why}; ask for chosen fields with ?field=")]
    HashTooLarge { key: String, why: String },
    #[error("key {key:?} holds more than MAX_VALUE_BYTES ({max} bytes)")]
    ValueTooLarge { key: String, max: usize },
    #[error("the answer would be larger than MAX_BATCH_RESPONSE_BYTES ({max} bytes); ask for fewer keys")]
    ResponseTooLarge { max: usize },
    #[error("redis is unavailable, retry shortly")]
    Unavailable(#[source] StoreError),
    #[error("redis answered unexpectedly")]
    BadGateway(#[source] StoreError),
    /// Refused by admission control before any work: the worker is at its bound.
    #[error("the API is at capacity, retry shortly")]
    Overloaded,
    /// `Max-Staleness` or `Min-Position` not met: `code` is one of
    /// `metrics::REFUSAL_REASONS`, `message` says what the pod has instead.
    #[error("{message}")]
    NotFresh { code: &'static str, message: String },
    /// `/v1/watch` at `WATCH_MAX_WATCHERS` streams in this pod.
    #[error("this pod has WATCH_MAX_WATCHERS ({max}) change streams open; retry shortly (another pod may have room)")]
    TooManyWatchers { max: usize },
    /// `/v1/watch` cannot start a stream now: the tracking connection is down, or the pod drains.
    #[error("change streams are unavailable: {0}; retry shortly")]
    WatchUnavailable(&'static str),
}

/// `Retry-After` of every 503: a second is long enough for a burst to pass
/// or Redis to come back, and short enough that clients barely notice.
pub const RETRY_AFTER_SECONDS: &str = "1";

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: &'a str,
}

impl ApiError {
    /// The methods of every read path: `Allow` of their 405s.
    pub const GET_HEAD: &'static str = "GET, HEAD";

    /// One of every kind of error, for the tests that keep the HTTP contract
    /// (api/openapi.yaml, docs/http-api.md) equal to the code. The match in
    /// `every_kind_is_in_examples` below fails to compile when a variant is
    /// added without its example here.
    pub fn examples() -> Vec<ApiError> {
        let fred = || fred::error::Error::new(fred::error::ErrorKind::Unknown, "example");
        let mut examples = vec![
            Self::BadKey("example".into()),
            Self::BadRequest("example".into()),
            Self::KeyNotFound("example".into()),
            Self::RouteNotFound,
            Self::MethodNotAllowed {
                allow: Self::GET_HEAD,
            },
            Self::MethodNotAllowed { allow: "GET" },
            Self::WrongType {
                key: "example".into(),
                holds: "hash".into(),
            },
            Self::ValueNotUtf8("example".into()),
            Self::ValueNotJson {
                key: "example".into(),
                why: "example".into(),
            },
            Self::HashTooLarge {
                key: "example".into(),
                why: "example".into(),
            },
            Self::ValueTooLarge {
                key: "example".into(),
                max: 1,
            },
            Self::ResponseTooLarge { max: 1 },
            Self::Unavailable(StoreError::Unavailable {
                kind: "timeout",
                source: fred(),
            }),
            Self::BadGateway(StoreError::Unexpected(fred())),
            Self::Overloaded,
        ];
        // One per code it can carry.
        examples.extend(crate::metrics::REFUSAL_REASONS.map(|code| Self::NotFresh {
            code,
            message: "example".into(),
        }));
        examples.push(Self::TooManyWatchers { max: 1 });
        examples.push(Self::WatchUnavailable("example"));
        examples
    }

    /// The stable machine-readable code in the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadKey(_) => "bad_key",
            Self::BadRequest(_) => "bad_request",
            Self::KeyNotFound(_) | Self::RouteNotFound => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::WrongType { .. } => "wrong_type",
            Self::ValueNotUtf8(_) => "value_not_utf8",
            Self::ValueNotJson { .. } => "value_not_json",
            Self::ValueTooLarge { .. } | Self::HashTooLarge { .. } => "value_too_large",
            Self::ResponseTooLarge { .. } => "response_too_large",
            Self::Unavailable(_) => "unavailable",
            Self::BadGateway(_) => "bad_gateway",
            Self::Overloaded => "overloaded",
            Self::NotFresh { code, .. } => code,
            Self::TooManyWatchers { .. } => "too_many_watchers",
            Self::WatchUnavailable(_) => "watch_unavailable",
        }
    }

    /// The JSON body of the answer, as bytes (for answers built ahead of time).
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&ErrorBody {
            error: self.code(),
            message: &self.to_string(),
        })
        .expect("two strings always encode")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongType(key) => Self::WrongType {
                key,
                holds: String::new(),
            },
            StoreError::ValueTooLarge { key, max } => Self::ValueTooLarge { key, max },
            StoreError::BatchTooLarge { max } => Self::ResponseTooLarge { max },
            StoreError::Unexpected(_) => Self::BadGateway(e),
            StoreError::Unavailable { .. } => Self::Unavailable(e),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadKey(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::KeyNotFound(_) | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            // What the key holds cannot be served as it is: not a 5xx (nothing
            // failed, and retrying will not help), not 413 (the request is small).
            Self::WrongType { .. }
            | Self::ValueNotUtf8(_)
            | Self::ValueNotJson { .. }
            | Self::ValueTooLarge { .. }
            | Self::HashTooLarge { .. }
            | Self::ResponseTooLarge { .. } => StatusCode::CONFLICT,
            Self::Unavailable(_)
            | Self::Overloaded
            | Self::NotFresh { .. }
            | Self::TooManyWatchers { .. }
            | Self::WatchUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = self.to_string();
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unavailable(_)
            | Self::Overloaded
            | Self::NotFresh { .. }
            | Self::TooManyWatchers { .. }
            | Self::WatchUnavailable(_) => {
                response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECONDS));
            }
            Self::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, *allow));
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: self.code(),
            message: &message,
        })
    }
}

/// What a key of this type is, and which route reads it.
fn holds_message(kind: &str) -> String {
    match kind {
        "string" => "a string: read it with GET /v1/keys/{key} (?as=json for a JSON document, Accept: application/octet-stream for its bytes)".into(),
        "hash" => "a hash: read it with GET /v1/keys/{key}/fields (?field=a&field=b for chosen fields)".into(),
        "set" => "a set: ask about a member with GET /v1/keys/{key}/members/{member}".into(),
        "" => "a value of another type".into(),
        other => format!("a {other}, which no route reads; strings, hashes and set membership are served"),
    }
}

/// `error: cause: cause`, for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

/// How a task ended when it should not have: its panic message, without the
/// task id that would make every report of the same fault distinct.
pub fn task_end(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    format!("panicked: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Its position in [`ApiError::examples`]; exhaustive, without a
    /// wildcard, so that a new variant does not compile until it has one.
    fn example_index(e: &ApiError) -> usize {
        match e {
            ApiError::BadKey(_) => 0,
            ApiError::BadRequest(_) => 1,
            ApiError::KeyNotFound(_) => 2,
            ApiError::RouteNotFound => 3,
            ApiError::MethodNotAllowed { .. } => 4,
            ApiError::WrongType { .. } => 5,
            ApiError::ValueNotUtf8(_) => 6,
            ApiError::ValueNotJson { .. } => 7,
            ApiError::HashTooLarge { .. } => 8,
            ApiError::ValueTooLarge { .. } => 9,
            ApiError::ResponseTooLarge { .. } => 10,
            ApiError::Unavailable(_) => 11,
            ApiError::BadGateway(_) => 12,
            ApiError::Overloaded => 13,
            ApiError::NotFresh { .. } => 14,
            ApiError::TooManyWatchers { .. } => 15,
            ApiError::WatchUnavailable(_) => 16,
        }
    }

    const KINDS: usize = 17;

    #[test]
    fn every_kind_is_in_examples() {
        let mut indices: Vec<usize> = ApiError::examples().iter().map(example_index).collect();
        assert!(
            indices.is_sorted(),
            "examples in the order of example_index"
        );
        indices.dedup();
        assert_eq!(indices, (0..KINDS).collect::<Vec<_>>());
    }

    #[test]
    fn every_message_is_one_line() {
        for e in ApiError::examples() {
            assert!(!e.to_string().contains('\n'), "{e:?}");
        }
    }
}
