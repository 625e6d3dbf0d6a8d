//! Typed configuration of the actor layer. The `dspex` crate parses and validates the
//! TOML/env/flags and converts into these; the actors never read files or the environment.

use std::time::Duration;

/// How strongly a session sticks to the worker that served it last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Affinity {
    /// Prefer the last worker while it has a free slot; otherwise any worker with one
    /// (default).
    #[default]
    Hint,
    /// Wait for a free slot on the last worker while it is alive.
    Strict,
}

/// `[pool]`: how many workers, how much each runs at once, and the pool's policies.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Worker processes.
    pub size: usize,
    /// Requests one worker runs at once (its slots).
    pub worker_concurrency: usize,
    /// Workers that may be starting at the same time.
    pub startup_concurrency: usize,
    /// Time a new worker has to answer its handshake.
    pub startup_timeout: Duration,
    /// Time an interactive request may wait in the queue for a free slot.
    pub checkout_timeout: Duration,
    /// Time a worker may take to answer one request.
    pub request_timeout: Duration,
    /// Interactive requests waiting beyond this are refused at once.
    pub max_queue: usize,
    pub affinity: Affinity,
    /// Consecutive worker faults that make a worker `degraded`.
    pub degrade_after: u32,
    /// Consecutive worker faults that make it `unhealthy` (replaced).
    pub remove_after: u32,
    /// How often workers are pinged (zero: never).
    pub health_check_interval: Duration,
    /// Recycle a worker after this many requests (0 = never).
    pub max_requests: u64,
    /// Recycle a worker after it has lived this long (zero = never).
    pub max_lifetime: Duration,
    /// Times a request whose worker died is retried on another worker.
    pub retry_on_crash: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: 2,
            worker_concurrency: 8,
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

impl PoolConfig {
    /// Slots of a full pool: `size × worker_concurrency`.
    pub fn capacity(&self) -> usize {
        self.size.max(1) * self.worker_concurrency.max(1)
    }
}

/// Pool-wide control of requests marked as limited (in dspex: the ones that call a
/// language model): a concurrency cap that backs off when the far end says "too many"
/// and recovers on success (AIMD), and an optional request rate.
#[derive(Debug, Clone, PartialEq)]
pub struct RateConfig {
    /// Most limited requests in flight at once across the pool (0: the pool's capacity).
    pub max_in_flight: usize,
    /// Limited requests started per minute at most, as a token bucket (0: no limit).
    pub requests_per_minute: u32,
    /// Times a request refused for rate is retried before its caller gets the refusal.
    /// Only refusals at the lowest concurrency count: a refusal while the pool was still
    /// probing above what the far end allows is the pool's doing, not the request's.
    pub num_retries: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            max_in_flight: 0,
            requests_per_minute: 0,
            num_retries: 3,
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
    /// Whether the worker answers a health ping while its slots are busy (the bundled
    /// bridge does: it answers control commands on its reader thread). A sequential
    /// worker cannot, so it is only pinged when idle.
    pub ping_when_busy: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_frame_bytes: 64 * 1024 * 1024,
            keep_log_lines: 20,
            ping_when_busy: true,
        }
    }
}

/// Everything the actor layer needs, already validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActorsConfig {
    pub pool: PoolConfig,
    pub rate: RateConfig,
    pub session: SessionConfig,
    pub supervisor: SupervisorConfig,
    pub shutdown: ShutdownConfig,
    pub worker: WorkerConfig,
}
