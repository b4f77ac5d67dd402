//! The local topology from `scripts/local-topology.sh` (the one `make demo`
//! and `make bench` run): TLS master, stunnel client, replica, and the real
//! `read-api` binary, on free loopback ports.

use std::process::{Command, Output};

use tempfile::TempDir;

use super::{free_port, repo_root};

pub struct Topology {
    pub state: TempDir,
    pub vars: Vec<(&'static str, String)>,
    pub api: String,
    pub admin: String,
}

impl Topology {
    pub fn new(topology: &str) -> Self {
        let state = tempfile::tempdir().unwrap();
        let (api, admin) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let vars = vec![
            ("STATE_DIR", state.path().display().to_string()),
            ("TOPOLOGY", topology.to_string()),
            ("MASTER_PORT", free_port().to_string()),
            ("STUNNEL_PORT", free_port().to_string()),
            ("REPLICA_PORT", free_port().to_string()),
            ("API_ADDR", api.clone()),
            ("API_ADMIN_ADDR", admin.clone()),
            ("API_BIN", env!("CARGO_BIN_EXE_read-api").to_string()),
            ("REPLICA_POLL_MS", "100".to_string()),
            ("WORKERS", "1".to_string()),
            // No load balancer to wait for: `down` should not take seconds.
            ("SHUTDOWN_DELAY_SECONDS", "0".to_string()),
        ];
        Self {
            state,
            vars,
            api: format!("http://{api}"),
            admin: format!("http://{admin}"),
        }
    }

    pub fn script(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(repo_root().join("scripts/local-topology.sh"))
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    }

    pub fn up(&self) {
        let out = self.script(&["up"]);
        assert!(
            out.status.success(),
            "up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn seed(&self, key: &str, value: &str) {
        let out = self.script(&["seed", key, value]);
        assert!(
            out.status.success(),
            "seed failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.state.path().join(format!("run/{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.state.path().join(format!("logs/{name}.log")))
            .unwrap_or_default()
    }

    pub async fn value(&self, key: &str) -> Option<String> {
        let body: serde_json::Value = reqwest::get(format!("{}/v1/keys/{key}", self.api))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        body["value"].as_str().map(str::to_owned)
    }

    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        super::metric_value(&text, name)
    }
}

impl Topology {
    /// Adds or replaces a variable given to the script (and so to the API).
    pub fn set(&mut self, variable: &'static str, value: &str) {
        self.vars.retain(|(k, _)| *k != variable);
        self.vars.push((variable, value.to_owned()));
    }

    /// A port or other setting given to the script.
    pub fn var(&self, variable: &str) -> String {
        self.vars
            .iter()
            .find(|(k, _)| *k == variable)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{variable} is not set"))
    }

    /// A password the script generated (`MASTER_PASSWORD`, `REPLICA_PASSWORD`, …).
    pub fn password(&self, name: &str) -> String {
        let env = std::fs::read_to_string(self.state.path().join("passwords.env"))
            .expect("passwords.env after up");
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in passwords.env"))
            .trim_matches(['"', '\''])
            .to_owned()
    }

    /// `redis-cli` against the master (over TLS, as its admin).
    pub fn master_cli(&self, args: &[&str]) -> String {
        let mut all = vec!["master-cli"];
        all.extend_from_slice(args);
        let out = self.script(&all);
        assert!(
            out.status.success(),
            "master-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `redis-cli` against the replica.
    pub fn replica_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.var("REPLICA_PORT")])
            .env("REDISCLI_AUTH", self.password("REPLICA_PASSWORD"))
            .args(args)
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The master, in plain text through the stunnel client (sidecar only).
    pub fn master_url_through_stunnel(&self) -> String {
        format!(
            "redis://:{}@127.0.0.1:{}",
            self.password("MASTER_PASSWORD"),
            self.var("STUNNEL_PORT")
        )
    }

    pub fn replica_url(&self) -> String {
        format!(
            "redis://:{}@127.0.0.1:{}",
            self.password("REPLICA_PASSWORD"),
            self.var("REPLICA_PORT")
        )
    }

    /// The API's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .expect("the admin listener answers")
            .text()
            .await
            .unwrap()
    }

    /// Status and body of `GET /v1/keys/{key}`.
    pub async fn get(&self, key: &str) -> (u16, serde_json::Value) {
        let response = reqwest::get(format!("{}/v1/keys/{key}", self.api))
            .await
            .expect("the api answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.script(&["down"]);
    }
}
