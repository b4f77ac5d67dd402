//! Faults the supervision tests inject, for failures no outside event can
//! cause: a panic in the replica monitor or in the tracking session, a server
//! that stops on its own.
//!
//! `READ_API_FAULT=<task>` arms one task (the names in [`armed_by`]), and
//! `SIGUSR1` fires it. Only debug builds read the variable or handle the
//! signal: in a release build (every image, `make build`) [`fired`] never
//! completes and the code around it compiles away, so nothing in the
//! environment of a deployed pod can trip it.

pub use crate::startup::Task;

/// The value of `READ_API_FAULT` that arms `task`.
#[cfg(debug_assertions)]
fn armed_by(task: Task) -> &'static str {
    match task {
        Task::PublicServer => "public_server",
        Task::AdminListener => "admin_listener",
        Task::ReplicaMonitor => "replica_monitor",
        Task::Tracking => "tracking",
    }
}

/// Completes when `task` is armed and `SIGUSR1` arrives after this call; otherwise never.
pub async fn fired(task: Task) {
    #[cfg(debug_assertions)]
    if std::env::var("READ_API_FAULT").is_ok_and(|armed| armed == armed_by(task)) {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut usr1) = signal(SignalKind::user_defined1()) {
            usr1.recv().await;
            tracing::warn!(task = task.name(), "injecting a fault (READ_API_FAULT)");
            return;
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = task;
    std::future::pending::<()>().await
}
