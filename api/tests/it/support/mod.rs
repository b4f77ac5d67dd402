//! Real parts for the integration tests: `redis-server` processes on free
//! loopback ports, and the application built exactly as `main` builds it.

#![allow(dead_code)]

pub mod topology;

use std::{
    future::Future,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use read_api::{
    config::Settings,
    startup::{Application, RunError},
};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The value of one unlabelled metric line in Prometheus text.
/// The id of the API's tracking connection in a `CLIENT LIST` answer.
pub fn tracking_client_id(client_list: &str) -> Option<String> {
    client_list
        .lines()
        .find(|l| l.contains(" name=read-api-tracking "))?
        .split(' ')
        .find_map(|f| f.strip_prefix("id="))
        .map(str::to_owned)
}

pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `check` until it returns `Some`, or panics after `deadline` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    pub port: u16,
    pub tls_port: Option<u16>,
    child: Child,
    args: Vec<String>,
    /// CA for `redis-cli --tls` against a TLS-only server.
    tls_ca: Option<PathBuf>,
    pub dir: TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts `redis-server` with extra `--flag value` arguments and waits for PING.
    pub fn start_with(extra: &[&str]) -> Self {
        let port = free_port();
        Self::start_on(port, None, extra)
    }

    /// Starts `redis-server` on the given port.
    pub fn start_with_port(port: u16) -> Self {
        Self::start_on(port, None, &[])
    }

    /// A TLS-only master (plain port disabled), as `deploy/master` runs it.
    pub fn start_tls(certs: &Path) -> Self {
        let tls_port = free_port();
        let cert = |name: &str| certs.join(name).display().to_string();
        let args = [
            "--tls-port".to_string(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            cert("master.crt"),
            "--tls-key-file".into(),
            cert("master.key"),
            "--tls-ca-cert-file".into(),
            cert("ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Self::start_on(0, Some(tls_port), &args);
        server.tls_ca = Some(certs.join("ca.crt"));
        server
    }

    fn start_on(port: u16, tls_port: Option<u16>, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--logfile".into(),
            dir.path().join("redis.log").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = spawn_redis(&args);
        let server = Self {
            port,
            tls_port,
            child,
            args,
            tls_ca: None,
            dir,
        };
        server.wait_until_up();
        server
    }

    fn wait_until_up(&self) {
        let started = Instant::now();
        let addr = self.addr();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not listen on {addr}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address clients connect to (the TLS port for a TLS-only server).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port.unwrap_or(self.port)))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli_command(&self) -> Command {
        let mut cli = Command::new("redis-cli");
        cli.args(["-h", "127.0.0.1", "-p", &self.addr().port().to_string()]);
        if let Some(ca) = &self.tls_ca {
            cli.arg("--tls").arg("--cacert").arg(ca);
        }
        cli
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self
            .cli_command()
            .args(args)
            .output()
            .expect("redis-cli is installed (make test installs redis-tools)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Raw `SET` of arbitrary bytes, through `redis-cli -x`.
    pub fn set_bytes(&self, key: &str, value: &[u8]) {
        use std::io::Write;
        let mut child = self
            .cli_command()
            .args(["-x", "SET", key])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-cli");
        child.stdin.take().unwrap().write_all(value).unwrap();
        assert!(child.wait().unwrap().success());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes the process: connections stay open, nothing answers.
    pub fn pause(&self) {
        assert!(signal(self.pid(), "STOP"), "pause redis-server");
    }

    pub fn resume(&self) {
        assert!(signal(self.pid(), "CONT"), "resume redis-server");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same server again, same port and arguments (data is gone: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_redis(&self.args);
        self.wait_until_up();
    }
}

fn spawn_redis(args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (make test installs redis-server)")
}

/// Sends a signal by name; false when the process is gone.
pub fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        signal(self.pid(), "CONT");
        self.kill();
    }
}

/// Certificates from `scripts/gen-certs.sh`, in a temporary folder.
pub struct Certs {
    pub dir: TempDir,
}

impl Certs {
    pub fn generate(hosts: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = repo_root().join("scripts/gen-certs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .env("CERTS_DIR", dir.path())
            .env("MASTER_HOSTS", hosts)
            .output()
            .expect("run scripts/gen-certs.sh");
        assert!(
            out.status.success(),
            "gen-certs.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The application on ephemeral loopback ports, in this process.
pub struct TestApp {
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<(), RunError>>>,
}

impl TestApp {
    /// Builds the application for `redis_url`, with extra `VAR=value` settings.
    ///
    /// The application runs on a runtime of its own, on its own thread, as
    /// `main` runs it: its background tasks (the `INFO` poll, the cache's
    /// tracking connection) must not wait while a test blocks on `redis-cli`.
    pub async fn spawn(redis_url: &str, extra: &[(&str, &str)]) -> Self {
        let mut vars = vec![
            ("REDIS_URL".to_string(), redis_url.to_string()),
            ("LISTEN_ADDR".into(), "127.0.0.1:0".into()),
            ("ADMIN_ADDR".into(), "127.0.0.1:0".into()),
            ("WORKERS".into(), "2".into()),
            ("REPLICA_POLL_MS".into(), "100".into()),
            ("REDIS_TIMEOUT_MS".into(), "500".into()),
            ("SHUTDOWN_GRACE_SECONDS".into(), "2".into()),
            ("SHUTDOWN_DELAY_SECONDS".into(), "0".into()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let settings = Settings::from_vars(vars).expect("test settings are valid");
        let (stop, stopped) = oneshot::channel::<()>();
        let (built, addrs) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime for the application");
            runtime.block_on(async move {
                let app = Application::build(&settings).expect("application builds");
                let _ = built.send((app.public_addr(), app.admin_addr()));
                app.run_until(async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        let (public, admin) = addrs.await.expect("the application thread started");
        let done = tokio::task::spawn_blocking(move || thread.join().expect("no panic"));
        Self {
            base: format!("http://{public}"),
            admin: format!("http://{admin}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// A request with extra headers, answered with whatever status.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Status and parsed JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        let body = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: body is not JSON: {e}"));
        (status, body)
    }

    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let response = self
            .http
            .get(format!("{}/readyz", self.admin))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one unlabelled metric line, such as `read_api_replica_link_up`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.metrics().await, name)
    }

    pub async fn wait_ready(&self, expected: u16) -> serde_json::Value {
        wait_for(
            &format!("/readyz to answer {expected}"),
            Duration::from_secs(15),
            || async {
                let (status, body) = self.readyz().await;
                (status == expected).then_some(body)
            },
        )
        .await
    }

    /// Waits until `/readyz` is 503 for a reason that starts with `reason`.
    pub async fn wait_not_ready(&self, reason: &str) {
        wait_for(
            &format!("/readyz to answer 503 {reason}"),
            Duration::from_secs(15),
            || async {
                let (status, body) = self.readyz().await;
                let why = body["reason"].as_str().unwrap_or_default();
                (status == 503 && why.starts_with(reason)).then_some(())
            },
        )
        .await
    }

    /// Stops the application the way SIGTERM does and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.unwrap().unwrap();
        }
    }
}

/// The real `read-api` binary as a child process on free loopback ports,
/// killed on drop; its stderr goes to a file.
pub struct ApiProcess {
    child: Child,
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
    logs: TempDir,
}

impl ApiProcess {
    pub fn spawn(vars: &[(&str, &str)]) -> Self {
        let (port, admin_port) = (free_port(), free_port());
        let logs = tempfile::tempdir().expect("temp dir");
        let stderr = std::fs::File::create(logs.path().join("stderr")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_read-api"))
            .env_clear()
            .envs([
                ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
                ("ADMIN_ADDR", format!("127.0.0.1:{admin_port}")),
                ("REPLICA_POLL_MS", "100".into()),
                ("WORKERS", "2".into()),
            ])
            .envs(vars.iter().map(|(k, v)| (*k, *v)))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the read-api binary");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in bytes, from `VmRSS` in /proc/PID/status.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the api process is alive");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stderr")).unwrap_or_default()
    }

    pub async fn readyz(&self) -> Option<u16> {
        let response = self
            .http
            .get(format!("{}/readyz", self.admin))
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    }

    pub async fn wait_ready(&self) {
        wait_for("the api to be ready", Duration::from_secs(15), || async {
            (self.readyz().await == Some(200)).then_some(())
        })
        .await;
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The value of one unlabelled metric line; `None` also when the admin listener is gone.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let response = self
            .http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .ok()?;
        metric_value(&response.text().await.ok()?, name)
    }

    /// The text value of `GET /v1/keys/{key}`, if it answered one.
    pub async fn value(&self, key: &str) -> Option<String> {
        let body: serde_json::Value = self
            .get(&format!("/v1/keys/{key}"))
            .await
            .json()
            .await
            .ok()?;
        body["value"].as_str().map(str::to_owned)
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return exit;
            }
            assert!(
                started.elapsed() < deadline,
                "the process did not exit within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
