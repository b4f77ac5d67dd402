//! Settings from the environment, validated once before anything is served.
//!
//! Every mistake becomes one [`ConfigError`] line that names the variable and
//! what it accepts, so a bad rollout fails at start with a readable reason
//! instead of misbehaving under traffic.

use std::{collections::HashMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

/// A configuration mistake: the variable and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        let problem = problem.into();
        // The values quoted come from the environment and may hold a newline
        // (the config fuzz target found one): the message stays one line.
        let problem = if problem.contains(char::is_control) {
            problem
                .chars()
                .map(|c| match c.is_control() {
                    true => c.escape_debug().to_string(),
                    false => c.to_string(),
                })
                .collect()
        } else {
            problem
        };
        Self { variable, problem }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Where Redis is, as given by `REDIS_URL`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// The URL exactly as configured (it may carry a password: never log it, use `Display`).
    pub url: String,
    pub tls: bool,
    /// The password from `REDIS_PASSWORD_FILE`, used with the URL's user.
    pub password: Option<Password>,
}

/// A password that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

impl fmt::Display for RedisTarget {
    /// The URL with any password replaced, safe for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.url.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((credentials, host)) if !host.is_empty() || !credentials.is_empty() => {
                    let user = credentials.split(':').next().unwrap_or("");
                    write!(f, "{scheme}://{user}:***@{host}")
                }
                _ => write!(f, "{}", self.url),
            },
            None => write!(f, "{}", self.url),
        }
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisTarget({self})")
    }
}

/// The validated configuration of one process.
#[derive(Debug, Clone)]
pub struct Settings {
    pub redis: RedisTarget,
    /// PEM bundle of the CA that signs the Redis server certificate (only with `rediss://`).
    pub redis_ca_file: Option<PathBuf>,
    pub redis_pool_size: usize,
    pub redis_timeout: Duration,
    pub listen_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub workers: usize,
    pub max_key_bytes: usize,
    pub max_batch_keys: usize,
    /// The most fields a whole hash may have to be served, and a request may name.
    pub max_hash_fields: usize,
    pub key_prefix: String,
    pub log_format: LogFormat,
    /// How long the public listener keeps accepting after SIGTERM, while
    /// `/readyz` already answers 503 and load balancers catch up.
    pub shutdown_delay: Duration,
    pub shutdown_grace: Duration,
    /// Largest value served; checked in Redis, so a larger one is never read.
    pub max_value_bytes: usize,
    /// Largest body of a batch answer; the values are summed in Redis first.
    pub max_batch_response_bytes: usize,
    /// The `Cache-Control` header of 200 and 304 answers; `None`: no header.
    pub cache_control: Option<String>,
    /// The key whose value is the master's clock in unix milliseconds; `None`: not read.
    pub heartbeat_key: Option<String>,
    /// After the first sync, how long the master link may stay down before the pod
    /// stops being ready. `None`: stale reads are always preferred to no reads.
    pub ready_max_link_down: Option<Duration>,
    pub replica_poll: Duration,
    /// Memory for the value cache (its own accounting, entries' overhead
    /// included); 0 turns the cache off.
    pub cache_max_bytes: usize,
    /// Values longer than this are read from Redis every time.
    pub cache_max_value_bytes: usize,
    /// The bound on requests in flight per HTTP worker (see `admission`).
    pub admission: AdmissionSettings,
    /// The longest a read with `Min-Position` waits for the replica to reach it.
    pub position_max_wait: Duration,
    /// The change streams' bounds (see `watch`).
    pub watch: WatchSettings,
}

/// `WATCH_MAX_WATCHERS`, `WATCH_MAX_KEYS`, `WATCH_HEARTBEAT_SECONDS`, `WATCH_HISTORY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSettings {
    /// Streams open at once in the pod; 0 turns `/v1/watch` off.
    pub max_watchers: usize,
    /// Keys one stream may watch.
    pub max_keys: usize,
    /// How often an idle stream gets a comment line.
    pub heartbeat: Duration,
    /// Changes remembered for a reconnecting client's `Last-Event-ID`.
    pub history: usize,
}

/// How requests past capacity are refused (see `admission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionMode {
    /// The bound follows latency between `min_in_flight` and `max_in_flight`.
    Adaptive,
    /// The bound is `max_in_flight`.
    Fixed,
    /// Every request is admitted.
    Off,
}

/// `ADMISSION`, `ADMISSION_MAX_IN_FLIGHT`, `ADMISSION_MIN_IN_FLIGHT`, `ADMISSION_QUEUE_MS`,
/// `ADMISSION_MAX_CONNECTIONS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionSettings {
    pub mode: AdmissionMode,
    /// Per worker: the fixed bound, or the ceiling of the adaptive one.
    pub max_in_flight: u32,
    /// Per worker: the floor of the adaptive bound.
    pub min_in_flight: u32,
    /// The wait, on top of twice the latency seen without load, that the
    /// adaptive bound accepts before it goes down.
    pub queue: Duration,
    /// Per worker: connections open at once; past them the listener stops
    /// accepting and new connections wait in the kernel's accept queue.
    pub max_connections: usize,
}

/// The environment as envy reads it: every variable optional and still text, so
/// that the checks below can name the variable in their messages.
#[derive(Debug, Default, Deserialize)]
struct RawSettings {
    redis_url: Option<String>,
    redis_password_file: Option<String>,
    redis_ca_file: Option<String>,
    redis_pool_size: Option<String>,
    redis_timeout_ms: Option<String>,
    listen_addr: Option<String>,
    admin_addr: Option<String>,
    workers: Option<String>,
    max_key_bytes: Option<String>,
    max_batch_keys: Option<String>,
    max_hash_fields: Option<String>,
    key_prefix: Option<String>,
    log_format: Option<String>,
    shutdown_delay_seconds: Option<String>,
    shutdown_grace_seconds: Option<String>,
    max_value_bytes: Option<String>,
    max_batch_response_bytes: Option<String>,
    cache_control: Option<String>,
    heartbeat_key: Option<String>,
    ready_max_link_down_seconds: Option<String>,
    replica_poll_ms: Option<String>,
    cache_max_bytes: Option<String>,
    cache_max_value_bytes: Option<String>,
    admission: Option<String>,
    admission_max_in_flight: Option<String>,
    admission_min_in_flight: Option<String>,
    admission_queue_ms: Option<String>,
    admission_max_connections: Option<String>,
    position_max_wait_ms: Option<String>,
    watch_max_watchers: Option<String>,
    watch_max_keys: Option<String>,
    watch_heartbeat_seconds: Option<String>,
    watch_history: Option<String>,
}

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Revalidate every time: a write reaches the replica within milliseconds, so
/// any freshness lifetime would serve stale values, and the ETag makes the
/// revalidation cheap (304, no body).
pub const DEFAULT_CACHE_CONTROL: &str = "no-cache";
pub const DEFAULT_HEARTBEAT_KEY: &str = "read-api:heartbeat";
/// Variables where an empty value means "off" rather than "unset".
const EMPTY_MEANS_OFF: [&str; 2] = ["CACHE_CONTROL", "HEARTBEAT_KEY"];

impl Settings {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads and validates the given variables (the environment, in production).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::parse(vars, &|path| std::fs::read_to_string(path))
    }

    /// [`Settings::from_vars`] with the one file it reads (`REDIS_PASSWORD_FILE`)
    /// read by `read_file`: a pure function of its input, for the fuzz target
    /// (fuzz/fuzz_targets/config.rs).
    pub fn parse(
        vars: impl IntoIterator<Item = (String, String)>,
        read_file: &dyn Fn(&str) -> std::io::Result<String>,
    ) -> Result<Self, ConfigError> {
        // Empty values count as unset: manifests and shells often export `VAR=`.
        let vars: HashMap<String, String> = vars
            .into_iter()
            .filter(|(k, v)| !v.is_empty() || EMPTY_MEANS_OFF.contains(&k.as_str()))
            .collect();
        let raw: RawSettings =
            envy::from_iter(vars).map_err(|e| ConfigError::new("environment", e.to_string()))?;
        Self::validate(raw, read_file)
    }

    fn validate(
        raw: RawSettings,
        read_file: &dyn Fn(&str) -> std::io::Result<String>,
    ) -> Result<Self, ConfigError> {
        let mut redis = parse_redis_url(raw.redis_url.as_deref().unwrap_or(DEFAULT_REDIS_URL))?;
        if let Some(path) = raw.redis_password_file {
            redis.password = Some(password_file(&redis, &path, read_file)?);
        }
        let redis_ca_file = match (raw.redis_ca_file, redis.tls) {
            (Some(path), true) => Some(PathBuf::from(path)),
            (None, true) => {
                return Err(ConfigError::new(
                    "REDIS_CA_FILE",
                    "required when REDIS_URL uses rediss://: the path of a PEM file with the CA that signs the server certificate",
                ))
            }
            (Some(_), false) => {
                return Err(ConfigError::new(
                    "REDIS_CA_FILE",
                    "only used with a rediss:// REDIS_URL; unset it or switch REDIS_URL to rediss://",
                ))
            }
            (None, false) => None,
        };
        let listen_addr = socket_addr("LISTEN_ADDR", raw.listen_addr, "0.0.0.0:8080")?;
        let admin_addr = socket_addr("ADMIN_ADDR", raw.admin_addr, "0.0.0.0:9090")?;
        if listen_addr == admin_addr && listen_addr.port() != 0 {
            return Err(ConfigError::new(
                "ADMIN_ADDR",
                format!("must differ from LISTEN_ADDR ({listen_addr}): probes and metrics get their own listener"),
            ));
        }
        let default_workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let log_format = match raw.log_format.as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(ConfigError::new(
                    "LOG_FORMAT",
                    format!("expected 'json' or 'text', got '{other}'"),
                ))
            }
        };
        // 16 MiB: the 128 MiB container already budgets about 100 MiB for the
        // worst answers in flight (MAX_BATCH_RESPONSE_BYTES bodies, read
        // buffers as large as the largest reply); 16 MiB more still fits, and
        // holds about 60,000 answers of 100 bytes or 250 at 64 KiB.
        let cache_max_bytes = number(
            "CACHE_MAX_BYTES",
            raw.cache_max_bytes,
            0..=MAX_CACHE_BYTES,
            DEFAULT_CACHE_MAX_BYTES,
        )?;
        // 64 KiB: documents of kilobytes are what repeats; a larger value
        // would push out hundreds of small ones.
        let cache_max_value_bytes = number(
            "CACHE_MAX_VALUE_BYTES",
            raw.cache_max_value_bytes,
            1..=MAX_REDIS_STRING,
            64 << 10,
        )?;
        if cache_max_bytes > 0 && cache_max_value_bytes > cache_max_bytes / 16 {
            return Err(ConfigError::new(
                "CACHE_MAX_VALUE_BYTES",
                format!("must be at most CACHE_MAX_BYTES / 16 ({}), so that the cache holds more than a handful of its largest values; got {cache_max_value_bytes}", cache_max_bytes / 16),
            ));
        }
        let admission = admission(
            raw.admission,
            raw.admission_max_in_flight,
            raw.admission_min_in_flight,
            raw.admission_queue_ms,
            raw.admission_max_connections,
        )?;
        // 1000 streams: each holds a socket, a task and two small queues
        // (kilobytes), and every change of a watched key is read once
        // whatever the number of watchers; more than this per pod is a fan-out
        // better served by more pods.
        let watch = WatchSettings {
            max_watchers: number(
                "WATCH_MAX_WATCHERS",
                raw.watch_max_watchers,
                0..=1_000_000,
                1000,
            )?,
            // As many as a batch read: a snapshot holds every value at once.
            max_keys: number("WATCH_MAX_KEYS", raw.watch_max_keys, 1..=10_000, 100)?,
            // 15 s: under the idle timeouts of the usual proxies (nginx and
            // most cloud load balancers: 60 s; some at 30 s).
            heartbeat: Duration::from_secs(number(
                "WATCH_HEARTBEAT_SECONDS",
                raw.watch_heartbeat_seconds,
                1..=3600,
                15,
            )?),
            // 10,000 changes: about a megabyte of key names, a minute of
            // writes at 150/s under the prefix, past which a reconnecting
            // client gets every value again.
            history: number("WATCH_HISTORY", raw.watch_history, 1..=10_000_000, 10_000)?,
        };
        Ok(Self {
            watch,
            cache_max_bytes,
            cache_max_value_bytes,
            admission,
            redis,
            redis_ca_file,
            redis_pool_size: number("REDIS_POOL_SIZE", raw.redis_pool_size, 1..=256, 1)?,
            redis_timeout: Duration::from_millis(number(
                "REDIS_TIMEOUT_MS",
                raw.redis_timeout_ms,
                1..=60_000,
                1000,
            )?),
            listen_addr,
            admin_addr,
            workers: number("WORKERS", raw.workers, 1..=1024, default_workers)?,
            max_key_bytes: number("MAX_KEY_BYTES", raw.max_key_bytes, 1..=65_536, 1024)?,
            max_batch_keys: number("MAX_BATCH_KEYS", raw.max_batch_keys, 1..=10_000, 100)?,
            // 1024: a record or a small table; a larger hash is a scan inside
            // Redis that blocks it while it runs, and would rather be read by field.
            max_hash_fields: number("MAX_HASH_FIELDS", raw.max_hash_fields, 1..=100_000, 1024)?,
            key_prefix: raw.key_prefix.unwrap_or_default(),
            log_format,
            shutdown_delay: Duration::from_secs(number(
                "SHUTDOWN_DELAY_SECONDS",
                raw.shutdown_delay_seconds,
                0..=3600,
                5,
            )?),
            shutdown_grace: Duration::from_secs(number(
                "SHUTDOWN_GRACE_SECONDS",
                raw.shutdown_grace_seconds,
                0..=3600,
                10,
            )?),
            // 1 MiB: values of a JSON read API are documents of kilobytes; at
            // worst JSON escaping makes a body six times the value, and tens of
            // such answers in flight still fit the pod's 128 MiB.
            max_value_bytes: number(
                "MAX_VALUE_BYTES",
                raw.max_value_bytes,
                1..=MAX_REDIS_STRING,
                1 << 20,
            )?,
            // 8 MiB: a full batch of MAX_BATCH_KEYS values of 80 KiB; a body
            // is held about twice while it is written (the encoded copy and
            // the socket buffer), so a few such answers at once fit 128 MiB.
            max_batch_response_bytes: number(
                "MAX_BATCH_RESPONSE_BYTES",
                raw.max_batch_response_bytes,
                1..=MAX_REDIS_STRING,
                8 << 20,
            )?,
            cache_control: cache_control(raw.cache_control)?,
            heartbeat_key: match raw.heartbeat_key {
                None => Some(DEFAULT_HEARTBEAT_KEY.to_owned()),
                Some(key) if key.is_empty() => None,
                Some(key) => Some(key),
            },
            ready_max_link_down: raw
                .ready_max_link_down_seconds
                .map(|v| number("READY_MAX_LINK_DOWN_SECONDS", Some(v), 1..=86_400, 0))
                .transpose()?
                .map(Duration::from_secs),
            replica_poll: Duration::from_millis(number(
                "REPLICA_POLL_MS",
                raw.replica_poll_ms,
                50..=60_000,
                1000,
            )?),
            // 1 s: a replica that is up follows its master within
            // milliseconds; one a second behind is cut off, and the client
            // does better trying another pod than holding a request open.
            position_max_wait: Duration::from_millis(number(
                "POSITION_MAX_WAIT_MS",
                raw.position_max_wait_ms,
                0..=60_000,
                1000,
            )?),
        })
    }
}

/// The admission settings; the reason for each default is in docs/overload.md.
fn admission(
    mode: Option<String>,
    max_in_flight: Option<String>,
    min_in_flight: Option<String>,
    queue_ms: Option<String>,
    max_connections: Option<String>,
) -> Result<AdmissionSettings, ConfigError> {
    let mode = match mode.as_deref().map(str::trim) {
        Some("adaptive") => AdmissionMode::Adaptive,
        None | Some("fixed") => AdmissionMode::Fixed,
        Some("off") => AdmissionMode::Off,
        Some(other) => {
            return Err(ConfigError::new(
                "ADMISSION",
                format!("expected 'adaptive', 'fixed' or 'off', got '{other}'"),
            ))
        }
    };
    let max_in_flight = number(
        "ADMISSION_MAX_IN_FLIGHT",
        max_in_flight,
        1..=MAX_IN_FLIGHT,
        DEFAULT_ADMISSION_MAX_IN_FLIGHT,
    )?;
    let min_in_flight = number(
        "ADMISSION_MIN_IN_FLIGHT",
        min_in_flight,
        1..=MAX_IN_FLIGHT,
        DEFAULT_ADMISSION_MIN_IN_FLIGHT.min(max_in_flight),
    )?;
    if min_in_flight > max_in_flight {
        return Err(ConfigError::new(
            "ADMISSION_MIN_IN_FLIGHT",
            format!(
                "must be at most ADMISSION_MAX_IN_FLIGHT ({max_in_flight}), got {min_in_flight}"
            ),
        ));
    }
    let queue = Duration::from_millis(number(
        "ADMISSION_QUEUE_MS",
        queue_ms,
        0..=60_000,
        DEFAULT_ADMISSION_QUEUE_MS,
    )?);
    let max_connections = number(
        "ADMISSION_MAX_CONNECTIONS",
        max_connections,
        1..=MAX_IN_FLIGHT as usize,
        DEFAULT_ADMISSION_MAX_CONNECTIONS,
    )?;
    Ok(AdmissionSettings {
        mode,
        max_in_flight,
        min_in_flight,
        queue,
        max_connections,
    })
}

pub const DEFAULT_ADMISSION_MAX_IN_FLIGHT: u32 = 256;
pub const DEFAULT_ADMISSION_MIN_IN_FLIGHT: u32 = 8;
pub const DEFAULT_ADMISSION_QUEUE_MS: u64 = 100;
/// actix-server's own default: no bound a client pool would meet.
pub const DEFAULT_ADMISSION_MAX_CONNECTIONS: usize = 25_600;
const MAX_IN_FLIGHT: u32 = 1 << 20;

/// Redis strings end at 512 MiB.
const MAX_REDIS_STRING: usize = 512 << 20;
pub const DEFAULT_CACHE_MAX_BYTES: usize = 16 << 20;
/// 64 GiB: beyond any container this API runs in.
const MAX_CACHE_BYTES: usize = 64 << 30;

fn cache_control(value: Option<String>) -> Result<Option<String>, ConfigError> {
    let value = match value {
        None => return Ok(Some(DEFAULT_CACHE_CONTROL.to_owned())),
        Some(value) if value.trim().is_empty() => return Ok(None),
        Some(value) => value,
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let quoted = |s: &str| {
        s.len() >= 2
            && s.starts_with('"')
            && s.ends_with('"')
            && s[1..s.len() - 1]
                .bytes()
                .all(|b| b == b'\t' || ((b' '..=b'~').contains(&b) && b != b'"'))
    };
    let valid = value.split(',').all(|directive| {
        let directive = directive.trim();
        match directive.split_once('=') {
            None => token(directive),
            Some((name, argument)) => token(name) && (token(argument) || quoted(argument)),
        }
    });
    if !valid {
        return Err(ConfigError::new(
            "CACHE_CONTROL",
            format!("expected Cache-Control directives such as 'no-cache' or 'max-age=5, public', or empty for no header; got {value:?}"),
        ));
    }
    Ok(Some(value.trim().to_owned()))
}

fn parse_redis_url(url: &str) -> Result<RedisTarget, ConfigError> {
    let accepted = "expected redis://host:port, rediss://host:port (with REDIS_CA_FILE) or redis+unix:///path/to.sock";
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| ConfigError::new("REDIS_URL", format!("{accepted}; got no scheme")))?;
    let tls = match scheme {
        "redis" | "redis+unix" => false,
        "rediss" => true,
        other => {
            return Err(ConfigError::new(
                "REDIS_URL",
                format!("{accepted}; got scheme '{other}'"),
            ))
        }
    };
    let target = RedisTarget {
        url: url.to_owned(),
        tls,
        password: None,
    };
    if scheme == "redis+unix" {
        // As in any URL, the path starts after the authority (`[user:password@]host`).
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        if path.len() < 2 {
            return Err(ConfigError::new(
                "REDIS_URL",
                format!("{accepted}; the unix socket path must be absolute, got '{target}'"),
            ));
        }
    } else {
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        if host.is_empty() || host.starts_with(['/', ':']) {
            return Err(ConfigError::new(
                "REDIS_URL",
                format!("{accepted}; got no host in '{target}'"),
            ));
        }
    }
    // fred's own parser is the final word on what it can connect to.
    fred::types::config::Config::from_url(url).map_err(|e| {
        ConfigError::new(
            "REDIS_URL",
            format!("{accepted}; {target} is invalid: {}", e.details()),
        )
    })?;
    Ok(target)
}

/// The first line of the file at `path`: a Secret's key mounted as a file, so that the
/// password is in neither the environment nor the pod spec.
fn password_file(
    redis: &RedisTarget,
    path: &str,
    read_file: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<Password, ConfigError> {
    let variable = "REDIS_PASSWORD_FILE";
    let in_url =
        fred::types::config::Config::from_url(&redis.url).is_ok_and(|c| c.password.is_some());
    if in_url {
        return Err(ConfigError::new(
            variable,
            format!("REDIS_URL ({redis}) carries a password too: give it in one place only"),
        ));
    }
    let text = read_file(path)
        .map_err(|e| ConfigError::new(variable, format!("cannot read {path}: {e}")))?;
    let password = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if password.is_empty() {
        return Err(ConfigError::new(
            variable,
            format!("{path} is empty: expected the password on its first line"),
        ));
    }
    Ok(Password(password.to_owned()))
}

fn socket_addr(
    variable: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let value = value.as_deref().unwrap_or(default);
    value.parse().map_err(|_| {
        ConfigError::new(
            variable,
            format!("expected an IP address and port such as {default}, got '{value}'"),
        )
    })
}

fn number<T>(
    variable: &'static str,
    value: Option<String>,
    range: std::ops::RangeInclusive<T>,
    default: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let Some(value) = value else {
        return Ok(default);
    };
    let accepts = || {
        format!(
            "expected a whole number from {} to {}",
            range.start(),
            range.end()
        )
    };
    let parsed: T = value
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(variable, format!("{}, got '{value}'", accepts())))?;
    if !range.contains(&parsed) {
        return Err(ConfigError::new(
            variable,
            format!("{}, got {parsed}", accepts()),
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_point_at_the_local_replica() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.redis.url, "redis://127.0.0.1:6379");
        assert_eq!(s.listen_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(s.admin_addr, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(s.redis_timeout, Duration::from_millis(1000));
        assert_eq!(s.max_key_bytes, 1024);
        assert_eq!(s.max_batch_keys, 100);
        assert_eq!(s.max_hash_fields, 1024);
        assert_eq!(s.replica_poll, Duration::from_millis(1000));
        assert_eq!(s.ready_max_link_down, None);
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(s.workers >= 1);
        assert_eq!(s.shutdown_delay, Duration::from_secs(5));
        assert_eq!(s.max_value_bytes, 1_048_576);
        assert_eq!(s.max_batch_response_bytes, 8_388_608);
        assert_eq!(s.cache_control.as_deref(), Some("no-cache"));
        assert_eq!(s.heartbeat_key.as_deref(), Some("read-api:heartbeat"));
        assert_eq!(s.cache_max_bytes, 16 << 20);
        assert_eq!(s.cache_max_value_bytes, 64 << 10);
        assert_eq!(
            s.admission,
            AdmissionSettings {
                mode: AdmissionMode::Fixed,
                max_in_flight: DEFAULT_ADMISSION_MAX_IN_FLIGHT,
                min_in_flight: DEFAULT_ADMISSION_MIN_IN_FLIGHT,
                queue: Duration::from_millis(DEFAULT_ADMISSION_QUEUE_MS),
                max_connections: DEFAULT_ADMISSION_MAX_CONNECTIONS,
            }
        );
    }

    #[test]
    fn admission_turns_off_or_fixed_and_keeps_its_floor_under_its_ceiling() {
        let mode = |value| settings(&[("ADMISSION", value)]).unwrap().admission.mode;
        assert_eq!(mode("off"), AdmissionMode::Off);
        assert_eq!(mode("fixed"), AdmissionMode::Fixed);
        assert_eq!(mode("adaptive"), AdmissionMode::Adaptive);
        // A ceiling under the default floor takes the floor down with it.
        let s = settings(&[("ADMISSION_MAX_IN_FLIGHT", "2")]).unwrap();
        assert_eq!(
            (s.admission.min_in_flight, s.admission.max_in_flight),
            (2, 2)
        );
        let err = settings(&[
            ("ADMISSION_MAX_IN_FLIGHT", "16"),
            ("ADMISSION_MIN_IN_FLIGHT", "17"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "ADMISSION_MIN_IN_FLIGHT");
        assert!(
            err.problem.contains("ADMISSION_MAX_IN_FLIGHT (16)"),
            "{err}"
        );
        let s = settings(&[("ADMISSION_MAX_CONNECTIONS", "64")]).unwrap();
        assert_eq!(s.admission.max_connections, 64);
        let err = settings(&[("ADMISSION_MAX_CONNECTIONS", "0")]).unwrap_err();
        assert_eq!(err.variable, "ADMISSION_MAX_CONNECTIONS");
    }

    #[test]
    fn the_cache_turns_off_with_zero_and_bounds_its_values() {
        assert_eq!(
            settings(&[("CACHE_MAX_BYTES", "0")])
                .unwrap()
                .cache_max_bytes,
            0
        );
        let s = settings(&[
            ("CACHE_MAX_BYTES", "0"),
            ("CACHE_MAX_VALUE_BYTES", "1048576"),
        ]);
        assert!(s.is_ok(), "no bound between the two while the cache is off");
        let err = settings(&[
            ("CACHE_MAX_BYTES", "1048576"),
            ("CACHE_MAX_VALUE_BYTES", "1048576"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "CACHE_MAX_VALUE_BYTES");
    }

    #[test]
    fn empty_cache_control_and_heartbeat_key_mean_off() {
        let s = settings(&[("CACHE_CONTROL", ""), ("HEARTBEAT_KEY", "")]).unwrap();
        assert_eq!((s.cache_control, s.heartbeat_key), (None, None));
        let s = settings(&[("CACHE_CONTROL", "max-age=5, public, community=\"UCI\"")]).unwrap();
        assert_eq!(
            s.cache_control.as_deref(),
            Some("max-age=5, public, community=\"UCI\"")
        );
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let cases = [
            ("REDIS_URL", "http://x:1"),
            ("REDIS_URL", "localhost:6379"),
            ("REDIS_URL", "redis+unix://relative.sock"),
            ("REDIS_POOL_SIZE", "0"),
            ("REDIS_POOL_SIZE", "many"),
            ("REDIS_TIMEOUT_MS", "-5"),
            ("LISTEN_ADDR", "8080"),
            ("ADMIN_ADDR", "localhost"),
            ("WORKERS", "0"),
            ("MAX_KEY_BYTES", "1e3"),
            ("MAX_BATCH_KEYS", "100000"),
            ("MAX_HASH_FIELDS", "0"),
            ("MAX_HASH_FIELDS", "100001"),
            ("LOG_FORMAT", "yaml"),
            ("SHUTDOWN_GRACE_SECONDS", "forever"),
            ("READY_MAX_LINK_DOWN_SECONDS", "0"),
            ("REPLICA_POLL_MS", "1"),
            ("SHUTDOWN_DELAY_SECONDS", "3601"),
            ("MAX_VALUE_BYTES", "0"),
            ("MAX_BATCH_RESPONSE_BYTES", "1MiB"),
            ("CACHE_CONTROL", "max-age=5\r\nX-Evil: 1"),
            ("CACHE_CONTROL", "no cache"),
            ("CACHE_MAX_BYTES", "-1"),
            ("CACHE_MAX_BYTES", "16MiB"),
            ("CACHE_MAX_VALUE_BYTES", "0"),
            ("ADMISSION", "on"),
            ("ADMISSION_MAX_IN_FLIGHT", "0"),
            ("ADMISSION_MAX_IN_FLIGHT", "lots"),
            ("ADMISSION_MIN_IN_FLIGHT", "0"),
            ("ADMISSION_MIN_IN_FLIGHT", "-1"),
            ("ADMISSION_QUEUE_MS", "60001"),
            ("ADMISSION_QUEUE_MS", "2ms"),
            ("POSITION_MAX_WAIT_MS", "60001"),
            ("POSITION_MAX_WAIT_MS", "1s"),
            ("WATCH_MAX_WATCHERS", "-1"),
            ("WATCH_MAX_KEYS", "0"),
            ("WATCH_MAX_KEYS", "10001"),
            ("WATCH_HEARTBEAT_SECONDS", "0"),
            ("WATCH_HEARTBEAT_SECONDS", "15s"),
            ("WATCH_HISTORY", "0"),
        ];
        for (variable, value) in cases {
            let err = settings(&[(variable, value)]).expect_err(variable);
            assert_eq!(err.variable, variable, "{value}: {err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn tls_needs_a_ca_and_plaintext_refuses_one() {
        let err = settings(&[("REDIS_URL", "rediss://master:6380")]).unwrap_err();
        assert_eq!(err.variable, "REDIS_CA_FILE");
        let err = settings(&[("REDIS_CA_FILE", "/ca.pem")]).unwrap_err();
        assert_eq!(err.variable, "REDIS_CA_FILE");
        let s = settings(&[
            ("REDIS_URL", "rediss://master:6380"),
            ("REDIS_CA_FILE", "/ca.pem"),
        ])
        .unwrap();
        assert!(s.redis.tls);
    }

    /// From the config fuzz target: a path with a newline made a two-line message.
    #[test]
    fn a_value_with_a_newline_is_refused_on_one_line() {
        for (variable, value) in [
            ("REDIS_PASSWORD_FILE", "/no/such\nfile"),
            ("LOG_FORMAT", "json\r\ntext"),
            ("WORKERS", "1\n2"),
            ("LISTEN_ADDR", "\u{14}0.0.0.0:1"),
        ] {
            let err = settings(&[(variable, value)]).unwrap_err();
            let line = err.to_string();
            assert_eq!(err.variable, variable, "{line}");
            assert!(!line.contains(char::is_control), "{line:?}");
            assert!(line.contains(&value.escape_debug().to_string()), "{line:?}");
        }
    }

    #[test]
    fn same_listener_twice_is_refused() {
        let err = settings(&[
            ("LISTEN_ADDR", "127.0.0.1:8080"),
            ("ADMIN_ADDR", "127.0.0.1:8080"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "ADMIN_ADDR");
    }

    #[test]
    fn empty_values_mean_unset() {
        let s = settings(&[("READY_MAX_LINK_DOWN_SECONDS", ""), ("WORKERS", "")]).unwrap();
        assert_eq!(s.ready_max_link_down, None);
    }

    #[test]
    fn unix_sockets_are_accepted() {
        let s = settings(&[("REDIS_URL", "redis+unix:///run/redis/redis.sock")]).unwrap();
        assert!(!s.redis.tls);
        settings(&[(
            "REDIS_URL",
            "redis+unix://:secret@localhost/run/redis/redis.sock",
        )])
        .unwrap();
    }

    #[test]
    fn passwords_never_reach_the_display_form() {
        let s = settings(&[("REDIS_URL", "redis://default:hunter2@10.0.0.1:6379")]).unwrap();
        assert!(!s.redis.to_string().contains("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn the_password_file_gives_its_first_line_and_never_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "hunter2\r\nsecond line\n").unwrap();
        let path = path.to_str().unwrap();
        let s = settings(&[
            ("REDIS_URL", "redis://api@10.0.0.1:6379"),
            ("REDIS_PASSWORD_FILE", path),
        ])
        .unwrap();
        assert_eq!(
            s.redis.password.as_ref().map(Password::expose),
            Some("hunter2")
        );
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn a_bad_password_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let given = dir.path().join("given");
        std::fs::write(&given, "pw").unwrap();
        let cases = [
            (
                "redis://127.0.0.1:6379",
                "/nonexistent/password",
                "cannot read /nonexistent/password",
            ),
            (
                "redis://127.0.0.1:6379",
                empty.to_str().unwrap(),
                "is empty",
            ),
            (
                "redis://:inline@127.0.0.1:6379",
                given.to_str().unwrap(),
                "one place only",
            ),
        ];
        for (url, path, problem) in cases {
            let err = settings(&[("REDIS_URL", url), ("REDIS_PASSWORD_FILE", path)]).unwrap_err();
            assert_eq!(err.variable, "REDIS_PASSWORD_FILE", "{url} {path}");
            assert!(
                err.problem.contains(problem),
                "{url} {path}: {}",
                err.problem
            );
            assert!(!err.problem.contains("inline"), "{}", err.problem);
        }
    }
}
