//! The one error type of the actor layer, and the hook through which the layer above says
//! what a worker's error means.
//!
//! The actors do not know what a Python exception type means: an `LMError` is the
//! provider's problem, a `RateLimited` asks the pool to slow down, a `MemoryError` leaves a
//! process not worth keeping. The `dspex` crate knows, and tells the pool through an
//! [`ErrorClassifier`]. Kind strings (DESIGN.md "Errors") are the `dspex` crate's business
//! too: it maps these variants onto its own error enum in one place.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::WireError;

/// Which wait ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutStage {
    /// Waiting in the pool's queue for a free slot (`pool.checkout_timeout`).
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

/// Errors returned by the actors and the wire protocol. Messages are whole sentences that
/// say what happened and what to do; they carry no kind prefix.
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
    #[error("{queued} requests are already queued (pool.max_queue); retry later or raise pool.size or pool.max_queue")]
    PoolBusy { queued: usize },
    /// The worker process died while handling the request (after retries, if any).
    #[error("worker {worker_id} died while handling the request: {reason}")]
    WorkerCrashed {
        worker_id: String,
        /// How it died, e.g. "killed by signal 9 (SIGKILL)".
        reason: String,
        /// Its last lines of output, oldest first, joined by newlines (may be empty).
        last_output: String,
        /// It died of memory (its limit or the kernel's OOM killer); such a request is
        /// never retried, since it would most likely kill the next worker too.
        out_of_memory: bool,
    },
    /// The worker broke the wire protocol (bad frame, bad JSON, oversized frame...).
    #[error("{0}")]
    Protocol(String),
    /// The request does not fit in one frame; it was not sent and the worker is fine.
    #[error("the request is {bytes} bytes, over the {limit}-byte frame limit (python.max_frame_bytes); send less data per request or raise the limit")]
    RequestTooLarge { bytes: usize, limit: usize },
    /// The worker raised an exception.
    #[error("{error_type}: {message}")]
    Python {
        error_type: String,
        message: String,
        traceback: Option<String>,
    },
    /// The session id is not tracked.
    #[error("session `{0}` not found: it was never tracked, was ended, or expired (session.ttl)")]
    SessionNotFound(String),
    /// `session.max_sessions` reached.
    #[error(
        "{max} sessions are active (session.max_sessions); end some sessions or raise the limit"
    )]
    TooManySessions { max: usize },
    /// A worker could not be started (spawn failure, handshake failure).
    #[error("could not start a worker: {0}")]
    Spawn(String),
    /// The system is shutting down and takes no new work.
    #[error("the system is shutting down and accepts no new work")]
    ShuttingDown,
    /// The supervisor gave up restarting its children.
    #[error("the system has failed: {0}; start a new system")]
    SystemFailed(String),
}

impl ActorError {
    pub(crate) fn timeout(stage: TimeoutStage, elapsed: Duration, hint: impl Into<String>) -> Self {
        ActorError::Timeout {
            stage,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            hint: hint.into(),
        }
    }

    pub(crate) fn python(error: WireError) -> Self {
        ActorError::Python {
            error_type: error.error_type,
            message: error.message,
            traceback: error.traceback,
        }
    }
}

/// What an error a worker reported says about the worker and the request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Disposition {
    /// The worker may be at fault: counts toward `pool.degrade_after`/`remove_after`.
    WorkerFault,
    /// The caller's or a remote service's doing (a bad argument, an unknown program, a
    /// provider outage): the worker answered correctly and its health is untouched.
    CallerError,
    /// The far end refused for rate ("429"): the pool lowers its concurrency for limited
    /// requests and runs this one again later, not before `retry_after` if given.
    RateLimited { retry_after: Option<Duration> },
    /// The worker answered, but is not worth keeping (e.g. it ran out of memory): the
    /// caller gets the error, the worker is replaced, the request is not retried.
    Recycle,
}

/// Decides the [`Disposition`] of each error a worker reports. Given to the
/// [`Supervisor`](crate::Supervisor) by the layer that knows what the errors mean.
pub trait ErrorClassifier: Send + Sync + 'static {
    fn classify(&self, error: &WireError) -> Disposition;
}

impl<F> ErrorClassifier for F
where
    F: Fn(&WireError) -> Disposition + Send + Sync + 'static,
{
    fn classify(&self, error: &WireError) -> Disposition {
        self(error)
    }
}

/// The classifier that knows no error types: every error counts against the worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerFaults;

impl ErrorClassifier for WorkerFaults {
    fn classify(&self, _error: &WireError) -> Disposition {
        Disposition::WorkerFault
    }
}

/// A shared classifier, as the actors hold it.
pub type Classifier = Arc<dyn ErrorClassifier>;
