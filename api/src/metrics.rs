//! Prometheus metrics: every name in one place, handles resolved before traffic.
//!
//! Ours are prefixed `read_api_`; the standard `process_*` metrics (CPU,
//! memory, file descriptors, start time) come from the same registry.
//!
//! Label lookups hash and lock, so the request path only touches handles
//! resolved at start ([`RouteMetrics`]); label sets that are rare (unusual
//! statuses, Redis error kinds) are looked up when they happen.

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const HTTP_REQUESTS_TOTAL: &str = "read_api_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "read_api_http_request_duration_seconds";
pub const REDIS_ERRORS_TOTAL: &str = "read_api_redis_errors_total";
pub const REDIS_UP: &str = "read_api_redis_up";
pub const READY: &str = "read_api_ready";
pub const REPLICA_ROLE: &str = "read_api_replica_role";
pub const REPLICA_SYNCED: &str = "read_api_replica_synced";
pub const REPLICA_LINK_UP: &str = "read_api_replica_link_up";
pub const REPLICA_LAST_IO_SECONDS: &str = "read_api_replica_last_io_seconds";
pub const REPLICA_LINK_DOWN_SECONDS: &str = "read_api_replica_link_down_seconds";
pub const REPLICA_SYNC_IN_PROGRESS: &str = "read_api_replica_sync_in_progress";
pub const REPLICA_OFFSET_BYTES: &str = "read_api_replica_offset_bytes";
pub const REPLICA_HEARTBEAT_AGE_SECONDS: &str = "read_api_replica_heartbeat_age_seconds";
pub const BUILD_INFO: &str = "read_api_build_info";
pub const CACHE_HITS_TOTAL: &str = "read_api_cache_hits_total";
pub const CACHE_MISSES_TOTAL: &str = "read_api_cache_misses_total";
pub const CACHE_INVALIDATIONS_TOTAL: &str = "read_api_cache_invalidations_total";
pub const CACHE_EVICTIONS_TOTAL: &str = "read_api_cache_evictions_total";
pub const CACHE_FILLS_DISCARDED_TOTAL: &str = "read_api_cache_fills_discarded_total";
pub const CACHE_FLUSHES_TOTAL: &str = "read_api_cache_flushes_total";
pub const CACHE_ENTRIES: &str = "read_api_cache_entries";
pub const CACHE_BYTES: &str = "read_api_cache_bytes";
pub const CACHE_TRACKING_UP: &str = "read_api_cache_tracking_up";
pub const ADMISSION_ADMITTED_TOTAL: &str = "read_api_admission_admitted_total";
pub const ADMISSION_SHED_TOTAL: &str = "read_api_admission_shed_total";
pub const ADMISSION_LIMIT: &str = "read_api_admission_limit";
pub const ADMISSION_IN_FLIGHT: &str = "read_api_admission_in_flight";
pub const WATCH_WATCHERS: &str = "read_api_watch_watchers";
pub const WATCH_EVENTS_TOTAL: &str = "read_api_watch_events_total";
pub const WATCH_RESYNCS_TOTAL: &str = "read_api_watch_resyncs_total";
pub const WATCH_READS_TOTAL: &str = "read_api_watch_reads_total";
pub const CONSISTENCY_REFUSALS_TOTAL: &str = "read_api_consistency_refusals_total";
pub const POSITION_WAITS_TOTAL: &str = "read_api_position_waits_total";
pub const POSITION_WAIT_SECONDS: &str = "read_api_position_wait_seconds";

/// 50 µs to 1 s: a local replica answers in tens of microseconds, a remote
/// master over TLS in milliseconds, and anything near a second is an outage.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Statuses the routes answer with; each gets a handle resolved at start.
const COMMON_STATUSES: [u16; 8] = [200, 304, 400, 404, 405, 409, 502, 503];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    redis_errors: IntCounterVec,
    pub redis_up: IntGauge,
    pub ready: IntGauge,
    pub replica_role: IntGauge,
    pub replica_synced: IntGauge,
    pub replica_link_up: IntGauge,
    pub replica_last_io_seconds: Gauge,
    pub replica_link_down_seconds: Gauge,
    pub replica_sync_in_progress: IntGauge,
    pub replica_offset_bytes: IntGauge,
    pub replica_heartbeat_age_seconds: Gauge,
    pub cache: CacheMetrics,
    pub admission: AdmissionMetrics,
    pub consistency: ConsistencyMetrics,
    pub watch: WatchMetrics,
}

/// The kinds of event a change stream sends (see `watch`), each exported from the start.
pub const WATCH_EVENTS: [&str; 4] = ["snapshot", "resumed", "change", "shutdown"];
/// Why a stream was sent every value again, each exported from the start at 0.
pub const WATCH_RESYNC_REASONS: [&str; 8] = [
    "unknown_id",
    "keys_changed",
    "history_gap",
    "tracking_lost",
    "redis_flush",
    "invalidations_lost",
    "redis_unavailable",
    "lagged",
];

/// The change streams' gauge and counters (see `watch`).
#[derive(Clone)]
pub struct WatchMetrics {
    pub watchers: IntGauge,
    events: IntCounterVec,
    resyncs: IntCounterVec,
    pub reads: IntCounter,
}

impl WatchMetrics {
    /// One event of a kind in [`WATCH_EVENTS`] written to a stream.
    pub fn event(&self, kind: &str) {
        self.events.with_label_values(&[kind]).inc();
    }

    /// One stream sent every value again, for a reason in [`WATCH_RESYNC_REASONS`].
    pub fn resync(&self, reason: &str) {
        self.resyncs.with_label_values(&[reason]).inc();
    }
}

/// Why a read was refused for what the client asked of its freshness (see
/// `routes::consistency`): data older than `Max-Staleness`, data of unknown
/// age, a `Min-Position` not reached in time, or one of another history.
pub const REFUSAL_REASONS: [&str; 4] = [
    "too_stale",
    "age_unknown",
    "position_not_reached",
    "position_other_history",
];

/// 1 ms to 60 s: a replica catches up within milliseconds; the rest is the
/// range of `POSITION_MAX_WAIT_MS`.
pub const POSITION_WAIT_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// The freshness refusals and the waits of reads with a position token.
#[derive(Clone)]
pub struct ConsistencyMetrics {
    /// One per entry of [`REFUSAL_REASONS`], resolved at start.
    pub refusals: [IntCounter; REFUSAL_REASONS.len()],
    refusals_vec: IntCounterVec,
    /// Reads with `Min-Position` the last poll could not answer, which asked Redis again.
    pub waits: IntCounter,
    /// How long those waits took, reached or not.
    pub wait_seconds: Histogram,
}

/// Why admission control refused a request: the worker was at
/// `ADMISSION_MAX_IN_FLIGHT`, or at a bound the latency had lowered below it.
pub const SHED_REASONS: [&str; 2] = ["max_in_flight", "latency"];

/// Admission control's counters and gauges (see `admission`); the gauges
/// add up every worker's share.
#[derive(Clone)]
pub struct AdmissionMetrics {
    pub admitted: IntCounter,
    /// One per entry of [`SHED_REASONS`], resolved at start.
    pub shed: [IntCounter; SHED_REASONS.len()],
    shed_vec: IntCounterVec,
    pub limit: IntGauge,
    pub in_flight: IntGauge,
}

/// The value cache's counters and gauges (see `cache`).
#[derive(Clone)]
pub struct CacheMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub invalidations: IntCounter,
    pub evictions: IntCounter,
    pub fills_discarded: IntCounter,
    flushes: IntCounterVec,
    pub entries: IntGauge,
    pub bytes: IntGauge,
    pub tracking_up: IntGauge,
}

impl CacheMetrics {
    /// Why the whole cache was dropped: one of `FLUSH_REASONS`.
    pub fn flushed(&self, reason: &str) {
        self.flushes.with_label_values(&[reason]).inc();
    }
}

/// Why the cache may be dropped whole; each is exported from the start at 0.
pub const FLUSH_REASONS: [&str; 5] = [
    "tracking_down",
    "tracking_up",
    "redis_flush",
    "invalidations_lost",
    "resync",
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(HTTP_REQUESTS_TOTAL, "HTTP requests by route and status."),
            &["route", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(HTTP_REQUEST_DURATION_SECONDS, "Time to answer, by route.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let redis_errors = IntCounterVec::new(
            Opts::new(REDIS_ERRORS_TOTAL, "Failed Redis commands by kind."),
            &["kind"],
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let float_gauge = |name: &str, help: &str| Gauge::new(name, help).expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(BUILD_INFO, "Version of the running binary."),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let flushes = IntCounterVec::new(
            Opts::new(
                CACHE_FLUSHES_TOTAL,
                "Times the whole value cache was dropped, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in FLUSH_REASONS {
            flushes.with_label_values(&[reason]);
        }
        let cache = CacheMetrics {
            hits: counter(CACHE_HITS_TOTAL, "Reads answered from the value cache."),
            misses: counter(
                CACHE_MISSES_TOTAL,
                "Reads of keys not in the value cache, while it was serving.",
            ),
            invalidations: counter(
                CACHE_INVALIDATIONS_TOTAL,
                "Keys Redis reported as changed, through the tracking connection.",
            ),
            evictions: counter(
                CACHE_EVICTIONS_TOTAL,
                "Entries pushed out of the value cache to stay within CACHE_MAX_BYTES.",
            ),
            fills_discarded: counter(
                CACHE_FILLS_DISCARDED_TOTAL,
                "Values read from Redis but not kept: the key changed, or the cache was dropped, while the read was in flight.",
            ),
            flushes,
            entries: gauge(CACHE_ENTRIES, "Entries in the value cache."),
            bytes: gauge(
                CACHE_BYTES,
                "Bytes the value cache accounts for (keys, values, answer bodies and a fixed overhead per entry).",
            ),
            tracking_up: gauge(
                CACHE_TRACKING_UP,
                "1 while the tracking connection receives invalidations and the value cache serves; 0 while it is bypassed.",
            ),
        };
        let shed = IntCounterVec::new(
            Opts::new(
                ADMISSION_SHED_TOTAL,
                "Requests refused with 503 overloaded before any work, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let admission = AdmissionMetrics {
            admitted: counter(
                ADMISSION_ADMITTED_TOTAL,
                "Requests admitted by admission control (all of them while it is off).",
            ),
            shed: SHED_REASONS.map(|reason| shed.with_label_values(&[reason])),
            shed_vec: shed,
            limit: gauge(
                ADMISSION_LIMIT,
                "Requests the workers admit at once, summed over workers; 0 while admission control is off.",
            ),
            in_flight: gauge(
                ADMISSION_IN_FLIGHT,
                "Requests admitted and not yet answered, summed over workers.",
            ),
        };
        let refusals = IntCounterVec::new(
            Opts::new(
                CONSISTENCY_REFUSALS_TOTAL,
                "Reads refused with 503 for Max-Staleness or Min-Position, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let consistency = ConsistencyMetrics {
            refusals: REFUSAL_REASONS.map(|reason| refusals.with_label_values(&[reason])),
            refusals_vec: refusals,
            waits: counter(
                POSITION_WAITS_TOTAL,
                "Reads with Min-Position: each asks Redis for its position (one INFO shared by the reads waiting at once) until reached or its bound.",
            ),
            wait_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    POSITION_WAIT_SECONDS,
                    "Time reads with Min-Position waited for the replica, reached or not.",
                )
                .buckets(POSITION_WAIT_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        };
        let events = IntCounterVec::new(
            Opts::new(
                WATCH_EVENTS_TOTAL,
                "Events written to change streams (/v1/watch), by event; heartbeats not counted.",
            ),
            &["event"],
        )
        .expect("valid metric");
        for event in WATCH_EVENTS {
            events.with_label_values(&[event]);
        }
        let resyncs = IntCounterVec::new(
            Opts::new(
                WATCH_RESYNCS_TOTAL,
                "Snapshots sent to a change stream that was not just starting: every value again, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in WATCH_RESYNC_REASONS {
            resyncs.with_label_values(&[reason]);
        }
        let watch = WatchMetrics {
            watchers: gauge(WATCH_WATCHERS, "Change streams (/v1/watch) open."),
            events,
            resyncs,
            reads: counter(
                WATCH_READS_TOTAL,
                "Reads of watched keys by the change streams' hub: one per change (or load) of a key, shared by all its watchers.",
            ),
        };
        let metrics = Self {
            cache,
            admission,
            watch,
            consistency,
            http_requests,
            http_duration,
            redis_errors,
            redis_up: gauge(REDIS_UP, "1 when the last INFO poll of Redis succeeded."),
            ready: gauge(READY, "1 when /readyz answers 200."),
            replica_role: gauge(
                REPLICA_ROLE,
                "1 when Redis reports role:slave, 0 for a master.",
            ),
            replica_synced: gauge(
                REPLICA_SYNCED,
                "1 once the replica completed a full sync since the API started.",
            ),
            replica_link_up: gauge(REPLICA_LINK_UP, "1 when master_link_status is up."),
            replica_last_io_seconds: float_gauge(
                REPLICA_LAST_IO_SECONDS,
                "Seconds since the replica last heard from its master.",
            ),
            replica_link_down_seconds: float_gauge(
                REPLICA_LINK_DOWN_SECONDS,
                "Seconds the link to the master has been down: 0 while up; counted from when the API first saw it down, or from the API's start if it was never up.",
            ),
            replica_sync_in_progress: gauge(
                REPLICA_SYNC_IN_PROGRESS,
                "1 while the replica is receiving a full sync.",
            ),
            replica_offset_bytes: gauge(
                REPLICA_OFFSET_BYTES,
                "Replication offset the replica has processed, in bytes of the replication stream.",
            ),
            replica_heartbeat_age_seconds: float_gauge(
                REPLICA_HEARTBEAT_AGE_SECONDS,
                "Seconds since the master wrote HEARTBEAT_KEY, as this Redis has it; -1 when unknown (no key, not a number, Redis unreachable, or HEARTBEAT_KEY empty).",
            ),
            registry,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.http_requests.clone()),
            Box::new(metrics.http_duration.clone()),
            Box::new(metrics.redis_errors.clone()),
            Box::new(metrics.redis_up.clone()),
            Box::new(metrics.ready.clone()),
            Box::new(metrics.replica_role.clone()),
            Box::new(metrics.replica_synced.clone()),
            Box::new(metrics.replica_link_up.clone()),
            Box::new(metrics.replica_last_io_seconds.clone()),
            Box::new(metrics.replica_link_down_seconds.clone()),
            Box::new(metrics.replica_sync_in_progress.clone()),
            Box::new(metrics.replica_offset_bytes.clone()),
            Box::new(metrics.replica_heartbeat_age_seconds.clone()),
            Box::new(metrics.cache.hits.clone()),
            Box::new(metrics.cache.misses.clone()),
            Box::new(metrics.cache.invalidations.clone()),
            Box::new(metrics.cache.evictions.clone()),
            Box::new(metrics.cache.fills_discarded.clone()),
            Box::new(metrics.cache.flushes.clone()),
            Box::new(metrics.cache.entries.clone()),
            Box::new(metrics.cache.bytes.clone()),
            Box::new(metrics.cache.tracking_up.clone()),
            Box::new(metrics.admission.admitted.clone()),
            Box::new(metrics.admission.shed_vec.clone()),
            Box::new(metrics.admission.limit.clone()),
            Box::new(metrics.watch.watchers.clone()),
            Box::new(metrics.watch.events.clone()),
            Box::new(metrics.watch.resyncs.clone()),
            Box::new(metrics.watch.reads.clone()),
            Box::new(metrics.admission.in_flight.clone()),
            Box::new(metrics.consistency.refusals_vec.clone()),
            Box::new(metrics.consistency.waits.clone()),
            Box::new(metrics.consistency.wait_seconds.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for collector in collectors {
            metrics
                .registry
                .register(collector)
                .expect("metric names are unique");
        }
        metrics.replica_heartbeat_age_seconds.set(-1.0);
        metrics
    }

    /// Handles for one route, to be used on its request path.
    pub fn route(&self, route: &'static str) -> RouteMetrics {
        RouteMetrics(Arc::new(RouteHandles {
            route,
            duration: self.http_duration.with_label_values(&[route]),
            by_status: COMMON_STATUSES.map(|status| {
                self.http_requests
                    .with_label_values(&[route, &status.to_string()])
            }),
            requests: self.http_requests.clone(),
        }))
    }

    pub fn redis_error(&self, kind: &str) {
        self.redis_errors.with_label_values(&[kind]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(buffer).expect("the text encoder writes UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

struct RouteHandles {
    route: &'static str,
    duration: Histogram,
    by_status: [IntCounter; COMMON_STATUSES.len()],
    requests: IntCounterVec,
}

/// Pre-resolved metric handles for one route.
#[derive(Clone)]
pub struct RouteMetrics(Arc<RouteHandles>);

impl RouteMetrics {
    pub fn name(&self) -> &'static str {
        self.0.route
    }

    pub fn observe(&self, status: u16, seconds: f64) {
        self.0.duration.observe(seconds);
        match COMMON_STATUSES.iter().position(|&s| s == status) {
            Some(i) => self.0.by_status[i].inc(),
            None => self
                .0
                .requests
                .with_label_values(&[self.0.route, &status.to_string()])
                .inc(),
        }
    }
}
