//! The tracking connection: Redis tells it which keys changed, and the value
//! cache serves only while it is up. The change streams ([`crate::watch`])
//! hear from the same connection; with the cache off it runs for them alone.
//!
//! **BCAST** tracking (`CLIENT TRACKING ON BCAST PREFIX <KEY_PREFIX>`): Redis
//! reports every change of a key under the prefix, whoever read it. The
//! default mode would report only keys this connection has read, so every
//! pooled connection that reads would need tracking turned on and redirected
//! here, again after each of its reconnections, and a read on a connection
//! that reconnected without it would be cached with no invalidation ever to
//! come. BCAST keeps the pool untouched and costs Redis no table of who read
//! what; its price, one message per write under the prefix, is small for a
//! read API whose writes are rare (they all reach the replica anyway). OPTIN
//! and OPTOUT only apply to the default mode.
//!
//! **RESP2 with a redirect to itself** (`REDIRECT <own id>`, then `SUBSCRIBE
//! __redis__:invalidate`), rather than RESP3 push messages: fred 10 passes on
//! RESP3 invalidations with a list of keys but silently drops the one with a
//! null list, which is how Redis says "everything" (FLUSHALL, FLUSHDB, and a
//! replica's full resync). As a pub/sub message the same null arrives as an
//! invalidation without keys. It also leaves the pool on RESP2, whose replies
//! the store's parsing expects.
//!
//! Every way the connection can end drops the cache: the connection closing
//! (`CLIENT KILL`, a Redis restart, the network), a `PING` unanswered within
//! `REDIS_TIMEOUT_MS` (a connection that died silently), or invalidations lost
//! because this task fell behind. Reconnecting starts with an empty cache too.

use std::{sync::Arc, time::Duration};

use fred::{
    interfaces::{ClientInterface, PubsubInterface, TrackingInterface},
    prelude::*,
    types::{ClusterHash, CustomCommand, Value as RedisValue},
};
use tokio::sync::broadcast::error::RecvError;

use super::ValueCache;
use crate::{
    error::{error_chain, task_end},
    fault,
    store::StoreConfig,
    watch::WatchHub,
};

/// The connection's name in `CLIENT LIST`, to find it (and kill it, in tests).
pub const CLIENT_NAME: &str = "read-api-tracking";
const CHANNEL: &str = "__redis__:invalidate";
/// A dead connection that sent no FIN is noticed within this plus `REDIS_TIMEOUT_MS`.
const PING_EVERY: Duration = Duration::from_secs(1);

/// Who hears from the tracking connection: the value cache, the change streams, or both.
#[derive(Clone, Default)]
pub struct Listeners {
    pub cache: Option<Arc<ValueCache>>,
    pub watch: Option<Arc<WatchHub>>,
}

impl Listeners {
    fn start(&self) {
        if let Some(cache) = &self.cache {
            cache.start_serving();
        }
        if let Some(watch) = &self.watch {
            watch.tracking_up();
        }
    }

    fn stop(&self) {
        if let Some(cache) = self.cache.as_deref().filter(|c| c.is_serving()) {
            cache.stop_serving();
        }
        if let Some(watch) = &self.watch {
            watch.tracking_down();
        }
    }

    fn invalidate(&self, keys: &[fred::types::Key]) {
        if let Some(cache) = &self.cache {
            cache.invalidate(keys.iter().map(|k| k.as_bytes()));
        }
        if let Some(watch) = &self.watch {
            watch.invalidated(keys.iter().map(|k| k.as_bytes()));
        }
    }

    fn flush(&self, reason: &'static str) {
        if let Some(cache) = &self.cache {
            cache.flush(reason);
        }
        if let Some(watch) = &self.watch {
            watch.flushed(reason);
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps a tracking connection up until the process ends, feeding `listeners`.
///
/// This is the supervisor of the sessions: each runs as a task of its own, so
/// that one that panics ends like one whose connection closed (the cache off
/// at once, then a new session after the backoff), instead of taking the
/// invalidations down for good while the cache keeps serving.
pub async fn run(store: StoreConfig, listeners: Listeners, prefix: String) {
    let mut backoff = Duration::from_millis(50);
    let mut last_problem = String::new();
    loop {
        let session = tokio::spawn(session(store.clone(), listeners.clone(), prefix.clone()));
        // Aborting this task (at shutdown) must end the session too.
        let _abort_session = AbortOnDrop(session.abort_handle());
        let problem = match session.await {
            Ok(Ok(why)) => {
                backoff = Duration::from_millis(50);
                why
            }
            Ok(Err(e)) => error_chain(&e),
            Err(e) => {
                let why = format!("the tracking session {}", task_end(e));
                tracing::error!(task = "tracking", problem = %why, "restarting the tracking connection");
                why
            }
        };
        // Said once per distinct problem: a Redis that refuses CLIENT
        // TRACKING (an ACL without it) would otherwise log every retry.
        if problem != last_problem {
            tracing::warn!(problem = %problem, "value cache off and change streams paused until the tracking connection is back");
            last_problem = problem;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Stops the cache serving (and tells the change streams) when a session
/// ends, however it ends: unwinding from a panic included, before anything
/// else runs.
struct StopServingOnDrop<'a>(&'a Listeners);

impl Drop for StopServingOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// One connection, from connecting to its end; `Ok` says why it ended.
async fn session(
    store: StoreConfig,
    listeners: Listeners,
    prefix: String,
) -> Result<String, fred::error::Error> {
    let client = store.tracking_client();
    // Subscribed before anything is sent, so that no message can be missed.
    let mut invalidations = client.invalidation_rx();
    let mut connection = client.connect();
    // A panic skips the cleanup at the end: these still close the connection
    // (which ends its tracking in Redis) and turn the cache off.
    let _close = AbortOnDrop(connection.abort_handle());
    let stop_serving = StopServingOnDrop(&listeners);
    let result = async {
        tokio::time::timeout(
            store.timeout().max(Duration::from_secs(1)),
            client.wait_for_connect(),
        )
        .await
        .map_err(|_| {
            fred::error::Error::new(ErrorKind::Timeout, "connecting the tracking connection")
        })??;
        client.client_setname(CLIENT_NAME).await?;
        let id: i64 = client.client_id().await?;
        let mut args: Vec<RedisValue> = vec![
            "TRACKING".into(),
            "ON".into(),
            "REDIRECT".into(),
            id.into(),
            "BCAST".into(),
        ];
        if !prefix.is_empty() {
            args.extend(["PREFIX".into(), prefix.as_str().into()]);
        }
        client
            .custom::<RedisValue, _>(
                CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
                args,
            )
            .await?;
        // Redis sends the redirected messages only once this connection is
        // subscribed: from the SUBSCRIBE's answer on, every write is reported.
        client.subscribe(CHANNEL).await?;
        listeners.start();
        tracing::info!("tracking connection up: value cache serving, change streams following");
        // Pinged beside the loop, so that a slow answer never holds up invalidations.
        let mut pinger = tokio::spawn({
            let client = client.clone();
            async move {
                loop {
                    tokio::time::sleep(PING_EVERY).await;
                    if let Err(e) = client.ping::<RedisValue>(None).await {
                        return e;
                    }
                }
            }
        });
        let _stop_pinger = AbortOnDrop(pinger.abort_handle());
        let mut fault = std::pin::pin!(fault::fired(fault::Task::Tracking));
        loop {
            tokio::select! {
                () = &mut fault => panic!("injected fault in the tracking session"),
                message = invalidations.recv() => match message {
                    // A null key list: Redis dropped everything.
                    Ok(invalidation) if invalidation.keys.is_empty() => listeners.flush("redis_flush"),
                    Ok(invalidation) => listeners.invalidate(&invalidation.keys),
                    Err(RecvError::Lagged(_)) => listeners.flush("invalidations_lost"),
                    Err(RecvError::Closed) => return Ok("the invalidation channel closed".to_owned()),
                },
                ended = &mut connection => {
                    return Ok(match ended {
                        Ok(Ok(())) => "the tracking connection closed".to_owned(),
                        Ok(Err(e)) => format!("the tracking connection closed: {}", error_chain(&e)),
                        Err(e) => format!("the tracking connection's task ended: {e}"),
                    });
                }
                pinged = &mut pinger => {
                    let why: Result<fred::error::Error, _> = pinged;
                    return match why {
                        Ok(e) => Err(e),
                        Err(e) => Ok(format!("the tracking ping task ended: {e}")),
                    };
                }
            }
        }
    }
    .await;
    // Whatever ended the session, invalidations stop here.
    drop(stop_serving);
    connection.abort();
    let _ = tokio::time::timeout(Duration::from_millis(200), client.quit()).await;
    result
}
