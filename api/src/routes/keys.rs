//! `GET /v1/keys/{key}` and `GET /v1/keys?key=…`.
//!
//! Keys are decoded here from the raw request target rather than through
//! actix's `Path`, which decodes lossily: a key that is not UTF-8 must be
//! refused, not silently turned into another key.

use std::{borrow::Cow, io, sync::Arc};

use actix_web::{
    http::{header::HeaderValue, Method},
    web, HttpRequest, HttpResponse,
};
use bytes::Bytes;
use serde::{ser::SerializeMap, Serialize, Serializer};

use super::{
    caching::{etag_header, respond},
    consistency::{is_query_parameter, skips_cache},
    shapes::{self, StringShape, Tail},
    Limits, PublicState,
};
use crate::{
    cache::{Cached, ValueCache},
    error::ApiError,
    store::{StoreError, StringValue},
};

#[derive(Serialize)]
struct OneValue<'a> {
    key: &'a str,
    value: &'a str,
}

/// The single-key route, for metrics, and the prefix it is served under.
pub const ONE_KEY_ROUTE: &str = "/v1/keys/{key}";
pub const ONE_KEY_PREFIX: &str = "/v1/keys";

/// Everything under `/v1/keys/`: one non-empty segment is a key (an encoded
/// slash, %2F, stays encoded in the raw path), followed by nothing (a
/// string), `/fields` (a hash) or `/members/{member}` (set membership);
/// anything else no route.
pub async fn get_one(
    req: HttpRequest,
    state: web::Data<PublicState>,
) -> Result<HttpResponse, ApiError> {
    let rest = req
        .uri()
        .path()
        .strip_prefix(ONE_KEY_PREFIX)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or(ApiError::RouteNotFound)?;
    let (segment, tail) = match rest.split_once('/') {
        None => (rest, None),
        Some((segment, tail)) => (
            segment,
            Some(Tail::parse(tail).ok_or(ApiError::RouteNotFound)?),
        ),
    };
    if segment.is_empty() {
        return Err(ApiError::RouteNotFound);
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(ApiError::MethodNotAllowed {
            allow: ApiError::GET_HEAD,
        });
    }
    let key = decode_key(segment, false, state.limits.max_key_bytes)?;
    if let Some(tail) = tail {
        return shapes::get_shape(&req, &state, &key, tail).await;
    }
    let shape = StringShape::of(&req)?;
    let ticket = match state
        .cache_for(&req)
        .map(|cache| cache.lookup_for(&key, shapes::reads_as_string))
    {
        Some(Ok(cached)) => return shapes::answer_string(&req, &state, &key, &cached, shape),
        Some(Err(ticket)) => ticket,
        None => None,
    };
    let read = match state.store.get(&key).await {
        Ok(Some(StringValue::Text(value))) => {
            let (body, etag) = one_body(&key, &value);
            Cached::Text { value, body, etag }
        }
        Ok(Some(StringValue::NotText(bytes))) => Cached::NotText(bytes),
        Ok(None) => Cached::Missing,
        Err(StoreError::ValueTooLarge { .. }) => Cached::TooLarge,
        Err(StoreError::WrongType(_)) => return Err(shapes::wrong_type(&state, &key, ticket).await),
        Err(e) => return Err(e.into()),
    };
    let read = Arc::new(read);
    if let (Some(cache), Some(ticket)) = (&state.cache, ticket) {
        cache.fill(&key, ticket, Arc::clone(&read));
    }
    shapes::answer_string(&req, &state, &key, &read, shape)
}

/// `{"key": …, "value": …}` and its tag: built once per read from Redis,
/// kept with the value in the cache.
fn one_body(key: &str, value: &str) -> (Bytes, HeaderValue) {
    let body = serde_json::to_vec(&OneValue { key, value }).expect("strings always encode");
    let etag = etag_header(&body);
    (Bytes::from(body), etag)
}

/// `{"values": {"a": "…", "b": null}}`, keys in request order.
struct Values<'a>(&'a [(String, Option<&'a str>)]);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct BatchBody<'a> {
    values: Values<'a>,
}

pub async fn get_batch(
    req: HttpRequest,
    state: web::Data<PublicState>,
) -> Result<HttpResponse, ApiError> {
    let BatchRequest { keys, documents } = parse_batch_request(req.query_string(), state.limits)?;
    let max = state.store.limits().max_batch_bytes;
    let values = match &state.cache {
        Some(cache) if !skips_cache(&req) => read_through(cache, &state, &keys, max).await?,
        _ => state
            .store
            .get_many(&keys)
            .await?
            .into_iter()
            .map(|v| v.map(Found::Read))
            .collect(),
    };
    let mut pairs = Vec::with_capacity(keys.len());
    let mut estimate = 16;
    for (key, value) in keys.into_iter().zip(values.iter()) {
        let text = value
            .as_ref()
            .map(|v| v.as_text(&key, documents))
            .transpose()?;
        let text = match (text, documents) {
            (Some(text), true) => Some(shapes::json_document(&key, text)?),
            (text, _) => text,
        };
        estimate += key.len() + text.map_or(4, str::len) + 6;
        pairs.push((key, text));
    }
    // Redis checked the values add up to at most the limit; escapes can still
    // make the JSON larger, so the encoder stops at the limit too.
    let mut body = CappedBody::new(estimate, max);
    let written = if documents {
        documents_body(&mut body, &pairs)
    } else {
        serde_json::to_writer(
            &mut body,
            &BatchBody {
                values: Values(&pairs),
            },
        )
        .map_err(io::Error::other)
    };
    written.map_err(|_| ApiError::ResponseTooLarge { max })?;
    Ok(respond(&req, body.buf, state.cache_control.as_ref()))
}

/// `{"values": {"a": <document>, "b": null}}`: the documents as they are
/// (each already checked to be one JSON text).
fn documents_body(body: &mut CappedBody, pairs: &[(String, Option<&str>)]) -> io::Result<()> {
    use io::Write;
    body.write_all(b"{\"values\":{")?;
    for (i, (key, document)) in pairs.iter().enumerate() {
        if i > 0 {
            body.write_all(b",")?;
        }
        serde_json::to_writer(&mut *body, key).map_err(io::Error::other)?;
        body.write_all(b":")?;
        body.write_all(document.unwrap_or("null").as_bytes())?;
    }
    body.write_all(b"}}")
}

/// One value of a batch, read now or found in the cache.
enum Found {
    Read(StringValue),
    Cached(Arc<Cached>),
}

impl Found {
    fn as_text<'v>(&'v self, key: &str, documents: bool) -> Result<&'v str, ApiError> {
        let text = match self {
            Self::Read(StringValue::Text(text)) => Some(&**text),
            Self::Read(StringValue::NotText(_)) => None,
            Self::Cached(cached) => match cached.as_ref() {
                Cached::Text { value, .. } => Some(&**value),
                _ => None,
            },
        };
        text.ok_or_else(|| match documents {
            true => ApiError::ValueNotJson {
                key: key.to_owned(),
                why: "it is not UTF-8 text".into(),
            },
            false => ApiError::ValueNotUtf8(key.to_owned()),
        })
    }
}

/// The batch through the cache, key by key: hits from memory, the misses in
/// one read of Redis (the same script, with what the hits left of the byte
/// budget). The answer is then not one atomic read, but every value in it is
/// one the replica held at most the push delay before the request.
async fn read_through(
    cache: &ValueCache,
    state: &PublicState,
    keys: &[String],
    max: usize,
) -> Result<Vec<Option<Found>>, ApiError> {
    let mut values: Vec<Option<Found>> = Vec::with_capacity(keys.len());
    let mut misses = Vec::new();
    let mut used = 0usize;
    for (i, key) in keys.iter().enumerate() {
        match cache.lookup(key) {
            Ok(cached) => {
                match cached.as_ref() {
                    Cached::Text { value, .. } => used += value.len(),
                    Cached::TooLarge => {
                        return Err(ApiError::ValueTooLarge {
                            key: key.clone(),
                            max: state.store.limits().max_value_bytes,
                        })
                    }
                    Cached::NotText(bytes) => used += bytes.len(),
                    _ => {}
                }
                // A missing key, or one of another type, reads as null in a
                // batch, like MGET (an entry of member answers is a set or
                // a missing key: null either way).
                let string = matches!(cached.as_ref(), Cached::Text { .. } | Cached::NotText(_));
                values.push(string.then_some(Found::Cached(cached)));
            }
            Err(ticket) => {
                misses.push((i, ticket));
                values.push(None);
            }
        }
    }
    if used > max {
        return Err(ApiError::ResponseTooLarge { max });
    }
    if misses.is_empty() {
        return Ok(values);
    }
    let missed: Vec<String> = misses.iter().map(|(i, _)| keys[*i].clone()).collect();
    let read = state.store.get_many_within(&missed, max - used).await?;
    for ((i, ticket), value) in misses.into_iter().zip(read) {
        let Some(value) = value else { continue };
        // A null here is a missing key or one of another type: only the
        // single-key read tells them apart, so it is not kept.
        if let Some(ticket) = ticket {
            let cached = match &value {
                StringValue::Text(text) => {
                    let (body, etag) = one_body(&keys[i], text);
                    Cached::Text {
                        value: text.clone(),
                        body,
                        etag,
                    }
                }
                StringValue::NotText(bytes) => Cached::NotText(bytes.clone()),
            };
            cache.fill(&keys[i], ticket, Arc::new(cached));
        }
        values[i] = Some(Found::Read(value));
    }
    Ok(values)
}

/// A buffer that never grows past `limit`: writing more fails instead.
struct CappedBody {
    buf: Vec<u8>,
    limit: usize,
}

impl CappedBody {
    fn new(estimate: usize, limit: usize) -> Self {
        Self {
            buf: Vec::with_capacity(estimate.min(limit)),
            limit,
        }
    }
}

impl io::Write for CappedBody {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let needed = self.buf.len() + data.len();
        if needed > self.limit {
            return Err(io::Error::other("body over the limit"));
        }
        if needed > self.buf.capacity() {
            let target = (self.buf.capacity() * 2).clamp(needed, self.limit);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What `/v1/keys?…` asks for.
pub struct BatchRequest {
    pub keys: Vec<String>,
    /// `as=json`: every value served as the JSON document it holds.
    pub documents: bool,
}

/// The keys of `key=a&key=b…`, each decoded and checked like a path key.
pub fn parse_batch_query(query: &str, limits: Limits) -> Result<Vec<String>, ApiError> {
    parse_batch_request(query, limits).map(|request| request.keys)
}

/// [`parse_batch_query`], with `as=json` too.
pub fn parse_batch_request(query: &str, limits: Limits) -> Result<BatchRequest, ApiError> {
    let mut keys = Vec::new();
    let mut documents = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if is_query_parameter(name) {
            continue;
        }
        if name == "as" {
            documents = shapes::parse_as(pair)?;
            continue;
        }
        if name != "key" {
            let name = decode(name, true)
                .ok()
                .and_then(|n| String::from_utf8(n).ok());
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {:?}; only 'key' (and 'as=json') is accepted",
                name.as_deref().unwrap_or("(not UTF-8)")
            )));
        }
        if keys.len() == limits.max_batch_keys {
            return Err(ApiError::BadRequest(format!(
                "more than MAX_BATCH_KEYS ({}) keys",
                limits.max_batch_keys
            )));
        }
        keys.push(decode_key(value, true, limits.max_key_bytes)?.into_owned());
    }
    if keys.is_empty() {
        return Err(ApiError::BadRequest(
            "no keys: give one or more 'key' query parameters, as in /v1/keys?key=a&key=b".into(),
        ));
    }
    Ok(BatchRequest { keys, documents })
}

/// Percent-decodes one key and checks it is non-empty UTF-8 within `max_bytes`.
/// In a query string (`plus_is_space`), `+` stands for a space.
/// A key with nothing to decode is borrowed from the request, as most are.
pub fn decode_key(
    encoded: &str,
    plus_is_space: bool,
    max_bytes: usize,
) -> Result<Cow<'_, str>, ApiError> {
    // A key can only shrink when decoded: refuse the absurd before allocating.
    if encoded.len() > max_bytes.saturating_mul(3) {
        return Err(too_long(max_bytes));
    }
    if !encoded
        .bytes()
        .any(|b| b == b'%' || (plus_is_space && b == b'+'))
    {
        return match encoded.len() {
            0 => Err(ApiError::BadKey("key is empty".into())),
            n if n > max_bytes => Err(too_long(max_bytes)),
            _ => Ok(Cow::Borrowed(encoded)),
        };
    }
    let bytes = decode(encoded, plus_is_space)?;
    if bytes.is_empty() {
        return Err(ApiError::BadKey("key is empty".into()));
    }
    if bytes.len() > max_bytes {
        return Err(too_long(max_bytes));
    }
    String::from_utf8(bytes)
        .map(Cow::Owned)
        .map_err(|_| ApiError::BadKey("key is not valid UTF-8 after percent-decoding".into()))
}

fn too_long(max_bytes: usize) -> ApiError {
    ApiError::BadKey(format!(
        "key is longer than MAX_KEY_BYTES ({max_bytes} bytes)"
    ))
}

/// Strict percent-decoding: every `%` must start a two-digit hex escape.
fn decode(encoded: &str, plus_is_space: bool) -> Result<Vec<u8>, ApiError> {
    let input = encoded.as_bytes();
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let escape = input
                    .get(i + 1..i + 3)
                    .and_then(|pair| Some(hex(pair[0])? * 16 + hex(pair[1])?));
                match escape {
                    Some(byte) => out.push(byte as u8),
                    None => {
                        return Err(ApiError::BadKey(
                            "malformed percent-encoding: '%' must be followed by two hex digits"
                                .into(),
                        ))
                    }
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_body_stops_at_its_limit() {
        use std::io::Write;
        let mut body = CappedBody::new(4, 10);
        body.write_all(b"12345678").unwrap();
        assert!(body.write_all(b"abc").is_err());
        body.write_all(b"90").unwrap();
        assert_eq!(body.buf, b"1234567890");
        assert!(body.buf.capacity() <= 10);
    }

    const LIMITS: Limits = Limits {
        max_key_bytes: 8,
        max_batch_keys: 3,
    };

    fn code(e: ApiError) -> &'static str {
        e.code()
    }

    #[test]
    fn decodes_escapes_including_slashes() {
        assert_eq!(decode_key("a%2Fb", false, 8).unwrap(), "a/b");
        assert_eq!(decode_key("caf%C3%A9", false, 8).unwrap(), "café");
        assert_eq!(decode_key("a+b", false, 8).unwrap(), "a+b");
        assert_eq!(decode_key("a+b", true, 8).unwrap(), "a b");
        assert_eq!(decode_key("nul%00", false, 8).unwrap(), "nul\0");
    }

    #[test]
    fn refuses_bad_keys() {
        for bad in [
            "",
            "%",
            "%4",
            "%zz",
            "%FF",
            "%C3",
            "123456789",
            &"%41".repeat(9),
        ] {
            assert_eq!(
                code(decode_key(bad, false, 8).unwrap_err()),
                "bad_key",
                "{bad:?}"
            );
        }
        assert_eq!(decode_key("12345678", false, 8).unwrap(), "12345678");
    }

    #[test]
    fn keys_without_escapes_are_borrowed() {
        assert!(matches!(
            decode_key("plain", false, 8),
            Ok(Cow::Borrowed("plain"))
        ));
        assert!(matches!(
            decode_key("a+b", false, 8),
            Ok(Cow::Borrowed("a+b"))
        ));
        assert!(matches!(decode_key("a+b", true, 8), Ok(Cow::Owned(_))));
        assert!(matches!(decode_key("a%41", false, 8), Ok(Cow::Owned(_))));
    }

    #[test]
    fn batch_query_takes_only_keys_within_limits() {
        assert_eq!(
            parse_batch_query("key=a&key=b%2Fc&", LIMITS).unwrap(),
            ["a", "b/c"]
        );
        assert_eq!(
            parse_batch_query("key=a&key=a", LIMITS).unwrap(),
            ["a", "a"]
        );
        for bad in [
            "",
            "&&",
            "key=a&other=1",
            "key=a&key=b&key=c&key=d",
            "key=",
            "key",
        ] {
            assert!(parse_batch_query(bad, LIMITS).is_err(), "{bad:?}");
        }
        let msg = parse_batch_query("k%FFy=1", LIMITS)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unknown query parameter"), "{msg}");
    }
}
