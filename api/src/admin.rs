//! The admin listener: probes, metrics and the HTTP contract, apart from
//! public traffic so that a saturated public port cannot fail the probes, and
//! metrics are not public.

use actix_web::{http::header::ContentType, web, HttpResponse};
use serde_json::json;

use std::sync::Arc;

use crate::{cache::ValueCache, error::ApiError, metrics::Metrics, replica::Readiness};

pub struct AdminState {
    pub readiness: Readiness,
    pub metrics: Metrics,
    pub cache: Option<Arc<ValueCache>>,
}

/// The OpenAPI 3.1 document of both listeners, compiled in so that what is
/// served is the file in the repository (api/tests/it/contract.rs keeps the
/// file equal to the code).
pub const OPENAPI: &str = include_str!("../openapi.yaml");

type Handler = fn(&AdminState) -> HttpResponse;

/// Every admin route, GET and HEAD: the one table they are registered from,
/// which the 404 message and the contract test read too.
pub const ROUTES: [(&str, Handler); 4] = [
    ("/livez", livez),
    ("/readyz", readyz),
    ("/metrics", metrics),
    ("/openapi.yaml", openapi),
];

pub fn configure(cfg: &mut web::ServiceConfig, state: AdminState) {
    cfg.app_data(web::Data::new(state));
    for (path, handler) in ROUTES {
        let answer = move |state: web::Data<AdminState>| async move { handler(&state) };
        cfg.service(
            web::resource(path)
                .route(web::get().to(answer))
                .route(web::head().to(answer))
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(ApiError::MethodNotAllowed {
                        allow: ApiError::GET_HEAD,
                    })
                })),
        );
    }
    let paths: Vec<&str> = ROUTES.iter().map(|(path, _)| *path).collect();
    let message = format!("admin routes are {}", paths.join(", "));
    cfg.default_service(web::to(move || {
        let message = message.clone();
        async move { HttpResponse::NotFound().json(json!({ "error": "not_found", "message": message })) }
    }));
}

/// Alive while the process can answer: Redis trouble is readiness's business,
/// and restarting the API would not fix it.
fn livez(_: &AdminState) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "alive" }))
}

fn readyz(state: &AdminState) -> HttpResponse {
    match state.readiness.current() {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Err(why) => HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "not_ready", "reason": why.reason() })),
    }
}

fn metrics(state: &AdminState) -> HttpResponse {
    if let Some(cache) = &state.cache {
        cache.publish();
    }
    HttpResponse::Ok()
        .content_type(ContentType(
            "text/plain; version=0.0.4; charset=utf-8"
                .parse()
                .expect("valid mime"),
        ))
        .body(state.metrics.render())
}

fn openapi(_: &AdminState) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType(
            "application/yaml; charset=utf-8"
                .parse()
                .expect("valid mime"),
        ))
        .body(OPENAPI)
}
