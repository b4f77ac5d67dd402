//! `GET /v1/watch?key=…`: the change stream of some keys, as Server-Sent
//! Events; the hub behind it is [`crate::watch`].

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use actix_web::{
    body::{BodySize, MessageBody},
    http::header::{CACHE_CONTROL, CONTENT_TYPE},
    web, HttpRequest, HttpResponse,
};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{keys::decode_key, PublicState};
use crate::error::ApiError;

pub const ROUTE: &str = "/v1/watch";

/// Frames written ahead of a slow client; past this its watcher waits, its
/// notes queue in the hub, and it is resynchronised once it catches up.
const FRAMES_AHEAD: usize = 16;

pub async fn watch(
    req: HttpRequest,
    state: web::Data<PublicState>,
) -> Result<HttpResponse, ApiError> {
    let Some(hub) = &state.watch else {
        return Err(ApiError::RouteNotFound);
    };
    let (keys, from_query) = parse_watch_query(
        req.query_string(),
        hub.settings().max_keys,
        state.limits.max_key_bytes,
    )?;
    // The header is what EventSource sends when it reconnects; the parameter
    // is for a client that starts again with an id it kept.
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(from_query);
    let watcher = hub.register(keys, last_event_id.as_deref())?;
    let (frames, body) = mpsc::channel(FRAMES_AHEAD);
    actix_web::rt::spawn(watcher.run(frames));
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/event-stream"))
        .insert_header((CACHE_CONTROL, "no-cache"))
        // nginx (and ingress-nginx) would otherwise buffer the stream.
        .insert_header(("x-accel-buffering", "no"))
        .body(EventBody(body)))
}

/// The keys of `key=a&key=b…` (sorted, each once) and `last-event-id`, if given.
pub fn parse_watch_query(
    query: &str,
    max_keys: usize,
    max_key_bytes: usize,
) -> Result<(Vec<Arc<str>>, Option<String>), ApiError> {
    let mut keys: Vec<Arc<str>> = Vec::new();
    let mut last_event_id = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "key" => {
                if keys.len() == max_keys {
                    return Err(ApiError::BadRequest(format!(
                        "more than WATCH_MAX_KEYS ({max_keys}) keys"
                    )));
                }
                keys.push(Arc::from(decode_key(value, true, max_key_bytes)?.as_ref()));
            }
            "last-event-id" => {
                let id = decode_key(value, true, 256).map_err(|_| {
                    ApiError::BadRequest("last-event-id is not a valid event id".into())
                })?;
                last_event_id = Some(id.into_owned());
            }
            _ => {
                return Err(ApiError::BadRequest(
                    "unknown query parameter; only 'key' and 'last-event-id' are accepted".into(),
                ))
            }
        }
    }
    if keys.is_empty() {
        return Err(ApiError::BadRequest(
            "no keys: give one or more 'key' query parameters, as in /v1/watch?key=a&key=b".into(),
        ));
    }
    keys.sort();
    keys.dedup();
    Ok((keys, last_event_id))
}

/// The response body: frames as the watcher writes them, until it ends.
struct EventBody(mpsc::Receiver<Bytes>);

impl MessageBody for EventBody {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.get_mut().0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_once_and_bounded() {
        let (keys, id) = parse_watch_query("key=b&key=a&key=b&last-event-id=x-1-2", 3, 8).unwrap();
        assert_eq!(keys, vec![Arc::from("a"), Arc::from("b")]);
        assert_eq!(id.as_deref(), Some("x-1-2"));
        for bad in ["", "key=a&key=b&key=c&key=d", "key=a&other=1", "key=%zz"] {
            let e = parse_watch_query(bad, 3, 8).unwrap_err();
            assert!(matches!(e.code(), "bad_request" | "bad_key"), "{bad}");
        }
    }
}
