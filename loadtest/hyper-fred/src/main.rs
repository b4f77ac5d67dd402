//! The minimal hyper 1 + fred 10 server make bench compares the API with: one
//! current-thread runtime, one fred client (its commands pipelined on one
//! connection, as fred does by default), `GET /v1/keys/{key}` answering
//! `{"key":…,"value":…}` with a GET per request. No cache, no metrics, no
//! limits, no request ids: a baseline, not a product.
//!
//!   hyper-fred-baseline LISTEN_ADDR REDIS_URL

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use fred::prelude::*;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn answer(
    redis: Client,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(key) = req.uri().path().strip_prefix("/v1/keys/") else {
        return Ok(status(StatusCode::NOT_FOUND));
    };
    let value: Option<String> = match redis.get(key).await {
        Ok(value) => value,
        Err(_) => return Ok(status(StatusCode::SERVICE_UNAVAILABLE)),
    };
    let Some(value) = value else {
        return Ok(status(StatusCode::NOT_FOUND));
    };
    let body = serde_json::to_vec(&serde_json::json!({ "key": key, "value": value }))
        .expect("strings always encode");
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response"))
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(url)) = (args.next(), args.next()) else {
        return Err("usage: hyper-fred-baseline LISTEN_ADDR REDIS_URL".into());
    };
    let addr: SocketAddr = listen.parse()?;
    let redis = Builder::from_config(Config::from_url(&url)?)
        .with_connection_config(|conn| conn.tcp.nodelay = Some(true))
        .build()?;
    redis.init().await?;
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let redis = redis.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(redis.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
