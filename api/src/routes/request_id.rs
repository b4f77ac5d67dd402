//! `x-request-id`: taken from the request or made up, echoed on every answer,
//! and carried by the request's log span.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
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
/// draw per request, and written on the stack without the formatting
/// machinery (the prefix is rendered once, the counter's digits by hand).
fn new_id() -> HeaderValue {
    static PREFIX: OnceLock<[u8; 17]> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        let mut prefix = [b'-'; 17];
        let random = format!("{:016x}", RandomState::new().build_hasher().finish());
        prefix[..16].copy_from_slice(random.as_bytes());
        prefix
    });
    let mut id = [0u8; 17 + 20];
    id[..17].copy_from_slice(prefix);
    let len = 17 + write_decimal(&mut id[17..], NEXT.fetch_add(1, Ordering::Relaxed));
    HeaderValue::from_bytes(&id[..len])
        .expect("hex digits, a dash and digits are a valid header value")
}

/// Writes `n` in decimal at the start of `out` (20 bytes hold any u64); its length.
fn write_decimal(out: &mut [u8], mut n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - start;
    out[..len].copy_from_slice(&digits[start..]);
    len
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
    fn counters_are_written_in_decimal() {
        for n in [0, 7, 10, 12345, u64::MAX] {
            let mut out = [0u8; 20];
            let len = write_decimal(&mut out, n);
            assert_eq!(&out[..len], n.to_string().as_bytes());
        }
        let id = new_id();
        let (prefix, counter) = id.to_str().unwrap().split_once('-').unwrap();
        assert!(prefix.len() == 16 && prefix.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(counter.parse::<u64>().is_ok(), "{id:?}");
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
