//! Faults the supervision tests inject, for failures no outside event can
//! cause: a panic in the replica monitor or in the tracking session, a server
//! that stops on its own.
//!
//! `READ_API_FAULT=<task>` arms one task (the names of [`Task`]), and
//! `SIGUSR1` fires it. Only debug builds read the variable or handle the
//! signal: in a release build (every image, `make build`) [`fired`] never
//! completes and the code around it compiles away, so nothing in the
//! environment of a deployed pod can trip it.

/// A task that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    PublicServer,
    AdminListener,
    ReplicaMonitor,
    Tracking,
}

impl Task {
    /// The value of `READ_API_FAULT` that arms it.
    pub fn name(self) -> &'static str {
        match self {
            Self::PublicServer => "public_server",
            Self::AdminListener => "admin_listener",
            Self::ReplicaMonitor => "replica_monitor",
            Self::Tracking => "tracking",
        }
    }
}

/// Completes when `task` is armed and `SIGUSR1` arrives after this call; otherwise never.
pub async fn fired(task: Task) {
    #[cfg(debug_assertions)]
    if std::env::var("READ_API_FAULT").is_ok_and(|armed| armed == task.name()) {
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
