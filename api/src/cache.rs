//! The value cache: answers kept in the API's memory, dropped the moment
//! Redis says their key changed.
//!
//! A read that misses takes a [`Ticket`] *before* it asks Redis, and its answer
//! is kept only if no invalidation of that key, and no flush, happened in
//! between: the redis.io client-side caching guide's race, where the reply of
//! a read and the invalidation of a write that followed it cross on the way
//! back. Invalidations come from [`tracking`], over a connection of their own
//! to the same Redis the reads go to.
//!
//! Eviction is [`quick_cache`]'s (CLOCK-Pro-like, weighted by bytes). Chosen
//! over moka because the hit path is the point of the cache: quick_cache's
//! `get` is one hash and a shard read lock, with no housekeeping queue behind
//! it, and `clear` empties the cache at once rather than lazily; moka brings
//! more (time to live, async, listeners) than a cache kept exact by Redis
//! needs, and more dependencies. Both are maintained and widely used.

pub mod tracking;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
        Arc, Mutex,
    },
};

use actix_web::http::header::HeaderValue;
use bytes::Bytes;
use fred::bytes_utils::Str;
use quick_cache::{sync::Cache, DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use crate::metrics::CacheMetrics;

/// What a key held when it was read, as the routes answer it. One entry per
/// key whatever the shape asked for: a write to the key invalidates it, and a
/// route that finds an entry it cannot answer from reads the key again and
/// replaces it (see [`ValueCache::lookup_for`]).
#[derive(Debug)]
pub enum Cached {
    /// UTF-8 text, with the single-key answer already encoded and tagged.
    Text {
        value: Str,
        body: Bytes,
        etag: HeaderValue,
    },
    /// Bytes that are not UTF-8 (409, or served as they are as raw bytes).
    NotText(Bytes),
    /// No such key (404).
    Missing,
    /// A string longer than `MAX_VALUE_BYTES` (409): not read again until it changes.
    TooLarge,
    /// A hash, whole or the fields some request asked for.
    Hash(HashRead),
    /// A hash over `MAX_VALUE_BYTES` or `MAX_HASH_FIELDS` as a whole (409).
    HashTooLarge { too_many_fields: bool },
    /// A set, or no key at all (Redis answers both alike): the members asked about.
    Members(MemberAnswers),
    /// A key of a type no route reads (a list, a sorted set, …), as `TYPE` names it (409).
    Held(Box<str>),
}

/// A hash's fields as read, sorted by name.
#[derive(Debug)]
pub struct HashRead {
    /// `None`: no such field (only in a read of chosen fields).
    pub fields: Box<[(Str, Option<Str>)]>,
    /// The whole-hash answer and its tag: `None` when only chosen fields were read.
    pub whole: Option<(Bytes, HeaderValue)>,
}

impl HashRead {
    /// The field's value, `Some(None)` when known to be absent, `None` when not read.
    pub fn field(&self, name: &str) -> Option<Option<&Str>> {
        match self.fields.binary_search_by(|(n, _)| (**n).cmp(name)) {
            Ok(i) => Some(self.fields[i].1.as_ref()),
            Err(_) if self.whole.is_some() => Some(None),
            Err(_) => None,
        }
    }

    fn bytes(&self) -> usize {
        let fields: usize = self
            .fields
            .iter()
            .map(|(n, v)| n.len() + v.as_ref().map_or(0, |v| v.len()) + 32)
            .sum();
        fields + self.whole.as_ref().map_or(0, |(b, e)| b.len() + e.len())
    }

    fn data(&self) -> usize {
        self.fields
            .iter()
            .map(|(n, v)| n.len() + v.as_ref().map_or(0, |v| v.len()))
            .sum()
    }
}

/// What an entry of member answers may hold: it is weighed at this size from
/// the start, since answers are added after it is in the cache.
pub const MEMBER_ANSWERS_BYTES: usize = 4096;
/// What one answer costs besides its member's bytes.
const MEMBER_OVERHEAD: usize = 32;

/// Membership answers for one key, added as members are asked about.
#[derive(Debug, Default)]
pub struct MemberAnswers {
    known: Mutex<(HashMap<Box<str>, bool>, usize)>,
}

impl MemberAnswers {
    pub fn get(&self, member: &str) -> Option<bool> {
        self.lock().0.get(member).copied()
    }

    /// Keeps the answer if it fits the entry's budget.
    fn insert(&self, member: &str, is_member: bool) -> bool {
        let mut known = self.lock();
        let cost = member.len() + MEMBER_OVERHEAD;
        if known.0.contains_key(member) {
            known.0.insert(member.into(), is_member);
            return true;
        }
        if known.1 + cost > MEMBER_ANSWERS_BYTES {
            return false;
        }
        known.1 += cost;
        known.0.insert(member.into(), is_member);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<Box<str>, bool>, usize)> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Cached {
    fn bytes(&self) -> usize {
        match self {
            Self::Text { value, body, etag } => value.len() + body.len() + etag.len(),
            Self::NotText(bytes) => bytes.len(),
            Self::Hash(hash) => hash.bytes(),
            Self::Members(_) => MEMBER_ANSWERS_BYTES,
            Self::Held(kind) => kind.len(),
            Self::Missing | Self::TooLarge | Self::HashTooLarge { .. } => 0,
        }
    }

    /// The value's own bytes, held against `CACHE_MAX_VALUE_BYTES`.
    fn data(&self) -> usize {
        match self {
            Self::Text { value, .. } => value.len(),
            Self::NotText(bytes) => bytes.len(),
            Self::Hash(hash) => hash.data(),
            _ => 0,
        }
    }
}

/// Roughly what an entry costs besides its bytes: the key's and the entry's
/// allocations, the `Arc`, and the cache's slot and index.
const ENTRY_OVERHEAD: u64 = 160;

#[derive(Clone)]
struct ByBytes;

impl Weighter<Box<str>, Arc<Cached>> for ByBytes {
    fn weight(&self, key: &Box<str>, value: &Arc<Cached>) -> u64 {
        ENTRY_OVERHEAD + key.len() as u64 + value.bytes() as u64
    }
}

/// Counts evictions (and entries refused as too heavy, which `fill` prevents).
#[derive(Clone)]
struct CountEvictions(prometheus::IntCounter);

impl Lifecycle<Box<str>, Arc<Cached>> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _: Box<str>, _: Arc<Cached>) {
        self.0.inc();
    }
}

/// Invalidation counters, one per stripe of keys (by hash). A key shares its
/// counter with a few thousandth of the others: a write to one of those makes
/// a read of this key in flight at that moment a miss, never a wrong value.
const STRIPES: usize = 4096;

/// Taken before reading a key from Redis; see [`ValueCache::fill`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    epoch: u64,
    stripe: usize,
    stripe_count: u64,
}

/// The shared cache of every worker, and the state that decides whether it may serve.
pub struct ValueCache {
    entries: Cache<Box<str>, Arc<Cached>, ByBytes, DefaultHashBuilder, CountEvictions>,
    /// True only while the tracking connection is subscribed: without it, no
    /// invalidation would reach us, so nothing may be served or kept.
    serving: AtomicBool,
    /// Bumped by every flush, and when tracking starts or stops.
    epoch: AtomicU64,
    stripes: Box<[AtomicU64]>,
    max_value_bytes: usize,
    prefix: Bytes,
    metrics: CacheMetrics,
}

impl ValueCache {
    /// An empty cache of `max_bytes` that keeps values up to `max_value_bytes`
    /// long, for keys under `prefix` (`KEY_PREFIX`; keys are kept without it).
    /// It serves nothing until [`tracking`] says invalidations flow.
    pub fn new(
        max_bytes: usize,
        max_value_bytes: usize,
        prefix: &str,
        metrics: CacheMetrics,
    ) -> Self {
        // Four shards: one per worker of a pod's one or two CPUs, and a few
        // spare, so that workers rarely wait on each other's shard lock.
        let options = OptionsBuilder::new()
            .shards(4)
            .estimated_items_capacity((max_bytes / 1024).max(64))
            .weight_capacity(max_bytes as u64)
            .build()
            .expect("valid cache options");
        metrics.tracking_up.set(0);
        Self {
            entries: Cache::with_options(
                options,
                ByBytes,
                DefaultHashBuilder::default(),
                CountEvictions(metrics.evictions.clone()),
            ),
            serving: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            max_value_bytes,
            prefix: Bytes::copy_from_slice(prefix.as_bytes()),
            metrics,
        }
    }

    fn stripe(key: &[u8]) -> usize {
        xxhash_rust::xxh3::xxh3_64(key) as usize % STRIPES
    }

    /// The cached answer for `key`, or a ticket to fill it with (`None` while
    /// the cache is not serving).
    pub fn lookup(&self, key: &str) -> Result<Arc<Cached>, Option<Ticket>> {
        self.lookup_for(key, |_| true)
    }

    /// Like [`lookup`](Self::lookup), for a route that can answer from some
    /// entries only (a hash read of fields the entry lacks, a member not yet
    /// asked about): any other entry counts as a miss.
    pub fn lookup_for(
        &self,
        key: &str,
        usable: impl FnOnce(&Cached) -> bool,
    ) -> Result<Arc<Cached>, Option<Ticket>> {
        if !self.serving.load(SeqCst) {
            return Err(None);
        }
        if let Some(found) = self.entries.get(key) {
            if usable(&found) {
                self.metrics.hits.inc();
                return Ok(found);
            }
        }
        self.metrics.misses.inc();
        let stripe = Self::stripe(key.as_bytes());
        // The order matters: both snapshots before the read is sent.
        Err(Some(Ticket {
            epoch: self.epoch.load(SeqCst),
            stripe,
            stripe_count: self.stripes[stripe].load(SeqCst),
        }))
    }

    /// Keeps a membership answer read with `ticket`: in the key's entry of
    /// answers if it has one, else in a new one (replacing what was there).
    /// The same checks as [`fill`](Self::fill), before and after.
    pub fn remember_member(&self, key: &str, ticket: Ticket, member: &str, is_member: bool) {
        if member.len() + MEMBER_OVERHEAD > MEMBER_ANSWERS_BYTES
            || MEMBER_ANSWERS_BYTES > self.max_value_bytes.saturating_mul(3)
        {
            return;
        }
        if !self.unchanged_since(&ticket) {
            self.metrics.fills_discarded.inc();
            return;
        }
        match self.entries.get(key).as_deref() {
            // A full entry keeps the answers it has; this one is read again next time.
            Some(Cached::Members(answers)) => {
                if !answers.insert(member, is_member) {
                    return;
                }
            }
            _ => {
                let answers = MemberAnswers::default();
                answers.insert(member, is_member);
                self.entries
                    .insert(key.into(), Arc::new(Cached::Members(answers)));
            }
        }
        if !self.unchanged_since(&ticket) {
            self.entries.remove(key);
            self.metrics.fills_discarded.inc();
        }
    }

    fn unchanged_since(&self, ticket: &Ticket) -> bool {
        self.serving.load(SeqCst)
            && self.epoch.load(SeqCst) == ticket.epoch
            && self.stripes[ticket.stripe].load(SeqCst) == ticket.stripe_count
    }

    /// Keeps what a read that started with `ticket` found, unless the key may
    /// have changed since the ticket was taken.
    ///
    /// An invalidation bumps the counter, then removes the entry. If it
    /// bumped before our check, we drop the value; if after, our entry is
    /// already in and its removal takes it out; if between our check and our
    /// insert, the check after the insert sees the bump and takes it out.
    /// Either way no value older than the invalidation outlives it.
    pub fn fill(&self, key: &str, ticket: Ticket, value: Arc<Cached>) {
        // The value, its answer body (escapes can make it six times longer)
        // and the tag: within three times the value limit, which keeps an
        // entry under a shard's share of the cache (see config).
        let too_large = value.data() > self.max_value_bytes
            || value.bytes() > self.max_value_bytes.saturating_mul(3);
        if too_large {
            return;
        }
        if !self.unchanged_since(&ticket) {
            self.metrics.fills_discarded.inc();
            return;
        }
        self.entries.insert(key.into(), value);
        if !self.unchanged_since(&ticket) {
            self.entries.remove(key);
            self.metrics.fills_discarded.inc();
        }
    }

    /// Redis says these keys changed (full names, `KEY_PREFIX` included).
    pub fn invalidate<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) {
        for full in keys {
            self.metrics.invalidations.inc();
            let Some(key) = full.strip_prefix(&self.prefix[..]) else {
                continue;
            };
            self.stripes[Self::stripe(key)].fetch_add(1, SeqCst);
            if let Ok(key) = std::str::from_utf8(key) {
                self.entries.remove(key);
            }
        }
    }

    /// Drops every entry, and every read in flight (their tickets go stale).
    pub fn flush(&self, reason: &'static str) {
        self.epoch.fetch_add(1, SeqCst);
        self.entries.clear();
        self.metrics.flushed(reason);
        tracing::debug!(reason, "value cache dropped");
    }

    /// Tracking is on: from now on every write reaches [`invalidate`](Self::invalidate).
    /// Whatever was read before can no longer be trusted, so start empty.
    pub fn start_serving(&self) {
        self.flush("tracking_up");
        self.serving.store(true, SeqCst);
        self.metrics.tracking_up.set(1);
    }

    /// Tracking is lost: invalidations may be missed from now on.
    pub fn stop_serving(&self) {
        self.serving.store(false, SeqCst);
        self.metrics.tracking_up.set(0);
        self.flush("tracking_down");
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(SeqCst)
    }

    /// Copies the entry count and weight to their gauges (before a scrape).
    pub fn publish(&self) {
        self.metrics.entries.set(self.entries.len() as i64);
        self.metrics.bytes.set(self.entries.weight() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn text(value: &str) -> Cached {
        Cached::Text {
            value: value.into(),
            body: Bytes::copy_from_slice(value.as_bytes()),
            etag: HeaderValue::from_static("\"0\""),
        }
    }

    fn value(cache: &ValueCache, key: &str) -> Option<String> {
        match cache.lookup(key).ok()?.as_ref() {
            Cached::Text { value, .. } => Some(value.to_string()),
            other => Some(format!("{other:?}")),
        }
    }

    fn serving_cache(max_bytes: usize) -> ValueCache {
        let cache = ValueCache::new(max_bytes, 1024, "p:", Metrics::new().cache);
        cache.start_serving();
        cache
    }

    #[test]
    fn nothing_is_served_or_kept_until_tracking_is_up() {
        let cache = ValueCache::new(1 << 20, 1024, "", Metrics::new().cache);
        assert!(matches!(cache.lookup("a"), Err(None)));
        cache.start_serving();
        let Err(Some(ticket)) = cache.lookup("a") else {
            panic!("a miss with a ticket")
        };
        cache.fill("a", ticket, Arc::new(text("1")));
        assert_eq!(value(&cache, "a").as_deref(), Some("1"));
        cache.stop_serving();
        assert!(matches!(cache.lookup("a"), Err(None)));
        cache.start_serving();
        assert_eq!(value(&cache, "a"), None, "dropped while tracking was down");
    }

    #[test]
    fn a_fill_that_crossed_an_invalidation_is_not_kept() {
        let cache = serving_cache(1 << 20);
        let Err(Some(ticket)) = cache.lookup("a") else {
            panic!()
        };
        cache.invalidate([&b"p:a"[..]]);
        cache.fill("a", ticket, Arc::new(text("old")));
        assert_eq!(value(&cache, "a"), None);
        // Other keys are unaffected (unless they share the stripe).
        let Err(Some(ticket)) = cache.lookup("b") else {
            panic!()
        };
        cache.invalidate([&b"p:a"[..]]);
        if ValueCache::stripe(b"a") != ValueCache::stripe(b"b") {
            cache.fill("b", ticket, Arc::new(text("2")));
            assert_eq!(value(&cache, "b").as_deref(), Some("2"));
        }
    }

    #[test]
    fn a_fill_that_crossed_a_flush_or_an_outage_is_not_kept() {
        let cache = serving_cache(1 << 20);
        let Err(Some(ticket)) = cache.lookup("a") else {
            panic!()
        };
        cache.flush("redis_flush");
        cache.fill("a", ticket, Arc::new(text("old")));
        assert_eq!(value(&cache, "a"), None);

        let Err(Some(ticket)) = cache.lookup("a") else {
            panic!()
        };
        cache.stop_serving();
        cache.start_serving();
        cache.fill("a", ticket, Arc::new(text("old")));
        assert_eq!(value(&cache, "a"), None);
    }

    #[test]
    fn invalidations_remove_keys_under_the_prefix_only() {
        let cache = serving_cache(1 << 20);
        for key in ["a", "b"] {
            let Err(Some(ticket)) = cache.lookup(key) else {
                panic!()
            };
            cache.fill(key, ticket, Arc::new(Cached::Missing));
        }
        cache.invalidate([&b"a"[..], b"p:b", b"p:\xff"]);
        assert_eq!(value(&cache, "a").as_deref(), Some("Missing"));
        assert_eq!(value(&cache, "b"), None);
    }

    fn member(cache: &ValueCache, key: &str, member: &str) -> Option<bool> {
        match cache.lookup(key).ok()?.as_ref() {
            Cached::Members(answers) => answers.get(member),
            _ => None,
        }
    }

    #[test]
    fn member_answers_join_one_entry_unless_they_crossed_an_invalidation() {
        // An entry of answers weighs 4 KiB: within three times the value limit.
        let cache = ValueCache::new(1 << 20, 2048, "p:", Metrics::new().cache);
        cache.start_serving();
        for (name, is) in [("a", true), ("b", false)] {
            let Err(Some(ticket)) = cache.lookup_for("s", |_| false) else {
                panic!()
            };
            cache.remember_member("s", ticket, name, is);
        }
        assert_eq!(member(&cache, "s", "a"), Some(true));
        assert_eq!(member(&cache, "s", "b"), Some(false));
        assert_eq!(member(&cache, "s", "c"), None);

        let Err(Some(ticket)) = cache.lookup_for("s", |_| false) else {
            panic!()
        };
        cache.invalidate([&b"p:s"[..]]);
        cache.remember_member("s", ticket, "a", false);
        assert!(
            cache.lookup("s").is_err(),
            "the entry is gone, the stale answer not kept"
        );

        // An entry holds at most its budget of answers; the rest are read again.
        let long = "m".repeat(1000);
        for i in 0..10 {
            let Err(Some(ticket)) = cache.lookup_for("t", |_| false) else {
                panic!()
            };
            cache.remember_member("t", ticket, &format!("{long}{i}"), true);
        }
        let Ok(entry) = cache.lookup("t") else {
            panic!()
        };
        let Cached::Members(answers) = entry.as_ref() else {
            panic!()
        };
        let known = (0..10)
            .filter(|i| answers.get(&format!("{long}{i}")).is_some())
            .count();
        assert!((1..10).contains(&known), "{known}");
    }

    #[test]
    fn a_lookup_for_another_shape_is_a_miss_with_a_ticket() {
        let cache = serving_cache(1 << 20);
        let Err(Some(ticket)) = cache.lookup("h") else {
            panic!()
        };
        cache.fill(
            "h",
            ticket,
            Arc::new(Cached::HashTooLarge {
                too_many_fields: true,
            }),
        );
        assert!(cache
            .lookup_for("h", |c| matches!(c, Cached::HashTooLarge { .. }))
            .is_ok());
        assert!(matches!(cache.lookup_for("h", |_| false), Err(Some(_))));
    }

    #[test]
    fn large_values_bypass_and_the_weight_stays_bounded() {
        let cache = serving_cache(64 * 1024);
        let Err(Some(ticket)) = cache.lookup("big") else {
            panic!()
        };
        cache.fill("big", ticket, Arc::new(text(&"x".repeat(1025))));
        assert_eq!(value(&cache, "big"), None);
        for i in 0..1000 {
            let key = format!("k{i}");
            if let Err(Some(ticket)) = cache.lookup(&key) {
                cache.fill(&key, ticket, Arc::new(text(&"v".repeat(100))));
            }
        }
        cache.publish();
        assert!(cache.entries.weight() <= 64 * 1024);
        assert!(cache.metrics.evictions.get() > 0);
    }
}
