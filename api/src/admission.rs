//! Admission control: each HTTP worker admits a bounded number of requests at
//! once and answers the others `503 overloaded` with `Retry-After` straight
//! away, before any Redis work, so that past capacity the API keeps serving
//! what it can instead of queueing everything until clients give up.
//!
//! The bound is per worker, not per process: a worker is one thread with its
//! own event loop and its own Redis connections, so the queue that builds up
//! is its own. Its state lives in `Cell`s: deciding takes no lock, no atomic
//! shared with other workers and no allocation (only the Prometheus counters
//! are shared, as every request's are).
//!
//! The bound adapts, in the gradient family of Envoy's adaptive concurrency
//! filter and Netflix's concurrency-limits. Every [`WINDOW`], a worker
//! compares the mean latency of the requests it answered with the lowest mean
//! it has seen (its latency without load; it creeps up slowly, so that a
//! lasting change, such as a farther Redis, is learnt in about a minute).
//! Above twice that plus `ADMISSION_QUEUE_MS`, requests are queueing, in this
//! worker or in Redis (a saturated master), and the bound goes down in
//! proportion, at most by half per window; otherwise it grows by its square
//! root per window, back up to `ADMISSION_MAX_IN_FLIGHT`.
//!
//! A worker short of CPU, whether its bound is fixed or adaptive, neither
//! lowers its bound nor refuses anything: its
//! runtime was busy for most of the last window, the container's CPU limit
//! throttled it (`nr_throttled` in its cgroup's `cpu.stat` went up), or a
//! timer on its event loop (every 10 ms) fired late by a quarter of the mean
//! latency or more (the machine's other work took the CPU).
//! Its queue is then in its own sockets, which no bound reaches, and a
//! refusal costs more than half of what an answer does (reading and parsing
//! the request and writing the answer are most of the work), so every
//! refusal would take the place of an answer.

use std::{
    cell::Cell,
    future::{ready, Future, Ready},
    path::{Path, PathBuf},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use actix_web::{
    body::{EitherBody, MessageBody},
    dev::{Service, ServiceRequest, ServiceResponse, Transform},
    http::header::{self, HeaderValue},
    Error, HttpResponse,
};
use bytes::Bytes;
use pin_project_lite::pin_project;

use crate::{
    config::{AdmissionMode, AdmissionSettings},
    error::{ApiError, RETRY_AFTER_SECONDS},
    metrics::AdmissionMetrics,
};

/// How often a worker revises its bound: often enough to follow a burst within
/// a second, long enough to average over hundreds of requests at load.
pub const WINDOW: Duration = Duration::from_millis(100);
/// Fewer answers than this in a window say nothing about latency: the window
/// runs on until there are enough.
const MIN_SAMPLES: u32 = 8;
/// How far the latency without load may rise per window (doubling in 600
/// windows, a minute): a slower Redis that a lower bound does not make faster
/// is accepted as the new normal instead of holding the bound down forever.
const BASELINE_DRIFT: f64 = 0.001_2;
/// Latency up to this multiple of the latency without load is not queueing.
const TOLERANCE: f64 = 2.0;
/// A worker busy this share of a window is short of CPU: its latency is its
/// own queue (see the module's doc), and the bound does not go down.
const SATURATED: f64 = 0.9;
/// How often each worker checks how late its own timers fire.
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// A timer late by this share of the mean latency says the worker waited for
/// CPU (the machine's other work) for a good part of that latency.
const LATE_SHARE: f64 = 0.25;

/// The middleware factory: one [`Limiter`] per worker.
#[derive(Clone)]
pub struct Admission {
    settings: AdmissionSettings,
    metrics: AdmissionMetrics,
    body: Bytes,
}

impl Admission {
    pub fn new(settings: AdmissionSettings, metrics: AdmissionMetrics) -> Self {
        Self {
            settings,
            metrics,
            body: Bytes::from(ApiError::Overloaded.body()),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Admission
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = AdmissionService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        let limiter = (self.settings.mode != AdmissionMode::Off)
            .then(|| Rc::new(Limiter::new(self.settings, self.metrics.clone())));
        if let Some(limiter) = limiter.as_ref() {
            // On the worker's own thread: actix builds each worker's services there.
            tokio::task::spawn_local(probe(Rc::downgrade(limiter)));
        }
        ready(Ok(AdmissionService {
            service,
            limiter,
            // Per worker, so that cloning it never touches another thread's cache line.
            body: Bytes::copy_from_slice(&self.body),
        }))
    }
}

pub struct AdmissionService<S> {
    service: S,
    /// `None` when admission control is off.
    limiter: Option<Rc<Limiter>>,
    body: Bytes,
}

impl<S, B> Service<ServiceRequest> for AdmissionService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = AdmissionFuture<S::Future, B>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let Some(limiter) = &self.limiter else {
            return AdmissionFuture::Passed {
                inner: self.service.call(req),
            };
        };
        match limiter.admit() {
            Ok(started) => AdmissionFuture::Admitted {
                guard: Guard {
                    limiter: Rc::clone(limiter),
                    started,
                    answered: false,
                },
                inner: self.service.call(req),
            },
            Err(()) => {
                let response = HttpResponse::ServiceUnavailable()
                    .insert_header((
                        header::RETRY_AFTER,
                        HeaderValue::from_static(RETRY_AFTER_SECONDS),
                    ))
                    .insert_header((
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ))
                    .body(self.body.clone());
                AdmissionFuture::Refused {
                    response: Some(req.into_response(response).map_into_right_body()),
                }
            }
        }
    }
}

pin_project! {
    #[project = Projected]
    pub enum AdmissionFuture<F, B> {
        Admitted { #[pin] inner: F, guard: Guard },
        Passed { #[pin] inner: F },
        Refused { response: Option<ServiceResponse<EitherBody<B>>> },
    }
}

impl<F, B> Future for AdmissionFuture<F, B>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
{
    type Output = Result<ServiceResponse<EitherBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Admitted { inner, guard } => {
                let output = std::task::ready!(inner.poll(cx));
                guard.answered = true;
                Poll::Ready(output.map(ServiceResponse::map_into_left_body))
            }
            Projected::Passed { inner } => inner
                .poll(cx)
                .map(|output| output.map(ServiceResponse::map_into_left_body)),
            Projected::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after it answered")))
            }
        }
    }
}

/// Holds an admitted request's place; gives it back when the request is
/// answered or abandoned (the client went away).
pub struct Guard {
    limiter: Rc<Limiter>,
    started: Option<Instant>,
    answered: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // An abandoned request says nothing about how long answers take.
        let started = self.started.filter(|_| self.answered);
        self.limiter.release(started);
    }
}

/// Notes how late a timer fires on this worker, until the worker is gone.
async fn probe(limiter: std::rc::Weak<Limiter>) {
    loop {
        let started = Instant::now();
        tokio::time::sleep(PROBE_EVERY).await;
        let late = started.elapsed().saturating_sub(PROBE_EVERY);
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        if late > limiter.window_lag.get() {
            limiter.window_lag.set(late);
        }
    }
}

/// One worker's bound and what it has measured.
pub struct Limiter {
    adaptive: bool,
    max: f64,
    min: f64,
    queue: f64,
    limit: Cell<f64>,
    /// `limit`, rounded, as the admission test uses it and the gauge shows it.
    admit_below: Cell<u32>,
    in_flight: Cell<u32>,
    /// The most in flight at once during the window.
    window_peak: Cell<u32>,
    /// The worker's runtime's busy time when the window opened.
    window_busy: Cell<Duration>,
    /// Its `nr_throttled` when the window opened.
    window_throttled: Cell<u64>,
    /// The latest the worker's probe fired during the window.
    window_lag: Cell<Duration>,
    /// Whether the last window found the worker short of CPU.
    starved: Cell<bool>,
    window_start: Cell<Instant>,
    samples: Cell<u32>,
    latency_sum: Cell<f64>,
    /// The lowest window mean seen, in seconds, drifting up (see [`BASELINE_DRIFT`]).
    baseline: Cell<f64>,
    metrics: AdmissionMetrics,
}

impl Limiter {
    pub fn new(settings: AdmissionSettings, metrics: AdmissionMetrics) -> Self {
        let max = f64::from(settings.max_in_flight);
        let limiter = Self {
            adaptive: settings.mode == AdmissionMode::Adaptive,
            max,
            min: f64::from(settings.min_in_flight),
            queue: settings.queue.as_secs_f64(),
            limit: Cell::new(max),
            admit_below: Cell::new(settings.max_in_flight),
            in_flight: Cell::new(0),
            window_peak: Cell::new(0),
            window_busy: Cell::new(busy_time()),
            window_throttled: Cell::new(throttled()),
            window_lag: Cell::new(Duration::ZERO),
            starved: Cell::new(false),
            window_start: Cell::new(Instant::now()),
            samples: Cell::new(0),
            latency_sum: Cell::new(0.0),
            baseline: Cell::new(f64::INFINITY),
            metrics,
        };
        limiter.metrics.limit.add(i64::from(settings.max_in_flight));
        limiter
    }

    /// Takes a place if there is one; the start time when latency is measured.
    fn admit(&self) -> Result<Option<Instant>, ()> {
        let in_flight = self.in_flight.get();
        // A worker short of CPU admits everything: see the module's doc.
        if in_flight >= self.admit_below.get() && !self.starved.get() {
            let lowered = self.limit.get() < self.max;
            self.metrics.shed[usize::from(lowered)].inc();
            return Err(());
        }
        self.in_flight.set(in_flight + 1);
        if in_flight >= self.window_peak.get() {
            self.window_peak.set(in_flight + 1);
        }
        self.metrics.admitted.inc();
        self.metrics.in_flight.inc();
        Ok(Some(Instant::now()))
    }

    /// Gives a place back, with the request's start time if it was answered.
    fn release(&self, started: Option<Instant>) {
        self.in_flight.set(self.in_flight.get() - 1);
        self.metrics.in_flight.dec();
        let Some(started) = started else { return };
        let now = Instant::now();
        let samples = self.samples.get() + 1;
        let sum = self.latency_sum.get() + now.duration_since(started).as_secs_f64();
        if samples >= MIN_SAMPLES && now.duration_since(self.window_start.get()) >= WINDOW {
            let busy = busy_time();
            let busy_share = busy
                .saturating_sub(self.window_busy.replace(busy))
                .as_secs_f64()
                / now.duration_since(self.window_start.get()).as_secs_f64();
            let periods = throttled();
            let throttled = periods > self.window_throttled.replace(periods);
            let mean = sum / f64::from(samples);
            let late = self.window_lag.replace(Duration::ZERO).as_secs_f64() >= mean * LATE_SHARE;
            self.end_window(mean, busy_share >= SATURATED || throttled || late);
            self.window_peak.set(self.in_flight.get());
            self.window_start.set(now);
            self.samples.set(0);
            self.latency_sum.set(0.0);
        } else {
            self.samples.set(samples);
            self.latency_sum.set(sum);
        }
    }

    fn end_window(&self, mean: f64, starved: bool) {
        if !self.adaptive {
            // A fixed bound stays where it is; only its refusals stop while the
            // worker is short of CPU, where each would take an answer's place.
            self.starved.set(starved);
            return;
        }
        let baseline = (self.baseline.get() * (1.0 + BASELINE_DRIFT)).min(mean);
        self.baseline.set(baseline);
        let target = TOLERANCE * baseline + self.queue;
        let peak = f64::from(self.window_peak.get());
        self.starved.set(starved);
        let limit = if mean <= target {
            let limit = self.limit.get();
            limit + limit.sqrt()
        } else if peak > self.min && !starved {
            // From what was in flight, not from a bound that was not reached.
            self.limit.get().min(peak) * (target / mean).max(0.5)
        } else {
            // Slow answers with no more than the floor in flight are no queue
            // (a hiccup of the machine, one slow command); and a worker short
            // of CPU has its queue in itself, not in Redis.
            return;
        }
        .clamp(self.min, self.max);
        self.limit.set(limit);
        let rounded = limit.round() as u32;
        let previous = self.admit_below.replace(rounded);
        self.metrics
            .limit
            .add(i64::from(rounded) - i64::from(previous));
    }
}

/// The `cpu.stat` of this process's cgroup (v2, or v1's cpu controller), as
/// the container sees it.
fn cpu_stat() -> Option<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut candidates = Vec::new();
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            candidates.push(Path::new("/sys/fs/cgroup").join(path));
            candidates.push(Path::new("/sys/fs/cgroup/unified").join(path));
        } else if controllers.split(',').any(|c| c == "cpu") {
            candidates.push(Path::new("/sys/fs/cgroup").join(controllers).join(path));
            candidates.push(Path::new("/sys/fs/cgroup/cpu").join(path));
        }
    }
    candidates
        .into_iter()
        .map(|dir| dir.join("cpu.stat"))
        .find(|file| throttled_in(file).is_some())
}

/// `nr_throttled` from `cpu.stat`: periods in which the CPU limit stopped the
/// container.
fn throttled_in(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("nr_throttled "))
        .and_then(|n| n.trim().parse().ok())
}

/// The container's throttled periods, found anew each window: a process moved
/// into its cgroup after it started (as `make bench` does) is counted there.
/// Two small reads every [`WINDOW`].
fn throttled() -> u64 {
    cpu_stat().as_deref().and_then(throttled_in).unwrap_or(0)
}

/// How long this thread's runtime has been busy (not parked) since it started;
/// zero outside a runtime.
fn busy_time() -> Duration {
    tokio::runtime::Handle::try_current().map_or(Duration::ZERO, |runtime| {
        runtime.metrics().worker_total_busy_duration(0)
    })
}

impl Drop for Limiter {
    /// A worker that stops (restarted after a panic, or at shutdown) takes its share of the gauge.
    fn drop(&mut self) {
        self.metrics.limit.sub(i64::from(self.admit_below.get()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn limiter(mode: AdmissionMode, min: u32, max: u32) -> (Limiter, Metrics) {
        let metrics = Metrics::new();
        let settings = AdmissionSettings {
            mode,
            max_in_flight: max,
            min_in_flight: min,
            queue: Duration::from_millis(2),
            max_connections: 1,
        };
        (Limiter::new(settings, metrics.admission.clone()), metrics)
    }

    #[test]
    fn a_worker_admits_up_to_its_bound_and_sheds_the_rest_by_reason() {
        let (limiter, metrics) = limiter(AdmissionMode::Fixed, 2, 2);
        limiter.admit().unwrap();
        limiter.admit().unwrap();
        assert!(limiter.admit().is_err());
        assert_eq!(metrics.admission.shed[0].get(), 1, "shed at max_in_flight");
        assert_eq!(metrics.admission.in_flight.get(), 2);
        limiter.release(None);
        limiter.admit().unwrap();
        assert_eq!(metrics.admission.admitted.get(), 3);
        assert_eq!(metrics.admission.limit.get(), 2);
    }

    #[test]
    fn slow_answers_lower_the_bound_to_its_floor_and_fast_ones_raise_it_again() {
        let (limiter, metrics) = limiter(AdmissionMode::Adaptive, 4, 64);
        // Up to 16 requests at once, answered in `latency`, until the window closes.
        let window = |latency: Duration| {
            let opened = Instant::now() - WINDOW;
            limiter.window_start.set(opened);
            while limiter.window_start.get() == opened {
                let n = limiter.admit_below.get().min(16);
                for _ in 0..n {
                    limiter.admit().unwrap();
                }
                for _ in 0..n {
                    limiter.release(Some(Instant::now() - latency));
                }
            }
        };
        window(Duration::from_micros(100));
        assert_eq!(limiter.admit_below.get(), 64, "capped at the ceiling");
        for _ in 0..10 {
            window(Duration::from_millis(50));
        }
        assert_eq!(limiter.admit_below.get(), 4);
        assert_eq!(metrics.admission.limit.get(), 4);
        for _ in 0..4 {
            limiter.admit().unwrap();
        }
        assert!(limiter.admit().is_err());
        assert_eq!(
            metrics.admission.shed[1].get(),
            1,
            "shed below the ceiling: latency"
        );
        for _ in 0..4 {
            limiter.release(None);
        }
        for _ in 0..40 {
            window(Duration::from_micros(100));
        }
        assert_eq!(limiter.admit_below.get(), 64);
        drop(limiter);
        assert_eq!(metrics.admission.limit.get(), 0);
    }
}
