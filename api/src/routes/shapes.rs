//! The value shapes beyond a string's `{"key", "value"}`: a string as a JSON
//! document (`?as=json`) or as its bytes (`Accept: application/octet-stream`),
//! a hash (`/v1/keys/{key}/fields`, whole or `?field=` chosen fields), and set
//! membership (`/v1/keys/{key}/members/{member}`).
//!
//! The shape is chosen by the route, the query and `Accept`, never by asking
//! Redis first: a plain string read is the same one round trip as before, and
//! only a key of the wrong type costs a second (`TYPE`, to say what it holds).
//! Every shape reads through the value cache's one entry per key.

use std::{collections::HashSet, sync::Arc};

use actix_web::{
    http::header::{self, HeaderValue},
    HttpRequest, HttpResponse,
};
use bytes::Bytes;
use fred::bytes_utils::Str;
use serde::{ser::SerializeMap, Serialize, Serializer};

use super::{
    caching::{etag_header, respond, respond_as, respond_tagged},
    consistency::is_query_parameter,
    keys::decode_key,
    PublicState,
};
use crate::{
    cache::{Cached, HashRead, Ticket},
    error::ApiError,
    store::{HashRefusal, HashReply},
};

/// The route of a hash read, and of a membership question, for metrics.
pub const FIELDS_ROUTE: &str = "/v1/keys/{key}/fields";
pub const MEMBERS_ROUTE: &str = "/v1/keys/{key}/members/{member}";

const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");
const VARY_ACCEPT: HeaderValue = HeaderValue::from_static("accept");

/// Which of the routes under `/v1/keys/{key}/` a path's tail names.
pub enum Tail<'a> {
    Fields,
    Member(&'a str),
}

impl<'a> Tail<'a> {
    pub fn parse(tail: &'a str) -> Option<Self> {
        match tail {
            "fields" => Some(Self::Fields),
            _ => tail
                .strip_prefix("members/")
                .filter(|m| !m.is_empty() && !m.contains('/'))
                .map(Self::Member),
        }
    }
}

/// How a string is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringShape {
    /// `{"key": …, "value": "…"}`, as always.
    Plain,
    /// `?as=json`: `{"key": …, "value": <the document>}`.
    Document,
    /// `Accept: application/octet-stream`: the bytes as stored.
    Bytes,
}

impl StringShape {
    /// The shape the request asks for; `as=json` wins over `Accept`.
    pub fn of(req: &HttpRequest) -> Result<Self, ApiError> {
        let query = req.query_string();
        if !query.is_empty() && parse_as(query)? {
            return Ok(Self::Document);
        }
        Ok(if wants_bytes(req) {
            Self::Bytes
        } else {
            Self::Plain
        })
    }
}

/// `as=json` (true) or nothing (false); any other parameter is refused.
pub fn parse_as(query: &str) -> Result<bool, ApiError> {
    let mut document = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            (name, _) if is_query_parameter(name) => {}
            ("as", "json") => document = true,
            ("as", _) => {
                return Err(ApiError::BadRequest(
                    "'as' accepts only 'json' (serve the string as the JSON document it holds)"
                        .into(),
                ))
            }
            _ => {
                return Err(ApiError::BadRequest(
                    "unknown query parameter; only 'as=json' is accepted here".into(),
                ))
            }
        }
    }
    Ok(document)
}

/// Whether `Accept` prefers `application/octet-stream` to `application/json`
/// (higher q; a tie, `*/*` or no `Accept` at all keeps JSON, as before).
pub fn wants_bytes(req: &HttpRequest) -> bool {
    let mut bytes_q = 0.0f32;
    let mut json_q = 0.0f32;
    for value in req.headers().get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        // Most requests name no octet stream: skip parsing them.
        if !value
            .as_bytes()
            .windows(12)
            .any(|w| w.eq_ignore_ascii_case(b"octet-stream"))
        {
            continue;
        }
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .filter(|q| (0.0..=1.0).contains(q))
                .unwrap_or(1.0);
            if media.eq_ignore_ascii_case("application/octet-stream") {
                bytes_q = bytes_q.max(q);
            } else if media.eq_ignore_ascii_case("application/json") {
                json_q = json_q.max(q);
            }
        }
    }
    bytes_q > 0.0 && bytes_q > json_q
}

/// `Vary: Accept`: the single-key route answers JSON or bytes by `Accept`,
/// so a shared cache must keep them apart.
pub fn vary_accept(mut response: HttpResponse) -> HttpResponse {
    response.headers_mut().insert(header::VARY, VARY_ACCEPT);
    response
}

/// A string read from the cache or Redis, answered in `shape`.
pub fn answer_string(
    req: &HttpRequest,
    state: &PublicState,
    key: &str,
    read: &Cached,
    shape: StringShape,
) -> Result<HttpResponse, ApiError> {
    match (read, shape) {
        (Cached::Text { body, etag, .. }, StringShape::Plain) => Ok(vary_accept(respond_tagged(
            req,
            body.clone(),
            etag.clone(),
            state.cache_control.as_ref(),
        ))),
        (Cached::Text { value, .. }, StringShape::Document) => document(req, state, key, value),
        (Cached::Text { value, .. }, StringShape::Bytes) => Ok(raw(req, state, value.inner())),
        (Cached::NotText(bytes), StringShape::Bytes) => Ok(raw(req, state, bytes)),
        (Cached::NotText(_), StringShape::Document) => Err(not_json(key, "it is not UTF-8 text")),
        (Cached::NotText(_), StringShape::Plain) => Err(ApiError::ValueNotUtf8(key.to_owned())),
        (Cached::Missing, _) => Err(ApiError::KeyNotFound(key.to_owned())),
        (Cached::TooLarge, _) => Err(ApiError::ValueTooLarge {
            key: key.to_owned(),
            max: state.store.limits().max_value_bytes,
        }),
        (Cached::Hash(_) | Cached::HashTooLarge { .. }, _) => Err(wrong(key, "hash")),
        (Cached::Members(_), _) => Err(wrong(key, "set")),
        (Cached::Held(kind), _) => Err(wrong(key, kind)),
    }
}

/// Whether the string route can answer from this entry: an entry of member
/// answers may stand for a missing key as well as a set.
pub fn reads_as_string(cached: &Cached) -> bool {
    !matches!(cached, Cached::Members(_))
}

fn raw(req: &HttpRequest, state: &PublicState, bytes: &Bytes) -> HttpResponse {
    let etag = etag_header(bytes);
    vary_accept(respond_as(
        req,
        bytes.clone(),
        etag,
        state.cache_control.as_ref(),
        OCTET_STREAM,
    ))
}

fn not_json(key: &str, why: &str) -> ApiError {
    ApiError::ValueNotJson {
        key: key.to_owned(),
        why: why.to_owned(),
    }
}

/// The document itself, checked to be one JSON text (serde_json's parser,
/// RFC 8259), without its surrounding whitespace. Checked, not built: any
/// nesting depth passes without recursion, and the bytes go out as stored.
pub fn json_document<'v>(key: &str, value: &'v str) -> Result<&'v str, ApiError> {
    serde_json::from_str::<serde::de::IgnoredAny>(value)
        .map_err(|e| not_json(key, &e.to_string()))?;
    Ok(value.trim_matches([' ', '\t', '\n', '\r']))
}

fn document(
    req: &HttpRequest,
    state: &PublicState,
    key: &str,
    value: &str,
) -> Result<HttpResponse, ApiError> {
    let document = json_document(key, value)?;
    let mut body = Vec::with_capacity(document.len() + key.len() + 24);
    body.extend_from_slice(b"{\"key\":");
    serde_json::to_writer(&mut body, key).expect("strings always encode");
    body.extend_from_slice(b",\"value\":");
    body.extend_from_slice(document.as_bytes());
    body.push(b'}');
    Ok(vary_accept(respond(
        req,
        body,
        state.cache_control.as_ref(),
    )))
}

fn wrong(key: &str, kind: &str) -> ApiError {
    ApiError::WrongType {
        key: key.to_owned(),
        holds: kind.to_owned(),
    }
}

/// The 409 for a key Redis said is of another type: `TYPE` says which, and
/// a type no route reads is kept in the cache as such.
pub async fn wrong_type(state: &PublicState, key: &str, ticket: Option<Ticket>) -> ApiError {
    match state.store.type_of(key).await {
        Ok(kind) => {
            if let (Some(cache), Some(ticket)) = (&state.cache, ticket) {
                if !matches!(kind.as_str(), "string" | "hash" | "set" | "none") {
                    cache.fill(key, ticket, Arc::new(Cached::Held(kind.as_str().into())));
                }
            }
            wrong(key, &kind)
        }
        Err(e) => e.into(),
    }
}

/// `/v1/keys/{key}/fields` and `/v1/keys/{key}/members/{member}`.
pub async fn get_shape(
    req: &HttpRequest,
    state: &PublicState,
    key: &str,
    tail: Tail<'_>,
) -> Result<HttpResponse, ApiError> {
    match tail {
        Tail::Fields => {
            let fields = parse_fields(req.query_string(), state)?;
            get_fields(req, state, key, &fields).await
        }
        Tail::Member(segment) => {
            let query = req.query_string().split('&').filter(|p| !p.is_empty());
            if query
                .map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
                .any(|name| !is_query_parameter(name))
            {
                return Err(ApiError::BadRequest(
                    "no query parameter but the consistency ones is accepted here".into(),
                ));
            }
            let member = decode_key(segment, false, state.limits.max_key_bytes)
                .map_err(|e| ApiError::BadKey(e.to_string().replacen("key", "member", 1)))?;
            get_member(req, state, key, &member).await
        }
    }
}

/// The fields of `field=a&field=b…`, each decoded like a key, in request
/// order without repeats; none: the whole hash.
pub fn parse_fields(query: &str, state: &PublicState) -> Result<Vec<String>, ApiError> {
    let mut fields = Vec::new();
    let mut seen = HashSet::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if is_query_parameter(name) {
            continue;
        }
        if name != "field" {
            return Err(ApiError::BadRequest(
                "unknown query parameter; only 'field' is accepted here".into(),
            ));
        }
        let field = decode_key(value, true, state.limits.max_key_bytes)
            .map_err(|e| ApiError::BadRequest(e.to_string().replacen("key", "field", 1)))?;
        if seen.insert(field.clone()) {
            if fields.len() == state.max_hash_fields {
                return Err(ApiError::BadRequest(format!(
                    "more than MAX_HASH_FIELDS ({}) fields",
                    state.max_hash_fields
                )));
            }
            fields.push(field.into_owned());
        }
    }
    Ok(fields)
}

/// `{"a": "1", "b": null}`, in the order given.
struct FieldMap<'a>(&'a [(&'a str, Option<&'a str>)]);

impl Serialize for FieldMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct FieldsBody<'a> {
    key: &'a str,
    fields: FieldMap<'a>,
}

fn fields_body(key: &str, fields: &[(&str, Option<&str>)]) -> Vec<u8> {
    serde_json::to_vec(&FieldsBody {
        key,
        fields: FieldMap(fields),
    })
    .expect("strings always encode")
}

/// A whole hash's answer, fields sorted by name (Redis's own order differs
/// between a small and a large hash, and between replicas: the tag must not).
fn whole_read(key: &str, mut pairs: Vec<(Str, Str)>) -> HashRead {
    pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let borrowed: Vec<(&str, Option<&str>)> =
        pairs.iter().map(|(n, v)| (&**n, Some(&**v))).collect();
    let body = fields_body(key, &borrowed);
    let etag = etag_header(&body);
    HashRead {
        fields: pairs.into_iter().map(|(n, v)| (n, Some(v))).collect(),
        whole: Some((Bytes::from(body), etag)),
    }
}

fn text(key: &str, bytes: Bytes) -> Result<Str, ApiError> {
    Str::from_inner(bytes).map_err(|_| ApiError::ValueNotUtf8(key.to_owned()))
}

fn hash_too_large(key: &str, state: &PublicState, too_many_fields: bool, chosen: bool) -> ApiError {
    let why = if too_many_fields {
        format!(
            "with more than MAX_HASH_FIELDS ({}) fields; ask for chosen fields with ?field=",
            state.max_hash_fields
        )
    } else if chosen {
        format!(
            "whose chosen fields add up to more than MAX_VALUE_BYTES ({} bytes); ask for fewer",
            state.store.limits().max_value_bytes
        )
    } else {
        format!(
            "larger than MAX_VALUE_BYTES ({} bytes); ask for chosen fields with ?field=",
            state.store.limits().max_value_bytes
        )
    };
    ApiError::HashTooLarge {
        key: key.to_owned(),
        why,
    }
}

async fn get_fields(
    req: &HttpRequest,
    state: &PublicState,
    key: &str,
    fields: &[String],
) -> Result<HttpResponse, ApiError> {
    let usable = |cached: &Cached| match cached {
        Cached::Hash(hash) if fields.is_empty() => hash.whole.is_some(),
        Cached::Hash(hash) => fields.iter().all(|f| hash.field(f).is_some()),
        Cached::HashTooLarge { .. } => fields.is_empty(),
        Cached::Members(_) => false,
        _ => true,
    };
    let ticket = match state.cache_for(req).map(|c| c.lookup_for(key, usable)) {
        Some(Ok(cached)) => return answer_fields(req, state, key, fields, &cached),
        Some(Err(ticket)) => ticket,
        None => None,
    };
    let names: Vec<&str> = fields.iter().map(String::as_str).collect();
    let read = match state.store.hash(key, &names, state.max_hash_fields).await? {
        Ok(HashReply::Missing) => Cached::Missing,
        Ok(HashReply::Other(kind)) => {
            return Err(match kind.as_str() {
                "string" | "set" => wrong(key, &kind),
                _ => wrong_type_kept(state, key, ticket, kind),
            })
        }
        Ok(HashReply::Whole(pairs)) => {
            let mut texts = Vec::with_capacity(pairs.len());
            for (name, value) in pairs {
                texts.push((text(key, name)?, text(key, value)?));
            }
            Cached::Hash(whole_read(key, texts))
        }
        Ok(HashReply::Chosen(values)) => {
            let mut known = Vec::with_capacity(values.len());
            for (name, value) in fields.iter().zip(values) {
                known.push((
                    Str::from(name.as_str()),
                    value.map(|v| text(key, v)).transpose()?,
                ));
            }
            known.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Cached::Hash(HashRead {
                fields: known.into(),
                whole: None,
            })
        }
        Err(refusal) if fields.is_empty() => Cached::HashTooLarge {
            too_many_fields: matches!(refusal, HashRefusal::Fields),
        },
        Err(refusal) => {
            return Err(hash_too_large(
                key,
                state,
                matches!(refusal, HashRefusal::Fields),
                true,
            ))
        }
    };
    let read = Arc::new(read);
    if let (Some(cache), Some(ticket)) = (&state.cache, ticket) {
        cache.fill(key, ticket, Arc::clone(&read));
    }
    answer_fields(req, state, key, fields, &read)
}

fn wrong_type_kept(
    state: &PublicState,
    key: &str,
    ticket: Option<Ticket>,
    kind: String,
) -> ApiError {
    if let (Some(cache), Some(ticket)) = (&state.cache, ticket) {
        cache.fill(key, ticket, Arc::new(Cached::Held(kind.as_str().into())));
    }
    wrong(key, &kind)
}

fn answer_fields(
    req: &HttpRequest,
    state: &PublicState,
    key: &str,
    fields: &[String],
    read: &Cached,
) -> Result<HttpResponse, ApiError> {
    match read {
        Cached::Hash(hash) if fields.is_empty() => {
            let (body, etag) = hash
                .whole
                .as_ref()
                .expect("a whole read answers a whole request");
            Ok(respond_tagged(
                req,
                body.clone(),
                etag.clone(),
                state.cache_control.as_ref(),
            ))
        }
        Cached::Hash(hash) => {
            let chosen: Vec<(&str, Option<&str>)> = fields
                .iter()
                .map(|f| (f.as_str(), hash.field(f).flatten().map(|v| &**v)))
                .collect();
            Ok(respond(
                req,
                fields_body(key, &chosen),
                state.cache_control.as_ref(),
            ))
        }
        Cached::HashTooLarge { too_many_fields } => {
            Err(hash_too_large(key, state, *too_many_fields, false))
        }
        Cached::Missing => Err(ApiError::KeyNotFound(key.to_owned())),
        Cached::Text { .. } | Cached::NotText(_) | Cached::TooLarge => Err(wrong(key, "string")),
        Cached::Members(_) => Err(wrong(key, "set")),
        Cached::Held(kind) => Err(wrong(key, kind)),
    }
}

#[derive(Serialize)]
struct MemberBody<'a> {
    key: &'a str,
    member: &'a str,
    is_member: bool,
}

async fn get_member(
    req: &HttpRequest,
    state: &PublicState,
    key: &str,
    member: &str,
) -> Result<HttpResponse, ApiError> {
    let usable = |cached: &Cached| match cached {
        Cached::Members(answers) => answers.get(member).is_some(),
        _ => true,
    };
    let ticket = match state.cache_for(req).map(|c| c.lookup_for(key, usable)) {
        Some(Ok(cached)) => {
            let is_member = match cached.as_ref() {
                Cached::Members(answers) => answers.get(member).unwrap_or_default(),
                // A missing key is an empty set, as Redis answers it.
                Cached::Missing => false,
                Cached::Text { .. } | Cached::NotText(_) | Cached::TooLarge => {
                    return Err(wrong(key, "string"))
                }
                Cached::Hash(_) | Cached::HashTooLarge { .. } => return Err(wrong(key, "hash")),
                Cached::Held(kind) => return Err(wrong(key, kind)),
            };
            return Ok(member_answer(req, state, key, member, is_member));
        }
        Some(Err(ticket)) => ticket,
        None => None,
    };
    let is_member = match state.store.is_member(key, member).await {
        Ok(is_member) => is_member,
        Err(crate::store::StoreError::WrongType(_)) => {
            return Err(wrong_type(state, key, ticket).await)
        }
        Err(e) => return Err(e.into()),
    };
    if let (Some(cache), Some(ticket)) = (&state.cache, ticket) {
        cache.remember_member(key, ticket, member, is_member);
    }
    Ok(member_answer(req, state, key, member, is_member))
}

fn member_answer(
    req: &HttpRequest,
    state: &PublicState,
    key: &str,
    member: &str,
    is_member: bool,
) -> HttpResponse {
    let body = serde_json::to_vec(&MemberBody {
        key,
        member,
        is_member,
    })
    .expect("strings always encode");
    respond(req, body, state.cache_control.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn bytes_for(accept: &[&str]) -> bool {
        let mut req = TestRequest::get();
        for value in accept {
            req = req.append_header((header::ACCEPT, *value));
        }
        wants_bytes(&req.to_http_request())
    }

    #[test]
    fn accept_chooses_bytes_only_when_it_prefers_them() {
        assert!(bytes_for(&["application/octet-stream"]));
        assert!(bytes_for(&["Application/Octet-Stream"]));
        assert!(bytes_for(&[
            "application/json;q=0.5, application/octet-stream"
        ]));
        assert!(bytes_for(&["text/html", "application/octet-stream;q=0.1"]));
        assert!(!bytes_for(&[]));
        assert!(!bytes_for(&["*/*"]));
        assert!(!bytes_for(&["application/json"]));
        assert!(!bytes_for(&["application/octet-stream, application/json"]));
        assert!(!bytes_for(&["application/octet-stream;q=0"]));
        assert!(!bytes_for(&[
            "application/octet-stream;q=0.4, application/json;q=0.9"
        ]));
        assert!(bytes_for(&["application/octet-stream;q=nonsense"]));
    }

    #[test]
    fn as_takes_only_json() {
        assert!(parse_as("as=json").unwrap());
        assert!(parse_as("&as=json&").unwrap());
        assert!(!parse_as("&&").unwrap());
        for bad in ["as=xml", "as", "key=a", "as=json&x=1", "%61s=json"] {
            assert_eq!(parse_as(bad).unwrap_err().code(), "bad_request", "{bad}");
        }
    }

    #[test]
    fn tails_name_the_shape_routes_only() {
        assert!(matches!(Tail::parse("fields"), Some(Tail::Fields)));
        assert!(matches!(Tail::parse("members/m"), Some(Tail::Member("m"))));
        for bad in [
            "",
            "fields/",
            "field",
            "members",
            "members/",
            "members/a/b",
            "x",
        ] {
            assert!(Tail::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn json_documents_are_checked_and_trimmed() {
        assert_eq!(
            json_document("k", " {\"a\": [1, 2]}\n").unwrap(),
            "{\"a\": [1, 2]}"
        );
        assert_eq!(json_document("k", "3").unwrap(), "3");
        assert_eq!(json_document("k", "\"s\"").unwrap(), "\"s\"");
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(json_document("k", &deep).unwrap().len(), 200_000);
        let unclosed = "[".repeat(100_000);
        for bad in [
            "", " ", "{", "{} {}", "NaN", "{'a':1}", "[1,]", "01", &unclosed,
        ] {
            let e = json_document("k", bad).unwrap_err();
            assert_eq!(e.code(), "value_not_json", "{bad:.20}");
        }
    }
}
