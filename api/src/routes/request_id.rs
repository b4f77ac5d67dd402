//! `x-request-id`: taken from the request or made up, echoed on every answer,
//! and carried by the request's log span.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
};

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
    Error,
};
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// A client's id is kept when it is short, visible ASCII; anything else would
/// let a client write what it likes into our logs, so it gets a new id.
fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// `<random per process>-<counter>`: unique across pods without a random
/// draw per request, and written on the stack.
fn new_id() -> HeaderValue {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix =
        PREFIX.get_or_init(|| format!("{:016x}", RandomState::new().build_hasher().finish()));
    let mut id = [0u8; 40];
    let mut unwritten = &mut id[..];
    write!(
        unwritten,
        "{prefix}-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
    .expect("16 hex digits, a dash and a u64 fit in 40 bytes");
    let len = 40 - unwritten.len();
    HeaderValue::from_bytes(&id[..len])
        .expect("hex digits, a dash and digits are a valid header value")
}

pub async fn request_id<B: MessageBody>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, Error> {
    let id = match req.headers().get(&HEADER) {
        Some(value) if acceptable(value) => value.clone(),
        _ => new_id(),
    };
    let span = tracing::info_span!(
        "request",
        request_id = id.to_str().unwrap_or("-"),
        method = %req.method(),
    );
    let mut response = next.call(req).instrument(span).await?;
    response.headers_mut().insert(HEADER, id);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_unique_and_acceptable() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(acceptable(&a) && acceptable(&b), "{a:?}");
    }

    #[test]
    fn only_short_visible_ids_are_kept() {
        assert!(acceptable(&HeaderValue::from_static("abc-123")));
        assert!(!acceptable(&HeaderValue::from_static("")));
        assert!(!acceptable(&HeaderValue::from_static("has space")));
        assert!(!acceptable(
            &HeaderValue::from_str(&"x".repeat(129)).unwrap()
        ));
    }
}
