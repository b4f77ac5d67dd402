//! Change streams: the hub behind `GET /v1/watch?key=…` (Server-Sent Events).
//!
//! Changes come from the tracking connection ([`crate::cache::tracking`]),
//! the same one that keeps the value cache exact: it hears every write under
//! `KEY_PREFIX` (BCAST), so watching costs Redis nothing per watcher. The hub
//! is one task. It takes the invalidations in batches, gives every changed
//! key a number in one sequence of this process (`seq`), reads each changed
//! key that someone watches **once** (on one connection of its own, so that
//! two reads of a key are answered in the order they were sent), keeps that
//! value, and hands it to every watcher of the key. A watcher costs a queue
//! and a task on its HTTP worker; it never reads Redis.
//!
//! **Event ids** are `<epoch>-<seq>-<keyset>`: the epoch is random per
//! process start, `seq` says that every change numbered up to it has reached
//! the stream (or been superseded by a later change of the same key that
//! has or will), and `keyset` is a hash of the watched keys. A client that
//! reconnects with `Last-Event-ID` is told which of its keys changed since
//! (`resumed`, with their values, possibly none), looked up in the last
//! `WATCH_HISTORY` changes. Whenever that cannot be answered for sure (an id
//! of another process or pod, other keys, older than the history, or a gap
//! since: the tracking connection lost, a flush, invalidations dropped, a
//! failed read), it gets every current value again (`snapshot` with
//! `resync: true` and the reason). The same happens to an open stream when
//! such a gap occurs, or when it falls behind by more than its queue.
//!
//! Ordering: notes reach a watcher in `seq` order (sent under the hub's lock,
//! batch after batch, sorted within a batch), so the id of the last event a
//! client saw is a safe resume point.
//!
//! A hook for data age (issue 25's freshness part): every value a stream
//! sends goes through [`Shown`], built in [`shown`]; a field added there (the
//! heartbeat age when the value was read) reaches `change`, `snapshot` and
//! `resumed` events alike.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, Notify};

use crate::{
    config::WatchSettings,
    error::ApiError,
    metrics::WatchMetrics,
    store::{Store, StoreError, StringValue},
};

/// Notes queued per stream: a stream further behind (a slow client) stops
/// getting them and is sent every value again once it catches up.
const QUEUE: usize = 256;
/// Batches of invalidations waiting for the hub; past this they are dropped
/// and every stream resynchronises (a write storm the reads cannot follow).
const FEED: usize = 16_384;
/// Invalidated keys the hub takes in one batch at most.
const BATCH: usize = 4096;
/// Before the hub reads again after a failed read.
const RETRY_AFTER: Duration = Duration::from_millis(200);

enum Feed {
    Keys(Vec<Arc<str>>),
    Flush(&'static str),
}

/// A value as the streams show it, read once and shared by every watcher.
#[derive(Debug)]
pub struct Shown {
    /// The change (or load) this value follows.
    seq: u64,
    /// The value as JSON: a string, or null (no such key).
    value: Bytes,
    /// Why the value cannot be shown (`value_not_utf8`, `value_too_large`, `wrong_type`).
    error: Option<&'static str>,
    /// The `data` of the `change` event, encoded once.
    change: Bytes,
}

/// What Redis answered for a key, as a stream shows it; `Err` for a failed read.
fn shown(
    key: &str,
    seq: u64,
    read: Result<Option<StringValue>, StoreError>,
) -> Result<Shown, StoreError> {
    let (value, error) = match read {
        Ok(Some(StringValue::Text(text))) => (
            Bytes::from(serde_json::to_vec(&*text).expect("strings encode")),
            None,
        ),
        Ok(Some(StringValue::NotText(_))) => (Bytes::from_static(b"null"), Some("value_not_utf8")),
        Ok(None) => (Bytes::from_static(b"null"), None),
        Err(StoreError::ValueTooLarge { .. }) => {
            (Bytes::from_static(b"null"), Some("value_too_large"))
        }
        Err(StoreError::WrongType(_)) => (Bytes::from_static(b"null"), Some("wrong_type")),
        Err(e) => return Err(e),
    };
    let mut change = BytesMut::with_capacity(value.len() + key.len() + 32);
    change.put_slice(b"{\"key\":");
    change.put_slice(&json_string(key));
    change.put_slice(b",\"value\":");
    change.put_slice(&value);
    if let Some(error) = error {
        change.put_slice(b",\"error\":\"");
        change.put_slice(error.as_bytes());
        change.put_u8(b'"');
    }
    change.put_u8(b'}');
    Ok(Shown {
        seq,
        value,
        error,
        change: change.freeze(),
    })
}

fn json_string(text: &str) -> Vec<u8> {
    serde_json::to_vec(text).expect("strings encode")
}

enum Note {
    Value { key: Arc<str>, shown: Arc<Shown> },
    Resync(&'static str),
}

/// Set by the hub when a stream's queue was full and a note was dropped.
#[derive(Default)]
struct Lag {
    behind: AtomicBool,
    wake: Notify,
}

struct Slot {
    notes: mpsc::Sender<Note>,
    lag: Arc<Lag>,
}

#[derive(Default)]
struct Entry {
    watchers: Vec<u64>,
    /// `None` until read (the first watcher just came), or after a gap.
    value: Option<Arc<Shown>>,
}

#[derive(Default)]
struct State {
    /// The last number given to a change (or a gap).
    seq: u64,
    /// Every change up to this one is in the table and its notes are sent.
    applied: u64,
    /// Ids before this one cannot be resumed: a gap came after them.
    gap: u64,
    /// Ids before this one cannot be resumed: the history forgot changes after them.
    floor: u64,
    history: VecDeque<(u64, Arc<str>)>,
    keys: HashMap<Arc<str>, Entry>,
    watchers: HashMap<u64, Slot>,
    next_watcher: u64,
    to_load: Vec<Arc<str>>,
    /// The tracking session the values follow; `None`: nothing to trust yet.
    serving: Option<u64>,
}

impl State {
    fn send(&self, watcher: u64, note: Note) {
        let Some(slot) = self.watchers.get(&watcher) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = slot.notes.try_send(note) {
            slot.lag.behind.store(true, SeqCst);
            slot.lag.wake.notify_one();
        }
    }
}

/// Shared by the hub task, the tracking connection and every stream.
pub struct WatchHub {
    epoch: u64,
    settings: WatchSettings,
    prefix: Bytes,
    feed: mpsc::Sender<Feed>,
    feed_rx: Mutex<Option<mpsc::Receiver<Feed>>>,
    feed_lost: AtomicBool,
    /// Odd while a tracking session is subscribed; bumped at each start and end.
    tracking: AtomicU64,
    wake: Notify,
    state: Mutex<State>,
    shutting_down: AtomicBool,
    shutdown: Arc<Notify>,
    metrics: WatchMetrics,
}

impl WatchHub {
    pub fn new(settings: WatchSettings, prefix: &str, metrics: WatchMetrics) -> Self {
        let (feed, feed_rx) = mpsc::channel(FEED);
        Self {
            epoch: new_epoch(),
            settings,
            prefix: Bytes::copy_from_slice(prefix.as_bytes()),
            feed,
            feed_rx: Mutex::new(Some(feed_rx)),
            feed_lost: AtomicBool::new(false),
            tracking: AtomicU64::new(0),
            wake: Notify::new(),
            state: Mutex::default(),
            shutting_down: AtomicBool::new(false),
            shutdown: Arc::new(Notify::new()),
            metrics,
        }
    }

    pub fn settings(&self) -> WatchSettings {
        self.settings
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tracking connection is subscribed: from now on every write is heard.
    pub fn tracking_up(&self) {
        let session = self.tracking.load(SeqCst);
        if session % 2 == 0 {
            self.tracking.store(session + 1, SeqCst);
        }
        self.wake.notify_one();
    }

    /// The tracking connection ended: writes may go unheard until the next one.
    pub fn tracking_down(&self) {
        let session = self.tracking.load(SeqCst);
        if session % 2 == 1 {
            self.tracking.store(session + 1, SeqCst);
        }
        self.wake.notify_one();
    }

    /// Redis says these keys changed (full names, `KEY_PREFIX` included).
    pub fn invalidated<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) {
        let keys: Vec<Arc<str>> = keys
            .into_iter()
            .filter_map(|full| full.strip_prefix(&self.prefix[..]))
            .filter_map(|key| std::str::from_utf8(key).ok())
            .map(Arc::from)
            .collect();
        if !keys.is_empty() {
            self.push(Feed::Keys(keys));
        }
    }

    /// Redis dropped everything (`redis_flush`), or invalidations were lost
    /// on the way (`invalidations_lost`).
    pub fn flushed(&self, reason: &'static str) {
        self.push(Feed::Flush(reason));
    }

    fn push(&self, item: Feed) {
        if self.feed.try_send(item).is_err() {
            self.feed_lost.store(true, SeqCst);
            self.wake.notify_one();
        }
    }

    /// Ends every stream (with a `shutdown` event) and refuses new ones: the pod drains.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, SeqCst);
        self.shutdown.notify_waiters();
        self.wake.notify_one();
    }

    /// A new stream for `keys` (sorted, without duplicates), resuming after
    /// `last_event_id` when it can.
    pub fn register(
        self: &Arc<Self>,
        keys: Vec<Arc<str>>,
        last_event_id: Option<&str>,
    ) -> Result<Watcher, ApiError> {
        if self.shutting_down.load(SeqCst) {
            return Err(ApiError::WatchUnavailable("the pod is shutting down"));
        }
        let keyset = keyset(&keys);
        let mut state = self.lock();
        if state.serving.is_none() || state.serving != Some(self.tracking.load(SeqCst)) {
            return Err(ApiError::WatchUnavailable(
                "the tracking connection is not up",
            ));
        }
        if state.watchers.len() >= self.settings.max_watchers {
            return Err(ApiError::TooManyWatchers {
                max: self.settings.max_watchers,
            });
        }
        let id = state.next_watcher;
        state.next_watcher += 1;
        let (notes, rx) = mpsc::channel(QUEUE);
        let lag = Arc::new(Lag::default());
        state.watchers.insert(
            id,
            Slot {
                notes,
                lag: lag.clone(),
            },
        );
        let mut have = HashMap::with_capacity(keys.len());
        let mut load = false;
        for key in &keys {
            let state = &mut *state;
            let entry = state.keys.entry(key.clone()).or_insert_with(|| {
                state.to_load.push(key.clone());
                load = true;
                Entry::default()
            });
            entry.watchers.push(id);
            if let Some(value) = &entry.value {
                have.insert(key.clone(), value.clone());
            }
        }
        let start = self.start(last_event_id, keyset, state.applied);
        let watermark = state.applied;
        drop(state);
        if load {
            self.wake.notify_one();
        }
        self.metrics.watchers.inc();
        Ok(Watcher {
            hub: self.clone(),
            id,
            keys,
            keyset,
            notes: rx,
            lag,
            pending: Some(start),
            have,
            watermark,
            started: false,
        })
    }

    fn start(&self, last_event_id: Option<&str>, keyset: u32, applied: u64) -> Start {
        let Some(last) = last_event_id.map(str::trim).filter(|id| !id.is_empty()) else {
            return Start::Snapshot("initial");
        };
        match parse_id(last) {
            Some((epoch, seq, _)) if epoch != self.epoch || seq > applied => {
                Start::Snapshot("unknown_id")
            }
            Some((_, _, set)) if set != keyset => Start::Snapshot("keys_changed"),
            Some((_, seq, _)) => Start::Resume(seq),
            None => Start::Snapshot("unknown_id"),
        }
    }

    fn deregister(&self, id: u64, keys: &[Arc<str>]) {
        let mut state = self.lock();
        state.watchers.remove(&id);
        for key in keys {
            if let Some(entry) = state.keys.get_mut(key) {
                entry.watchers.retain(|w| *w != id);
                if entry.watchers.is_empty() {
                    state.keys.remove(key);
                }
            }
        }
        drop(state);
        self.metrics.watchers.dec();
    }

    fn id_text(&self, seq: u64, keyset: u32) -> String {
        format!("{:016x}-{seq}-{keyset:08x}", self.epoch)
    }
}

/// Random enough per process start: two pods, or a restarted process, never
/// share an epoch in practice, so an id from elsewhere is always recognised.
fn new_epoch() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let local = 0u8;
    let seed = format!(
        "{nanos}-{}-{}-{:p}",
        std::process::id(),
        std::env::var("HOSTNAME").unwrap_or_default(),
        &local
    );
    xxhash_rust::xxh3::xxh3_64(seed.as_bytes()) | 1
}

fn keyset(keys: &[Arc<str>]) -> u32 {
    let mut joined = Vec::new();
    for key in keys {
        joined.extend_from_slice(key.as_bytes());
        joined.push(0);
    }
    xxhash_rust::xxh3::xxh3_64(&joined) as u32
}

/// `<epoch hex>-<seq>-<keyset hex>`.
fn parse_id(id: &str) -> Option<(u64, u64, u32)> {
    let mut parts = id.split('-');
    let epoch = u64::from_str_radix(parts.next()?, 16).ok()?;
    let seq = parts.next()?.parse().ok()?;
    let set = u32::from_str_radix(parts.next()?, 16).ok()?;
    parts.next().is_none().then_some((epoch, seq, set))
}

/// The hub until the process drains: invalidations in, one read per changed
/// watched key, notes out. A panic in a batch would leave every stream
/// silent, so the batches run in a task of their own and a panic is a gap.
pub async fn run(hub: Arc<WatchHub>, store: Store) {
    let mut feed = hub
        .feed_rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .expect("the hub runs once");
    let mut session = 0u64;
    let mut resync: Option<&'static str> = None;
    let mut retry = false;
    let mut changed: Vec<Arc<str>> = Vec::new();
    loop {
        if hub.shutting_down.load(SeqCst) {
            return;
        }
        if retry {
            tokio::time::sleep(RETRY_AFTER).await;
        } else if changed.is_empty() {
            tokio::select! {
                item = feed.recv() => match item {
                    Some(Feed::Keys(keys)) => changed.extend(keys),
                    Some(Feed::Flush(reason)) => resync = Some(reason),
                    None => return,
                },
                () = hub.wake.notified() => {}
            }
        }
        while changed.len() < BATCH {
            match feed.try_recv() {
                Ok(Feed::Keys(keys)) => changed.extend(keys),
                Ok(Feed::Flush(reason)) => resync = Some(reason),
                Err(_) => break,
            }
        }
        if hub.feed_lost.swap(false, SeqCst) {
            resync = Some("invalidations_lost");
        }
        let tracking = hub.tracking.load(SeqCst);
        if tracking != session {
            // A session ended (and perhaps another began) since the last
            // batch: writes in between went unheard, nothing in the table holds.
            let mut state = hub.lock();
            state.serving = None;
            for entry in state.keys.values_mut() {
                entry.value = None;
            }
            state.seq += 1;
            state.gap = state.seq;
            state.applied = state.seq;
            drop(state);
            if session != 0 {
                resync = Some("tracking_lost");
            }
            session = tracking;
        }
        if session % 2 == 0 {
            // Down: wait for the next session; what it missed is a gap anyway.
            changed.clear();
            retry = false;
            continue;
        }
        let batch = std::mem::take(&mut changed);
        let failed = match tokio::spawn(apply(hub.clone(), store.clone(), batch, resync, session))
            .await
        {
            Ok(failed) => failed,
            Err(e) => {
                tracing::error!(problem = %crate::error::task_end(e), "change streams: a batch failed; every stream resynchronises");
                true
            }
        };
        retry = failed;
        resync = failed.then_some("redis_unavailable");
    }
}

/// One batch: reads, then the table and the notes under the lock. True when
/// a read failed (the batch is then a gap, to be read again).
async fn apply(
    hub: Arc<WatchHub>,
    store: Store,
    changed: Vec<Arc<str>>,
    resync: Option<&'static str>,
    session: u64,
) -> bool {
    let dirty: Vec<Arc<str>> = {
        let mut state = hub.lock();
        let mut dirty: Vec<Arc<str>> = match resync {
            Some(_) => state.keys.keys().cloned().collect(),
            None => changed
                .iter()
                .filter(|key| state.keys.contains_key(*key))
                .cloned()
                .collect(),
        };
        dirty.append(&mut state.to_load);
        let mut seen = HashSet::with_capacity(dirty.len());
        dirty.retain(|key| seen.insert(key.clone()));
        dirty
    };
    // Sent at once on one connection: answered in order, in one round trip.
    let reads: Vec<_> = dirty
        .iter()
        .map(|key| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.get(&key).await })
        })
        .collect();
    let mut read = Vec::with_capacity(dirty.len());
    let mut failed = None;
    for (key, handle) in dirty.iter().zip(reads) {
        hub.metrics.reads.inc();
        match handle.await {
            Ok(Ok(value)) => read.push((key, Ok(value))),
            Ok(Err(e @ (StoreError::ValueTooLarge { .. } | StoreError::WrongType(_)))) => {
                read.push((key, Err(e)))
            }
            Ok(Err(e)) => failed = Some(crate::error::error_chain(&e)),
            Err(e) => failed = Some(crate::error::task_end(e)),
        }
    }
    let mut state = hub.lock();
    let mut last = HashMap::with_capacity(changed.len());
    for key in changed {
        state.seq += 1;
        let seq = state.seq;
        last.insert(key.clone(), seq);
        state.history.push_back((seq, key));
        while state.history.len() > hub.settings.history {
            if let Some((forgotten, _)) = state.history.pop_front() {
                state.floor = forgotten;
            }
        }
    }
    if resync.is_some() || failed.is_some() {
        state.seq += 1;
        state.gap = state.seq;
    }
    let now = state.seq;
    state.applied = now;
    if let Some(problem) = failed {
        tracing::warn!(problem = %problem, "change streams: a read failed; every stream resynchronises once reads work");
        for entry in state.keys.values_mut() {
            entry.value = None;
        }
        return true;
    }
    let mut notes = Vec::with_capacity(read.len());
    for (key, value) in read {
        let seq = last.get(key).copied().unwrap_or(now);
        let shown = Arc::new(shown(key, seq, value).expect("failures were taken out"));
        if let Some(entry) = state.keys.get_mut(key) {
            entry.value = Some(shown.clone());
            notes.push((key.clone(), shown));
        }
    }
    state.serving = Some(session);
    match resync {
        Some(reason) => {
            let watchers: Vec<u64> = state.watchers.keys().copied().collect();
            for watcher in watchers {
                state.send(watcher, Note::Resync(reason));
            }
        }
        None => {
            notes.sort_by_key(|(_, shown)| shown.seq);
            for (key, shown) in notes {
                let Some(entry) = state.keys.get(&key) else {
                    continue;
                };
                for watcher in &entry.watchers {
                    state.send(
                        *watcher,
                        Note::Value {
                            key: key.clone(),
                            shown: shown.clone(),
                        },
                    );
                }
            }
        }
    }
    false
}

/// How a stream begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Every value, for this reason (`initial` or a resync's).
    Snapshot(&'static str),
    /// The keys that changed after this `seq`.
    Resume(u64),
}

/// One open stream; leaving the hub when dropped (the client went away).
pub struct Watcher {
    hub: Arc<WatchHub>,
    id: u64,
    keys: Vec<Arc<str>>,
    keyset: u32,
    notes: mpsc::Receiver<Note>,
    lag: Arc<Lag>,
    /// Until every key has a value: what to send then.
    pending: Option<Start>,
    have: HashMap<Arc<str>, Arc<Shown>>,
    watermark: u64,
    started: bool,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.hub.deregister(self.id, &self.keys);
    }
}

impl Watcher {
    /// Writes the stream's frames into `out` until the client leaves or the pod drains.
    pub async fn run(mut self, out: mpsc::Sender<Bytes>) {
        let shutdown = self.hub.shutdown.clone().notified_owned();
        let mut shutdown = std::pin::pin!(shutdown);
        shutdown.as_mut().enable();
        let every = self.hub.settings.heartbeat;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // How long a browser's EventSource waits before it reconnects.
        let mut frames = vec![Bytes::from_static(b"retry: 1000\n\n")];
        loop {
            if self.hub.shutting_down.load(SeqCst) {
                frames.push(self.frame("shutdown", b"{\"reason\":\"shutting_down\"}"));
                self.hub.metrics.event("shutdown");
                for frame in frames {
                    if out.send(frame).await.is_err() {
                        return;
                    }
                }
                return;
            }
            self.emit_start(&mut frames);
            for frame in frames.drain(..) {
                if out.send(frame).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                biased;
                () = shutdown.as_mut() => {}
                () = out.closed() => return,
                () = self.lag.wake.notified() => {
                    if self.lag.behind.swap(false, SeqCst) {
                        self.resync("lagged");
                    }
                }
                note = self.notes.recv() => match note {
                    None => return,
                    Some(Note::Value { key, shown }) => self.on_value(key, shown, &mut frames),
                    Some(Note::Resync(reason)) => self.resync(reason),
                },
                _ = heartbeat.tick() => frames.push(Bytes::from_static(b": heartbeat\n\n")),
            }
        }
    }

    fn on_value(&mut self, key: Arc<str>, shown: Arc<Shown>, frames: &mut Vec<Bytes>) {
        self.watermark = self.watermark.max(shown.seq);
        // A note queued before a resync read the table is older than what
        // the table gave.
        if self.have.get(&key).is_some_and(|had| had.seq >= shown.seq) {
            return;
        }
        if self.pending.is_some() {
            self.have.insert(key, shown);
            return;
        }
        frames.push(self.frame("change", &shown.change));
        self.hub.metrics.event("change");
        self.have.insert(key, shown);
    }

    /// Every value again, from the table, as soon as each key has one.
    fn resync(&mut self, reason: &'static str) {
        let state = self.hub.lock();
        self.have.clear();
        for key in &self.keys {
            if let Some(value) = state.keys.get(key).and_then(|e| e.value.clone()) {
                self.have.insert(key.clone(), value);
            }
        }
        self.watermark = self.watermark.max(state.applied);
        drop(state);
        if self.started {
            self.pending = Some(Start::Snapshot(reason));
        }
    }

    /// The first event (or a resync's snapshot), once every key has a value.
    fn emit_start(&mut self, frames: &mut Vec<Bytes>) {
        let Some(start) = self.pending else { return };
        if self.keys.iter().any(|key| !self.have.contains_key(key)) {
            return;
        }
        let mut start = start;
        let mut missed = Vec::new();
        if let Start::Resume(after) = start {
            let state = self.hub.lock();
            if after < state.gap || after < state.floor {
                start = Start::Snapshot("history_gap");
            } else {
                let mut seen = HashSet::new();
                for (seq, key) in state.history.iter().rev() {
                    if *seq <= after {
                        break;
                    }
                    if *seq <= self.watermark
                        && self.keys.binary_search(key).is_ok()
                        && seen.insert(key.clone())
                    {
                        missed.push(key.clone());
                    }
                }
                missed.sort();
            }
        }
        let (event, keys, reason) = match start {
            Start::Snapshot(reason) => ("snapshot", &self.keys[..], Some(reason)),
            Start::Resume(_) => ("resumed", &missed[..], None),
        };
        let mut data = BytesMut::with_capacity(64);
        if let Some(reason) = reason {
            let resync = reason != "initial";
            data.put_slice(b"{\"reason\":\"");
            data.put_slice(reason.as_bytes());
            data.put_slice(if resync {
                b"\",\"resync\":true,\"values\":{"
            } else {
                b"\",\"resync\":false,\"values\":{"
            });
            if resync {
                self.hub.metrics.resync(reason);
            }
        } else {
            data.put_slice(b"{\"values\":{");
        }
        let mut errors = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let shown = &self.have[key];
            if i > 0 {
                data.put_u8(b',');
            }
            data.put_slice(&json_string(key));
            data.put_u8(b':');
            data.put_slice(&shown.value);
            if let Some(error) = shown.error {
                errors.push((key, error));
            }
        }
        data.put_u8(b'}');
        if !errors.is_empty() {
            data.put_slice(b",\"errors\":{");
            for (i, (key, error)) in errors.into_iter().enumerate() {
                if i > 0 {
                    data.put_u8(b',');
                }
                data.put_slice(&json_string(key));
                data.put_slice(b":\"");
                data.put_slice(error.as_bytes());
                data.put_u8(b'"');
            }
            data.put_u8(b'}');
        }
        data.put_u8(b'}');
        frames.push(self.frame(event, &data));
        self.hub.metrics.event(event);
        self.pending = None;
        self.started = true;
    }

    fn frame(&self, event: &str, data: &[u8]) -> Bytes {
        let id = self.hub.id_text(self.watermark, self.keyset);
        let mut frame = BytesMut::with_capacity(id.len() + event.len() + data.len() + 24);
        frame.put_slice(b"id: ");
        frame.put_slice(id.as_bytes());
        frame.put_slice(b"\nevent: ");
        frame.put_slice(event.as_bytes());
        frame.put_slice(b"\ndata: ");
        frame.put_slice(data);
        frame.put_slice(b"\n\n");
        frame.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_refuse_anything_else() {
        let keys: Vec<Arc<str>> = vec!["a".into(), "b".into()];
        let set = keyset(&keys);
        let id = format!("{:016x}-{}-{:08x}", 0xabcu64, 42, set);
        assert_eq!(parse_id(&id), Some((0xabc, 42, set)));
        for bad in ["", "x", "1-2", "1-2-3-4", "zz-1-1", "1--1", "1-2-zz"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
        assert_ne!(keyset(&keys), keyset(&["ab".into()]));
        assert_ne!(keyset(&keys), keyset(&["a".into()]));
    }

    #[test]
    fn values_are_shown_as_json_with_their_error() {
        let text = shown("k\"", 3, Ok(Some(StringValue::Text("v\n".into())))).unwrap();
        assert_eq!(&text.change[..], br#"{"key":"k\"","value":"v\n"}"#);
        let missing = shown("k", 3, Ok(None)).unwrap();
        assert_eq!(&missing.change[..], br#"{"key":"k","value":null}"#);
        let wrong = shown("k", 3, Err(StoreError::WrongType("k".into()))).unwrap();
        assert_eq!(
            &wrong.change[..],
            br#"{"key":"k","value":null,"error":"wrong_type"}"#
        );
    }
}
