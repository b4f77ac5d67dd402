//! HTTP caching of 200 answers: a strong ETag, `If-None-Match`, `Cache-Control`.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use actix_web::{
    body::{BodySize, MessageBody},
    http::header::{self, HeaderValue},
    HttpRequest, HttpResponse,
};
use bytes::Bytes;

/// A strong ETag: the exact body bytes, hashed. xxh3 is a fixed, documented
/// algorithm, so every pod (and every build) gives the same body the same tag,
/// and a client revalidating through any pod gets its 304.
pub fn etag_of(body: &[u8]) -> String {
    format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(body))
}

/// Whether `If-None-Match` (every instance of it) matches `etag`, using the weak
/// comparison RFC 9110 prescribes for it: `W/"x"` matches `"x"`, and `*` matches
/// any current representation.
pub fn if_none_match_matches<'a>(
    headers: impl IntoIterator<Item = &'a HeaderValue>,
    etag: &str,
) -> bool {
    let ours = etag.trim_matches('"');
    headers
        .into_iter()
        .filter_map(|value| value.to_str().ok())
        .any(|list| list.trim() == "*" || entity_tags(list).any(|tag| tag == ours))
}

/// The opaque tags of a list such as `W/"a", "b"`, without quotes or `W/`;
/// stops at the first malformed element.
fn entity_tags(list: &str) -> impl Iterator<Item = &str> {
    let mut rest = list;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let unweakened = rest.strip_prefix("W/").unwrap_or(rest);
        let quoted = unweakened.strip_prefix('"')?;
        let end = quoted.find('"')?;
        rest = &quoted[end + 1..];
        Some(&quoted[..end])
    })
}

/// The ETag of `body`, as a header value: [`etag_of`]'s text, written on the
/// stack rather than through `format!` (every read from Redis makes one).
pub fn etag_header(body: &[u8]) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = xxhash_rust::xxh3::xxh3_64(body);
    let mut tag = [b'"'; 18];
    for (i, digit) in tag[1..17].iter_mut().enumerate() {
        *digit = HEX[(hash >> (60 - 4 * i)) as usize & 0xf];
    }
    HeaderValue::from_bytes(&tag).expect("quoted hex digits are a valid header value")
}

/// 200 with the body, or 304 without it when the client already has it.
/// Both carry the ETag and `Cache-Control`, as RFC 9110 asks of a 304.
pub fn respond(
    req: &HttpRequest,
    body: Vec<u8>,
    cache_control: Option<&HeaderValue>,
) -> HttpResponse {
    let etag = etag_header(&body);
    respond_tagged(req, Bytes::from(body), etag, cache_control)
}

/// [`respond`] with the tag already computed (a cached answer carries its own).
pub fn respond_tagged(
    req: &HttpRequest,
    body: Bytes,
    etag: HeaderValue,
    cache_control: Option<&HeaderValue>,
) -> HttpResponse {
    respond_as(req, body, etag, cache_control, JSON)
}

/// [`respond_tagged`] for a body of another media type.
pub fn respond_as(
    req: &HttpRequest,
    body: Bytes,
    etag: HeaderValue,
    cache_control: Option<&HeaderValue>,
    content_type: HeaderValue,
) -> HttpResponse {
    let not_modified = if_none_match_matches(
        req.headers().get_all(header::IF_NONE_MATCH),
        etag.to_str().unwrap_or_default(),
    );
    let mut response = if not_modified {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response.insert_header((header::ETAG, etag));
    if let Some(cache_control) = cache_control {
        response.insert_header((header::CACHE_CONTROL, cache_control.clone()));
    }
    if not_modified {
        response.finish()
    } else {
        response.insert_header((header::CONTENT_TYPE, content_type));
        if body.len() <= CHUNK {
            response.body(body)
        } else {
            response.body(Chunks(body))
        }
    }
}

const CHUNK: usize = 64 * 1024;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A body handed to the connection 64 KiB at a time. Given whole, actix would
/// copy a large body into the connection's write buffer at once, holding it
/// twice until the client has read it all.
struct Chunks(Bytes);

impl MessageBody for Chunks {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.0.len() as u64)
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        if self.0.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.0.len().min(CHUNK);
        Poll::Ready(Some(Ok(self.0.split_to(n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(values: &[&str], etag: &str) -> bool {
        let values: Vec<HeaderValue> = values
            .iter()
            .map(|v| HeaderValue::from_str(v).unwrap())
            .collect();
        if_none_match_matches(&values, etag)
    }

    #[test]
    fn etags_are_strong_stable_and_depend_on_every_byte() {
        let tag = etag_of(b"{\"key\":\"k\",\"value\":\"v\"}");
        assert!(
            tag.starts_with('"') && tag.ends_with('"') && tag.len() == 18,
            "{tag}"
        );
        assert_eq!(tag, etag_of(b"{\"key\":\"k\",\"value\":\"v\"}"));
        assert_ne!(tag, etag_of(b"{\"key\":\"k\",\"value\":\"w\"}"));
        for body in [&b""[..], b"x", b"{\"key\":\"k\",\"value\":\"v\"}"] {
            assert_eq!(etag_header(body).to_str().unwrap(), etag_of(body));
        }
    }

    #[test]
    fn if_none_match_uses_weak_comparison_over_lists() {
        let tag = "\"0123456789abcdef\"";
        assert!(matches(&[tag], tag));
        assert!(matches(&["W/\"0123456789abcdef\""], tag));
        assert!(matches(&["\"x\", W/\"0123456789abcdef\""], tag));
        assert!(matches(&["\"x\"", "\"0123456789abcdef\""], tag));
        assert!(matches(&["*"], tag));
        assert!(matches(&[" * "], tag));
        assert!(!matches(&["\"x\", \"y\""], tag));
        assert!(
            !matches(&["0123456789abcdef"], tag),
            "unquoted is malformed"
        );
        assert!(!matches(&["\"0123456789abcde\""], tag));
        assert!(!matches(&[], tag));
        assert!(!matches(&["\"x\", *"], tag), "* only stands alone");
    }
}
