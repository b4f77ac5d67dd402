//! Freshness on every answer of the key routes, and what a client may ask of it.
//!
//! Every answer (errors too) carries `Data-Age` and `Replication-Position`,
//! copied from the values the `INFO` poll formatted (see [`crate::freshness`]).
//! A request may ask for more, by header or query parameter:
//! - `Max-Staleness: <seconds>`: data no older than that, or 503 `too_stale`
//!   (`age_unknown` when the pod cannot tell), so that a client or a retrying
//!   proxy moves on to a fresher pod;
//! - `Min-Position: <replid>:<offset>` (a writer's token, `scripts/position.sh`):
//!   wait, up to `Max-Wait` and `POSITION_MAX_WAIT_MS`, until this pod's
//!   Redis has applied that position, or 503 `position_not_reached` /
//!   `position_other_history`. Such a read skips the value cache, which may
//!   still hold what the write replaced for the push delay.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix_web::{
    body::BoxBody,
    dev::{ServiceRequest, ServiceResponse},
    http::{header::HeaderMap, Method},
    middleware::Next,
    web, Error, HttpMessage, HttpRequest,
};

use super::PublicState;
use crate::{
    error::ApiError,
    freshness::{
        Freshness, Position, Verdict, DATA_AGE, MAX_STALENESS, MAX_WAIT, MIN_POSITION,
        QUERY_PARAMETERS, REPLICATION_POSITION,
    },
    metrics::{ConsistencyMetrics, REFUSAL_REASONS},
};

/// What a request asked of the data's freshness.
#[derive(Debug, Default, PartialEq)]
pub struct Ask {
    pub max_staleness: Option<f64>,
    pub min_position: Option<Position>,
    pub max_wait: Option<Duration>,
}

/// Marks a read that must not be answered from the value cache.
#[derive(Debug, Clone, Copy)]
pub struct SkipCache;

/// Whether the value cache must be skipped for this request.
pub fn skips_cache(req: &HttpRequest) -> bool {
    req.extensions().contains::<SkipCache>()
}

/// Whether a query parameter is one of ours (the batch route accepts only `key` besides).
pub fn is_query_parameter(name: &str) -> bool {
    QUERY_PARAMETERS.contains(&name)
}

/// What the key routes' middleware (see [`super::observe`]) holds.
pub struct Shared {
    pub fresh: Arc<Freshness>,
    pub metrics: ConsistencyMetrics,
}

/// The freshness part of the key routes' middleware.
///
/// The common request asks for nothing and only gets the headers: the
/// waiting and checking live in their own boxed future, so that this one
/// stays the size of a few pointers (a request's futures are allocated and
/// moved whole, and the wait's timers and locks would make it kilobytes).
pub async fn consistency(
    shared: &Shared,
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    // Another method is a 405 whatever it asks: not a 400 for a malformed
    // Max-Staleness, nor a 503 after waiting for a Min-Position.
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Ok(decorated(&shared.fresh, next.call(req).await?));
    }
    match asked(req.headers(), req.query_string()) {
        Ok(None) => Ok(decorated(&shared.fresh, next.call(req).await?)),
        Ok(Some(ask)) => Box::pin(answer_asked(shared, ask, req, next)).await,
        Err(e) => Ok(decorated(&shared.fresh, req.error_response(e))),
    }
}

async fn answer_asked(
    shared: &Shared,
    ask: Ask,
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let Shared { fresh, metrics } = shared;
    if let Err(refusal) = meet(fresh, metrics, &ask, &req).await {
        return Ok(decorated(fresh, req.error_response(refusal)));
    }
    if ask.min_position.is_some() {
        req.extensions_mut().insert(SkipCache);
    }
    Ok(decorated(fresh, next.call(req).await?))
}

fn decorated(
    fresh: &Freshness,
    mut response: ServiceResponse<BoxBody>,
) -> ServiceResponse<BoxBody> {
    decorate(fresh, response.headers_mut());
    response
}

/// The two response headers, as the last poll formatted them: no formatting here.
pub fn decorate(fresh: &Freshness, headers: &mut HeaderMap) {
    // `append`: nothing else sets these, and it skips `insert`'s return of
    // the values replaced (a tenth of what the two headers cost a read).
    let snapshot = fresh.snapshot();
    if let Some(age) = &snapshot.age_header {
        headers.append(DATA_AGE, age.clone());
    }
    if let Some(position) = &snapshot.position_header {
        headers.append(REPLICATION_POSITION, position.clone());
    }
}

/// Parses what the request asked; `None` when nothing (the common case,
/// decided with one look at each header name and, for a query, a substring
/// search).
pub fn asked(headers: &HeaderMap, query: &str) -> Result<Option<Ask>, ApiError> {
    // One pass over the request's few header names, comparing lengths
    // first, costs less than three hashed lookups: most requests stop here.
    let none_by_header = headers.keys().all(|name| {
        let name = name.as_str();
        !QUERY_PARAMETERS
            .iter()
            .any(|p| p.len() == name.len() && *p == name)
    });
    if none_by_header && !QUERY_PARAMETERS.iter().any(|p| query.contains(p)) {
        return Ok(None);
    }
    let from_header = |name| {
        headers
            .get(name)
            .map(|v| v.to_str().map(str::to_owned).map_err(|_| ()))
    };
    let mut raw: [Option<Result<String, ()>>; 3] = [
        from_header(&MAX_STALENESS),
        from_header(&MIN_POSITION),
        from_header(&MAX_WAIT),
    ];
    if !query.is_empty() && QUERY_PARAMETERS.iter().any(|p| query.contains(p)) {
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(i) = QUERY_PARAMETERS.iter().position(|p| *p == name) else {
                continue;
            };
            if raw[i].is_some() {
                return Err(ApiError::BadRequest(format!(
                    "{name} given more than once (as a header or query parameter)"
                )));
            }
            let value = super::decode_key(value, true, 256)
                .map(|v| v.into_owned())
                .map_err(|_| ());
            raw[i] = Some(value);
        }
    }
    if raw.iter().all(Option::is_none) {
        return Ok(None);
    }
    let [staleness, position, wait] = raw;
    let text = |value: Result<String, ()>, name: &str| {
        value.map_err(|()| ApiError::BadRequest(format!("{name}: not valid text")))
    };
    let seconds = |value: Option<Result<String, ()>>, name: &str| {
        value
            .map(|v| {
                let v = text(v, name)?;
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 1e9)
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "{name}: expected seconds, a number such as 2 or 0.5, got {v:?}"
                        ))
                    })
            })
            .transpose()
    };
    let max_staleness = seconds(staleness, "max-staleness")?;
    let max_wait = seconds(wait, "max-wait")?.map(Duration::from_secs_f64);
    let min_position = position
        .map(|v| {
            Position::parse(&text(v, "min-position")?)
                .map_err(|e| ApiError::BadRequest(format!("min-position: {e}")))
        })
        .transpose()?;
    if max_wait.is_some() && min_position.is_none() {
        return Err(ApiError::BadRequest(
            "max-wait bounds the wait for min-position; give min-position too".into(),
        ));
    }
    Ok(Some(Ask {
        max_staleness,
        min_position,
        max_wait,
    }))
}

/// Waits for the position, then checks the age: a wait can only make the data fresher.
async fn meet(
    fresh: &Freshness,
    metrics: &ConsistencyMetrics,
    ask: &Ask,
    req: &ServiceRequest,
) -> Result<(), ApiError> {
    if let Some(wanted) = &ask.min_position {
        let bound = ask
            .max_wait
            .map_or(fresh.max_wait, |w| w.min(fresh.max_wait));
        reach(fresh, metrics, wanted, bound, req).await?;
    }
    if let Some(max) = ask.max_staleness {
        match fresh.snapshot().age_bound(Instant::now()) {
            None => {
                return Err(refusal(
                    metrics,
                    1,
                    "the age of this pod's data is unknown (no heartbeat read); try another pod"
                        .to_owned(),
                ))
            }
            Some(age) if age > max => {
                return Err(refusal(
                    metrics,
                    0,
                    format!(
                        "this pod's data is up to {age:.3} s old, more than max-staleness ({max} s); try another pod"
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Until the snapshot shows `wanted` reached, or `bound` has passed.
async fn reach(
    fresh: &Freshness,
    metrics: &ConsistencyMetrics,
    wanted: &Position,
    bound: Duration,
    req: &ServiceRequest,
) -> Result<(), ApiError> {
    let started = Instant::now();
    let deadline = started + bound;
    let mut waited = false;
    let outcome = loop {
        let snapshot = fresh.snapshot();
        let seen = snapshot
            .history
            .as_ref()
            .map(|(history, seen)| (history.check(wanted), *seen, history.at.clone()));
        match &seen {
            // Only from an INFO sent since the request came: a poll from
            // before may show the write in a history Redis has since left
            // (a master restarted without its data, a failover), and the
            // read would answer from data that no longer holds it.
            Some((Verdict::Reached, seen, _)) if *seen >= started => break Ok(()),
            // Told by the master itself since the request came: final.
            Some((Verdict::Never, seen, at)) if *seen >= started => {
                break Err(not_reached(metrics, wanted, Some(at), bound, true))
            }
            _ => {}
        }
        if waited && Instant::now() >= deadline {
            let at = seen.as_ref().map(|(_, _, at)| at);
            let other = at.is_some_and(|at| at.replid != wanted.replid);
            break Err(not_reached(metrics, wanted, at, bound, other));
        }
        // The first INFO is asked whatever the bound: without it, nothing
        // since the request decides.
        let first = !waited;
        waited = true;
        let Some(state) = req.app_data::<web::Data<PublicState>>() else {
            break Err(not_reached(metrics, wanted, None, bound, false));
        };
        tokio::select! {
            () = fresh.refresh(&state.store) => {}
            () = tokio::time::sleep_until(deadline.into()), if !first => {}
        }
    };
    if waited {
        metrics.waits.inc();
        metrics
            .wait_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    outcome
}

fn not_reached(
    metrics: &ConsistencyMetrics,
    wanted: &Position,
    at: Option<&crate::freshness::Position>,
    bound: Duration,
    other_history: bool,
) -> ApiError {
    let at = at.map_or_else(
        || "unknown (redis did not answer)".to_owned(),
        |a| a.to_string(),
    );
    if other_history {
        refusal(
            metrics,
            3,
            format!(
                "min-position {wanted} is not in the replication history this pod's redis follows (it is at {at}): a master restart or failover lost it, or this replica has not followed the new master yet; try another pod, or read from the master"
            ),
        )
    } else {
        refusal(
            metrics,
            2,
            format!(
                "this pod's redis has not reached min-position {wanted} within {:.3} s: it is at {at}; try another pod",
                bound.as_secs_f64()
            ),
        )
    }
}

fn refusal(metrics: &ConsistencyMetrics, reason: usize, message: String) -> ApiError {
    metrics.refusals[reason].inc();
    ApiError::NotFresh {
        code: REFUSAL_REASONS[reason],
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                actix_web::http::header::HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn nothing_asked_is_none() {
        assert!(asked(&HeaderMap::new(), "").unwrap().is_none());
        assert!(asked(&HeaderMap::new(), "key=a&key=max").unwrap().is_none());
    }

    #[test]
    fn headers_and_query_parameters_say_the_same() {
        let by_header = asked(
            &headers(&[
                ("max-staleness", "2.5"),
                ("min-position", &format!("{A}:9")),
            ]),
            "",
        )
        .unwrap()
        .unwrap();
        let by_query = asked(
            &HeaderMap::new(),
            &format!("key=k&max-staleness=2.5&min-position={A}%3A9"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(by_header, by_query);
        assert_eq!(by_header.max_staleness, Some(2.5));
        assert_eq!(by_header.min_position.unwrap().offset, 9);
    }

    #[test]
    fn bad_values_are_400s_that_name_the_parameter() {
        for (h, q) in [
            (headers(&[("max-staleness", "-1")]), ""),
            (headers(&[("max-staleness", "soon")]), ""),
            (headers(&[("max-staleness", "NaN")]), ""),
            (HeaderMap::new(), "max-staleness=inf"),
            (headers(&[("min-position", "abc")]), ""),
            (HeaderMap::new(), "max-wait=1"),
            (headers(&[("max-staleness", "1")]), "max-staleness=2"),
        ] {
            let err = asked(&h, q).unwrap_err();
            assert_eq!(err.code(), "bad_request", "{h:?} {q}");
            assert!(err.to_string().contains("max-") || err.to_string().contains("min-"));
        }
    }
}
