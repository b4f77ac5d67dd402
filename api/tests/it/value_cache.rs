//! The value cache against real servers: invalidations from a TLS master
//! through stunnel and the replica, deletes and expiry, a full resync, the
//! tracking connection killed, a frozen Redis, ACLs without tracking, and a
//! randomized run that counts stale reads.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fred::prelude::*;

use crate::support::{self, topology::Topology, wait_for, RedisServer, TestApp};

const DEADLINE: Duration = Duration::from_secs(15);

fn counter(metrics: &str, line: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn sidecar() -> Topology {
    let topology = Topology::new("sidecar");
    topology.up();
    wait_tracking(&topology).await;
    topology
}

async fn wait_tracking(topology: &Topology) {
    wait_for("the cache to serve", DEADLINE, || async {
        (topology.metric("read_api_cache_tracking_up").await == Some(1.0)).then_some(())
    })
    .await;
}

/// Reads `key` through the API until it answers `value` from the cache;
/// returns the hits counted by that last read (1).
///
/// A read that crossed the invalidation of the write that seeded the key
/// (still on its way from Redis) is not kept, so the first read after the
/// value appears may not fill the cache: read until one is a hit.
async fn read_until_cached(topology: &Topology, key: &str, value: &str) -> f64 {
    wait_for(&format!("{key} = {value}"), DEADLINE, || async {
        (topology.value(key).await.as_deref() == Some(value)).then_some(())
    })
    .await;
    wait_for(&format!("{key} to be cached"), DEADLINE, || async {
        let before = topology.metric("read_api_cache_hits_total").await.unwrap();
        assert_eq!(topology.value(key).await.as_deref(), Some(value));
        let after = topology.metric("read_api_cache_hits_total").await.unwrap();
        (after > before).then_some(after - before)
    })
    .await
}

#[tokio::test]
async fn a_write_on_the_master_invalidates_through_stunnel_and_the_replica() {
    let topology = sidecar().await;
    topology.seed("hot", "v1");
    assert_eq!(read_until_cached(&topology, "hot", "v1").await, 1.0);
    let invalidations = topology
        .metric("read_api_cache_invalidations_total")
        .await
        .unwrap();

    topology.seed("hot", "v2");
    wait_for("the new value", DEADLINE, || async {
        (topology.value("hot").await.as_deref() == Some("v2")).then_some(())
    })
    .await;
    let metrics = topology.metrics().await;
    assert!(counter(&metrics, "read_api_cache_invalidations_total") > invalidations);
    assert!(
        counter(&metrics, "read_api_cache_entries") >= 1.0,
        "{metrics}"
    );
    assert!(counter(&metrics, "read_api_cache_bytes") > 0.0);

    // A batch reads per key through the same cache.
    let url = format!("{}/v1/keys?key=hot&key=absent", topology.api);
    let body: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(body["values"]["hot"], "v2");
    assert_eq!(body["values"]["absent"], serde_json::Value::Null);
    topology.seed("absent", "now here");
    wait_for("the batch to see the new key", DEADLINE, || async {
        let body: serde_json::Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
        (body["values"]["absent"] == "now here").then_some(())
    })
    .await;
}

#[tokio::test]
async fn deletes_and_expiry_on_the_master_invalidate() {
    let topology = sidecar().await;
    topology.seed("doomed", "here");
    read_until_cached(&topology, "doomed", "here").await;
    topology.master_cli(&["DEL", "doomed"]);
    wait_for("a 404 after DEL", DEADLINE, || async {
        (topology.get("doomed").await.0 == 404).then_some(())
    })
    .await;

    // The master expires the key and sends the replica a DEL.
    topology.master_cli(&["SET", "brief", "soon gone", "PX", "400"]);
    read_until_cached(&topology, "brief", "soon gone").await;
    wait_for("a 404 after expiry", DEADLINE, || async {
        (topology.get("brief").await.0 == 404).then_some(())
    })
    .await;
    // A missing key is cached too, and its creation invalidates it.
    let hits = topology.metric("read_api_cache_hits_total").await.unwrap();
    assert_eq!(topology.get("brief").await.0, 404);
    assert!(topology.metric("read_api_cache_hits_total").await.unwrap() > hits);
    topology.seed("brief", "back");
    wait_for("the key to come back", DEADLINE, || async {
        (topology.value("brief").await.as_deref() == Some("back")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_full_resync_of_the_replica_drops_the_cache() {
    let topology = sidecar().await;
    topology.seed("synced", "before");
    read_until_cached(&topology, "synced", "before").await;
    let full_syncs = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("sync_full:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    let before = full_syncs(topology.master_cli(&["INFO", "stats"]));
    // Cut the replica off with its tunnel frozen, so that it cannot
    // reconnect, and write past the (smallest) backlog meanwhile: only a full
    // sync can bring it back, and that carries the new value without an
    // invalidation of the key itself.
    topology.master_cli(&["CONFIG", "SET", "repl-backlog-size", "16384"]);
    let stunnel = topology.pid("stunnel").unwrap();
    assert!(support::signal(stunnel, "STOP"));
    topology.master_cli(&["CLIENT", "KILL", "TYPE", "replica"]);
    topology.master_cli(&[
        "EVAL",
        "redis.call('SET', 'synced', 'resynced'); for i = 1, 200 do redis.call('SET', 'padding', string.rep('y', 10000) .. i) end",
        "0",
    ]);
    assert!(support::signal(stunnel, "CONT"));
    wait_for("the resynced value", DEADLINE, || async {
        (topology.value("synced").await.as_deref() == Some("resynced")).then_some(())
    })
    .await;
    assert!(
        full_syncs(topology.master_cli(&["INFO", "stats"])) > before,
        "the replica came back with a full sync"
    );
    let metrics = topology.metrics().await;
    let flushes = counter(
        &metrics,
        r#"read_api_cache_flushes_total{reason="redis_flush"}"#,
    ) + counter(&metrics, r#"read_api_cache_flushes_total{reason="resync"}"#);
    eprintln!(
        "flushes: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("read_api_cache_flushes_total"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(flushes >= 1.0, "{metrics}");
}

/// The tracking connection's id on the replica, from `CLIENT LIST`.
fn tracking_client_id(topology: &Topology) -> Option<String> {
    support::tracking_client_id(&topology.replica_cli(&["CLIENT", "LIST"]))
}

#[tokio::test]
async fn killing_the_tracking_connection_drops_the_cache_until_it_is_back() {
    // Over the replica's unix socket, as the unix-socket component runs it.
    let mut topology = Topology::new("sidecar");
    topology.set("API_REDIS", "unix");
    topology.up();
    wait_tracking(&topology).await;
    topology.seed("k", "one");
    read_until_cached(&topology, "k", "one").await;
    let first = tracking_client_id(&topology).expect("a tracking connection");
    let down = |m: &str| counter(m, r#"read_api_cache_flushes_total{reason="tracking_down"}"#);
    let downs = down(&topology.metrics().await);

    assert_eq!(topology.replica_cli(&["CLIENT", "KILL", "ID", &first]), "1");
    wait_for("the cache to be dropped", DEADLINE, || async {
        (down(&topology.metrics().await) > downs).then_some(())
    })
    .await;
    let second = wait_for("a new tracking connection", DEADLINE, || async {
        tracking_client_id(&topology).filter(|id| *id != first)
    })
    .await;
    wait_tracking(&topology).await;
    assert_eq!(
        topology.metric("read_api_cache_entries").await,
        Some(0.0),
        "tracking {second} starts with an empty cache"
    );
    // Invalidations flow on the new connection.
    read_until_cached(&topology, "k", "one").await;
    topology.seed("k", "two");
    wait_for("the new value", DEADLINE, || async {
        (topology.value("k").await.as_deref() == Some("two")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn central_mode_tracks_the_master_over_tls() {
    let topology = Topology::new("central");
    topology.up();
    wait_tracking(&topology).await;
    topology.seed("c", "1");
    assert_eq!(read_until_cached(&topology, "c", "1").await, 1.0);
    topology.seed("c", "2");
    wait_for("the new value", DEADLINE, || async {
        (topology.value("c").await.as_deref() == Some("2")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_flush_a_frozen_redis_and_an_acl_without_tracking() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "k", "v"]);
    let app = TestApp::spawn(&redis.url(), &[("REDIS_TIMEOUT_MS", "300")]).await;
    wait_for("the cache to serve", DEADLINE, || async {
        (app.metric("read_api_cache_tracking_up").await == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(app.get_json("/v1/keys/k").await.0, 200);
    assert_eq!(app.get_json("/v1/keys/k").await.0, 200);
    assert_eq!(app.metric("read_api_cache_hits_total").await, Some(1.0));

    // FLUSHALL arrives as an invalidation without keys.
    redis.cli(&["FLUSHALL"]);
    wait_for("a 404 after FLUSHALL", DEADLINE, || async {
        (app.get_json("/v1/keys/k").await.0 == 404).then_some(())
    })
    .await;
    let flushes = r#"read_api_cache_flushes_total{reason="redis_flush"}"#;
    assert!(counter(&app.metrics().await, flushes) >= 1.0);

    // A frozen Redis holds what it held: the cache may answer until the
    // tracking PING times out, then reads wait on Redis like any other.
    redis.cli(&["SET", "k", "w"]);
    wait_for("the new value", DEADLINE, || async {
        (app.get_json("/v1/keys/k").await.1["value"] == "w").then_some(())
    })
    .await;
    redis.pause();
    wait_for("a 503 from the frozen Redis", DEADLINE, || async {
        (app.get_json("/v1/keys/k").await.0 == 503).then_some(())
    })
    .await;
    assert_eq!(app.metric("read_api_cache_tracking_up").await, Some(0.0));
    redis.resume();
    wait_for("the cache to serve again", DEADLINE, || async {
        (app.metric("read_api_cache_tracking_up").await == Some(1.0)).then_some(())
    })
    .await;
    app.stop().await;

    // A user that may read but not track: the API serves, uncached.
    redis.cli(&[
        "ACL",
        "SETUSER",
        "reader",
        "on",
        ">reader-pw",
        "~*",
        "&*",
        "+@all",
        "-client|tracking",
    ]);
    let url = format!("redis://reader:reader-pw@127.0.0.1:{}", redis.port);
    let app = TestApp::spawn(&url, &[]).await;
    app.wait_ready(200).await;
    for _ in 0..3 {
        assert_eq!(app.get_json("/v1/keys/k").await.1["value"], "w");
    }
    assert_eq!(app.metric("read_api_cache_tracking_up").await, Some(0.0));
    assert_eq!(app.metric("read_api_cache_hits_total").await, Some(0.0));
}

/// When the replica was read directly, and the versions it held then.
type Observations = Vec<(Instant, Vec<u64>)>;

/// Writers bump versioned values on the master; readers hammer the API; an
/// observer keeps reading the replica directly. A read is stale when the
/// replica already held a newer version `PUSH_BOUND` before the read began.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_reads_are_never_older_than_the_push_bound() {
    const KEYS: usize = 8;
    const PUSH_BOUND: Duration = Duration::from_millis(100);
    const RUN: Duration = Duration::from_secs(6);
    let topology = sidecar().await;
    for k in 0..KEYS {
        topology.seed(&format!("r{k}"), "0");
    }
    let connect = |url: String| async move {
        let client = Builder::from_config(Config::from_url(&url).unwrap())
            .build()
            .unwrap();
        client.init().await.unwrap();
        client
    };
    let master = connect(topology.master_url_through_stunnel()).await;
    let replica = connect(topology.replica_url()).await;
    let keys: Vec<String> = (0..KEYS).map(|k| format!("r{k}")).collect();
    wait_for("the seeds on the replica", DEADLINE, || async {
        let values: Vec<Option<String>> = replica.mget(keys.clone()).await.ok()?;
        values
            .iter()
            .all(|v| v.as_deref() == Some("0"))
            .then_some(())
    })
    .await;

    let started = Instant::now();
    let deadline = started + RUN;
    // (seen at, versions): the replica held these versions at or before `seen at`.
    let observed: Arc<Mutex<Observations>> = Arc::default();
    let observer = {
        let (observed, keys) = (observed.clone(), keys.clone());
        tokio::spawn(async move {
            while Instant::now() < deadline + PUSH_BOUND {
                let values: Vec<Option<String>> = replica.mget(keys.clone()).await.unwrap();
                let versions = values
                    .iter()
                    .map(|v| v.as_deref().unwrap_or("0").parse().unwrap())
                    .collect();
                observed.lock().unwrap().push((Instant::now(), versions));
            }
        })
    };
    let writer = tokio::spawn(async move {
        let mut version = [0u64; KEYS];
        let mut writes = 0;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        while Instant::now() < deadline {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let k = (seed % KEYS as u64) as usize;
            version[k] += 1;
            let _: () = master
                .set(format!("r{k}"), version[k].to_string(), None, None, false)
                .await
                .unwrap();
            writes += 1;
            // Bursts and lulls: some keys stay put for longer than the bound.
            if seed % 4 == 0 {
                tokio::time::sleep(Duration::from_millis(seed % 40)).await;
            }
        }
        writes
    });
    let mut readers = Vec::new();
    for r in 0..4u64 {
        let api = topology.api.clone();
        readers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut reads = Vec::new();
            let mut i = r;
            while Instant::now() < deadline {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let k = ((i >> 33) % KEYS as u64) as usize;
                let began = Instant::now();
                let body: serde_json::Value = http
                    .get(format!("{api}/v1/keys/r{k}"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let version: u64 = body["value"].as_str().unwrap().parse().unwrap();
                reads.push((began, k, version));
            }
            reads
        }));
    }
    let writes = writer.await.unwrap();
    let mut reads = Vec::new();
    for reader in readers {
        reads.extend(reader.await.unwrap());
    }
    observer.await.unwrap();
    let observed = std::mem::take(&mut *observed.lock().unwrap());

    let mut stale = Vec::new();
    let mut checked = 0;
    for &(began, k, version) in &reads {
        let Some(horizon) = began.checked_sub(PUSH_BOUND) else {
            continue;
        };
        // The newest version the replica is known to have held by then.
        let at = observed.partition_point(|(seen, _)| *seen <= horizon);
        if at == 0 {
            continue;
        }
        checked += 1;
        let floor = observed[at - 1].1[k];
        if version < floor {
            stale.push((k, version, floor, began - started));
        }
    }
    let metrics = topology.metrics().await;
    let hits = counter(&metrics, "read_api_cache_hits_total");
    let misses = counter(&metrics, "read_api_cache_misses_total");
    eprintln!(
        "{} reads ({checked} checked against the replica), {writes} writes, {} observations, hit ratio {:.2}, {} stale",
        reads.len(),
        observed.len(),
        hits / (hits + misses),
        stale.len()
    );
    assert!(
        writes > 100 && checked > 1000,
        "too small a run to mean anything"
    );
    assert!(hits > 0.0, "the cache answered some of the reads");
    assert!(
        stale.is_empty(),
        "stale reads (key, version read, replica's version {PUSH_BOUND:?} earlier, at): {:?}",
        &stale[..stale.len().min(20)]
    );
}

/// GET `path` on the topology's API: status and JSON body.
async fn get_path(topology: &Topology, path: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("{}{path}", topology.api))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn hashes_members_and_documents_written_on_the_master_invalidate() {
    let topology = sidecar().await;
    topology.master_cli(&["HSET", "user:1", "name", "ann", "plan", "free"]);
    topology.master_cli(&["SADD", "allow", "tok-1"]);
    topology.seed("conf", "{\"v\": 1}");
    let reads = [
        (
            "/v1/keys/user:1/fields",
            "fields",
            json_of(r#"{"name":"ann","plan":"free"}"#),
        ),
        (
            "/v1/keys/user:1/fields?field=plan",
            "fields",
            json_of(r#"{"plan":"free"}"#),
        ),
        ("/v1/keys/allow/members/tok-1", "is_member", json_of("true")),
        (
            "/v1/keys/allow/members/tok-2",
            "is_member",
            json_of("false"),
        ),
        ("/v1/keys/conf?as=json", "value", json_of(r#"{"v": 1}"#)),
    ];
    for (path, field, expected) in &reads {
        wait_for(&format!("{path} cached"), DEADLINE, || async {
            let before = topology.metric("read_api_cache_hits_total").await.unwrap();
            let (status, body) = get_path(&topology, path).await;
            let hit = topology.metric("read_api_cache_hits_total").await.unwrap() > before;
            (status == 200 && body[field] == *expected && hit).then_some(())
        })
        .await;
    }
    topology.master_cli(&["HSET", "user:1", "plan", "paid"]);
    topology.master_cli(&["SADD", "allow", "tok-2"]);
    topology.seed("conf", "{\"v\": 2}");
    let changed = [
        (
            "/v1/keys/user:1/fields",
            "fields",
            json_of(r#"{"name":"ann","plan":"paid"}"#),
        ),
        (
            "/v1/keys/user:1/fields?field=plan",
            "fields",
            json_of(r#"{"plan":"paid"}"#),
        ),
        ("/v1/keys/allow/members/tok-2", "is_member", json_of("true")),
        ("/v1/keys/conf?as=json", "value", json_of(r#"{"v": 2}"#)),
    ];
    for (path, field, expected) in &changed {
        wait_for(&format!("{path} to change"), DEADLINE, || async {
            let (_, body) = get_path(&topology, path).await;
            (body[field] == *expected).then_some(())
        })
        .await;
    }
}

fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}
