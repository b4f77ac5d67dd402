//! The read API: a JSON view of one Redis, built to sit next to a pod-local replica.
//!
//! Data flows one way through the modules:
//! - [`config`]: the environment, parsed and validated once at start.
//! - [`startup`]: builds the public and admin servers, watches them and the
//!   background tasks, and shuts them down.
//! - [`admission`]: the bound on requests in flight per worker, past which
//!   requests are refused (503 `overloaded`) before any work.
//! - [`routes`]: the public route table (`/v1/keys`), one file per resource,
//!   with HTTP caching (ETag, 304) and request ids.
//! - [`store`]: the Redis side of a request: connection pool, timeouts, size
//!   limits checked inside Redis, error kinds.
//! - [`cache`]: answers kept in memory, shared by the workers, dropped when
//!   Redis reports their key changed ([`cache::tracking`]).
//! - [`watch`]: change streams (`/v1/watch`), fed by the same tracking
//!   connection, each change read once for all its watchers.
//! - [`replica`]: the background poll of `INFO` that decides readiness.
//! - [`freshness`]: the data age and replication position that poll
//!   publishes, for the headers of every answer and for position tokens.
//! - [`admin`]: `/livez`, `/readyz` and `/metrics` on their own listener.
//! - [`metrics`] and [`telemetry`]: Prometheus names and the tracing subscriber.
//! - [`error`]: every failure mapped to an HTTP status and a stable JSON body.
//! - [`fault`]: failures the supervision tests inject (debug builds only).

pub mod admin;
pub mod admission;
pub mod cache;
pub mod config;
pub mod error;
pub mod fault;
pub mod freshness;
pub mod metrics;
pub mod replica;
pub mod routes;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod watch;
