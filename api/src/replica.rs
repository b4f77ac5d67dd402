//! Readiness from Redis's own account of itself.
//!
//! A background task polls `INFO server replication persistence` every
//! `REPLICA_POLL_MS` and keeps the verdict in memory: probes and requests
//! never wait on Redis for it.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::MissedTickBehavior;

use crate::{metrics::Metrics, store::Store};

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

    /// A full, finished sync: the link is up and no transfer or load is under way.
    fn is_synced(&self) -> bool {
        self.link_up && !self.sync_in_progress && !self.loading
    }
}

/// Why the pod is not ready; the text is what `/readyz` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    Starting,
    RedisUnreachable,
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

    /// Fails readiness for good: the process is draining.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    fn set(&self, verdict: Result<(), NotReady>) {
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = verdict;
    }
}

/// Polls Redis until the process ends, keeping `readiness` and the replica gauges current.
pub async fn monitor(
    store: Store,
    readiness: Readiness,
    metrics: Metrics,
    every: Duration,
    max_link_down: Option<Duration>,
) {
    let mut rules = ReadinessRules::new(max_link_down);
    let mut last_verdict = Err(NotReady::Starting);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let poll = match store.info(&["server", "replication", "persistence"]).await {
            Ok(info) => Some(RedisStatus::parse(&info)),
            Err(e) => {
                tracing::debug!(error = %crate::error::error_chain(&e), "INFO poll failed");
                None
            }
        };
        let verdict = rules.evaluate(poll.as_ref());
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
    metrics.replica_offset.set(status.offset);
    metrics
        .replica_last_io_seconds
        .set(status.last_io_seconds.unwrap_or(0.0));
    metrics.replica_link_down_seconds.set(if status.link_up {
        0.0
    } else {
        status.link_down_seconds.unwrap_or(0.0)
    });
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
    fn shutting_down_wins_over_everything() {
        let readiness = Readiness::default();
        readiness.set(Ok(()));
        assert_eq!(readiness.current(), Ok(()));
        readiness.shut_down();
        assert_eq!(readiness.current(), Err(NotReady::ShuttingDown));
    }
}
