//! The Redis side of a request: one fred pool, bounded waits, classified errors.

use std::{fs, time::Duration};

use bytes::Bytes;
use fred::{
    prelude::*,
    rustls::{pki_types::pem::PemObject, pki_types::CertificateDer, ClientConfig, RootCertStore},
    types::{
        config::{TlsConfig, TlsConnector},
        ClusterHash, CustomCommand,
    },
};

use crate::{
    config::{ConfigError, Settings},
    metrics::Metrics,
};

/// Why a Redis command did not produce a value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not answer in time: down, unreachable, loading, or slow.
    #[error("redis unavailable ({kind})")]
    Unavailable {
        kind: &'static str,
        #[source]
        source: fred::error::Error,
    },
    /// The key holds a list, hash or other non-string value.
    #[error("WRONGTYPE for key {0:?}")]
    WrongType(String),
    /// Redis answered with something this API does not expect.
    #[error("unexpected redis reply")]
    Unexpected(#[source] fred::error::Error),
}

/// Everything needed to open a [`Store`], checked once at start.
#[derive(Clone)]
pub struct StoreConfig {
    redis: Config,
    timeout: Duration,
    pool_size: usize,
    prefix: Bytes,
    metrics: Metrics,
}

impl StoreConfig {
    /// Parses `REDIS_URL` and loads the CA, so that a worker's [`connect`](Self::connect) cannot fail.
    pub fn new(settings: &Settings, metrics: Metrics) -> Result<Self, ConfigError> {
        let mut redis = Config::from_url(&settings.redis.url)
            .map_err(|e| ConfigError::new("REDIS_URL", e.details()))?;
        if let Some(ca_file) = &settings.redis_ca_file {
            redis.tls = Some(tls_config(ca_file)?);
        }
        // In a pod the API may start before its replica: keep retrying the
        // first connection too, not only connections that drop later.
        redis.fail_fast = false;
        Ok(Self {
            redis,
            timeout: settings.redis_timeout,
            pool_size: settings.redis_pool_size,
            prefix: Bytes::copy_from_slice(settings.key_prefix.as_bytes()),
            metrics,
        })
    }

    /// Opens `REDIS_POOL_SIZE` connections on the current runtime, in the background.
    ///
    /// Each HTTP worker calls this on its own thread, so a request and its
    /// Redis round trip never leave that thread. Connecting never blocks: in a
    /// pod, Redis may come up after the API, and until it does requests get a
    /// 503 and readiness stays false.
    pub fn connect(&self) -> Store {
        self.connect_with(self.pool_size)
    }

    /// Like [`connect`](Self::connect), with a pool of the given size.
    pub fn connect_with(&self, pool_size: usize) -> Store {
        let timeout = self.timeout;
        let pool = Builder::from_config(self.redis.clone())
            .with_performance_config(|perf| perf.default_command_timeout = timeout)
            .with_connection_config(|conn| {
                conn.connection_timeout = timeout.max(Duration::from_secs(1));
                conn.internal_command_timeout = timeout.max(Duration::from_secs(1));
                // A retry would wait a second timeout: the client would rather
                // get a fast 503 and retry on its side.
                conn.max_command_attempts = 1;
                conn.tcp.nodelay = Some(true);
            })
            // Reconnect forever, quickly: the replica is local, so a gap is a restart.
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1000, 2))
            .build_pool(pool_size.max(1))
            .expect("the redis config was validated by StoreConfig::new");
        pool.connect();
        Store {
            pool,
            prefix: self.prefix.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Reads keys from one Redis, with the configured prefix and timeout.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    prefix: Bytes,
    metrics: Metrics,
}

impl Store {
    fn key(&self, key: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(key)
        } else {
            let mut full = Vec::with_capacity(self.prefix.len() + key.len());
            full.extend_from_slice(&self.prefix);
            full.extend_from_slice(key.as_bytes());
            Key::from(Bytes::from(full))
        }
    }

    /// `GET key`: `None` when the key does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.pool
            .get::<Option<Bytes>, _>(self.key(key))
            .await
            .map_err(|e| self.classify(e, key))
    }

    /// `MGET keys…`: one value per key, `None` where missing or not a string.
    pub async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let keys: Vec<Key> = keys.iter().map(|k| self.key(k)).collect();
        self.pool
            .mget::<Vec<Option<Bytes>>, _>(keys)
            .await
            .map_err(|e| self.classify(e, ""))
    }

    /// `INFO` for the given sections, for the replica monitor.
    pub async fn info(&self, sections: &[&str]) -> Result<String, StoreError> {
        let args: Vec<&str> = sections.to_vec();
        self.pool
            .next_connected()
            .custom::<String, _>(
                CustomCommand::new_static("INFO", ClusterHash::FirstKey, false),
                args,
            )
            .await
            .map_err(|e| self.classify(e, ""))
    }

    /// Sorts a fred error into what the client should see, and counts it.
    fn classify(&self, error: fred::error::Error, key: &str) -> StoreError {
        let kind = match error.kind() {
            ErrorKind::Timeout => Some("timeout"),
            ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Routing | ErrorKind::Backpressure => {
                Some("connection")
            }
            ErrorKind::Tls => Some("tls"),
            ErrorKind::Auth => Some("auth"),
            _ if error.details().starts_with("LOADING") => Some("loading"),
            _ if error.details().starts_with("MASTERDOWN") => Some("masterdown"),
            _ => None,
        };
        if let Some(kind) = kind {
            self.metrics.redis_error(kind);
            return StoreError::Unavailable {
                kind,
                source: error,
            };
        }
        if error.details().starts_with("WRONGTYPE") {
            self.metrics.redis_error("wrongtype");
            return StoreError::WrongType(key.to_owned());
        }
        self.metrics.redis_error("unexpected");
        StoreError::Unexpected(error)
    }
}

/// Trusts exactly the CAs in the given PEM file; the host name in `REDIS_URL`
/// must match the server certificate.
fn tls_config(ca_file: &std::path::Path) -> Result<TlsConfig, ConfigError> {
    let unreadable = |why: String| {
        ConfigError::new(
            "REDIS_CA_FILE",
            format!(
                "{}: {why}; expected a readable PEM file with at least one CA certificate",
                ca_file.display()
            ),
        )
    };
    let pem = fs::read(ca_file).map_err(|e| unreadable(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| unreadable(e.to_string()))?;
        roots.add(cert).map_err(|e| unreadable(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(unreadable("no certificate found".into()));
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(config).into())
}
