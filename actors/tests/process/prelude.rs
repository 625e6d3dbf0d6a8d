//! Helpers shared by the process tests: finding interpreters, building launch specs,
//! talking the protocol to a child, and watching pids that are not our children.

use dspex_actors::protocol::{FrameCodec, FrameError, Request, Response};
use dspex_actors::{BoxRead, BoxWrite, Connection, LaunchSpec, LogStream, TransportKind};
use futures::{SinkExt, Stream, StreamExt};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use tokio_util::codec::{FramedRead, FramedWrite};

/// Upper bound for anything a test waits on. Only reached when the behaviour under test
/// is broken, so it is generous; no test asserts how long something took.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The real Python interpreter (not a pyenv-style shim, which needs the environment that
/// the launcher deliberately clears).
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = std::process::Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .expect("python3 must be on PATH for the process tests");
            assert!(out.status.success(), "python3 failed: {out:?}");
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        })
        .clone()
}

/// A spec running `python -c code` (the launcher's flags land in `sys.argv[1:]`).
pub fn python_spec(code: &str, transport: TransportKind) -> LaunchSpec {
    LaunchSpec {
        program: python(),
        args: vec!["-c".into(), code.into()],
        transport,
        ..LaunchSpec::default()
    }
}

/// A spec running `sh -c script` (the launcher's flags become `$0 $1 ...`).
pub fn sh_spec(script: &str) -> LaunchSpec {
    LaunchSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        transport: TransportKind::Fds,
        ..LaunchSpec::default()
    }
}

/// A Python worker that answers every request with its command, args, argv and
/// environment, over either transport (`DSPEX_TRANSPORT` picks the pipes), and prints a
/// line on stdout and stderr per request to prove those are not the protocol.
pub const ECHO_WORKER: &str = r#"
import json, os, struct, sys, time
if os.environ["DSPEX_TRANSPORT"] == "fds":
    rd, wr = os.fdopen(3, "rb", buffering=0), os.fdopen(4, "wb", buffering=0)
else:
    rd, wr = sys.stdin.buffer, sys.stdout.buffer
def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = rd.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
while True:
    head = read_exact(4)
    if head is None:
        break
    req = json.loads(read_exact(struct.unpack(">I", head)[0]))
    print("stderr for", req["id"], file=sys.stderr, flush=True)
    if os.environ["DSPEX_TRANSPORT"] == "fds":
        print("stdout for", req["id"], flush=True)
    body = json.dumps({"id": req["id"], "success": True, "timestamp": time.time(),
        "result": {"command": req["command"], "args": req["args"],
                   "argv": sys.argv[1:], "env": dict(os.environ)}}).encode()
    wr.write(struct.pack(">I", len(body)) + body)
    wr.flush()
"#;

/// The host's framed ends of a connection, taken out of it (the rest stays in `conn`).
pub struct Framed {
    pub tx: FramedWrite<BoxWrite, FrameCodec<Response, Request>>,
    pub rx: FramedRead<BoxRead, FrameCodec<Response, Request>>,
}

pub fn framed(conn: &mut Connection) -> Framed {
    let writer = std::mem::replace(&mut conn.writer, Box::pin(tokio::io::sink()));
    let reader = std::mem::replace(&mut conn.reader, Box::pin(tokio::io::empty()));
    Framed {
        tx: FramedWrite::new(writer, FrameCodec::default()),
        rx: FramedRead::new(reader, FrameCodec::default()),
    }
}

impl Framed {
    /// Sends one request and waits (bounded by [`PATIENCE`]) for the next response.
    pub async fn call(&mut self, req: Request) -> Option<Result<Response, FrameError>> {
        self.tx.send(req).await.expect("request written");
        tokio::time::timeout(PATIENCE, self.rx.next())
            .await
            .expect("the child answered in time")
    }
}

/// Takes the log streams out of a connection as one stream of lines tagged with the
/// stream they came from, in the order they arrive.
pub fn take_logs(conn: &mut Connection) -> impl Stream<Item = (LogStream, String)> + Unpin {
    futures::stream::select_all(std::mem::take(&mut conn.logs).into_iter().map(
        |(stream, reader)| {
            dspex_actors::log_lines(reader)
                .map(move |line| (stream, line))
                .boxed()
        },
    ))
}

/// Reads lines until one satisfies `want`, returning it; panics if the streams end first.
pub async fn wait_for_line(
    logs: &mut (impl Stream<Item = (LogStream, String)> + Unpin),
    want: impl Fn(LogStream, &str) -> bool,
) -> String {
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some((stream, line)) = logs.next().await {
            if want(stream, &line) {
                return Some(line);
            }
        }
        None
    })
    .await
    .expect("the expected log line arrived in time");
    found.expect("the log streams ended before the expected line")
}

/// A handle on a process that is not our child, to learn when it exits. Dropping it
/// kills the process if it is still alive.
pub struct PidWatch {
    pidfd: OwnedFd,
    pub pid: i32,
}

impl PidWatch {
    /// Opens a pidfd on `pid`; the process must be alive now.
    pub fn open(pid: i32) -> PidWatch {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(
            fd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        PidWatch {
            // SAFETY: the syscall returned a fresh fd owned by nobody else.
            pidfd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
            pid,
        }
    }

    /// Whether the process has exited (a zombie counts as exited), waiting up to `limit`.
    pub fn exited_within(&self, limit: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let deadline = std::time::Instant::now() + limit;
        loop {
            let mut pfd = libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: pfd is a valid pollfd array of length 1.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n >= 0 {
                return n == 1;
            }
            let err = std::io::Error::last_os_error();
            // SIGCHLD (tokio's reaper) may interrupt the wait; just wait again.
            assert_eq!(err.kind(), std::io::ErrorKind::Interrupted, "poll: {err}");
        }
    }
}

/// A failing test must not leave its processes behind: SIGKILL whatever is still alive.
/// Going through the pidfd means a reused pid is never hit.
impl Drop for PidWatch {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal with a valid pidfd, no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

/// Whether `pid` is gone entirely (exited and reaped).
pub fn reaped(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid as i32, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}
