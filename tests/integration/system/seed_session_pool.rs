//! The seed's SessionPool scenarios (category 2): every test starts its own isolated
//! system; nothing is named globally, so they all run in parallel.

use std::time::Duration;

use crate::common::*;
use dspex::{Call, SystemHealth};
use serde_json::json;

#[tokio::test]
async fn session_pool_session_management_tracks_new_sessions() {
    let system = start_generic(1).await;
    let info = system.track_session("user-1").await.unwrap();
    assert_eq!(info.id, "user-1");
    let ids = session_ids(&system).await;
    assert_eq!(ids, ["user-1"]);
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn session_pool_session_management_prevents_duplicate_session_tracking() {
    let system = start_generic(1).await;
    system.track_session("dup").await.unwrap();
    system.track_session("dup").await.unwrap();
    assert_eq!(system.sessions().await.unwrap().len(), 1);
    assert_eq!(system.session_metrics().await.unwrap().total_created, 1);
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn session_pool_session_management_ends_sessions_successfully() {
    let system = start_generic(1).await;
    system.track_session("bye").await.unwrap();
    let ended = system.end_session("bye").await.unwrap();
    assert_eq!(ended.id, "bye");
    assert!(system.sessions().await.unwrap().is_empty());
    assert_eq!(
        system.session("bye").await.unwrap_err().kind(),
        "session_not_found"
    );
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn session_pool_session_management_handles_ending_non_existent_session() {
    let system = start_generic(1).await;
    let err = system.end_session("never-was").await.unwrap_err();
    assert_eq!(err.kind(), "session_not_found");
    assert!(err.to_string().contains("never-was"));
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn session_pool_pool_status_and_metrics_tracks_session_metrics() {
    let system = start_generic(1).await;
    for id in ["a", "b", "c"] {
        system.track_session(id).await.unwrap();
    }
    system.end_session("b").await.unwrap();
    let m = system.session_metrics().await.unwrap();
    assert_eq!((m.active, m.total_created, m.total_ended), (2, 3, 1));
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn session_pool_pool_status_reports_pool_and_session_metrics() {
    let system = start_generic(2).await;
    system
        .execute(Call::new("echo", json!({})).session("m1"))
        .await
        .unwrap();
    system.call("echo", json!({})).await.unwrap();
    let status = system.status().await.unwrap();
    assert_eq!(status.health, SystemHealth::Healthy);
    let pool = status.pool.unwrap();
    assert_eq!(pool.size, 2);
    assert_eq!(pool.totals.submitted, 2);
    assert_eq!(pool.totals.completed, 2);
    assert_eq!(pool.latency.samples, 2);
    assert!(pool.latency.p50_ms > 0.0);
    assert_eq!(
        status.sessions.unwrap().active,
        1,
        "using a session tracks it"
    );
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn session_pool_health_check_functionality_performs_health_check() {
    let system = start_generic(2).await;
    let status = system.health_check().await.unwrap();
    let pool = status.pool.unwrap();
    // Real counts, read from the workers, not a constant.
    assert_eq!(pool.ready, 2);
    assert_eq!(
        pool.workers
            .iter()
            .filter(|w| w.pid.is_some_and(pid_alive))
            .count(),
        2
    );
    assert_eq!(status.health, SystemHealth::Healthy);
    // Kill one: the health report must say so until the pool has refilled.
    let victim = pool.workers[0].pid.unwrap();
    kill(victim, libc::SIGKILL);
    assert!(eventually(Duration::from_secs(5), || !pid_alive(victim)).await);
    system.wait_ready(2).await.unwrap();
    let status = system.health_check().await.unwrap();
    let pool = status.pool.unwrap();
    assert_eq!(pool.ready, 2);
    assert!(pool.workers.iter().all(|w| w.pid != Some(victim)));
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn session_pool_stale_session_cleanup_cleans_up_stale_sessions() {
    let mut config = generic_config(1);
    config.session.ttl = Duration::from_millis(300);
    config.session.cleanup_interval = Duration::from_secs(3600);
    let system = start_generic_with(config).await;
    system.track_session("old").await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    system.track_session("fresh").await.unwrap();
    let removed = system.sweep_sessions().await.unwrap();
    assert_eq!(removed, ["old"]);
    let ids = session_ids(&system).await;
    assert_eq!(ids, ["fresh"]);
    assert_eq!(system.session_metrics().await.unwrap().stale_cleaned, 1);
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn session_pool_graceful_shutdown_shuts_down_pool_gracefully() {
    let system = start_generic(2).await;
    system.track_session("s").await.unwrap();
    let pids = worker_pids(&system).await;
    system.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(system.is_stopped());
    for pid in pids {
        assert!(!pid_alive(pid));
    }
    assert_eq!(system.health().await, SystemHealth::Stopped);
    // Idempotent.
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}
