//! The one error type of the `dspex` library, and the one table of what its kinds mean.
//!
//! Every error has a stable kind string (DESIGN.md "Errors") that the CLI prints in output
//! lines, tests match on and users script against. Several things hang off a kind: its
//! string, the CLI's exit code, which Python exception types of the bridge produce it and
//! what such an error says about the worker that reported it. They used to live in four
//! places that drifted; here each is one row of one table:
//!
//! * [`ErrorKind`] and [`ErrorKind::info`]: the kinds, their strings and exit codes;
//! * [`BRIDGE_ERRORS`]: the bridge's error types (the classes of `dspex_bridge/errors.py`,
//!   plus Python's `MemoryError`), each with its kind and its [`Fault`], from which
//!   `classify` (the actors' error classifier) and `From<ActorError>` are derived. A test
//!   reads `errors.py` and checks both sides name the same types.
//!
//! Messages say what happened and what to do; they never repeat the kind (the actor
//! layer's messages carry no prefix, so `pool busy: 12 requests are already queued ...`
//! says "pool busy" once).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use dspex_actors::protocol::WireError;
use dspex_actors::{ActorError, Disposition, TimeoutStage};
use serde_json::Value;

/// The stable kinds of [`Error`]: what a caller can branch on.
///
/// # Examples
///
/// ```
/// use dspex::error::ErrorKind;
/// let kind: ErrorKind = "rate_limited".parse()?;
/// assert_eq!(kind, ErrorKind::RateLimited);
/// assert_eq!(kind.as_str(), "rate_limited");
/// assert_eq!(ErrorKind::Validation.exit_code(), 2);
/// assert_eq!(ErrorKind::Python.exit_code(), 1);
/// # Ok::<(), dspex::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    Config,
    Environment,
    Input,
    Signature,
    Validation,
    Timeout,
    PoolBusy,
    WorkerCrashed,
    Protocol,
    Python,
    Lm,
    RateLimited,
    SessionNotFound,
    ProgramNotFound,
    ShuttingDown,
    SystemFailed,
}

/// One row of the kind table: see [`ErrorKind::info`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    /// The stable string.
    pub name: &'static str,
    /// The `dspex` CLI's exit status when a command fails with this kind: 2 for what must
    /// be fixed before anything can run (flags, configuration, environment, the program or
    /// its inputs), 1 for a failure of the work itself.
    pub exit_code: u8,
    /// What it means, in a few words.
    pub summary: &'static str,
}

impl ErrorKind {
    /// Every kind, in the order of DESIGN.md.
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::Config,
        ErrorKind::Environment,
        ErrorKind::Input,
        ErrorKind::Signature,
        ErrorKind::Validation,
        ErrorKind::Timeout,
        ErrorKind::PoolBusy,
        ErrorKind::WorkerCrashed,
        ErrorKind::Protocol,
        ErrorKind::Python,
        ErrorKind::Lm,
        ErrorKind::RateLimited,
        ErrorKind::SessionNotFound,
        ErrorKind::ProgramNotFound,
        ErrorKind::ShuttingDown,
        ErrorKind::SystemFailed,
    ];

    /// The table: everything a kind stands for.
    pub const fn info(self) -> KindInfo {
        const fn row(name: &'static str, exit_code: u8, summary: &'static str) -> KindInfo {
            KindInfo {
                name,
                exit_code,
                summary,
            }
        }
        match self {
            ErrorKind::Config => row("config", 2, "bad configuration; the message names the key"),
            ErrorKind::Environment => row(
                "environment",
                2,
                "Python, the venv or a worker could not be set up",
            ),
            ErrorKind::Input => row("input", 2, "a malformed input row or file"),
            ErrorKind::Signature => row("signature", 2, "a signature that does not parse"),
            ErrorKind::Validation => row(
                "validation",
                2,
                "a request the program cannot take: inputs, a definition, a state file, a metric",
            ),
            ErrorKind::Timeout => row("timeout", 1, "a wait ran out (checkout or request)"),
            ErrorKind::PoolBusy => row("pool_busy", 1, "the wait queue or the sessions are full"),
            ErrorKind::WorkerCrashed => row(
                "worker_crashed",
                1,
                "the worker died while running the request",
            ),
            ErrorKind::Protocol => row("protocol", 1, "a worker broke the wire protocol"),
            ErrorKind::Python => row("python", 1, "the program or a user command raised"),
            ErrorKind::Lm => row("lm", 1, "the language model call failed"),
            ErrorKind::RateLimited => row("rate_limited", 1, "the LM provider refused for rate"),
            ErrorKind::SessionNotFound => row("session_not_found", 1, "unknown or ended session"),
            ErrorKind::ProgramNotFound => {
                row("program_not_found", 1, "unknown program in that session")
            }
            ErrorKind::ShuttingDown => row("shutting_down", 1, "the system takes no new work"),
            ErrorKind::SystemFailed => row("system_failed", 1, "the supervisor gave up"),
        }
    }

    /// The stable string (`"pool_busy"`).
    pub const fn as_str(self) -> &'static str {
        self.info().name
    }

    /// The CLI's exit status for a command that fails with this kind.
    pub const fn exit_code(self) -> u8 {
        self.info().exit_code
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorKind {
    type Err = Error;

    /// The strings [`as_str`](Self::as_str) writes.
    fn from_str(s: &str) -> Result<Self> {
        ErrorKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                Error::Validation(crate::signature::ValidationError::new(
                    "kind",
                    format!(
                        "unknown error kind `{s}`; the kinds are {}",
                        ErrorKind::ALL.map(ErrorKind::as_str).join(", ")
                    ),
                ))
            })
    }
}

impl PartialEq<&str> for ErrorKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What an error the bridge reported says about the worker that reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The worker may be broken: counts toward `pool.degrade_after`/`remove_after`.
    Worker,
    /// The caller's (or a remote service's) doing; the worker answered correctly.
    Caller,
    /// The LM provider refused for rate: the pool slows down and retries the request.
    RateLimited,
    /// The worker answered but is not worth keeping (out of memory): replaced, and the
    /// request is not retried.
    Recycle,
}

/// One error type the bridge reports (`error.type` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeErrorType {
    /// The Python class name.
    pub name: &'static str,
    pub kind: ErrorKind,
    pub fault: Fault,
}

/// The bridge's error types and what they mean; any other type (a user's or DSPy's
/// exception) is `python` and a [`Fault::Worker`]. Every class of `dspex_bridge/errors.py`
/// is here, and `MemoryError`, which the bridge reports when Python runs out of memory.
pub const BRIDGE_ERRORS: &[BridgeErrorType] = &[
    bridge("InvalidRequest", ErrorKind::Validation, Fault::Caller),
    bridge("UnknownCommand", ErrorKind::Validation, Fault::Caller),
    bridge("ProgramExists", ErrorKind::Validation, Fault::Caller),
    bridge("ProgramNotFound", ErrorKind::ProgramNotFound, Fault::Caller),
    bridge("LMError", ErrorKind::Lm, Fault::Caller),
    bridge("RateLimited", ErrorKind::RateLimited, Fault::RateLimited),
    bridge("ResponseTooLarge", ErrorKind::Python, Fault::Caller),
    bridge("MemoryError", ErrorKind::Python, Fault::Recycle),
];

const fn bridge(name: &'static str, kind: ErrorKind, fault: Fault) -> BridgeErrorType {
    BridgeErrorType { name, kind, fault }
}

/// The kind and fault of a bridge error type.
pub fn bridge_error(error_type: &str) -> (ErrorKind, Fault) {
    BRIDGE_ERRORS
        .iter()
        .find(|known| known.name == error_type)
        .map_or((ErrorKind::Python, Fault::Worker), |known| {
            (known.kind, known.fault)
        })
}

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
    /// The managed Python environment could not be prepared (kind `environment`); the
    /// source is the step that failed.
    #[error("environment error: {0}")]
    PythonEnv(#[from] crate::python_env::EnvError),
    /// A malformed input row (CLI).
    #[error("input error: {0}")]
    Input(String),
    /// A signature that does not parse.
    #[error(transparent)]
    Signature(#[from] crate::signature::SignatureError),
    /// Inputs (or outputs) that do not match the signature.
    #[error(transparent)]
    Validation(#[from] crate::signature::ValidationError),
    /// A wait ran out; the message says which and for how long.
    #[error("{message}")]
    Timeout {
        stage: TimeoutStage,
        message: String,
    },
    /// The wait queue is full, or too many sessions.
    #[error("pool busy: {0}")]
    PoolBusy(String),
    /// The worker died while running the request, after retries. Its last output is kept
    /// apart from the message (the CLI prints it indented, like a traceback).
    #[error("{0}")]
    WorkerCrashed(WorkerCrash),
    /// A worker broke the wire protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Python raised an exception (a user's, or DSPy's).
    #[error("python error {error_type}: {message}")]
    Python {
        error_type: String,
        message: String,
        traceback: Option<String>,
    },
    /// The bridge refused the request as the caller's mistake: an error type that
    /// [`BRIDGE_ERRORS`] maps to `validation` or `program_not_found` (`InvalidRequest`,
    /// `UnknownCommand`, `ProgramNotFound`). The message says what to fix.
    #[error("{message}")]
    Refused {
        kind: ErrorKind,
        error_type: String,
        message: String,
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

/// How a worker died (see [`Error::WorkerCrashed`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WorkerCrash {
    /// The worker, when one is known.
    pub worker_id: Option<String>,
    /// What happened, e.g. "killed by signal 9 (SIGKILL)".
    pub reason: String,
    /// Its last lines of output, oldest first (may be empty).
    pub last_output: String,
    /// It died of memory (its limit or the kernel's OOM killer); such a request is not
    /// retried.
    pub out_of_memory: bool,
}

impl fmt::Display for WorkerCrash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.worker_id {
            Some(id) => write!(
                f,
                "worker {id} died while handling the request: {}",
                self.reason
            )?,
            None => f.write_str(&self.reason)?,
        }
        if self.out_of_memory {
            f.write_str(
                " (out of memory: raise pool.worker_memory_limit or send smaller requests; it was not retried)",
            )?;
        }
        Ok(())
    }
}

/// A crash described by a message alone (no worker to name).
impl From<&str> for WorkerCrash {
    fn from(reason: &str) -> Self {
        WorkerCrash {
            reason: reason.to_owned(),
            ..WorkerCrash::default()
        }
    }
}

impl From<String> for WorkerCrash {
    fn from(reason: String) -> Self {
        WorkerCrash {
            reason,
            ..WorkerCrash::default()
        }
    }
}

impl Error {
    /// The kind, as a value.
    pub fn error_kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) => ErrorKind::Config,
            Error::Environment(_) | Error::PythonEnv(_) => ErrorKind::Environment,
            Error::Input(_) => ErrorKind::Input,
            Error::Signature(_) => ErrorKind::Signature,
            Error::Validation(_) => ErrorKind::Validation,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::PoolBusy(_) => ErrorKind::PoolBusy,
            Error::WorkerCrashed(_) => ErrorKind::WorkerCrashed,
            Error::Protocol(_) => ErrorKind::Protocol,
            Error::Python { .. } => ErrorKind::Python,
            Error::Refused { kind, .. } => *kind,
            Error::Lm(_) => ErrorKind::Lm,
            Error::RateLimited(_) => ErrorKind::RateLimited,
            Error::SessionNotFound(_) => ErrorKind::SessionNotFound,
            Error::ProgramNotFound { .. } => ErrorKind::ProgramNotFound,
            Error::ShuttingDown => ErrorKind::ShuttingDown,
            Error::SystemFailed(_) => ErrorKind::SystemFailed,
        }
    }

    /// The stable kind string (see [`ErrorKind`]).
    pub fn kind(&self) -> &'static str {
        self.error_kind().as_str()
    }

    /// An error the bridge reported as `error_type`, placed by [`BRIDGE_ERRORS`].
    /// `ProgramExists` is the one mistake the host's own registry reports too; it takes the
    /// same shape here, a `validation` error about `program_id`.
    pub fn from_bridge(error_type: String, message: String, traceback: Option<String>) -> Self {
        if error_type == "ProgramExists" {
            return Error::Validation(crate::signature::ValidationError::new(
                "program_id",
                message,
            ));
        }
        match bridge_error(&error_type).0 {
            ErrorKind::Lm => Error::Lm(message),
            ErrorKind::RateLimited => Error::RateLimited(message),
            ErrorKind::Python => Error::Python {
                error_type,
                message,
                traceback,
            },
            kind => Error::Refused {
                kind,
                error_type,
                message,
            },
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
            ActorError::WorkerCrashed {
                worker_id,
                reason,
                last_output,
                out_of_memory,
            } => Error::WorkerCrashed(WorkerCrash {
                worker_id: Some(worker_id),
                reason,
                last_output,
                out_of_memory,
            }),
            ActorError::Protocol(m) => Error::Protocol(m),
            ActorError::RequestTooLarge { .. } => Error::Validation(
                crate::signature::ValidationError::new("request", e.to_string()),
            ),
            ActorError::Python {
                error_type,
                message,
                traceback,
            } => Error::from_bridge(error_type, message, traceback),
            ActorError::SessionNotFound(id) => Error::SessionNotFound(id),
            ActorError::Spawn(_) => Error::Environment(e.to_string()),
            ActorError::ShuttingDown => Error::ShuttingDown,
            ActorError::SystemFailed(m) => Error::SystemFailed(m),
            other => Error::SystemFailed(other.to_string()),
        }
    }
}

/// The classifier the actors run every worker error through: [`BRIDGE_ERRORS`]' fault,
/// with the provider's `retry_after` for a rate limit.
pub(crate) fn classify(error: &WireError) -> Disposition {
    match bridge_error(&error.error_type).1 {
        Fault::Worker => Disposition::WorkerFault,
        Fault::Caller => Disposition::CallerError,
        Fault::Recycle => Disposition::Recycle,
        Fault::RateLimited => Disposition::RateLimited {
            retry_after: error
                .details
                .get("retry_after")
                .and_then(Value::as_f64)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64),
        },
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(error_type: &str, details: Value) -> WireError {
        serde_json::from_value(serde_json::json!({
            "type": error_type, "message": "m", "retry_after": details
        }))
        .unwrap()
    }

    #[test]
    fn every_kind_has_its_own_string_and_parses_back() {
        let mut names: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        for kind in ErrorKind::ALL {
            assert_eq!(kind.as_str().parse::<ErrorKind>().unwrap(), kind);
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        let err = "lmm".parse::<ErrorKind>().unwrap_err();
        assert!(err.to_string().contains("rate_limited"), "{err}");
    }

    #[test]
    fn setup_kinds_exit_2_and_work_kinds_exit_1() {
        for kind in ErrorKind::ALL {
            let setup = matches!(
                kind,
                ErrorKind::Config
                    | ErrorKind::Environment
                    | ErrorKind::Input
                    | ErrorKind::Signature
                    | ErrorKind::Validation
            );
            assert_eq!(kind.exit_code(), if setup { 2 } else { 1 }, "{kind}");
        }
    }

    #[test]
    fn bridge_errors_map_to_their_kind_and_fault_in_one_place() {
        let cases = [
            ("InvalidRequest", "validation", Disposition::CallerError),
            ("UnknownCommand", "validation", Disposition::CallerError),
            ("ProgramExists", "validation", Disposition::CallerError),
            (
                "ProgramNotFound",
                "program_not_found",
                Disposition::CallerError,
            ),
            ("LMError", "lm", Disposition::CallerError),
            ("MemoryError", "python", Disposition::Recycle),
            ("ValueError", "python", Disposition::WorkerFault),
        ];
        for (error_type, kind, disposition) in cases {
            let e = Error::from(ActorError::Python {
                error_type: error_type.into(),
                message: "what happened".into(),
                traceback: None,
            });
            assert_eq!(e.kind(), kind, "{error_type}");
            assert_eq!(
                classify(&wire(error_type, Value::Null)),
                disposition,
                "{error_type}"
            );
        }
        let exists = Error::from(ActorError::Python {
            error_type: "ProgramExists".into(),
            message: "program `p` already exists".into(),
            traceback: None,
        });
        assert!(
            matches!(&exists, Error::Validation(v) if v.field == "program_id"),
            "the same shape as the registry's own duplicate check: {exists:?}"
        );
        assert_eq!(
            classify(&wire("RateLimited", serde_json::json!(1.5))),
            Disposition::RateLimited {
                retry_after: Some(Duration::from_millis(1500))
            }
        );
        assert_eq!(
            classify(&wire("RateLimited", serde_json::json!(-1))),
            Disposition::RateLimited { retry_after: None }
        );
    }

    #[test]
    fn messages_name_their_kind_once() {
        let busy = Error::from(ActorError::PoolBusy { queued: 3 });
        assert!(
            busy.to_string().starts_with("pool busy: 3 requests"),
            "{busy}"
        );
        assert_eq!(busy.to_string().matches("busy").count(), 1, "{busy}");
        let refused = Error::from(ActorError::Python {
            error_type: "InvalidRequest".into(),
            message: "metric 'm:f' is not callable; pass a function".into(),
            traceback: None,
        });
        assert_eq!(
            refused.to_string(),
            "metric 'm:f' is not callable; pass a function"
        );
        let python = Error::from(ActorError::Python {
            error_type: "ValueError".into(),
            message: "boom".into(),
            traceback: Some("Traceback ...".into()),
        });
        assert_eq!(python.to_string(), "python error ValueError: boom");
    }

    #[test]
    fn a_crash_keeps_its_fields_and_its_output_apart_from_the_message() {
        let e = Error::from(ActorError::WorkerCrashed {
            worker_id: "w-1".into(),
            reason: "killed by signal 9 (SIGKILL)".into(),
            last_output: "line one\nline two".into(),
            out_of_memory: true,
        });
        let Error::WorkerCrashed(crash) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(crash.worker_id.as_deref(), Some("w-1"));
        assert_eq!(crash.last_output, "line one\nline two");
        assert!(crash.out_of_memory);
        let text = e.to_string();
        assert!(
            text.starts_with("worker w-1 died while handling the request: killed by signal 9"),
            "{text}"
        );
        assert!(
            text.contains("out of memory") && !text.contains("line one"),
            "{text}"
        );
        assert_eq!(e.kind(), "worker_crashed");
    }

    #[test]
    fn an_environment_error_keeps_its_source() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let e = Error::from(crate::python_env::EnvError::Requirements {
            path: "/r.txt".into(),
            source: io,
        });
        assert_eq!(e.kind(), "environment");
        let env = e.source().expect("the EnvError");
        assert!(env.source().is_some(), "and its io::Error under it");
        assert!(
            e.to_string().starts_with("environment error: cannot read"),
            "{e}"
        );
    }
}
