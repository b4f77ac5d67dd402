//! The Redis side of a request: one fred pool, bounded waits, bounded values,
//! classified errors.
//!
//! No value larger than `MAX_VALUE_BYTES`, and no batch larger than
//! `MAX_BATCH_RESPONSE_BYTES`, ever crosses the wire: a single key is read with
//! `GETRANGE 0 MAX_VALUE_BYTES` (one byte more than allowed says "too large"),
//! and a batch with a read-only script that checks every `STRLEN` before it
//! reads anything. Reading first and checking after would let one hostile value
//! take the pod's memory, and stall the connection while it drains.

use std::{
    fs,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use bytes::Bytes;
use fred::{
    bytes_utils::Str,
    prelude::*,
    rustls::{pki_types::pem::PemObject, pki_types::CertificateDer, ClientConfig, RootCertStore},
    types::{
        config::{TlsConfig, TlsConnector},
        ClusterHash, CustomCommand, Value as RedisValue,
    },
};

use crate::{
    config::{ConfigError, Settings},
    metrics::Metrics,
};

mod shapes;
pub use shapes::{HashRefusal, HashReply};

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
    /// The value is larger than `MAX_VALUE_BYTES`; it was not read.
    #[error("key {key:?} holds more than MAX_VALUE_BYTES ({max} bytes)")]
    ValueTooLarge { key: String, max: usize },
    /// The values of a batch add up to more than `MAX_BATCH_RESPONSE_BYTES`; none was read.
    #[error("the values add up to more than MAX_BATCH_RESPONSE_BYTES ({max} bytes)")]
    BatchTooLarge { max: usize },
    /// Redis answered with something this API does not expect.
    #[error("unexpected redis reply")]
    Unexpected(#[source] fred::error::Error),
}

/// A string value as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringValue {
    /// UTF-8 text (fred checked it when it parsed the reply).
    Text(Str),
    /// Bytes that are not UTF-8: served only as raw bytes.
    NotText(Bytes),
}

impl StringValue {
    fn from_reply(value: RedisValue) -> Result<Option<Self>, ()> {
        match value {
            RedisValue::Null => Ok(None),
            RedisValue::String(text) => Ok(Some(Self::Text(text))),
            RedisValue::Bytes(bytes) => Ok(Some(Self::NotText(bytes))),
            _ => Err(()),
        }
    }
}

/// Reads keys, with the limits checked inside Redis.
///
/// KEYS are the keys; ARGV[1] is MAX_VALUE_BYTES, ARGV[2] the most the values
/// may add up to, ARGV[3] '1' when a non-string value is an error (a single
/// key: WRONGTYPE) rather than a null (a batch, as MGET answers). Replies
/// `{0, value-or-false, …}`, or `{1, index, length}` for a value over the
/// limit, or `{2, index, running total}` for a batch over its budget.
const READ_SCRIPT: &str = r#"
local max_value, max_total, strict = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local total = 0
for i, key in ipairs(KEYS) do
  local len
  if strict then
    len = redis.call('STRLEN', key)
  else
    len = redis.pcall('STRLEN', key)
    if type(len) ~= 'number' then len = 0 end
  end
  if len > max_value then return {1, i, len} end
  total = total + len
  if total > max_total then return {2, i, total} end
end
-- MGET answers false for a missing or non-string key; unpack is bounded by
-- Lua's stack, hence the chunks.
local reply = {0}
for first = 1, #KEYS, 1000 do
  local values = redis.call('MGET', unpack(KEYS, first, math.min(first + 999, #KEYS)))
  for i = 1, #values do reply[first + i] = values[i] end
end
return reply
"#;

/// The read limits, as configured.
#[derive(Debug, Clone, Copy)]
pub struct ValueLimits {
    pub max_value_bytes: usize,
    pub max_batch_bytes: usize,
}

/// Everything needed to open a [`Store`], checked once at start.
#[derive(Clone)]
pub struct StoreConfig {
    redis: Config,
    timeout: Duration,
    pool_size: usize,
    prefix: Bytes,
    limits: ValueLimits,
    script_sha: Arc<str>,
    metrics: Metrics,
    workers: WorkerPools,
}

impl StoreConfig {
    /// Parses `REDIS_URL` and loads the CA, so that a worker's [`connect`](Self::connect) cannot fail.
    pub fn new(settings: &Settings, metrics: Metrics) -> Result<Self, ConfigError> {
        let mut redis = Config::from_url(&settings.redis.url)
            .map_err(|e| ConfigError::new("REDIS_URL", e.details()))?;
        if let Some(password) = &settings.redis.password {
            redis.password = Some(password.expose().to_owned());
        }
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
            limits: ValueLimits {
                max_value_bytes: settings.max_value_bytes,
                max_batch_bytes: settings.max_batch_response_bytes,
            },
            script_sha: fred::util::sha1_hash(READ_SCRIPT).into(),
            metrics,
            workers: WorkerPools::new(settings.workers),
        })
    }

    /// Opens `REDIS_POOL_SIZE` connections on the current runtime, in the background.
    ///
    /// Each HTTP worker calls this on its own thread, so a request and its
    /// Redis round trip never leave that thread. Connecting never blocks: in a
    /// pod, Redis may come up after the API, and until it does requests get a
    /// 503 and readiness stays false.
    pub fn connect(&self) -> Store {
        let store = self.connect_with(self.pool_size);
        self.workers.register(&store.pool);
        store
    }

    /// The pools [`connect`](Self::connect) opened, for readiness.
    pub fn worker_pools(&self) -> WorkerPools {
        self.workers.clone()
    }

    /// A client for the tracking connection of the value cache: RESP2 (see
    /// `cache::tracking` for why), no reconnection of its own (the caller
    /// must notice every disconnection, to drop the cache), commands that
    /// fail at once while disconnected, and room for bursts of invalidations.
    pub fn tracking_client(&self) -> Client {
        let timeout = self.timeout;
        let mut config = self.redis.clone();
        config.fail_fast = true;
        config.version = fred::types::RespVersion::RESP2;
        Builder::from_config(config)
            .with_performance_config(|perf| {
                perf.default_command_timeout = timeout;
                perf.broadcast_channel_capacity = 4096;
            })
            .with_connection_config(|conn| {
                conn.connection_timeout = timeout.max(Duration::from_secs(1));
                conn.internal_command_timeout = timeout.max(Duration::from_secs(1));
                conn.max_command_attempts = 1;
                conn.tcp.nodelay = Some(true);
            })
            .build()
            .expect("the redis config was validated by StoreConfig::new")
    }

    /// The configured wait for Redis.
    pub fn timeout(&self) -> Duration {
        self.timeout
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
            pool: Arc::new(pool),
            prefix: self.prefix.clone(),
            limits: self.limits,
            timeout,
            script_sha: self.script_sha.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Reads keys from one Redis, with the configured prefix and timeout.
#[derive(Clone)]
pub struct Store {
    pool: Arc<Pool>,
    prefix: Bytes,
    limits: ValueLimits,
    timeout: Duration,
    script_sha: Arc<str>,
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

    pub fn limits(&self) -> ValueLimits {
        self.limits
    }

    /// One value: `None` when the key does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<StringValue>, StoreError> {
        let started = Instant::now();
        let max = self.limits.max_value_bytes;
        // GETRANGE is as cheap as GET, and stops one byte past the limit.
        let head = self
            .pool
            .getrange::<RedisValue, _>(self.key(key), 0, max)
            .await
            .map_err(|e| self.classify(e, key))?;
        let len = match &head {
            RedisValue::String(s) => s.len(),
            RedisValue::Bytes(b) => b.len(),
            _ => return Err(self.unexpected("GETRANGE", &head)),
        };
        if len > max {
            return Err(StoreError::ValueTooLarge {
                key: key.to_owned(),
                max,
            });
        }
        if len > 0 {
            return StringValue::from_reply(head)
                .map_err(|()| self.unexpected("GETRANGE", &RedisValue::Null));
        }
        // An empty reply is an empty string or a missing key: only the script
        // tells them apart in one atomic step. Missing keys pay a second trip.
        let remaining = self.timeout.saturating_sub(started.elapsed());
        let mut values = self.read_script(&[key], true, remaining).await?;
        Ok(values.pop().flatten())
    }

    /// Many values in one atomic read, in request order; `None` where a key is
    /// missing or holds a non-string value (as `MGET` answers).
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<StringValue>>, StoreError> {
        self.get_many_within(keys, self.limits.max_batch_bytes)
            .await
    }

    /// Like [`get_many`](Self::get_many), with the values adding up to at most
    /// `budget` bytes (what the cache's share of the batch leaves).
    pub async fn get_many_within(
        &self,
        keys: &[String],
        budget: usize,
    ) -> Result<Vec<Option<StringValue>>, StoreError> {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.read_script_within(&keys, false, self.timeout, budget)
            .await
    }

    async fn read_script(
        &self,
        keys: &[&str],
        strict: bool,
        timeout: Duration,
    ) -> Result<Vec<Option<StringValue>>, StoreError> {
        self.read_script_within(keys, strict, timeout, self.limits.max_batch_bytes)
            .await
    }

    async fn read_script_within(
        &self,
        keys: &[&str],
        strict: bool,
        timeout: Duration,
        budget: usize,
    ) -> Result<Vec<Option<StringValue>>, StoreError> {
        let args = |script: RedisValue| {
            let mut args = Vec::with_capacity(keys.len() + 5);
            args.push(script);
            args.push(RedisValue::Integer(keys.len() as i64));
            args.extend(
                keys.iter()
                    .map(|k| RedisValue::Bytes(self.key(k).into_bytes())),
            );
            args.push(RedisValue::Integer(self.limits.max_value_bytes as i64));
            args.push(RedisValue::Integer(budget as i64));
            args.push(RedisValue::from(if strict { "1" } else { "0" }));
            args
        };
        let client = self.pool.next_connected();
        let call = async {
            let sha = RedisValue::from(&*self.script_sha);
            match client
                .custom::<RedisValue, _>(command("EVALSHA_RO"), args(sha))
                .await
            {
                // A restarted Redis has forgotten the script: EVAL_RO loads it again.
                Err(e) if e.details().starts_with("NOSCRIPT") => {
                    let script = RedisValue::from(READ_SCRIPT);
                    client
                        .custom::<RedisValue, _>(command("EVAL_RO"), args(script))
                        .await
                }
                other => other,
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Ok(reply) => reply,
            Err(_) => Err(fred::error::Error::new(
                ErrorKind::Timeout,
                "the read script did not answer within REDIS_TIMEOUT_MS",
            )),
        }
        .map_err(|e| self.classify(e, keys.first().copied().unwrap_or_default()))?;
        self.script_reply(keys, reply)
    }

    fn script_reply(
        &self,
        keys: &[&str],
        reply: RedisValue,
    ) -> Result<Vec<Option<StringValue>>, StoreError> {
        let RedisValue::Array(mut items) = reply else {
            return Err(self.unexpected("the read script", &reply));
        };
        let status = items.first().and_then(RedisValue::as_i64);
        let index = items.get(1).and_then(RedisValue::as_i64).unwrap_or(0);
        match status {
            Some(0) if items.len() == keys.len() + 1 => {
                let mut values = Vec::with_capacity(keys.len());
                for item in items.drain(1..) {
                    values.push(
                        StringValue::from_reply(item)
                            .map_err(|()| self.unexpected("the read script", &RedisValue::Null))?,
                    );
                }
                Ok(values)
            }
            Some(1) => {
                let key = usize::try_from(index - 1)
                    .ok()
                    .and_then(|i| keys.get(i))
                    .copied()
                    .unwrap_or_default();
                Err(StoreError::ValueTooLarge {
                    key: key.to_owned(),
                    max: self.limits.max_value_bytes,
                })
            }
            Some(2) => Err(StoreError::BatchTooLarge {
                max: self.limits.max_batch_bytes,
            }),
            _ => Err(self.unexpected("the read script", &RedisValue::Array(items))),
        }
    }

    fn unexpected(&self, command: &str, reply: &RedisValue) -> StoreError {
        self.metrics.redis_error("unexpected");
        StoreError::Unexpected(fred::error::Error::new(
            ErrorKind::Unknown,
            format!("{command} answered a {:?}", reply.kind()),
        ))
    }

    /// The first bytes of `key`, as is: no prefix, and never more than a
    /// heartbeat needs. `None` when missing or not a string.
    pub async fn read_raw_head(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let head = self
            .pool
            .next_connected()
            .getrange::<RedisValue, _>(key, 0, 63)
            .await;
        match head {
            Ok(RedisValue::String(s)) if !s.is_empty() => Ok(Some(s.into_inner())),
            Ok(RedisValue::Bytes(b)) if !b.is_empty() => Ok(Some(b)),
            Ok(_) => Ok(None),
            Err(e) if e.details().starts_with("WRONGTYPE") => Ok(None),
            Err(e) => Err(self.classify(e, key)),
        }
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

/// The HTTP workers' pools: each worker connects on its own backoff, so Redis
/// answering the replica monitor does not mean that every worker can read yet.
#[derive(Clone)]
pub struct WorkerPools {
    expected: usize,
    pools: Arc<Mutex<Vec<Weak<Pool>>>>,
}

impl WorkerPools {
    fn new(expected: usize) -> Self {
        Self {
            expected,
            pools: Arc::default(),
        }
    }

    fn register(&self, pool: &Arc<Pool>) {
        self.lock().push(Arc::downgrade(pool));
    }

    /// Whether every worker has started and holds at least one connection
    /// (reads go to a connected client when there is one).
    pub fn all_connected(&self) -> bool {
        let mut pools = self.lock();
        // A worker that died and was restarted left a pool nobody holds.
        pools.retain(|pool| pool.strong_count() > 0);
        pools.len() >= self.expected
            && pools
                .iter()
                .filter_map(Weak::upgrade)
                .all(|pool| pool.clients().iter().any(|c| c.is_connected()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Pool>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn command(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::Random, false)
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
