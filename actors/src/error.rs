//! The one error type of the actor layer. Every variant maps to a stable kind string
//! (see DESIGN.md "Errors") that the `dspex` crate and CLI expose unchanged.

use std::fmt;

/// Which wait ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutStage {
    /// Waiting in the pool's queue for a free worker (`pool.checkout_timeout`).
    Checkout,
    /// Waiting for the worker's answer (`pool.request_timeout`).
    Request,
    /// Waiting for a new worker's init `ping` (`pool.startup_timeout`).
    Startup,
}

impl fmt::Display for TimeoutStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutStage::Checkout => "checkout",
            TimeoutStage::Request => "request",
            TimeoutStage::Startup => "startup",
        })
    }
}

/// Errors returned by the actors and the wire protocol.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ActorError {
    /// A wait ran out; `stage` says which one.
    #[error("timed out after {elapsed_ms} ms waiting at stage `{stage}`: {hint}")]
    Timeout {
        stage: TimeoutStage,
        elapsed_ms: u64,
        hint: String,
    },
    /// The wait queue is full (`pool.max_queue`).
    #[error("pool is busy: {queued} requests already queued (pool.max_queue); retry later or raise pool.size / pool.max_queue")]
    PoolBusy { queued: usize },
    /// The worker process died while handling the request (after retries).
    #[error(
        "worker {worker_id} died while handling the request ({reason}); last output: {last_output}"
    )]
    WorkerCrashed {
        worker_id: String,
        reason: String,
        last_output: String,
    },
    /// The worker broke the wire protocol (bad frame, bad JSON, oversized frame...).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The Python side raised an exception.
    #[error("python error {error_type}: {message}")]
    Python {
        error_type: String,
        message: String,
        traceback: Option<String>,
    },
    /// The session id is not tracked.
    #[error("session `{0}` not found: it was never tracked, was ended, or expired (session.ttl)")]
    SessionNotFound(String),
    /// `session.max_sessions` reached.
    #[error("too many sessions: {max} active (session.max_sessions); end some sessions or raise the limit")]
    TooManySessions { max: usize },
    /// A worker could not be started (spawn failure, handshake failure).
    #[error("could not start worker: {0}")]
    Spawn(String),
    /// The system is shutting down and takes no new work.
    #[error("the system is shutting down and accepts no new work")]
    ShuttingDown,
    /// The supervisor gave up restarting its children.
    #[error("the system has failed: {0}; start a new System")]
    SystemFailed(String),
}

impl ActorError {
    /// The stable kind string from DESIGN.md.
    pub fn kind(&self) -> &'static str {
        match self {
            ActorError::Timeout { .. } => "timeout",
            ActorError::PoolBusy { .. } => "pool_busy",
            ActorError::WorkerCrashed { .. } => "worker_crashed",
            ActorError::Protocol(_) => "protocol",
            ActorError::Python { .. } => "python",
            ActorError::SessionNotFound(_) => "session_not_found",
            ActorError::TooManySessions { .. } => "pool_busy",
            ActorError::Spawn(_) => "environment",
            ActorError::ShuttingDown => "shutting_down",
            ActorError::SystemFailed(_) => "system_failed",
        }
    }

    pub(crate) fn timeout(
        stage: TimeoutStage,
        elapsed: std::time::Duration,
        hint: impl Into<String>,
    ) -> Self {
        ActorError::Timeout {
            stage,
            elapsed_ms: elapsed.as_millis() as u64,
            hint: hint.into(),
        }
    }
}
