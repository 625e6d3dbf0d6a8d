//! The one error type of the `dspex` library. Every variant has a stable kind string
//! (DESIGN.md "Errors") that the CLI prints and tests match on.

use std::time::Duration;

use dspex_actors::protocol::WireError;
use dspex_actors::{ActorError, Disposition, TimeoutStage};
use serde_json::Value;

/// Errors returned by dspex.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad configuration; the message names the key.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Python, the venv or a worker could not be set up.
    #[error("environment error: {0}")]
    Environment(String),
    /// A malformed input row (CLI).
    #[error("input error: {0}")]
    Input(String),
    /// A signature that does not parse.
    #[error(transparent)]
    Signature(#[from] crate::signature::SignatureError),
    /// Inputs (or outputs) that do not match the signature.
    #[error(transparent)]
    Validation(#[from] crate::signature::ValidationError),
    /// A wait ran out.
    #[error("timeout ({stage}): {message}")]
    Timeout {
        stage: TimeoutStage,
        message: String,
    },
    /// The wait queue is full, or too many sessions.
    #[error("pool busy: {0}")]
    PoolBusy(String),
    /// The worker died while running the request, after retries.
    #[error("worker crashed: {0}")]
    WorkerCrashed(String),
    /// A worker broke the wire protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Python raised an exception.
    #[error("python error {error_type}: {message}")]
    Python {
        error_type: String,
        message: String,
        traceback: Option<String>,
    },
    /// The language model call failed (missing key, network, provider error).
    #[error("lm error: {0}")]
    Lm(String),
    /// The LM provider kept refusing for rate ("429") after retries.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// Unknown or ended session.
    #[error("session `{0}` not found: it was never opened, was ended, or expired (session.ttl)")]
    SessionNotFound(String),
    /// Unknown program in that session.
    #[error("program `{program_id}` not found in session `{session}`; create it first (list_programs shows what exists)")]
    ProgramNotFound { program_id: String, session: String },
    /// The system is shutting down.
    #[error("the system is shutting down and accepts no new work")]
    ShuttingDown,
    /// The supervisor gave up; start a new system.
    #[error("system failed: {0}")]
    SystemFailed(String),
}

impl Error {
    /// The stable kind string.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Environment(_) => "environment",
            Error::Input(_) => "input",
            Error::Signature(_) => "signature",
            Error::Validation(_) => "validation",
            Error::Timeout { .. } => "timeout",
            Error::PoolBusy(_) => "pool_busy",
            Error::WorkerCrashed(_) => "worker_crashed",
            Error::Protocol(_) => "protocol",
            Error::Python { .. } => "python",
            Error::Lm(_) => "lm",
            Error::RateLimited(_) => "rate_limited",
            Error::SessionNotFound(_) => "session_not_found",
            Error::ProgramNotFound { .. } => "program_not_found",
            Error::ShuttingDown => "shutting_down",
            Error::SystemFailed(_) => "system_failed",
        }
    }
}

impl From<ActorError> for Error {
    fn from(e: ActorError) -> Self {
        match e {
            ActorError::Timeout { stage, .. } => Error::Timeout {
                stage,
                message: e.to_string(),
            },
            ActorError::PoolBusy { .. } | ActorError::TooManySessions { .. } => {
                Error::PoolBusy(e.to_string())
            }
            ActorError::WorkerCrashed { .. } => Error::WorkerCrashed(e.to_string()),
            ActorError::Protocol(m) => Error::Protocol(m),
            ActorError::RequestTooLarge { .. } => {
                Error::Validation(crate::signature::ValidationError {
                    field: "request".into(),
                    message: e.to_string(),
                })
            }
            ActorError::Python {
                error_type,
                message,
                traceback,
            } => match error_type.as_str() {
                "LMError" => Error::Lm(message),
                "RateLimited" => Error::RateLimited(message),
                _ => Error::Python {
                    error_type,
                    message,
                    traceback,
                },
            },
            ActorError::SessionNotFound(id) => Error::SessionNotFound(id),
            ActorError::Spawn(m) => Error::Environment(m),
            ActorError::ShuttingDown => Error::ShuttingDown,
            ActorError::SystemFailed(m) => Error::SystemFailed(m),
            other => Error::SystemFailed(other.to_string()),
        }
    }
}

impl From<crate::python_env::EnvError> for Error {
    fn from(e: crate::python_env::EnvError) -> Self {
        Error::Environment(e.to_string())
    }
}

/// What an error the bridge reported says about the worker that reported it: the
/// classifier the actors run every worker error through.
pub(crate) fn classify(error: &WireError) -> Disposition {
    match error.error_type.as_str() {
        "RateLimited" => Disposition::RateLimited {
            retry_after: error
                .details
                .get("retry_after")
                .and_then(Value::as_f64)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64),
        },
        "MemoryError" => Disposition::Recycle,
        "LMError" | "ProgramNotFound" | "ProgramExists" | "UnknownCommand" | "InvalidRequest"
        | "ResponseTooLarge" => Disposition::CallerError,
        _ => Disposition::WorkerFault,
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
