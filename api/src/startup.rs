//! Builds the two servers from [`Settings`], runs them, and drains them on shutdown.

use std::{future::Future, io, net::SocketAddr, net::TcpListener, sync::Arc, time::Duration};

use actix_web::{
    body::MessageBody,
    dev::{Server, ServiceRequest, ServiceResponse},
    http::{header::HeaderValue, ConnectionType},
    middleware::{from_fn, Next},
    App, Error, HttpServer,
};
use tokio::task::{JoinError, JoinHandle};

use crate::{
    admin::{self, AdminState},
    admission::Admission,
    cache::{self, ValueCache},
    config::{ConfigError, Settings},
    error::task_end,
    fault,
    freshness::Freshness,
    metrics::Metrics,
    replica::{self, MonitorSettings, Readiness},
    routes::{self, Limits, PublicState},
    store::StoreConfig,
    watch::{self, WatchHub},
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
    cache: Option<Arc<ValueCache>>,
    watch: Option<Arc<WatchHub>>,
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
        let watch_hub = (settings.watch.max_watchers > 0).then(|| {
            Arc::new(WatchHub::new(
                settings.watch,
                &settings.key_prefix,
                metrics.watch.clone(),
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
        let freshness = Arc::new(Freshness::new(settings.position_max_wait));
        let grace_seconds = settings.shutdown_grace.as_secs();
        let max_hash_fields = settings.max_hash_fields;
        let public = {
            let admission = Admission::new(settings.admission, metrics.admission.clone());
            let metrics = metrics.clone();
            let store_config = store_config.clone();
            let readiness = readiness.clone();
            let value_cache = value_cache.clone();
            let freshness = freshness.clone();
            let watch_hub = watch_hub.clone();
            HttpServer::new(move || {
                // Runs once per worker, on the worker's thread: see StoreConfig::connect.
                let state = PublicState {
                    store: store_config.connect(),
                    limits,
                    cache_control: cache_control.clone(),
                    cache: value_cache.clone(),
                    freshness: freshness.clone(),
                    watch: watch_hub.clone(),
                    max_hash_fields,
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
            // Past it a worker stops accepting: new connections wait in the
            // kernel, at no cost to the worker (see docs/overload.md).
            .max_connections(settings.admission.max_connections)
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
                freshness,
            },
            value_cache.clone(),
            store_config.worker_pools(),
        ));
        // The hub reads on one connection of its own: reads of a key are
        // answered in the order they were sent (see watch). It ends when the
        // pod drains.
        if let Some(hub) = &watch_hub {
            tokio::spawn(watch::run(hub.clone(), store_config.connect_with(1)));
        }
        let listeners = cache::tracking::Listeners {
            cache: value_cache.clone(),
            watch: watch_hub.clone(),
        };
        let tracking = (listeners.cache.is_some() || listeners.watch.is_some()).then(|| {
            tokio::spawn(cache::tracking::run(
                store_config.clone(),
                listeners,
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
            cache: value_cache,
            watch: watch_hub,
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
    ///
    /// Every long-lived task is awaited here, as a server and its workers are
    /// in zero2prod's `main`: if one ends first, the process drains the same
    /// way (without the public server, when that is what ended) and returns
    /// [`RunError::TaskEnded`] naming it, for a non-zero exit and a restart by
    /// the kubelet. The tracking connection is the exception: it restarts its
    /// own sessions, panics included (see [`cache::tracking::run`]).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let public_handle = self.public.handle();
        let admin_handle = self.admin.handle();
        let mut public = tokio::spawn(self.public);
        let mut admin = tokio::spawn(self.admin);
        let mut monitor = self.monitor;
        let mut tracking = self.tracking;
        if cfg!(debug_assertions) {
            for (task, handle) in [
                (fault::Task::PublicServer, public_handle.clone()),
                (fault::Task::AdminListener, admin_handle.clone()),
            ] {
                tokio::spawn(async move {
                    fault::fired(task).await;
                    handle.stop(false).await;
                });
            }
        }
        let ended = tokio::select! {
            () = shutdown => None,
            // Nothing left to serve: stop at once.
            ended = &mut public => Some((Task::PublicServer, server_end(ended))),
            // Probes and metrics are gone, and the kubelet would restart the
            // container only once liveness had failed long enough, giving no reason.
            ended = &mut admin => Some((Task::AdminListener, server_end(ended))),
            // Readiness, the replica gauges and the cache's resync flush all
            // come from it. Restarted in place, a monitor that keeps failing
            // would leave an unready pod that nothing restarts; exiting shows
            // in the restart count (and CrashLoopBackOff), and costs little:
            // the replica keeps its data in its own container.
            ended = &mut monitor => Some((Task::ReplicaMonitor, background_end(ended))),
            // Its sessions are restarted within: this is their supervisor ending.
            ended = async {
                match tracking.as_mut() {
                    Some(tracking) => tracking.await,
                    None => std::future::pending().await,
                }
            } => Some((Task::Tracking, background_end(ended))),
        };
        let failure = ended.map(|(task, problem)| {
            tracing::error!(
                task = task.name(),
                problem = %problem,
                "a supervised task ended; stopping the process"
            );
            RunError::TaskEnded { task, problem }
        });
        let failed = failure.as_ref().and_then(RunError::task);
        if failed == Some(Task::PublicServer) {
            admin_handle.stop(false).await;
            stop_background(&monitor, tracking.as_ref());
            return Err(failure.expect("a failure"));
        }
        if failed.is_some() {
            // Nothing may keep the cache serving while draining: neither a
            // tracking session that outlived its supervisor nor a cache whose
            // resyncs no monitor reports any more.
            if let Some(tracking) = tracking.take() {
                tracking.abort();
                let _ = tracking.await;
            }
            if let Some(cache) = &self.cache {
                cache.stop_serving();
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
            ended = &mut public => {
                stop_background(&monitor, tracking.as_ref());
                return Err(failure.unwrap_or(RunError::TaskEnded {
                    task: Task::PublicServer,
                    problem: server_end(ended),
                }));
            }
        }
        tracing::info!("no longer accepting connections; draining");
        // Change streams never finish on their own: each gets a `shutdown`
        // event and ends now, so that the graceful stop below is not spent
        // waiting for them, and their clients reconnect to a pod in rotation.
        if let Some(hub) = &self.watch {
            hub.shut_down();
        }
        let admin_runs = failed != Some(Task::AdminListener);
        public_handle.stop(true).await;
        if admin_runs {
            admin_handle.stop(true).await;
        }
        stop_background(&monitor, tracking.as_ref());
        let public = public.await.map_err(io::Error::other).and_then(|r| r);
        let admin = match admin_runs {
            true => admin.await.map_err(io::Error::other).and_then(|r| r),
            false => Ok(()),
        };
        if let Some(failure) = failure {
            return Err(failure);
        }
        public?;
        admin?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The long-lived tasks [`Application::run_until`] watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    PublicServer,
    AdminListener,
    ReplicaMonitor,
    Tracking,
}

impl Task {
    /// Its name in log lines and errors.
    pub fn name(self) -> &'static str {
        match self {
            Self::PublicServer => "public server",
            Self::AdminListener => "admin listener",
            Self::ReplicaMonitor => "replica monitor",
            Self::Tracking => "tracking connection",
        }
    }
}

/// Why [`Application::run_until`] stopped, when no shutdown was asked for.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the {} ended: {problem}", task.name())]
    TaskEnded { task: Task, problem: String },
    #[error("draining the servers: {0}")]
    Io(#[from] io::Error),
}

impl RunError {
    /// The task whose end stopped the process.
    pub fn task(&self) -> Option<Task> {
        match self {
            Self::TaskEnded { task, .. } => Some(*task),
            Self::Io(_) => None,
        }
    }
}

fn server_end(ended: Result<io::Result<()>, JoinError>) -> String {
    match ended {
        Ok(Ok(())) => "it stopped on its own".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => task_end(e),
    }
}

fn background_end(ended: Result<(), JoinError>) -> String {
    match ended {
        Ok(()) => "it returned".to_owned(),
        Err(e) => task_end(e),
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
