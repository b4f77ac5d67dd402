//! The integration tests, one module per subject, in one binary: `support`
//! and the dependencies are compiled and linked once rather than once per
//! file. Select a module with nextest's filter, e.g.
//! `cargo nextest run -E 'test(/^value_cache::/)'`.

mod support;

mod admission;
mod auth;
mod caching;
mod contract;
mod freshness;
mod hostile;
mod keys;
mod memory;
mod outage;
mod process;
mod readiness;
mod readme;
mod shapes;
mod supervision;
mod topology;
mod value_cache;
mod watch;
