//! Per-route request metrics, and one log line for every server-side failure.

use std::time::Instant;

use actix_web::{
    body::BoxBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    Error,
};

use crate::{
    error::{error_chain, ApiError},
    metrics::RouteMetrics,
};

pub async fn observe(
    metrics: RouteMetrics,
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let response = next.call(req).await?;
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
