//! Hostile sizes in Redis cannot take the API's memory: values over the limits
//! are refused inside Redis, so they never cross the wire.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::support::{ApiProcess, RedisServer};

const MIB: u64 = 1 << 20;
/// The container's memory limit in deploy/base.
const CONTAINER_LIMIT: u64 = 128 * MIB;

/// Samples the process's resident memory every 10 ms, keeping the peak.
struct RssWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let (peak, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = std::thread::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = rss_of(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        Self {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns the peak and the resident memory now, after
    /// checking that the peak stayed under the container's limit.
    fn finish(self, api: &ApiProcess, at_start: u64) -> (u64, u64) {
        let peak = self.peak.load(Ordering::Relaxed);
        drop(self);
        let after = api.rss_bytes();
        eprintln!(
            "rss: {} MiB at start, {} MiB at the peak, {} MiB after",
            at_start / MIB,
            peak / MIB,
            after / MIB
        );
        assert!(peak < CONTAINER_LIMIT, "peaked at {} MiB", peak / MIB);
        (peak, after)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

async fn status_and_code(api: &ApiProcess, path: &str) -> (u16, String) {
    let response = api.get(path).await;
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sizes_in_redis_never_reach_the_api() {
    let redis = RedisServer::start();
    // SETRANGE pads with zero bytes: valid UTF-8 that JSON escapes to six
    // times its size, the worst case for an API that would read it.
    redis.cli(&[
        "EVAL",
        "for i = 1, 100 do redis.call('SETRANGE', 'big:' .. i, 10485759, 'x') end",
        "0",
    ]);
    redis.cli(&["SETRANGE", "huge", "209715199", "x"]);
    assert_eq!(redis.cli(&["STRLEN", "huge"]), "209715200");
    redis.cli(&["SET", "small", "fine"]);

    let api = ApiProcess::spawn(&[("REDIS_URL", &redis.url()), ("REDIS_TIMEOUT_MS", "5000")]);
    api.wait_ready().await;
    let at_start = api.rss_bytes();
    let watch = RssWatch::start(api.pid());

    // Four concurrent batches for all 100 values of 10 MB.
    let all_big = (1..=100)
        .map(|i| format!("key=big:{i}"))
        .collect::<Vec<_>>()
        .join("&");
    for (status, code) in four_at_once(&api, &format!("/v1/keys?{all_big}")).await {
        assert_eq!((status, code.as_str()), (409, "value_too_large"));
    }
    // One value of 200 MB.
    assert_eq!(
        status_and_code(&api, "/v1/keys/huge").await,
        (409, "value_too_large".into())
    );
    // Ordinary reads answer right after, and at once: no reply is draining.
    for path in ["/v1/keys/small", "/v1/keys?key=small"] {
        let started = Instant::now();
        assert_eq!(status_and_code(&api, path).await.0, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{path}: {:?}",
            started.elapsed()
        );
    }
    let (peak, after) = watch.finish(&api, at_start);
    // Nothing of the values was read: memory barely moves.
    assert!(
        peak < at_start + 16 * MIB && after < at_start + 16 * MIB,
        "{} MiB at start, {} MiB at the peak, {} MiB after",
        at_start / MIB,
        peak / MIB,
        after / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_answers_the_limits_allow_fit_the_container() {
    let redis = RedisServer::start();
    // 8 values of 1,000,000 bytes: the largest batch the defaults let through.
    redis.cli(&[
        "EVAL",
        "for i = 1, 9 do redis.call('SET', 'mb:' .. i, string.rep('a', 1000000)) end",
        "0",
    ]);
    // Within the byte budget in Redis, six times over it once escaped.
    redis.cli(&[
        "EVAL",
        "for i = 1, 2 do redis.call('SET', 'ctl:' .. i, string.rep('\\1', 1000000)) end",
        "0",
    ]);
    redis.cli(&["SET", "small", "fine"]);
    const WORKERS: u64 = 2;
    const POOL: u64 = 2;
    let api = ApiProcess::spawn(&[
        ("REDIS_URL", &redis.url()),
        ("REDIS_TIMEOUT_MS", "5000"),
        ("WORKERS", "2"),
        ("REDIS_POOL_SIZE", "2"),
        // The image's binary is static musl, whose malloc unmaps a large block
        // as soon as it is freed; glibc's raises its mmap threshold after the
        // first such free and keeps later ones in its arenas. A fixed
        // threshold makes glibc behave as musl does.
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072"),
    ]);
    api.wait_ready().await;
    let at_start = api.rss_bytes();
    let watch = RssWatch::start(api.pid());

    let eight = (1..=8)
        .map(|i| format!("key=mb:{i}"))
        .collect::<Vec<_>>()
        .join("&");
    for _ in 0..3 {
        for (status, code) in four_at_once(&api, &format!("/v1/keys?{eight}")).await {
            assert_eq!((status, code.as_str()), (200, ""));
        }
    }
    assert_eq!(
        status_and_code(&api, &format!("/v1/keys?{eight}&key=mb:9")).await,
        (409, "response_too_large".into())
    );
    assert_eq!(
        status_and_code(&api, "/v1/keys?key=ctl:1&key=ctl:2").await,
        (409, "response_too_large".into())
    );
    assert_eq!(status_and_code(&api, "/v1/keys/small").await.0, 200);
    let (_, after) = watch.finish(&api, at_start);
    // What stays: each Redis connection keeps a read buffer as large as the
    // largest reply it carried (8 MiB at most), plus allocator slack.
    let bound = at_start + WORKERS * POOL * 8 * MIB + 16 * MIB;
    assert!(
        after < bound,
        "{} MiB after, bound {} MiB",
        after / MIB,
        bound / MIB
    );
}

/// The same GET four times at once.
async fn four_at_once(api: &ApiProcess, path: &str) -> Vec<(u16, String)> {
    let (a, b, c, d) = tokio::join!(
        status_and_code(api, path),
        status_and_code(api, path),
        status_and_code(api, path),
        status_and_code(api, path)
    );
    vec![a, b, c, d]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_hashes_in_redis_never_reach_the_api() {
    let redis = RedisServer::start();
    // Four values of 25 MB, and a field whose name alone is 20 MB: names have
    // no length command, so only the script's size checks stand in the way.
    redis.cli(&[
        "EVAL",
        "for i = 1, 4 do redis.call('HSET', 'fat', 'f' .. i, string.rep('\\1', 25000000)) end \
         redis.call('HSET', 'named', string.rep('n', 20000000), 'v') \
         redis.call('HSET', 'named', 'small', 'ok')",
        "0",
    ]);
    let api = ApiProcess::spawn(&[("REDIS_URL", &redis.url()), ("REDIS_TIMEOUT_MS", "5000")]);
    api.wait_ready().await;
    let at_start = api.rss_bytes();
    let watch = RssWatch::start(api.pid());
    for path in [
        "/v1/keys/fat/fields",
        "/v1/keys/fat/fields?field=f1",
        "/v1/keys/named/fields",
    ] {
        for (status, code) in four_at_once(&api, path).await {
            assert_eq!((status, code.as_str()), (409, "value_too_large"), "{path}");
        }
    }
    // The small field of the same hashes reads at once: no reply is draining.
    let started = Instant::now();
    assert_eq!(
        status_and_code(&api, "/v1/keys/named/fields?field=small").await,
        (200, String::new())
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let (peak, after) = watch.finish(&api, at_start);
    assert!(
        peak < at_start + 16 * MIB && after < at_start + 16 * MIB,
        "{} MiB at start, {} MiB at the peak, {} MiB after",
        at_start / MIB,
        peak / MIB,
        after / MIB
    );
}
