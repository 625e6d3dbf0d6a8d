//! The seed's PoolWorker scenarios (category 1), through a real pool of real Python
//! workers. (The same scenarios at the state-machine level are unit tests in
//! `actors/src/worker/state.rs`.) No mock ports: the workers are processes.

use std::time::Duration;

use crate::common::*;
use dspex::Call;
use serde_json::json;

async fn worker_of(system: &dspex::System, pid: u32) -> dspex_actors::WorkerSnapshot {
    let pool = system.status().await.unwrap().pool.unwrap();
    pool.workers
        .into_iter()
        .find(|w| w.pid == Some(pid))
        .expect("worker with that pid")
}

#[tokio::test]
async fn pool_worker_init_worker_initializes_worker_with_correct_state_structure() {
    let system = start_generic_with(handlers_config(2)).await;
    let pool = system.status().await.unwrap().pool.unwrap();
    assert_eq!(pool.workers.len(), 2);
    for w in &pool.workers {
        assert!(
            w.id.starts_with(system.name()),
            "{} is named after its system",
            w.id
        );
        assert!(w.pid.is_some_and(pid_alive));
        assert_eq!(w.session, None);
        assert_eq!(
            w.health.as_str(),
            "ready",
            "a started worker is `ready` (not `healthy`)"
        );
        assert!(!w.busy);
        assert_eq!(
            (
                w.stats.checkouts,
                w.stats.requests,
                w.stats.errors,
                w.stats.sessions_served
            ),
            (0, 0, 0, 0)
        );
    }
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn pool_worker_handle_checkout_binds_worker_to_session_on_first_checkout() {
    let system = start_generic_with(handlers_config(2)).await;
    let pid = whoami(&system, Some("session-a")).await;
    let w = worker_of(&system, pid).await;
    assert_eq!(w.session.as_deref(), Some("session-a"));
    assert_eq!(w.stats.checkouts, 1);
    assert_eq!(w.stats.sessions_served, 1);
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn pool_worker_handle_checkout_maintains_session_affinity_for_same_session() {
    let system = start_generic_with(handlers_config(3)).await;
    let first = whoami(&system, Some("sticky")).await;
    for _ in 0..5 {
        whoami(&system, None).await;
        assert_eq!(whoami(&system, Some("sticky")).await, first);
    }
    assert_eq!(worker_of(&system, first).await.stats.sessions_served, 1);
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn pool_worker_handle_checkout_allows_anonymous_checkout() {
    let system = start_generic_with(handlers_config(1)).await;
    let pid = whoami(&system, None).await;
    let w = worker_of(&system, pid).await;
    assert_eq!(w.session, None);
    assert_eq!(w.stats.checkouts, 1);
    assert_eq!(w.stats.sessions_served, 0);
    assert!(
        system.sessions().await.unwrap().is_empty(),
        "anonymous work tracks no session"
    );
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn pool_worker_handle_checkin_returns_worker_to_ready_state() {
    let system = start_generic_with(handlers_config(1)).await;
    let pid = whoami(&system, Some("s")).await;
    let w = worker_of(&system, pid).await;
    assert_eq!(w.health.as_str(), "ready");
    assert!(!w.busy);
    assert_eq!(
        w.session.as_deref(),
        Some("s"),
        "checkin keeps the binding (affinity)"
    );
    assert_eq!(w.stats.requests, 1);
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn pool_worker_handle_checkin_handles_checkin_with_errors() {
    let system = start_generic_with(handlers_config(1)).await;
    let err = system
        .execute(Call::new("fail", json!({})).session("s"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "python");
    let pool = system.status().await.unwrap().pool.unwrap();
    let w = &pool.workers[0];
    assert_eq!(w.stats.errors, 1);
    assert_eq!(
        w.health.as_str(),
        "ready",
        "one error stays below pool.degrade_after"
    );
    assert!(!w.busy);
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn consecutive_errors_degrade_a_worker_and_a_success_restores_it() {
    let mut config = handlers_config(1);
    config.pool.degrade_after = 2;
    config.pool.remove_after = 100;
    let system = start_generic_with(config).await;
    for _ in 0..2 {
        system.call("fail", json!({})).await.unwrap_err();
    }
    let pool = system.status().await.unwrap().pool.unwrap();
    assert_eq!(pool.workers[0].health.as_str(), "degraded");
    system.call("echo", json!({})).await.unwrap();
    let pool = system.status().await.unwrap().pool.unwrap();
    assert_eq!(pool.workers[0].health.as_str(), "ready");
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn caller_errors_are_counted_but_never_degrade_or_replace_a_worker() {
    let mut config = handlers_config(1);
    config.pool.degrade_after = 2;
    config.pool.remove_after = 3;
    let system = start_generic_with(config).await;
    let pid = worker_pids(&system).await[0];
    for _ in 0..5 {
        let err = system.call("no_such_command", json!({})).await.unwrap_err();
        assert_eq!(
            err.kind(),
            "validation",
            "UnknownCommand is the caller's mistake: {err}"
        );
    }
    let w = worker_of(&system, pid).await;
    assert_eq!(w.stats.errors, 5);
    assert_eq!(
        w.health.as_str(),
        "ready",
        "an unknown command is the caller's mistake"
    );
    assert_eq!(worker_pids(&system).await, [pid], "not replaced");
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}
