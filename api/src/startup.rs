//! Builds the two servers from [`Settings`], runs them, and drains them on shutdown.

use std::{future::Future, io, net::SocketAddr, net::TcpListener, sync::Arc, time::Duration};

use actix_web::{
    body::MessageBody,
    dev::{Server, ServiceRequest, ServiceResponse},
    http::{header::HeaderValue, ConnectionType},
    middleware::{from_fn, Next},
    App, Error, HttpServer,
};
use tokio::task::JoinHandle;

use crate::{
    admin::{self, AdminState},
    admission::Admission,
    cache::{self, ValueCache},
    config::{ConfigError, Settings},
    metrics::Metrics,
    replica::{self, MonitorSettings, Readiness},
    routes::{self, Limits, PublicState},
    store::StoreConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{variable}: cannot listen on {addr}: {source}")]
    Bind {
        variable: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
}

/// A built application: listeners bound, Redis connecting, not yet serving.
pub struct Application {
    public: Server,
    admin: Server,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    readiness: Readiness,
    monitor: JoinHandle<()>,
    tracking: Option<JoinHandle<()>>,
    shutdown_delay: Duration,
    shutdown_grace: Duration,
}

impl Application {
    /// Binds both listeners (port 0 picks a free port) and starts the replica monitor.
    /// Must be called inside a tokio runtime.
    pub fn build(settings: &Settings) -> Result<Self, StartupError> {
        let metrics = Metrics::new();
        let store_config = StoreConfig::new(settings, metrics.clone())?;
        let readiness = Readiness::default();
        let value_cache = (settings.cache_max_bytes > 0).then(|| {
            Arc::new(ValueCache::new(
                settings.cache_max_bytes,
                settings.cache_max_value_bytes,
                &settings.key_prefix,
                metrics.cache.clone(),
            ))
        });

        let public_listener = bind("LISTEN_ADDR", settings.listen_addr)?;
        let admin_listener = bind("ADMIN_ADDR", settings.admin_addr)?;
        let public_addr = local_addr("LISTEN_ADDR", settings.listen_addr, &public_listener)?;
        let admin_addr = local_addr("ADMIN_ADDR", settings.admin_addr, &admin_listener)?;

        let limits = Limits {
            max_key_bytes: settings.max_key_bytes,
            max_batch_keys: settings.max_batch_keys,
        };
        let cache_control = settings
            .cache_control
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| ConfigError::new("CACHE_CONTROL", "not a valid header value"))?;
        let grace_seconds = settings.shutdown_grace.as_secs();
        let public = {
            let admission = Admission::new(settings.admission, metrics.admission.clone());
            let metrics = metrics.clone();
            let store_config = store_config.clone();
            let readiness = readiness.clone();
            let value_cache = value_cache.clone();
            HttpServer::new(move || {
                // Runs once per worker, on the worker's thread: see StoreConfig::connect.
                let state = PublicState {
                    store: store_config.connect(),
                    limits,
                    cache_control: cache_control.clone(),
                    cache: value_cache.clone(),
                };
                let readiness = readiness.clone();
                App::new()
                    .wrap(from_fn(move |req, next| {
                        close_while_draining(readiness.clone(), req, next)
                    }))
                    .wrap(from_fn(routes::request_id))
                    // Outermost, so that a refusal costs as little as possible.
                    .wrap(admission.clone())
                    .configure(|cfg| routes::configure(cfg, state, &metrics))
            })
            .workers(settings.workers)
            .shutdown_timeout(grace_seconds)
            .disable_signals()
            .listen(public_listener)
            .map_err(|source| bind_error("LISTEN_ADDR", public_addr, source))?
            .run()
        };
        let admin = {
            let readiness = readiness.clone();
            let metrics = metrics.clone();
            let value_cache = value_cache.clone();
            HttpServer::new(move || {
                let state = AdminState {
                    readiness: readiness.clone(),
                    metrics: metrics.clone(),
                    cache: value_cache.clone(),
                };
                App::new()
                    .wrap(from_fn(routes::request_id))
                    .configure(|cfg| admin::configure(cfg, state))
            })
            .workers(1)
            .shutdown_timeout(grace_seconds)
            .disable_signals()
            .listen(admin_listener)
            .map_err(|source| bind_error("ADMIN_ADDR", admin_addr, source))?
            .run()
        };
        let monitor = tokio::spawn(replica::monitor(
            store_config.connect_with(1),
            readiness.clone(),
            metrics,
            MonitorSettings {
                every: settings.replica_poll,
                max_link_down: settings.ready_max_link_down,
                heartbeat_key: settings.heartbeat_key.clone(),
            },
            value_cache.clone(),
            store_config.worker_pools(),
        ));
        let tracking = value_cache.map(|value_cache| {
            tokio::spawn(cache::tracking::run(
                store_config.clone(),
                value_cache,
                settings.key_prefix.clone(),
            ))
        });
        Ok(Self {
            public,
            admin,
            public_addr,
            admin_addr,
            readiness,
            monitor,
            tracking,
            shutdown_delay: settings.shutdown_delay,
            shutdown_grace: settings.shutdown_grace,
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until `shutdown` completes, then drains: readiness fails at once,
    /// the public listener keeps serving for `SHUTDOWN_DELAY_SECONDS`, then
    /// stops accepting, and requests in flight get up to
    /// `SHUTDOWN_GRACE_SECONDS` to finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let public_handle = self.public.handle();
        let admin_handle = self.admin.handle();
        let mut public = tokio::spawn(self.public);
        let admin = tokio::spawn(self.admin);
        tokio::select! {
            () = shutdown => {}
            finished = &mut public => {
                stop_background(&self.monitor, self.tracking.as_ref());
                return finished.map_err(io::Error::other)?;
            }
        }
        tracing::info!(
            delay_seconds = self.shutdown_delay.as_secs(),
            grace_seconds = self.shutdown_grace.as_secs(),
            "shutting down"
        );
        self.readiness.shut_down();
        // Endpoints, kube-proxy rules and ingresses learn of the unready pod
        // seconds after SIGTERM and keep sending new connections meanwhile:
        // closing the listener now would refuse them.
        tokio::select! {
            () = tokio::time::sleep(self.shutdown_delay) => {}
            finished = &mut public => {
                stop_background(&self.monitor, self.tracking.as_ref());
                return finished.map_err(io::Error::other)?;
            }
        }
        tracing::info!("no longer accepting connections; draining");
        public_handle.stop(true).await;
        admin_handle.stop(true).await;
        stop_background(&self.monitor, self.tracking.as_ref());
        public.await.map_err(io::Error::other)??;
        admin.await.map_err(io::Error::other)??;
        tracing::info!("stopped");
        Ok(())
    }
}

fn stop_background(monitor: &JoinHandle<()>, tracking: Option<&JoinHandle<()>>) {
    monitor.abort();
    if let Some(tracking) = tracking {
        tracking.abort();
    }
}

/// While draining, every answer asks the client to close its connection, so
/// that keep-alive clients reconnect (to a pod that is still in rotation)
/// before the listener goes away.
async fn close_while_draining<B: MessageBody>(
    readiness: Readiness,
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, Error> {
    let mut response = next.call(req).await?;
    if readiness.is_shutting_down() {
        response
            .response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    Ok(response)
}

fn bind(variable: &'static str, addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr).map_err(|source| bind_error(variable, addr, source))
}

/// The address the listener got (the port, when 0 was configured); an error names the configured one.
fn local_addr(
    variable: &'static str,
    configured: SocketAddr,
    listener: &TcpListener,
) -> Result<SocketAddr, StartupError> {
    listener
        .local_addr()
        .map_err(|source| bind_error(variable, configured, source))
}

fn bind_error(variable: &'static str, addr: SocketAddr, source: io::Error) -> StartupError {
    StartupError::Bind {
        variable,
        addr,
        source,
    }
}

/// Completes on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
