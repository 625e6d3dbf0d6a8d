//! The supervisor restarts a panicking PoolManager or SessionRegistry with real workers
//! under it, keeps every session, leaks no process, and gives up past its intensity.

use std::time::Duration;

use crate::common::*;
use dspex::{Call, SystemHealth};
use dspex_actors::CrashTarget;
use serde_json::json;

#[tokio::test]
async fn panic_in_pool_manager_restarts_it_and_keeps_workers_and_sessions() {
    let system = start_generic_with(handlers_config(2)).await;
    let pids = worker_pids(&system).await;
    let pinned = whoami(&system, Some("keep-me")).await;
    system.inject_crash(CrashTarget::Pool);
    assert_eq!(
        whoami(&system, Some("keep-me")).await,
        pinned,
        "same worker, same affinity"
    );
    let status = system.status().await.unwrap();
    assert_eq!(status.restarts.pool, 1);
    assert_eq!(status.health, SystemHealth::Healthy);
    let mut after = worker_pids(&system).await;
    after.sort();
    let mut before = pids.clone();
    before.sort();
    assert_eq!(after, before, "workers adopted, none leaked or respawned");
    assert!(system.session("keep-me").await.is_ok());
    system.shutdown(Duration::from_secs(5)).await.unwrap();
    for pid in pids {
        assert!(!pid_alive(pid));
    }
}

#[tokio::test]
async fn panic_in_session_registry_restarts_it_with_every_session_and_state() {
    let system = start_generic(1).await;
    for id in ["a", "b", "c"] {
        system.track_session(id).await.unwrap();
    }
    system
        .update_session_state("b", |state| {
            state["note"] = json!("kept");
            Ok(json!(null))
        })
        .await
        .unwrap();
    system.inject_crash(CrashTarget::Registry);
    let ids = session_ids(&system).await;
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(system.session_state("b").await.unwrap()["note"], "kept");
    assert_eq!(system.status().await.unwrap().restarts.registry, 1);
    // Requests with a session still work (they touch the new registry).
    system
        .execute(Call::new("echo", json!({})).session("a"))
        .await
        .unwrap();
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn repeated_panics_past_the_intensity_limit_fail_the_system_without_leaking_workers() {
    let mut config = generic_config(2);
    config.supervisor.max_restarts = 2;
    config.supervisor.max_window = Duration::from_secs(60);
    let system = start_generic_with(config).await;
    let pids = worker_pids(&system).await;
    for _ in 0..3 {
        system.inject_crash(CrashTarget::Pool);
        let _ = system.status().await;
    }
    assert!(eventually(Duration::from_secs(5), || true).await);
    let status = system.status().await.unwrap();
    assert_eq!(status.health, SystemHealth::Failed);
    assert!(status.failure.unwrap().contains("supervisor.max_restarts"));
    let err = system.call("echo", json!({})).await.unwrap_err();
    assert_eq!(err.kind(), "system_failed", "{err}");
    for pid in &pids {
        let pid = *pid;
        assert!(
            eventually(Duration::from_secs(5), || !pid_alive(pid)).await,
            "worker {pid} leaked"
        );
    }
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}
