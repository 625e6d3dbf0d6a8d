//! Spawning and stopping real worker processes.
//!
//! Every worker runs in its own process group so that the whole tree it starts can be
//! signalled at once, dies with the host thanks to `PR_SET_PDEATHSIG`, and is stopped by
//! a SIGTERM → grace → SIGKILL ladder that always reaps. The protocol runs either on two
//! dedicated pipes (fd 3 for requests, fd 4 for responses: the `fds` transport, so that
//! whatever user code prints cannot corrupt the protocol) or on stdin/stdout (`stdio`,
//! for bridge scripts written for the original DSPex).
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not when the
//! process does. [`spawn`] must therefore be called from a thread that lives as long as the
//! worker should: the Worker actors call it from the actor system's thread, which lives as
//! long as the system.

use crate::error::ActorError;
use crate::launcher::WorkerLauncher;
use crate::worker::transport::{BoxRead, BoxWrite, Connection, LogStream};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

/// Where the framed protocol runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// Requests on the child's fd 3, responses on its fd 4; stdout/stderr are only logs.
    #[default]
    Fds,
    /// Frames on the child's stdin/stdout; stderr is logs.
    Stdio,
}

impl TransportKind {
    /// The value of `DSPEX_TRANSPORT` the child sees: `"fds"` or `"stdio"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Fds => "fds",
            TransportKind::Stdio => "stdio",
        }
    }
}

/// The fd on which a child with [`LaunchSpec::lifeline`] finds the read end of its
/// lifeline pipe.
pub const LIFELINE_FD: RawFd = 5;

/// Everything needed to start a worker process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LaunchSpec {
    /// The executable, e.g. the venv's `python`.
    pub program: PathBuf,
    /// Arguments before the `--mode pool-worker --worker-id <id>` that [`spawn`] appends,
    /// e.g. `["-m", "dspex_bridge"]` or `["path/to/script.py"]`.
    pub args: Vec<String>,
    /// The child's complete environment: nothing is inherited from the host. The launcher
    /// adds only `DSPEX_TRANSPORT` (and `DSPEX_LIFELINE_FD` with [`lifeline`](Self::lifeline)).
    pub env: Vec<(String, String)>,
    /// Working directory; the host's when `None`.
    pub cwd: Option<PathBuf>,
    pub transport: TransportKind,
    /// The child's address-space limit in bytes (`RLIMIT_AS`): an allocation past it fails
    /// inside the child (Python raises `MemoryError`) instead of the kernel's OOM killer
    /// picking a victim. `None`: no limit.
    pub memory_limit: Option<u64>,
    /// Pass the read end of a pipe whose write end only the host holds as fd
    /// [`LIFELINE_FD`] (`fds` transport only). The child learns of the host's death when it
    /// reads end of file there, even if the host was SIGKILLed, and can take down what it
    /// started (the dspex bridge's reaper kills its process group).
    pub lifeline: bool,
}

/// Which step of the stop ladder ended a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopStep {
    /// It exited on its own within the graceful timeout.
    Exited,
    /// It exited after SIGTERM to its group.
    Terminated,
    /// It had to be SIGKILLed.
    Killed,
}

impl StopStep {
    /// A short word for log lines: `exited`, `terminated`, `killed`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopStep::Exited => "exited",
            StopStep::Terminated => "terminated",
            StopStep::Killed => "killed",
        }
    }
}

/// How [`ChildProcess::terminate_detailed`] ended a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    pub status: ExitStatus,
    pub step: StopStep,
}

/// A spawned worker process (own process group).
///
/// Dropping it SIGKILLs the group unless [`terminate`](Self::terminate) already ran, so
/// neither the worker nor anything it started outlives its handle.
#[derive(Debug)]
pub struct ChildProcess {
    child: tokio::process::Child,
    pid: u32,
    /// Set once the group got its final SIGKILL, so `Drop` does not signal a process
    /// group id that may have been reused since.
    group_killed: bool,
    /// The host's end of the lifeline: open while this handle lives.
    _lifeline: Option<OwnedFd>,
    memory_limit: Option<u64>,
    /// The cgroup's OOM-kill count when the process started, to tell afterwards whether
    /// the kernel's OOM killer struck in between.
    oom_kills_at_start: Option<u64>,
}

impl ChildProcess {
    fn new(
        child: tokio::process::Child,
        pid: u32,
        spec: &LaunchSpec,
        lifeline: Option<OwnedFd>,
    ) -> Self {
        ChildProcess {
            child,
            pid,
            group_killed: false,
            _lifeline: lifeline,
            memory_limit: spec.memory_limit,
            oom_kills_at_start: cgroup_oom_kills(),
        }
    }

    /// Whether a process that ended with `status` (and printed `last_output`) died of
    /// memory: killed while the kernel's OOM killer was at work in its cgroup, or, under a
    /// memory limit, aborted with an out-of-memory message.
    pub fn died_of_memory(&self, status: ExitStatus, last_output: &str) -> bool {
        let killed = status.signal() == Some(libc::SIGKILL);
        if killed {
            if let (Some(before), Some(after)) = (self.oom_kills_at_start, cgroup_oom_kills()) {
                if after > before {
                    return true;
                }
            }
        }
        let abnormal = status.signal().is_some() || status.code().is_some_and(|c| c != 0);
        abnormal
            && self.memory_limit.is_some()
            && [
                "MemoryError",
                "Cannot allocate memory",
                "out of memory",
                "std::bad_alloc",
            ]
            .iter()
            .any(|needle| last_output.contains(needle))
    }

    /// The process id, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `sig` to the whole process group. A group that no longer exists is not an
    /// error.
    ///
    /// # Errors
    ///
    /// The OS error of `killpg`, other than `ESRCH`.
    pub fn signal_group(&self, sig: libc::c_int) -> io::Result<()> {
        if self.pid == 0 {
            // killpg(0) would signal the host's own group.
            return Ok(());
        }
        // SAFETY: killpg has no memory-safety preconditions.
        let rc = unsafe { libc::killpg(self.pid as libc::pid_t, sig) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(err)
        }
    }

    /// Waits for the process to exit and reaps it. Can be called again after it returned.
    ///
    /// # Errors
    ///
    /// The OS error of `waitpid`.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// The tail of the stop ladder: waits up to `graceful` for the process to exit on its
    /// own (the caller has already sent `shutdown` and closed the request pipe), then
    /// SIGTERMs the group and waits up to `kill`, then SIGKILLs the group and reaps. The
    /// group is SIGKILLed at the end in every case so that grandchildren do not linger.
    pub async fn terminate(&mut self, graceful: Duration, kill: Duration) -> ExitStatus {
        self.terminate_detailed(graceful, kill).await.status
    }

    /// [`terminate`](Self::terminate), also saying which step ended the process.
    pub async fn terminate_detailed(&mut self, graceful: Duration, kill: Duration) -> Stopped {
        let pid = self.pid;
        let stopped = if let Some(status) = self.wait_for(graceful).await {
            Stopped {
                status,
                step: StopStep::Exited,
            }
        } else {
            log::debug!(
                "process {pid} still running after {graceful:?}; sending SIGTERM to its group"
            );
            if let Err(e) = self.signal_group(libc::SIGTERM) {
                log::warn!("could not SIGTERM process group {pid}: {e}");
            }
            if let Some(status) = self.wait_for(kill).await {
                Stopped {
                    status,
                    step: StopStep::Terminated,
                }
            } else {
                log::warn!(
                    "process {pid} ignored SIGTERM for {kill:?}; sending SIGKILL to its group"
                );
                if let Err(e) = self.signal_group(libc::SIGKILL) {
                    log::warn!("could not SIGKILL process group {pid}: {e}");
                }
                let status = match self.child.wait().await {
                    Ok(status) => status,
                    Err(e) => {
                        // Only possible if someone else reaped it; report what we did.
                        log::warn!("could not reap process {pid} after SIGKILL: {e}");
                        ExitStatus::from_raw(libc::SIGKILL)
                    }
                };
                Stopped {
                    status,
                    step: StopStep::Killed,
                }
            }
        };
        if let Err(e) = self.signal_group(libc::SIGKILL) {
            log::warn!("could not SIGKILL the rest of process group {pid}: {e}");
        }
        self.group_killed = true;
        log::debug!(
            "process {pid} stopped ({}): {}",
            stopped.step.as_str(),
            describe_exit(stopped.status)
        );
        stopped
    }

    /// Waits up to `limit` for the process to exit; `None` if it is still running (or
    /// waiting failed, which the next ladder step handles the same way).
    async fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            Ok(Err(e)) => {
                log::warn!("waiting for process {} failed: {e}", self.pid);
                None
            }
            Err(_elapsed) => None,
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if !self.group_killed {
            // tokio's kill_on_drop only reaches the leader; take the whole group down.
            let _ = self.signal_group(libc::SIGKILL);
        }
    }
}

/// A human description of how a process ended: `"exited with code 1"`,
/// `"killed by signal 9 (SIGKILL)"`.
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    if let Some(sig) = status.signal() {
        let core = if status.core_dumped() {
            ", core dumped"
        } else {
            ""
        };
        return match signal_name(sig) {
            Some(name) => format!("killed by signal {sig} ({name}{core})"),
            None if core.is_empty() => format!("killed by signal {sig}"),
            None => format!("killed by signal {sig} (core dumped)"),
        };
    }
    format!("ended with status {status}")
}

fn signal_name(sig: libc::c_int) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => return None,
    })
}

/// Resident set size of a process in bytes, from `/proc/<pid>/statm`; `None` if the
/// process does not exist or `/proc` is unavailable.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page_size).ok().map(|size| pages * size)
}

/// Creates a pipe whose ends are close-on-exec (so concurrently spawned children never
/// inherit them) and above the standard streams (so the child's stdio setup, which runs
/// before our `pre_exec` hook, cannot overwrite them). Returns `(read, write)`.
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(r)?, above_stdio(w)?))
}

fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on an open fd has no memory-safety preconditions.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl returned a fresh open fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// What the child does between fork and exec, decided before the fork.
#[derive(Debug, Clone, Copy)]
struct ChildPlan {
    /// The child's ends of the request and response pipes (`fds` transport).
    protocol: Option<(RawFd, RawFd)>,
    /// The child's end of the lifeline pipe.
    lifeline: Option<RawFd>,
    memory_limit: Option<u64>,
    parent: libc::pid_t,
}

/// Runs in the child between fork and exec: only async-signal-safe calls. Puts the
/// protocol pipes on fds 3 and 4 and the lifeline on fd 5, applies the memory limit, and
/// arranges for the child to die with its parent.
fn child_setup(plan: ChildPlan) -> io::Result<()> {
    // SAFETY (whole function): plain syscalls on fds and ints, no allocation, no locks.
    unsafe {
        let mut targets: [(RawFd, RawFd); 3] = [(-1, -1); 3];
        let mut n = 0;
        if let Some((read_end, write_end)) = plan.protocol {
            targets[0] = (read_end, 3);
            targets[1] = (write_end, 4);
            n = 2;
        }
        if let Some(lifeline) = plan.lifeline {
            targets[n] = (lifeline, LIFELINE_FD);
            n += 1;
        }
        // Move every source out of the way first: a plain dup2 onto 3 could close another
        // source that happened to be fd 3, 4 or 5.
        let mut high: [RawFd; 3] = [-1; 3];
        for i in 0..n {
            high[i] = libc::fcntl(targets[i].0, libc::F_DUPFD_CLOEXEC, 10);
            if high[i] < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for i in 0..n {
            // dup2 clears close-on-exec on the target, so the target survives exec.
            if libc::dup2(high[i], targets[i].1) < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::close(high[i]);
        }
        if let Some(limit) = plan.memory_limit {
            let rlimit = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &rlimit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        // The parent may have died before prctl took effect; then nobody would kill us.
        if libc::getppid() != plan.parent {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// The pipes a worker needs, host ends and child ends. The child's ends must stay open
/// until the fork; the host closes them right after, so that EOF propagates when either
/// side goes away.
struct Pipes {
    /// Host ends: (request writer, response reader), `fds` transport only.
    host: Option<(OwnedFd, OwnedFd)>,
    /// Child ends: (request reader, response writer), `fds` transport only.
    child: Option<(OwnedFd, OwnedFd)>,
    /// Lifeline (host's write end, child's read end).
    lifeline: Option<(OwnedFd, OwnedFd)>,
}

impl Pipes {
    fn for_spec(spec: &LaunchSpec) -> io::Result<Pipes> {
        let mut pipes = Pipes {
            host: None,
            child: None,
            lifeline: None,
        };
        if spec.transport == TransportKind::Fds {
            let (req_read, req_write) = cloexec_pipe()?;
            let (resp_read, resp_write) = cloexec_pipe()?;
            pipes.host = Some((req_write, resp_read));
            pipes.child = Some((req_read, resp_write));
            if spec.lifeline {
                let (read, write) = cloexec_pipe()?;
                pipes.lifeline = Some((write, read));
            }
        }
        Ok(pipes)
    }

    fn plan(&self, spec: &LaunchSpec, parent: libc::pid_t) -> ChildPlan {
        ChildPlan {
            protocol: self
                .child
                .as_ref()
                .map(|(r, w)| (r.as_raw_fd(), w.as_raw_fd())),
            lifeline: self.lifeline.as_ref().map(|(_, r)| r.as_raw_fd()),
            memory_limit: spec.memory_limit,
            parent,
        }
    }
}

/// Why a process could not be started, with what to do about it.
fn spawn_error(spec: &LaunchSpec, worker_id: &str, what: &str, e: io::Error) -> ActorError {
    let hint = match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::ENOMEM) => {
            "the system refused another process (the per-user process limit, `ulimit -u`, or memory); lower pool.size".to_owned()
        }
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            "too many open files (`ulimit -n`); lower pool.size".to_owned()
        }
        _ => match &spec.cwd {
            Some(cwd) => format!(
                "check python.executable and that the working directory {} exists",
                cwd.display()
            ),
            None => "check python.executable (or python.venv) points at a working Python".to_owned(),
        },
    };
    ActorError::Spawn(format!(
        "worker {worker_id}: {what} `{}`: {e}; {hint}",
        spec.program.display()
    ))
}

fn command(spec: &LaunchSpec, worker_id: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .args(["--mode", "pool-worker", "--worker-id", worker_id])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("DSPEX_TRANSPORT", spec.transport.as_str())
        .stdin(match spec.transport {
            TransportKind::Fds => Stdio::null(),
            TransportKind::Stdio => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if spec.lifeline && spec.transport == TransportKind::Fds {
        cmd.env("DSPEX_LIFELINE_FD", LIFELINE_FD.to_string());
    }
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    cmd
}

/// Starts a worker process and returns the host's ends of its transport.
///
/// argv is `spec.program spec.args.. --mode pool-worker --worker-id <worker_id>`. The
/// process gets its own process group, `PR_SET_PDEATHSIG = SIGKILL`, the spec's memory
/// limit and lifeline, and is killed with its group when its [`ChildProcess`] is dropped.
/// Must be called inside a tokio runtime, from a thread that lives as long as the worker
/// should (see the module docs).
///
/// # Errors
///
/// [`ActorError::Spawn`] naming the program, the OS error and what to do, when the pipes
/// cannot be created or the program cannot be started.
pub fn spawn(spec: &LaunchSpec, worker_id: &str) -> Result<Connection, ActorError> {
    let failed = |what: &str, e: io::Error| spawn_error(spec, worker_id, what, e);
    let pipes = Pipes::for_spec(spec).map_err(|e| failed("could not create pipes for", e))?;
    let mut cmd = command(spec, worker_id);
    // SAFETY: getpid has no preconditions.
    let plan = pipes.plan(spec, unsafe { libc::getpid() });
    // SAFETY: child_setup only makes async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || child_setup(plan));
    }
    let mut child = cmd.spawn().map_err(|e| failed("could not start", e))?;
    let Pipes {
        host,
        child: child_ends,
        lifeline,
    } = pipes;
    drop(child_ends);
    let lifeline = lifeline.map(|(host_end, _child_end)| host_end);
    let pid = child.id().unwrap_or_default();
    log::debug!(
        "worker {worker_id}: spawned {} as pid {pid} ({} transport)",
        spec.program.display(),
        spec.transport.as_str()
    );
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let stdin = child.stdin.take();
    // Wrap the child first so that any error below still kills its group on drop.
    let process = ChildProcess::new(child, pid, spec, lifeline);

    let mut logs: Vec<(LogStream, BoxRead)> = Vec::new();
    let (writer, reader): (BoxWrite, BoxRead) = match host {
        Some((req_write, resp_read)) => {
            let writer = tokio::net::unix::pipe::Sender::from_owned_fd(req_write)
                .map_err(|e| failed("could not register the request pipe of", e))?;
            let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(resp_read)
                .map_err(|e| failed("could not register the response pipe of", e))?;
            if let Some(out) = stdout {
                logs.push((LogStream::Stdout, Box::pin(out)));
            }
            (Box::pin(writer), Box::pin(reader))
        }
        None => {
            let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
                return Err(failed(
                    "stdio pipes missing after starting",
                    io::Error::other("no stdin/stdout handle"),
                ));
            };
            (Box::pin(stdin), Box::pin(stdout))
        }
    };
    if let Some(err) = stderr {
        logs.push((LogStream::Stderr, Box::pin(err)));
    }
    Ok(Connection {
        writer,
        reader,
        logs,
        process: Some(process),
    })
}

/// The OOM-kill count of the cgroup (v2) this process is in, from its `memory.events`;
/// `None` where there is no such file (cgroup v1, no `/sys`, another OS).
fn cgroup_oom_kills() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|line| line.strip_prefix("0::"))?;
    let events =
        std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.events", path.trim_end())).ok()?;
    events
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// Launches real worker processes from a fixed [`LaunchSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessLauncher {
    pub spec: LaunchSpec,
}

impl ProcessLauncher {
    pub fn new(spec: LaunchSpec) -> Self {
        ProcessLauncher { spec }
    }
}

impl WorkerLauncher for ProcessLauncher {
    fn launch(&self, worker_id: &str) -> Result<Connection, ActorError> {
        spawn(&self.spec, worker_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_exit_names_code_and_signal() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(1 << 8)),
            "exited with code 1"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGKILL)),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGSEGV | 0x80)),
            "killed by signal 11 (SIGSEGV, core dumped)"
        );
    }

    #[test]
    fn rss_of_this_process_is_known_and_of_a_missing_one_is_not() {
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
        assert_eq!(rss_bytes(u32::MAX), None);
    }
}
