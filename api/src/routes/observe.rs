//! Per-route request metrics, one log line for every server-side failure,
//! and on the key routes the freshness (see [`super::consistency`]), in one
//! middleware: a layer more cost a read 5 %.

use std::{rc::Rc, time::Instant};

use actix_web::{
    body::BoxBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    Error,
};

use super::consistency;
use crate::{
    error::{error_chain, ApiError},
    metrics::RouteMetrics,
};

/// What one route's middleware holds, within one worker.
pub struct Route {
    pub metrics: RouteMetrics,
    /// The key routes' freshness headers and checks; `None` on the others.
    pub consistency: Option<consistency::Shared>,
}

pub async fn observe(
    route: Rc<Route>,
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    // Inside the metrics: a freshness refusal counts as the route's 503.
    let response = match &route.consistency {
        Some(shared) => consistency::consistency(shared, req, next).await?,
        None => next.call(req).await?,
    };
    let metrics = &route.metrics;
    let status = response.status();
    metrics.observe(status.as_u16(), started.elapsed().as_secs_f64());
    // A freshness refusal is the pod saying what the client asked it to.
    if status.is_server_error() && !refused_for_freshness(&response) {
        let cause = response
            .response()
            .error()
            .map(|e| match e.as_error::<ApiError>() {
                Some(api) => error_chain(api),
                None => e.to_string(),
            })
            .unwrap_or_default();
        // The request's span (see request_id) carries its id.
        tracing::warn!(
            route = metrics.name(),
            status = status.as_u16(),
            error = %cause,
            "request failed"
        );
    }
    Ok(response)
}

fn refused_for_freshness(response: &ServiceResponse<BoxBody>) -> bool {
    response
        .response()
        .error()
        .and_then(|e| e.as_error::<ApiError>())
        .is_some_and(|e| matches!(e, ApiError::NotFresh { .. }))
}
