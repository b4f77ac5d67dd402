//! How fresh the data this pod serves is, and whether it holds a writer's write.
//!
//! Two facts, both from Redis's own account of itself (see docs/consistency.md):
//! - the **data age**: how long ago the master side wrote the heartbeat key
//!   this Redis holds (the `INFO` poll of [`crate::replica`] reads it);
//! - the **replication position**: the replication id this Redis follows and
//!   how far into that history it has applied (`master_replid`,
//!   `slave_repl_offset`), with the history it continues (`master_replid2`,
//!   valid below `second_repl_offset`).
//!
//! The poll publishes both here as one [`Snapshot`], with the response header
//! values formatted once per poll: a request only loads an `Arc` and clones
//! two header values. A read that carries a position token and finds the
//! snapshot behind asks Redis again, at most every [`REFRESH_STEP`], one
//! request at a time for the whole process (the others take its answer).

use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use actix_web::http::header::{HeaderName, HeaderValue};
use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::{replica::RedisStatus, store::Store};

/// The age of the data, in seconds with milliseconds (`1.204`): see docs/consistency.md
/// for why it is not the standard `Age`.
pub const DATA_AGE: HeaderName = HeaderName::from_static("data-age");
/// `<replid>:<offset>` of this pod's Redis, as last seen.
pub const REPLICATION_POSITION: HeaderName = HeaderName::from_static("replication-position");
/// Request: the oldest data, in seconds, the client accepts.
pub const MAX_STALENESS: HeaderName = HeaderName::from_static("max-staleness");
/// Request: a position token the answer must reflect.
pub const MIN_POSITION: HeaderName = HeaderName::from_static("min-position");
/// Request: how long, in seconds, the client lets a `Min-Position` read wait.
pub const MAX_WAIT: HeaderName = HeaderName::from_static("max-wait");

/// The query parameters that stand for the request headers above.
pub const QUERY_PARAMETERS: [&str; 3] = ["max-staleness", "min-position", "max-wait"];

/// The shortest time between two `INFO` asked for by waiting reads: the
/// replica applies a write within a round trip of the master's, so a few
/// milliseconds is what a wait costs, and a thousand waiting reads still
/// send Redis at most 200 `INFO` a second.
pub const REFRESH_STEP: Duration = Duration::from_millis(5);

/// A point in a replication history: what a writer reads from the master
/// after its write (`master_replid`, `master_repl_offset`), and what a
/// replica reports it has applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub replid: String,
    pub offset: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.replid, self.offset)
    }
}

impl Position {
    /// `<40 hex digits>:<offset>`, as `scripts/position.sh` prints it.
    pub fn parse(token: &str) -> Result<Self, String> {
        let bad = || {
            format!("not a position token: expected <replication id, 40 hex digits>:<offset>, as scripts/position.sh prints, got {token:?}")
        };
        let (replid, offset) = token.trim().split_once(':').ok_or_else(bad)?;
        if replid.len() != 40 || !replid.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let offset: i64 = offset
            .parse()
            .ok()
            .filter(|o| *o >= 0 && !offset.starts_with('+'))
            .ok_or_else(bad)?;
        Ok(Self {
            replid: replid.to_ascii_lowercase(),
            offset,
        })
    }
}

/// Where this pod's Redis is in its replication history, from one `INFO`.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub is_master: bool,
    /// The history followed, and how far into it the data set is.
    pub at: Position,
    /// The history this one continues (after a failover or a master restart
    /// from an RDB file), valid for offsets below `second_offset`.
    pub replid2: String,
    pub second_offset: i64,
}

impl History {
    pub fn of(status: &RedisStatus) -> Self {
        Self {
            is_master: !status.is_replica,
            at: Position {
                replid: status.master_replid.clone(),
                offset: status.offset,
            },
            replid2: status.master_replid2.clone(),
            second_offset: status.second_repl_offset,
        }
    }

    /// Whether the data set holds everything up to `wanted`.
    ///
    /// Offsets compare only within one replication id. A position in the
    /// history this one continues counts when it comes before the point where
    /// they split: Redis keeps that prefix, and only that, in common
    /// (`shiftReplicationId`: the second id is valid up to
    /// `second_repl_offset - 1`). Anything else, a token from a history that
    /// was lost (a master restarted without its data) or one this Redis has
    /// not reached yet (a newer master it does not follow yet), is not
    /// reached: nothing local can prove it is.
    pub fn check(&self, wanted: &Position) -> Verdict {
        if wanted.replid == self.at.replid {
            if wanted.offset <= self.at.offset {
                return Verdict::Reached;
            }
            // A master's tokens are its own past: one ahead of it is not of it.
            return if self.is_master {
                Verdict::Never
            } else {
                Verdict::Behind
            };
        }
        if wanted.replid == self.replid2 && wanted.offset < self.second_offset {
            return Verdict::Reached;
        }
        // A replica may yet follow that history (it resyncs to a new master);
        // a master answers for its own history only.
        if self.is_master {
            Verdict::Never
        } else {
            Verdict::OtherHistory
        }
    }
}

/// What [`History::check`] says of a wanted position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Reached,
    /// Same history, not that far yet: waiting may help.
    Behind,
    /// Another history: waiting helps only if this replica resyncs to it.
    OtherHistory,
    /// A master that does not hold it: waiting cannot help.
    Never,
}

/// What the pod knows, as of its last observations.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Seconds since the master side wrote the heartbeat, and when that was read.
    pub age: Option<(f64, Instant)>,
    pub age_header: Option<HeaderValue>,
    /// The replication position, and when the `INFO` that told it was sent.
    pub history: Option<(History, Instant)>,
    pub position_header: Option<HeaderValue>,
}

impl Snapshot {
    /// The data's age now, at most: it was `age` when read, and data cannot
    /// age faster than the clock. `None` when unknown.
    pub fn age_bound(&self, now: Instant) -> Option<f64> {
        self.age
            .map(|(age, read)| age + now.saturating_duration_since(read).as_secs_f64())
    }
}

/// The snapshot shared by every worker, and the single flight of refreshes.
#[derive(Debug)]
pub struct Freshness {
    current: ArcSwap<Snapshot>,
    /// When the last refresh asked; held while one is under way.
    refreshing: Mutex<Instant>,
    /// The server's bound on a `Min-Position` wait (`POSITION_MAX_WAIT_MS`).
    pub max_wait: Duration,
}

impl Freshness {
    pub fn new(max_wait: Duration) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            refreshing: Mutex::new(
                Instant::now()
                    .checked_sub(REFRESH_STEP)
                    .unwrap_or_else(Instant::now),
            ),
            max_wait,
        }
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// One poll of the monitor: the heartbeat age (-1: unknown) and the
    /// status (`None`: Redis did not answer), both as of `polled`.
    pub fn observe(&self, status: Option<&RedisStatus>, heartbeat_age: f64, polled: Instant) {
        let age = (heartbeat_age >= 0.0).then_some((heartbeat_age, polled));
        let age_header = age.map(|(age, _)| {
            HeaderValue::from_str(&format!("{age:.3}")).expect("digits are a header value")
        });
        let history = status.map(History::of);
        self.current.rcu(|old| {
            let mut next = Snapshot {
                age,
                age_header: age_header.clone(),
                history: old.history.clone(),
                position_header: old.position_header.clone(),
            };
            match &history {
                Some(history) => set_history(&mut next, history, polled),
                // Redis did not answer: what it said before no longer holds.
                None => (next.history, next.position_header) = (None, None),
            }
            next
        });
    }

    /// A position read on behalf of waiting requests; the age is kept.
    fn observe_history(&self, history: History, asked: Instant) {
        self.current.rcu(|old| {
            let mut next = Snapshot::clone(old);
            set_history(&mut next, &history, asked);
            next
        });
    }

    /// Asks Redis for its position, unless another request did so since
    /// this one asked: the waiting reads of the whole process share one
    /// `INFO` at a time, at most one every [`REFRESH_STEP`].
    pub async fn refresh(&self, store: &Store) {
        let wanted_after = Instant::now();
        let mut last = self.refreshing.lock().await;
        if *last >= wanted_after {
            return;
        }
        tokio::time::sleep_until((*last + REFRESH_STEP).into()).await;
        let asked = Instant::now();
        if let Ok(info) = store.info(&["replication"]).await {
            self.observe_history(History::of(&RedisStatus::parse(&info)), asked);
        }
        // Only now: a refresh cancelled midway (its request timed out) has
        // told nobody anything.
        *last = asked;
    }
}

/// Keeps the newer of two observations of the position: a refresh that
/// returns after the monitor's later poll must not put an older one back.
fn set_history(next: &mut Snapshot, history: &History, asked: Instant) {
    if next.history.as_ref().is_some_and(|(_, seen)| *seen > asked) {
        return;
    }
    next.position_header = HeaderValue::from_str(&history.at.to_string()).ok();
    next.history = Some((history.clone(), asked));
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const NONE: &str = "0000000000000000000000000000000000000000";

    fn at(replid: &str, offset: i64) -> Position {
        Position {
            replid: replid.into(),
            offset,
        }
    }

    fn replica(replid: &str, offset: i64, replid2: &str, second: i64) -> History {
        History {
            is_master: false,
            at: at(replid, offset),
            replid2: replid2.into(),
            second_offset: second,
        }
    }

    #[test]
    fn tokens_parse_strictly() {
        assert_eq!(
            Position::parse(&format!("{}:42", A.to_uppercase())),
            Ok(at(A, 42))
        );
        for bad in [
            "",
            "abc:1",
            A,
            &format!("{A}:"),
            &format!("{A}:-1"),
            &format!("{A}:+1"),
            &format!("{A}:1.5"),
            &format!("{A}a:1"),
            &format!("{}g:1", &A[..39]),
        ] {
            assert!(Position::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn within_one_history_offsets_decide() {
        let h = replica(A, 100, NONE, -1);
        assert_eq!(h.check(&at(A, 100)), Verdict::Reached);
        assert_eq!(h.check(&at(A, 7)), Verdict::Reached);
        assert_eq!(h.check(&at(A, 101)), Verdict::Behind);
    }

    #[test]
    fn the_history_continued_counts_only_before_the_split() {
        // Redis: replid2 valid up to second_repl_offset - 1.
        let h = replica(B, 5000, A, 1001);
        assert_eq!(h.check(&at(A, 1000)), Verdict::Reached);
        assert_eq!(h.check(&at(A, 1001)), Verdict::OtherHistory);
        assert_eq!(h.check(&at(A, 4000)), Verdict::OtherHistory);
    }

    #[test]
    fn a_lost_history_is_never_reached_by_offset_alone() {
        // The master restarted without its data: a new id, offsets from 0,
        // and soon past the old token's offset.
        let h = replica(B, 1_000_000, NONE, -1);
        assert_eq!(h.check(&at(A, 10)), Verdict::OtherHistory);
        assert_eq!(
            h.check(&at(NONE, -0)),
            Verdict::OtherHistory,
            "no second id"
        );
    }

    #[test]
    fn a_master_decides_at_once() {
        let m = History {
            is_master: true,
            ..replica(A, 100, NONE, -1)
        };
        assert_eq!(m.check(&at(A, 100)), Verdict::Reached);
        assert_eq!(m.check(&at(A, 101)), Verdict::Never);
        assert_eq!(m.check(&at(B, 1)), Verdict::Never);
    }

    #[test]
    fn the_age_bound_grows_with_the_clock_and_is_unknown_without_a_heartbeat() {
        let read = Instant::now();
        let snapshot = Snapshot {
            age: Some((1.5, read)),
            ..Snapshot::default()
        };
        assert_eq!(snapshot.age_bound(read), Some(1.5));
        assert_eq!(snapshot.age_bound(read + Duration::from_secs(2)), Some(3.5));
        assert_eq!(Snapshot::default().age_bound(read), None);
    }

    #[test]
    fn an_older_observation_never_replaces_a_newer_one() {
        let fresh = Freshness::new(Duration::from_secs(1));
        let early = Instant::now();
        let late = early + Duration::from_millis(10);
        fresh.observe_history(replica(B, 9, NONE, -1), late);
        fresh.observe_history(replica(A, 5, NONE, -1), early);
        let snapshot = fresh.snapshot();
        assert_eq!(snapshot.history.as_ref().unwrap().0.at, at(B, 9));
        assert_eq!(
            snapshot.position_header.as_ref().unwrap(),
            &format!("{B}:9")
        );
    }

    #[test]
    fn a_poll_sets_both_headers_and_a_failed_one_clears_the_position() {
        let fresh = Freshness::new(Duration::from_secs(1));
        let status = RedisStatus::parse(&format!(
            "role:slave\r\nmaster_replid:{A}\r\nmaster_replid2:{NONE}\r\nslave_repl_offset:77\r\nsecond_repl_offset:-1\r\n"
        ));
        fresh.observe(Some(&status), 0.25, Instant::now());
        let s = fresh.snapshot();
        assert_eq!(s.age_header.as_ref().unwrap(), "0.250");
        assert_eq!(s.position_header.as_ref().unwrap(), &format!("{A}:77"));
        fresh.observe(None, -1.0, Instant::now());
        let s = fresh.snapshot();
        assert!(s.age_header.is_none() && s.position_header.is_none());
    }
}
