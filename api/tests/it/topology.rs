//! The local topology from `scripts/local-topology.sh` (the one `make demo`
//! and `make bench` run): TLS master, stunnel client, replica, and this API.

use std::{path::Path, process::Command, time::Duration};

use crate::support::{self, repo_root, topology::Topology, wait_for, Certs};

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn sidecar_reads_the_masters_writes_through_the_tunnel() {
    let topology = Topology::new("sidecar");
    topology.up();
    topology.seed("known-key", "first");
    wait_for(
        "the write to reach the api",
        Duration::from_secs(10),
        || async { (topology.value("known-key").await.as_deref() == Some("first")).then_some(()) },
    )
    .await;
    assert_eq!(topology.metric("read_api_replica_role").await, Some(1.0));

    // Losing the tunnel cuts the replica off; reads go on with the last value.
    let stunnel = topology.pid("stunnel").unwrap();
    support::signal(stunnel, "KILL");
    wait_for(
        "the replica link to drop",
        Duration::from_secs(10),
        || async { (topology.metric("read_api_replica_link_up").await == Some(0.0)).then_some(()) },
    )
    .await;
    assert_eq!(topology.value("known-key").await.as_deref(), Some("first"));

    let pids: Vec<u32> = ["api", "replica", "master"]
        .iter()
        .filter_map(|n| topology.pid(n))
        .collect();
    assert_eq!(pids.len(), 3);
    let out = topology.script(&["down"]);
    assert!(out.status.success());
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived down");
    }
}

#[tokio::test]
async fn central_reads_the_master_over_tls() {
    let topology = Topology::new("central");
    topology.up();
    topology.seed("known-key", "central");
    assert_eq!(
        topology.value("known-key").await.as_deref(),
        Some("central")
    );
    assert_eq!(topology.metric("read_api_replica_role").await, Some(0.0));
    assert!(topology.pid("replica").is_none() && topology.pid("stunnel").is_none());
}

#[tokio::test]
async fn a_master_certificate_from_another_ca_is_refused() {
    let other = Certs::generate("localhost");
    let mut topology = Topology::new("sidecar");
    topology.vars.push((
        "TRUST_CA_FILE",
        other.path().join("ca.crt").display().to_string(),
    ));
    topology.vars.push(("READY_TIMEOUT", "4".to_string()));
    let out = topology.script(&["up"]);
    assert!(
        !out.status.success(),
        "up must fail: the replica can never sync"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("replica_not_synced"), "{stderr}");
    let stunnel_log = topology.log("stunnel");
    assert!(
        stunnel_log.contains("certificate verify failed"),
        "{stunnel_log}"
    );
    // A failed up leaves nothing running.
    assert!(["api", "replica", "stunnel", "master"]
        .iter()
        .all(|n| topology.pid(n).is_none()));
}

#[tokio::test]
async fn a_taken_port_is_reported_by_name() {
    let topology = Topology::new("sidecar");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut topology = topology;
    topology.vars.retain(|(k, _)| *k != "REPLICA_PORT");
    topology.vars.push(("REPLICA_PORT", port.clone()));
    let out = topology.script(&["up"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("port {port} (REPLICA_PORT) is already in use")),
        "{stderr}"
    );
}

#[tokio::test]
async fn up_twice_replaces_the_first_run_and_leaves_no_strays() {
    let topology = Topology::new("sidecar");
    topology.up();
    let first: Vec<u32> = ["api", "replica", "stunnel", "master"]
        .iter()
        .filter_map(|n| topology.pid(n))
        .collect();
    assert_eq!(first.len(), 4);
    topology.up();
    for pid in &first {
        assert!(
            !alive(*pid),
            "pid {pid} from the first run survived the second up"
        );
    }
    topology.seed("known-key", "second run");
    wait_for(
        "the second run to serve",
        Duration::from_secs(10),
        || async {
            (topology.value("known-key").await.as_deref() == Some("second run")).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn check_master_tells_whether_a_replica_can_follow() {
    let topology = Topology::new("central");
    topology.up();
    let passwords = std::fs::read_to_string(topology.state.path().join("passwords.env")).unwrap();
    let password = passwords
        .lines()
        .find_map(|l| l.strip_prefix("MASTER_PASSWORD="))
        .unwrap()
        .to_owned();
    let port = topology
        .vars
        .iter()
        .find(|(k, _)| *k == "MASTER_PORT")
        .unwrap()
        .1
        .clone();
    let ca = topology
        .state
        .path()
        .join("certs/ca.crt")
        .display()
        .to_string();
    let check = |user: &str, password: &str| {
        Command::new("bash")
            .arg(repo_root().join("scripts/check-master.sh"))
            .envs([
                ("MASTER_HOST", "localhost"),
                ("MASTER_PORT", port.as_str()),
                ("MASTER_CA", ca.as_str()),
                ("MASTER_USER", user),
                ("MASTER_PASSWORD", password),
            ])
            .output()
            .unwrap()
    };

    let out = check("default", &password);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("A replica can follow localhost:"),
        "{stdout}"
    );

    // As hosted services do: a user that may read but not replicate.
    let acl = topology.script(&[
        "master-cli",
        "ACL",
        "SETUSER",
        "app",
        "on",
        ">app-pw",
        "~*",
        "+@all",
        "-sync",
        "-psync",
    ]);
    assert!(acl.status.success());
    let out = check("app", "app-pw");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("FAIL  replication sync refused"),
        "{stdout}"
    );

    let out = check("default", "wrong");
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL  AUTH as 'default'"));
}
