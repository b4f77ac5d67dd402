//! The admin listener: probes and metrics, apart from public traffic so that a
//! saturated public port cannot fail the probes, and metrics are not public.

use actix_web::{http::header::ContentType, web, HttpResponse};
use serde_json::json;

use std::sync::Arc;

use crate::{cache::ValueCache, metrics::Metrics, replica::Readiness};

pub struct AdminState {
    pub readiness: Readiness,
    pub metrics: Metrics,
    pub cache: Option<Arc<ValueCache>>,
}

pub fn configure(cfg: &mut web::ServiceConfig, state: AdminState) {
    cfg.app_data(web::Data::new(state))
        .route("/livez", web::get().to(livez))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .default_service(web::to(|| async {
            HttpResponse::NotFound().json(json!({
                "error": "not_found",
                "message": "admin routes are /livez, /readyz and /metrics"
            }))
        }));
}

/// Alive while the process can answer: Redis trouble is readiness's business,
/// and restarting the API would not fix it.
async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "alive" }))
}

async fn readyz(state: web::Data<AdminState>) -> HttpResponse {
    match state.readiness.current() {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Err(why) => HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "not_ready", "reason": why.reason() })),
    }
}

async fn metrics(state: web::Data<AdminState>) -> HttpResponse {
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
