//! Admission control on the real binary and a real redis-server: a slow
//! Redis lowers the bound, the excess is refused at once, and the bound comes
//! back afterwards; an API short of CPU keeps serving at capacity; a fixed
//! bound refuses past it with 503 `overloaded`; past its connection bound a
//! worker leaves new connections waiting in the kernel.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::support::{metric_value, wait_for, ApiProcess, RedisServer};

/// A cgroup v1 CPU controller group with a quota, removed on drop: the API in
/// it is the bottleneck however fast the test's own client is.
struct CpuLimit {
    path: PathBuf,
}

impl CpuLimit {
    /// `per_mille` thousandths of one core, in periods of 100 ms (the kubelet's).
    fn new(per_mille: u32) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "read-api-admission-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = PathBuf::from("/sys/fs/cgroup/cpu").join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| {
            panic!(
                "create {}: {e} (these tests need root and the cgroup v1 cpu controller)",
                path.display()
            )
        });
        let limit = Self { path };
        limit.write("cpu.cfs_period_us", "100000");
        limit.write("cpu.cfs_quota_us", &(per_mille * 100).to_string());
        limit
    }

    fn write(&self, file: &str, value: &str) {
        std::fs::write(self.path.join(file), value)
            .unwrap_or_else(|e| panic!("write {value} to {}/{file}: {e}", self.path.display()));
    }

    /// Moves a process, all its threads, into the group.
    fn add(&self, pid: u32) {
        self.write("cgroup.procs", &pid.to_string());
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // The processes in it were declared after it, so they are killed
        // before it; the kernel may take a moment to let their group go.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What a closed-loop client saw: answers by status, and each one's latency.
#[derive(Default)]
struct Tally {
    ok: Vec<Duration>,
    shed: Vec<Duration>,
    other: Vec<u16>,
    errors: usize,
    elapsed: Duration,
}

impl Tally {
    fn ok_per_second(&self) -> f64 {
        self.ok.len() as f64 / self.elapsed.as_secs_f64()
    }
}

fn median(latencies: &mut [Duration]) -> Duration {
    latencies.sort_unstable();
    latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default()
}

/// `connections` clients, each sending its next request as soon as the last
/// is answered, for `duration`. The first 503 is checked for its code and
/// `Retry-After`.
async fn hammer(base: &str, path: &str, connections: usize, duration: Duration) -> Tally {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("{base}{path}");
    let started = Instant::now();
    let deadline = started + duration;
    let checked = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (http, url, checked) = (http.clone(), url.clone(), checked.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let response = match http.get(&url).send().await {
                        Ok(response) => response,
                        Err(_) => {
                            tally.errors += 1;
                            continue;
                        }
                    };
                    let status = response.status().as_u16();
                    if status == 503 && !checked.swap(true, Ordering::Relaxed) {
                        assert_overloaded(response).await;
                    } else {
                        let _ = response.bytes().await;
                    }
                    match status {
                        200 => tally.ok.push(sent.elapsed()),
                        503 => tally.shed.push(sent.elapsed()),
                        other => tally.other.push(other),
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.unwrap();
        total.ok.extend(tally.ok);
        total.shed.extend(tally.shed);
        total.other.extend(tally.other);
        total.errors += tally.errors;
    }
    total.elapsed = started.elapsed();
    total
}

async fn assert_overloaded(response: reqwest::Response) {
    assert_eq!(
        response.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "overloaded", "{body}");
}

async fn metrics(api: &ApiProcess) -> String {
    api.http
        .get(format!("{}/metrics", api.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn limit(api: &ApiProcess) -> f64 {
    metric_value(&metrics(api).await, "read_api_admission_limit").unwrap()
}

fn shed_total(text: &str, reason: &str) -> f64 {
    metric_value(
        text,
        &format!("read_api_admission_shed_total{{reason=\"{reason}\"}}"),
    )
    .unwrap()
}

/// Waits, with one read at a time to keep the bound revised, until the
/// bound is back at its ceiling.
async fn wait_for_ceiling(api: &ApiProcess, ceiling: f64) {
    wait_for(
        "the bound to come back to its ceiling",
        Duration::from_secs(30),
        || async {
            for _ in 0..20 {
                api.get("/v1/keys/hot").await;
            }
            (limit(api).await == ceiling).then_some(())
        },
    )
    .await;
}

fn api_for(redis: &RedisServer, extra: &[(&str, &str)]) -> ApiProcess {
    let url = redis.url();
    let mut vars = vec![
        ("REDIS_URL", url.as_str()),
        ("WORKERS", "1"),
        // Every read goes to Redis, as in the measurements of issue 24.
        ("CACHE_MAX_BYTES", "0"),
        ("LOG_FORMAT", "text"),
    ];
    vars.extend_from_slice(extra);
    ApiProcess::spawn(&vars)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_a_cpu_limited_apis_capacity_keeps_it_serving_at_capacity() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "hot", "value"]);
    // Half a core: the test's own client, on the same cores, outruns it.
    let cpu = CpuLimit::new(500);
    // The default, fixed bound: 400 clients take a worker past it.
    let api = api_for(&redis, &[]);
    cpu.add(api.pid());
    api.wait_ready().await;

    let capacity = hammer(&api.base, "/v1/keys/hot", 8, Duration::from_secs(2)).await;
    assert!(capacity.shed.is_empty(), "8 clients are within the bound");
    let ready = Arc::new(AtomicBool::new(true));
    let readiness = {
        let (http, url, ready) = (
            api.http.clone(),
            format!("{}/readyz", api.admin),
            ready.clone(),
        );
        tokio::spawn(async move {
            let mut lowest_limit = f64::MAX;
            let admin = url.trim_end_matches("/readyz").to_owned();
            while ready.load(Ordering::Relaxed) {
                let status = http.get(&url).send().await.map(|r| r.status().as_u16());
                assert_eq!(status.ok(), Some(200), "readiness held during the burst");
                let text = http.get(format!("{admin}/metrics")).send().await.unwrap();
                let text = text.text().await.unwrap();
                lowest_limit =
                    lowest_limit.min(metric_value(&text, "read_api_admission_limit").unwrap());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            lowest_limit
        })
    };
    let mut burst = hammer(&api.base, "/v1/keys/hot", 400, Duration::from_secs(4)).await;
    ready.store(false, Ordering::Relaxed);
    let lowest_limit = readiness.await.unwrap();

    let report = format!(
        "closed-loop capacity {:.0}/s; burst: {:.0} 200/s, {} 503s, other {:?}, {} errors; \
         median latency 200 {:?}; lowest bound {lowest_limit}",
        capacity.ok_per_second(),
        burst.ok_per_second(),
        burst.shed.len(),
        &burst.other[..burst.other.len().min(5)],
        burst.errors,
        median(&mut burst.ok),
    );
    eprintln!("{report}");
    // Short of CPU, the API refuses nothing: a refusal would cost most of
    // what the answer it replaces does (see admission.rs).
    assert!(
        burst.ok_per_second() >= 0.5 * capacity.ok_per_second(),
        "{report}"
    );
    assert!(burst.other.is_empty() && burst.errors == 0, "{report}");
    // Refusals only at the onset, before a first window finds the worker throttled.
    assert!(burst.shed.len() * 5 <= burst.ok.len(), "{report}");
    let text = metrics(&api).await;
    assert_eq!(
        metric_value(&text, "read_api_admission_in_flight"),
        Some(0.0),
        "every place given back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_lowers_the_bound_and_it_comes_back_when_redis_recovers() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]);
    redis.cli(&["SET", "hot", "value"]);
    let api = api_for(&redis, &[("ADMISSION", "adaptive")]);
    api.wait_ready().await;
    let load = {
        let base = api.base.clone();
        tokio::spawn(
            async move { hammer(&base, "/v1/keys/hot", 32, Duration::from_secs(10)).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Redis stops for 500 ms out of every 510: every read waits for it, past
    // ADMISSION_QUEUE_MS (100) and short of REDIS_TIMEOUT_MS (1000).
    let mut slow = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "-r", "1000", "-i", "0.01"])
        .args(["DEBUG", "SLEEP", "0.5"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lowered = wait_for(
        "the bound to go down and shed",
        Duration::from_secs(15),
        || async {
            let text = metrics(&api).await;
            let bound = metric_value(&text, "read_api_admission_limit").unwrap();
            (bound <= 16.0 && shed_total(&text, "latency") > 0.0).then_some(bound)
        },
    )
    .await;
    let _ = slow.kill();
    let _ = slow.wait();
    assert!(
        lowered >= 8.0,
        "never below ADMISSION_MIN_IN_FLIGHT: {lowered}"
    );

    let tally = load.await.unwrap();
    assert!(tally.other.is_empty(), "no timeouts: {:?}", tally.other);
    assert!(!tally.shed.is_empty());
    wait_for_ceiling(&api, 256.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_bound_sheds_past_it_and_off_admits_everything() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "hot", "value"]);
    let fixed = api_for(
        &redis,
        &[("ADMISSION", "fixed"), ("ADMISSION_MAX_IN_FLIGHT", "1")],
    );
    let off = api_for(&redis, &[("ADMISSION", "off")]);
    fixed.wait_ready().await;
    off.wait_ready().await;

    let tally = hammer(&fixed.base, "/v1/keys/hot", 32, Duration::from_secs(1)).await;
    assert!(!tally.shed.is_empty() && !tally.ok.is_empty());
    let text = metrics(&fixed).await;
    assert_eq!(metric_value(&text, "read_api_admission_limit"), Some(1.0));
    assert_eq!(shed_total(&text, "max_in_flight"), tally.shed.len() as f64);
    assert_eq!(
        metric_value(&text, "read_api_admission_admitted_total"),
        Some(tally.ok.len() as f64),
        "probes are on the admin listener, outside admission control"
    );

    let tally = hammer(&off.base, "/v1/keys/hot", 32, Duration::from_secs(1)).await;
    assert!(tally.shed.is_empty() && !tally.ok.is_empty());
    let text = metrics(&off).await;
    assert_eq!(metric_value(&text, "read_api_admission_limit"), Some(0.0));
    assert_eq!(
        metric_value(&text, "read_api_admission_admitted_total"),
        Some(0.0)
    );
}

/// One request on a fresh connection, written by hand: reqwest would pool it.
fn raw_get(api: &ApiProcess, path: &str) -> std::net::TcpStream {
    use std::io::Write;
    let addr = api.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream
}

/// The status line of the answer, if one comes within `within`.
fn status_within(stream: &mut std::net::TcpStream, within: Duration) -> Option<String> {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buffer = [0u8; 512];
    let n = stream.read(&mut buffer).ok()?;
    let text = String::from_utf8_lossy(&buffer[..n]);
    text.lines().next().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_connection_bound_a_worker_leaves_new_connections_to_the_kernel() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "hot", "value"]);
    let api = api_for(&redis, &[("ADMISSION_MAX_CONNECTIONS", "2")]);
    api.wait_ready().await;

    let mut first = raw_get(&api, "/v1/keys/hot");
    let mut second = raw_get(&api, "/v1/keys/hot");
    for stream in [&mut first, &mut second] {
        let status = status_within(stream, Duration::from_secs(5));
        assert_eq!(status.as_deref(), Some("HTTP/1.1 200 OK"));
    }
    // Connected (the kernel completed the handshake) but never read.
    let mut third = raw_get(&api, "/v1/keys/hot");
    assert_eq!(
        status_within(&mut third, Duration::from_millis(500)),
        None,
        "a third connection waits while two are open"
    );
    drop(first);
    let status = status_within(&mut third, Duration::from_secs(5));
    assert_eq!(
        status.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "accepted once a place is free"
    );
}
