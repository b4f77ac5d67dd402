//! The public route table, shared by the server and the tests.

mod caching;
pub mod consistency;
mod keys;
mod observe;
mod request_id;
mod shapes;
mod watch;

use actix_web::{
    body::BoxBody,
    dev::ServiceRequest,
    http::header::HeaderValue,
    middleware::{from_fn, Next},
    web, HttpResponse,
};

pub use caching::{etag_of, if_none_match_matches};
pub use keys::{decode_key, parse_batch_query, parse_batch_request, BatchRequest};
pub use request_id::request_id;

use std::{rc::Rc, sync::Arc};

use crate::{
    cache::ValueCache, error::ApiError, freshness::Freshness, metrics::Metrics, store::Store,
    watch::WatchHub,
};

/// Input limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_batch_keys: usize,
}

/// What the public handlers share within one worker.
pub struct PublicState {
    pub store: Store,
    pub limits: Limits,
    /// `CACHE_CONTROL`, sent with every 200 and 304; `None`: no header.
    pub cache_control: Option<HeaderValue>,
    /// The value cache shared by every worker; `None` when `CACHE_MAX_BYTES` is 0.
    pub cache: Option<Arc<ValueCache>>,
    /// The data age and replication position every answer carries.
    pub freshness: Arc<Freshness>,
    /// The change streams' hub; `None` when `WATCH_MAX_WATCHERS` is 0.
    pub watch: Option<Arc<WatchHub>>,
    /// `MAX_HASH_FIELDS`: the most fields a whole hash, or a request, may have.
    pub max_hash_fields: usize,
}

impl PublicState {
    /// The value cache, unless the request must not be answered from it
    /// (a `Min-Position` read: see `consistency`).
    pub fn cache_for(&self, req: &actix_web::HttpRequest) -> Option<&ValueCache> {
        self.cache
            .as_deref()
            .filter(|_| !consistency::skips_cache(req))
    }
}

/// Registers `/v1/keys/{key}` (and its `/fields` and `/members/{member}`),
/// `/v1/keys` (GET and HEAD) and `/v1/watch` (GET), with request metrics on each.
pub fn configure(cfg: &mut web::ServiceConfig, state: PublicState, metrics: &Metrics) {
    // One middleware per route for the metrics and, on the key routes, the
    // freshness (a from_fn layer costs a boxed future and a dynamic call
    // per request: two of them cost the freshness feature 5 % of a read).
    // Rc: configure runs once per worker, so a request pays one
    // non-atomic count for its route's handles.
    let consistency = || consistency::Shared {
        fresh: Arc::clone(&state.freshness),
        metrics: metrics.consistency.clone(),
    };
    let route = |name, consistency| {
        Rc::new(observe::Route {
            metrics: metrics.route(name),
            consistency,
        })
    };
    let observed = |route: Rc<observe::Route>| {
        from_fn(move |req: ServiceRequest, next: Next<BoxBody>| {
            observe::observe(Rc::clone(&route), req, next)
        })
    };
    // The scope serves a string, a hash's fields and set membership, each
    // counted under its own route (see shape_route).
    let one = [
        route(keys::ONE_KEY_ROUTE, Some(consistency())),
        route(shapes::FIELDS_ROUTE, Some(consistency())),
        route(shapes::MEMBERS_ROUTE, Some(consistency())),
    ];
    let batch = observed(route("/v1/keys", Some(consistency())));
    let watch = observed(route(watch::ROUTE, None));
    cfg.app_data(web::Data::new(state))
        .service(
            web::resource("/v1/keys")
                .wrap(batch)
                .route(web::get().to(keys::get_batch))
                .route(web::head().to(keys::get_batch))
                .default_service(web::to(method_not_allowed)),
        )
        // `/v1/keys/{key}` as a prefix: actix matches a pattern with a dynamic
        // segment by regex, which took a tenth of the CPU of a cached read.
        // The handler takes the key from the raw path anyway (see keys).
        .service(
            web::scope(keys::ONE_KEY_PREFIX)
                .wrap(from_fn(move |req: ServiceRequest, next: Next<BoxBody>| {
                    let route = Rc::clone(&one[shape_route(req.path())]);
                    observe::observe(route, req, next)
                }))
                .default_service(web::to(keys::get_one)),
        )
        // Last: a read is matched against each service in turn, and the
        // key routes are the ones that must be cheap.
        .service(
            web::resource(watch::ROUTE)
                .wrap(watch)
                .route(web::get().to(watch::watch))
                // A stream has no HEAD: the headers would promise one.
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow: "GET" })
                })),
        )
        .default_service(web::to(route_not_found));
}

/// Which route of the `/v1/keys/` scope a path is, for metrics: 0 a string,
/// 1 a hash's fields, 2 a membership (anything else counts as a string's).
fn shape_route(path: &str) -> usize {
    let rest = path
        .get(keys::ONE_KEY_PREFIX.len() + 1..)
        .unwrap_or_default();
    match rest.find('/').map(|slash| &rest[slash..]) {
        Some("/fields") => 1,
        Some(tail) if tail.starts_with("/members/") => 2,
        _ => 0,
    }
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed {
        allow: ApiError::GET_HEAD,
    })
}

async fn route_not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound)
}
