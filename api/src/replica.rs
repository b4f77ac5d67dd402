//! Readiness from Redis's own account of itself.
//!
//! A background task polls `INFO server replication persistence` every
//! `REPLICA_POLL_MS` and keeps the verdict in memory: probes and requests
//! never wait on Redis for it. The same poll reads `HEARTBEAT_KEY`, which the
//! master side sets to its clock, to tell how old the data served is.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::time::MissedTickBehavior;

use crate::{
    cache::ValueCache,
    fault,
    freshness::Freshness,
    metrics::Metrics,
    store::{Store, WorkerPools},
};

/// What one `INFO` poll says about the Redis the API reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisStatus {
    /// Changes when the Redis process restarts, which empties a replica.
    pub run_id: String,
    pub is_replica: bool,
    pub link_up: bool,
    pub sync_in_progress: bool,
    pub loading: bool,
    pub last_io_seconds: Option<f64>,
    pub link_down_seconds: Option<f64>,
    pub offset: i64,
    /// The replication id this Redis follows (or, for a master, its own).
    pub master_replid: String,
    /// The history the one above continues, valid below `second_repl_offset`.
    pub master_replid2: String,
    pub second_repl_offset: i64,
    /// A diskless load into a second data set, swapped in at its end.
    pub async_loading: bool,
}

impl RedisStatus {
    /// Parses the `field:value` lines of `INFO`; unknown fields are ignored.
    pub fn parse(info: &str) -> Self {
        let mut status = Self::default();
        for (field, value) in info.lines().filter_map(|l| l.trim_end().split_once(':')) {
            match field {
                "run_id" => status.run_id = value.to_owned(),
                "role" => status.is_replica = value == "slave",
                "master_link_status" => status.link_up = value == "up",
                "master_sync_in_progress" => status.sync_in_progress = value == "1",
                // `async_loading` is a replica loading a diskless sync in the
                // background while still serving the old data set: not a gap.
                "loading" => status.loading = value == "1",
                "async_loading" => status.async_loading = value == "1",
                "master_replid" => status.master_replid = value.to_owned(),
                "master_replid2" => status.master_replid2 = value.to_owned(),
                "second_repl_offset" => status.second_repl_offset = value.parse().unwrap_or(-1),
                "master_last_io_seconds_ago" => {
                    status.last_io_seconds = value.parse().ok().filter(|s: &f64| *s >= 0.0)
                }
                "master_link_down_since_seconds" => {
                    status.link_down_seconds = value.parse().ok().filter(|s: &f64| *s >= 0.0)
                }
                "slave_repl_offset" => status.offset = value.parse().unwrap_or(0),
                "master_repl_offset" if !status.is_replica => {
                    status.offset = value.parse().unwrap_or(0)
                }
                _ => {}
            }
        }
        status
    }

    /// What changes when the data set may have been replaced: a restart, a new
    /// replication history, the link's state, a sync or a load. The value
    /// cache is dropped when it changes (see [`monitor`]).
    fn data_set_fingerprint(&self) -> (&str, &str, bool, bool, bool, bool) {
        (
            &self.run_id,
            &self.master_replid,
            self.link_up,
            self.sync_in_progress,
            self.loading,
            self.async_loading,
        )
    }

    /// A full, finished sync: the link is up and no transfer or load is under way.
    fn is_synced(&self) -> bool {
        self.link_up && !self.sync_in_progress && !self.loading
    }
}

/// How long the master link has been down, as the API counts it.
///
/// Redis reports `master_link_down_since_seconds` only once a link it had is
/// lost: a replica that never reached its master says -1, which used to read
/// as 0, so an alert on the gauge never fired for the worst case.
#[derive(Debug)]
pub struct LinkClock {
    api_started: Instant,
    seen_up: bool,
    down_since: Option<Instant>,
}

impl LinkClock {
    pub fn new(api_started: Instant) -> Self {
        Self {
            api_started,
            seen_up: false,
            down_since: None,
        }
    }

    /// Seconds down at `now`: 0 while up (and for a master); otherwise since
    /// the API first saw the link down, or since the API started if it has
    /// never seen it up; never less than Redis's own count.
    pub fn seconds_down(&mut self, status: &RedisStatus, now: Instant) -> f64 {
        if !status.is_replica || status.link_up {
            self.seen_up |= status.is_replica;
            self.down_since = None;
            return 0.0;
        }
        let since =
            *self
                .down_since
                .get_or_insert(if self.seen_up { now } else { self.api_started });
        let ours = now.saturating_duration_since(since).as_secs_f64();
        ours.max(status.link_down_seconds.unwrap_or(0.0))
    }
}

/// Seconds between the master's clock as written in the heartbeat key (unix
/// milliseconds, decimal) and `now`; -1 when there is no usable value. A
/// master clock slightly ahead of ours reads as 0, not as a negative age.
pub fn heartbeat_age(value: Option<&[u8]>, now: SystemTime) -> f64 {
    let Some(millis) = value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return -1.0;
    };
    let now_millis = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now_millis.saturating_sub(millis) as f64 / 1000.0
}

/// Why the pod is not ready; the text is what `/readyz` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    Starting,
    RedisUnreachable,
    WorkersConnecting,
    RedisLoading,
    ReplicaNotSynced,
    MasterLinkDownTooLong,
    ShuttingDown,
}

impl NotReady {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Starting => "starting: no answer from redis yet",
            Self::RedisUnreachable => "redis_unreachable: the last INFO poll failed",
            Self::WorkersConnecting => {
                "workers_connecting: an http worker has no redis connection yet"
            }
            Self::RedisLoading => "redis_loading: redis is loading its data set",
            Self::ReplicaNotSynced => {
                "replica_not_synced: no full sync from the master since the api started"
            }
            Self::MasterLinkDownTooLong => {
                "master_link_down: longer than READY_MAX_LINK_DOWN_SECONDS"
            }
            Self::ShuttingDown => "shutting_down",
        }
    }
}

/// The readiness rules, fed one poll at a time.
#[derive(Debug)]
pub struct ReadinessRules {
    max_link_down: Option<Duration>,
    /// The run id of the replica process that completed a full sync, if any.
    synced_run_id: Option<String>,
}

impl ReadinessRules {
    pub fn new(max_link_down: Option<Duration>) -> Self {
        Self {
            max_link_down,
            synced_run_id: None,
        }
    }

    pub fn has_synced(&self) -> bool {
        self.synced_run_id.is_some()
    }

    /// The verdict after one poll of `INFO`.
    pub fn evaluate(&mut self, poll: Option<&RedisStatus>) -> Result<(), NotReady> {
        let Some(status) = poll else {
            return Err(NotReady::RedisUnreachable);
        };
        if status.loading {
            return Err(NotReady::RedisLoading);
        }
        if !status.is_replica {
            return Ok(());
        }
        // A replica that restarts comes back empty; its earlier sync no longer counts.
        if self.synced_run_id.as_deref() != Some(status.run_id.as_str()) {
            self.synced_run_id = None;
            // A sync in progress means the data set is about to be replaced:
            // only a finished one counts as the first sync.
            if !status.is_synced() {
                return Err(NotReady::ReplicaNotSynced);
            }
            self.synced_run_id = Some(status.run_id.clone());
        }
        // Once synced, stale reads beat no reads: a lost master keeps the pod
        // ready unless the operator bounded how stale it may get.
        if let (Some(limit), false) = (self.max_link_down, status.link_up) {
            if status.link_down_seconds.unwrap_or(0.0) >= limit.as_secs_f64() {
                return Err(NotReady::MasterLinkDownTooLong);
            }
        }
        Ok(())
    }
}

/// Shared readiness: written by the poll, read by `/readyz`.
#[derive(Clone)]
pub struct Readiness {
    verdict: Arc<Mutex<Result<(), NotReady>>>,
    shutting_down: Arc<AtomicBool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            verdict: Arc::new(Mutex::new(Err(NotReady::Starting))),
            shutting_down: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Readiness {
    pub fn current(&self) -> Result<(), NotReady> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(NotReady::ShuttingDown);
        }
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Fails readiness for good: the process is draining.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    fn set(&self, verdict: Result<(), NotReady>) {
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = verdict;
    }
}

/// What the monitor needs besides the store and where it reports.
#[derive(Debug, Clone)]
pub struct MonitorSettings {
    pub every: Duration,
    pub max_link_down: Option<Duration>,
    pub heartbeat_key: Option<String>,
    /// Where each poll publishes the data age and the replication position.
    pub freshness: Arc<Freshness>,
}

/// Polls Redis until the process ends, keeping `readiness` and the replica gauges current.
pub async fn monitor(
    store: Store,
    readiness: Readiness,
    metrics: Metrics,
    settings: MonitorSettings,
    cache: Option<Arc<ValueCache>>,
    workers: WorkerPools,
) {
    let mut previous: Option<RedisStatus> = None;
    let mut rules = ReadinessRules::new(settings.max_link_down);
    let mut link = LinkClock::new(Instant::now());
    let mut last_verdict = Err(NotReady::Starting);
    let mut ticks = tokio::time::interval(settings.every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut fault = std::pin::pin!(fault::fired(fault::Task::ReplicaMonitor));
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut fault => panic!("injected fault in the replica monitor"),
        }
        let polled = Instant::now();
        let poll = match store.info(&["server", "replication", "persistence"]).await {
            Ok(info) => {
                let mut status = RedisStatus::parse(&info);
                status.link_down_seconds = Some(link.seconds_down(&status, Instant::now()));
                Some(status)
            }
            Err(e) => {
                tracing::debug!(error = %crate::error::error_chain(&e), "INFO poll failed");
                None
            }
        };
        let heartbeat = match (&poll, &settings.heartbeat_key) {
            (Some(_), Some(key)) => match store.read_raw_head(key).await {
                Ok(value) => heartbeat_age(value.as_deref(), SystemTime::now()),
                Err(e) => {
                    tracing::debug!(error = %crate::error::error_chain(&e), "heartbeat read failed");
                    -1.0
                }
            },
            _ => -1.0,
        };
        metrics.replica_heartbeat_age_seconds.set(heartbeat);
        settings.freshness.observe(poll.as_ref(), heartbeat, polled);
        // A full resync replaces the replica's data. Redis reports that to
        // the tracking connection as a flush; this is the second line, for
        // what it may not report (a diskless load swapped in whole). A link
        // that went down and came back may have resynced between two polls,
        // so that counts too: a few misses are the whole cost.
        if let Some(status) = &poll {
            let changed = previous
                .as_ref()
                .is_some_and(|p| p.data_set_fingerprint() != status.data_set_fingerprint());
            if let (true, Some(cache)) = (changed, &cache) {
                cache.flush("resync");
            }
            previous = Some(status.clone());
        }
        let verdict = rules.evaluate(poll.as_ref()).and_then(|()| {
            if workers.all_connected() {
                Ok(())
            } else {
                Err(NotReady::WorkersConnecting)
            }
        });
        record(&metrics, poll.as_ref(), rules.has_synced(), verdict.is_ok());
        if verdict != last_verdict {
            match verdict {
                Ok(()) => tracing::info!("ready"),
                Err(why) => tracing::warn!(reason = why.reason(), "not ready"),
            }
            last_verdict = verdict;
        }
        readiness.set(verdict);
    }
}

fn record(metrics: &Metrics, poll: Option<&RedisStatus>, synced: bool, ready: bool) {
    metrics.ready.set(ready.into());
    metrics.redis_up.set(poll.is_some().into());
    let Some(status) = poll else { return };
    metrics.replica_role.set(status.is_replica.into());
    metrics.replica_synced.set(synced.into());
    metrics.replica_link_up.set(status.link_up.into());
    metrics
        .replica_sync_in_progress
        .set(status.sync_in_progress.into());
    metrics.replica_offset_bytes.set(status.offset);
    metrics
        .replica_last_io_seconds
        .set(status.last_io_seconds.unwrap_or(0.0));
    metrics
        .replica_link_down_seconds
        .set(status.link_down_seconds.unwrap_or(0.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYNCED: &str = "# Server\r\nrun_id:aaa\r\n# Replication\r\nrole:slave\r\nmaster_link_status:up\r\nmaster_last_io_seconds_ago:0\r\nmaster_sync_in_progress:0\r\nslave_repl_offset:42\r\n# Persistence\r\nloading:0\r\n";

    fn status(info: &str) -> RedisStatus {
        RedisStatus::parse(info)
    }

    #[test]
    fn parses_a_synced_replica() {
        let s = status(SYNCED);
        assert!(s.is_replica && s.link_up && !s.sync_in_progress && !s.loading);
        assert_eq!(
            (s.run_id.as_str(), s.offset, s.last_io_seconds),
            ("aaa", 42, Some(0.0))
        );
    }

    #[test]
    fn a_master_is_ready_when_it_answers() {
        let mut rules = ReadinessRules::new(None);
        let master = status("run_id:m\r\nrole:master\r\nmaster_repl_offset:7\r\nloading:0\r\n");
        assert_eq!(rules.evaluate(Some(&master)), Ok(()));
        assert_eq!(rules.evaluate(None), Err(NotReady::RedisUnreachable));
    }

    #[test]
    fn a_replica_is_ready_only_after_a_finished_sync() {
        let mut rules = ReadinessRules::new(None);
        let never = SYNCED.replace("master_link_status:up", "master_link_status:down");
        assert_eq!(
            rules.evaluate(Some(&status(&never))),
            Err(NotReady::ReplicaNotSynced)
        );
        let syncing = SYNCED.replace("master_sync_in_progress:0", "master_sync_in_progress:1");
        assert_eq!(
            rules.evaluate(Some(&status(&syncing))),
            Err(NotReady::ReplicaNotSynced)
        );
        let loading = SYNCED.replace("loading:0", "loading:1");
        assert_eq!(
            rules.evaluate(Some(&status(&loading))),
            Err(NotReady::RedisLoading)
        );
        assert_eq!(rules.evaluate(Some(&status(SYNCED))), Ok(()));
    }

    #[test]
    fn a_lost_master_keeps_a_synced_replica_ready_unless_bounded() {
        let down = SYNCED.replace(
            "master_link_status:up",
            "master_link_status:down\r\nmaster_link_down_since_seconds:30",
        );
        let mut unbounded = ReadinessRules::new(None);
        unbounded.evaluate(Some(&status(SYNCED))).unwrap();
        assert_eq!(unbounded.evaluate(Some(&status(&down))), Ok(()));

        let mut bounded = ReadinessRules::new(Some(Duration::from_secs(10)));
        bounded.evaluate(Some(&status(SYNCED))).unwrap();
        assert_eq!(
            bounded.evaluate(Some(&status(&down))),
            Err(NotReady::MasterLinkDownTooLong)
        );
        let briefly = down.replace("since_seconds:30", "since_seconds:3");
        assert_eq!(bounded.evaluate(Some(&status(&briefly))), Ok(()));
    }

    #[test]
    fn a_restarted_replica_must_sync_again() {
        let mut rules = ReadinessRules::new(None);
        rules.evaluate(Some(&status(SYNCED))).unwrap();
        let restarted = SYNCED
            .replace("run_id:aaa", "run_id:bbb")
            .replace("master_link_status:up", "master_link_status:down");
        assert_eq!(
            rules.evaluate(Some(&status(&restarted))),
            Err(NotReady::ReplicaNotSynced)
        );
        assert!(!rules.has_synced());
    }

    #[test]
    fn link_down_counts_from_the_api_start_or_from_when_it_was_seen_down() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let never = status(&SYNCED.replace(
            "master_link_status:up",
            "master_link_status:down\r\nmaster_link_down_since_seconds:-1",
        ));
        let mut clock = LinkClock::new(start);
        assert_eq!(
            clock.seconds_down(&never, at(7)),
            7.0,
            "never up: since the start"
        );
        assert_eq!(clock.seconds_down(&status(SYNCED), at(8)), 0.0);
        let lost = status(&SYNCED.replace("master_link_status:up", "master_link_status:down"));
        assert_eq!(
            clock.seconds_down(&lost, at(10)),
            0.0,
            "first seen down now"
        );
        assert_eq!(clock.seconds_down(&lost, at(13)), 3.0);
        let redis_knows_longer = status(&SYNCED.replace(
            "master_link_status:up",
            "master_link_status:down\r\nmaster_link_down_since_seconds:60",
        ));
        assert_eq!(clock.seconds_down(&redis_knows_longer, at(14)), 60.0);
        let master = status("run_id:m\r\nrole:master\r\n");
        assert_eq!(LinkClock::new(start).seconds_down(&master, at(5)), 0.0);
    }

    #[test]
    fn heartbeat_age_is_seconds_since_the_masters_clock_or_minus_one() {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_010_500);
        assert_eq!(heartbeat_age(Some(b"1700000000000"), now), 10.5);
        assert_eq!(
            heartbeat_age(Some(b"1700000099999"), now),
            0.0,
            "master clock ahead"
        );
        for unusable in [
            None,
            Some(&b""[..]),
            Some(b"soon"),
            Some(b"-5"),
            Some(b"1.5e12"),
        ] {
            assert_eq!(heartbeat_age(unusable, now), -1.0, "{unusable:?}");
        }
    }

    #[test]
    fn shutting_down_wins_over_everything() {
        let readiness = Readiness::default();
        readiness.set(Ok(()));
        assert_eq!(readiness.current(), Ok(()));
        readiness.shut_down();
        assert_eq!(readiness.current(), Err(NotReady::ShuttingDown));
    }
}
