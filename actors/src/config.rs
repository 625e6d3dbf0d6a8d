//! Typed configuration of the actor layer. The `dspex` crate parses and validates the
//! TOML/env/flags and converts into these; the actors never read files or the environment.

use std::time::Duration;

/// How strongly a session sticks to the worker that served it last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Affinity {
    /// Prefer the last worker; fall back to any idle worker (default).
    #[default]
    Hint,
    /// Wait for the last worker while it is alive.
    Strict,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub size: usize,
    pub startup_concurrency: usize,
    pub startup_timeout: Duration,
    pub checkout_timeout: Duration,
    pub request_timeout: Duration,
    pub max_queue: usize,
    pub affinity: Affinity,
    pub degrade_after: u32,
    pub remove_after: u32,
    pub health_check_interval: Duration,
    /// Recycle a worker after this many requests (0 = never).
    pub max_requests: u64,
    /// Recycle a worker after it has lived this long (zero = never).
    pub max_lifetime: Duration,
    pub retry_on_crash: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: 2,
            startup_concurrency: 2,
            startup_timeout: Duration::from_secs(60),
            checkout_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
            max_queue: 10_000,
            affinity: Affinity::Hint,
            degrade_after: 3,
            remove_after: 10,
            health_check_interval: Duration::from_secs(30),
            max_requests: 0,
            max_lifetime: Duration::ZERO,
            retry_on_crash: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    pub ttl: Duration,
    pub cleanup_interval: Duration,
    pub max_sessions: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ttl: Duration::from_secs(3600),
            cleanup_interval: Duration::from_secs(60),
            max_sessions: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    pub max_restarts: u32,
    pub max_window: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            max_restarts: 3,
            max_window: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownConfig {
    pub graceful_timeout: Duration,
    pub kill_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            graceful_timeout: Duration::from_secs(5),
            kill_timeout: Duration::from_secs(2),
        }
    }
}

/// Per-worker settings that are not pool policy.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    pub max_frame_bytes: usize,
    /// How many of the child's last stdout/stderr lines are kept for crash reports.
    pub keep_log_lines: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_frame_bytes: 64 * 1024 * 1024,
            keep_log_lines: 20,
        }
    }
}

/// Everything the actor layer needs, already validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActorsConfig {
    /// Used in log lines and worker ids only; never registered anywhere.
    pub name: String,
    pub pool: PoolConfig,
    pub session: SessionConfig,
    pub supervisor: SupervisorConfig,
    pub shutdown: ShutdownConfig,
    pub worker: WorkerConfig,
}
