//! `PR_SET_PDEATHSIG`: when the host is killed outright (no destructors run), its worker
//! dies with it.
//!
//! The host here is this test binary re-run as a helper: it spawns a worker, reports the
//! worker's pid, waits for the go-ahead and SIGKILLs itself.

use crate::prelude::*;
use dspex_actors::spawn_process as spawn;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

const HELPER_ENV: &str = "DSPEX_TEST_PDEATHSIG_HELPER";
const PID_PREFIX: &str = "WORKER_PID=";

#[test]
fn worker_dies_when_its_host_is_killed() {
    if std::env::var_os(HELPER_ENV).is_some() {
        return run_host_helper();
    }
    let mut host = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "pdeathsig_kills_orphan::worker_dies_when_its_host_is_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(host.stdout.take().unwrap());
    let pid = loop {
        let mut line = String::new();
        assert_ne!(
            out.read_line(&mut line).unwrap(),
            0,
            "helper ended without a pid"
        );
        // The harness may have printed the test name on the same line.
        if let Some((_, pid)) = line.trim().split_once(PID_PREFIX) {
            break pid.parse::<i32>().unwrap();
        }
    };
    let worker = PidWatch::open(pid);
    assert!(
        !worker.exited_within(std::time::Duration::ZERO),
        "worker died early"
    );

    host.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let status = host.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "helper: {status:?}");
    assert!(
        worker.exited_within(PATIENCE),
        "worker {pid} outlived its killed host"
    );
}

fn run_host_helper() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = spawn(&sh_spec("exec sleep 1000"), "w-orphan").unwrap();
        println!("\n{PID_PREFIX}{}", conn.process.as_ref().unwrap().pid());
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).unwrap();
        // SAFETY: kill has no memory-safety preconditions; this ends the process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        unreachable!("SIGKILL cannot be survived");
    });
}
