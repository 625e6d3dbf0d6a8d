//! No Python process outlives its host, even when the host is killed with SIGKILL: the
//! workers die of PR_SET_PDEATHSIG, and what a worker started is killed by the worker's
//! reaper, which sees the host's lifeline close. The host is this test binary re-executed
//! as a helper.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

const HELPER_ENV: &str = "DSPEX_TEST_HOST_HELPER";

/// Runs only as the helper: start a system, print the worker pids, then wait to be killed.
#[tokio::test]
async fn host_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return; // Not the helper run: nothing to do.
    }
    let system = start_generic_with(handlers_config(2)).await;
    let mut pids = worker_pids(&system).await;
    // A process a worker started (in the worker's process group, as a subprocess is).
    let grandchild = system
        .call("spawn_grandchild", serde_json::json!({}))
        .await
        .unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;
    pids.push(grandchild);
    println!(
        "PIDS {}",
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[test]
fn workers_and_what_they_started_die_within_a_second_of_their_host_being_killed_with_sigkill() {
    let exe = std::env::current_exe().unwrap();
    let mut host = Command::new(exe)
        .args([
            "--exact",
            "system::host_killed::host_helper",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pids = Vec::new();
    for line in BufReader::new(host.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest prints `test host_helper ... ` on the same line first.
        if let Some((_, rest)) = line.split_once("PIDS ") {
            pids = rest
                .split_whitespace()
                .map(|p| p.parse::<u32>().unwrap())
                .collect();
            break;
        }
    }
    assert_eq!(
        pids.len(),
        3,
        "helper reported its workers and a grandchild"
    );
    assert!(pids.iter().all(|p| pid_alive(*p)));
    kill(host.id(), libc::SIGKILL);
    host.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while pids.iter().any(|p| pid_alive(*p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let survivors: Vec<_> = pids.iter().filter(|p| pid_alive(**p)).collect();
    assert!(
        survivors.is_empty(),
        "processes {survivors:?} (workers, then the grandchild) outlived their SIGKILLed host by 1 s"
    );
}
