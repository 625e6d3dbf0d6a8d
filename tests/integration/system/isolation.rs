//! Many systems in one process, even with the same `system.name`, never interfere
//! (the seed's category 2: a fixed global pool name made every test collide).

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_systems_with_the_same_name_start_concurrently_and_stay_independent() {
    let mut config = generic_config(2);
    config.system.name = "same-name".into();
    let (a, b, c) = tokio::join!(
        start_generic_with(config.clone()),
        start_generic_with(config.clone()),
        start_generic_with(config.clone())
    );
    let names: HashSet<_> = [a.name(), b.name(), c.name()]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(names.len(), 3, "each system gets its own identity");

    let (pa, pb, pc) = (
        worker_pids(&a).await,
        worker_pids(&b).await,
        worker_pids(&c).await,
    );
    let all: HashSet<_> = pa.iter().chain(&pb).chain(&pc).collect();
    assert_eq!(all.len(), 6, "each system has its own two workers");

    // Same session id in two systems: two separate sessions.
    a.track_session("shared-id").await.unwrap();
    assert_eq!(
        b.session("shared-id").await.unwrap_err().kind(),
        "session_not_found"
    );

    a.shutdown(Duration::from_secs(5)).await.unwrap();
    for pid in &pa {
        assert!(!pid_alive(*pid));
    }
    for (system, pids) in [(&b, &pb), (&c, &pc)] {
        assert_eq!(
            system
                .call("echo", json!({"still": "serving"}))
                .await
                .unwrap()["echo"]["still"],
            "serving"
        );
        assert_eq!(
            &worker_pids(system).await,
            pids,
            "untouched by the other system's shutdown"
        );
        assert_eq!(system.health().await, dspex::SystemHealth::Healthy);
    }
    assert_eq!(
        a.call("echo", json!({})).await.unwrap_err().kind(),
        "shutting_down"
    );
    b.shutdown(Duration::from_secs(5)).await.unwrap();
    c.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[test]
fn system_handle_works_without_any_async_runtime_of_the_callers() {
    // A host that is not async at all drives the handle with a plain executor.
    let system = futures::executor::block_on(async { start_generic(1).await });
    let v = futures::executor::block_on(system.call("echo", json!({"k": 1}))).unwrap();
    assert_eq!(v["echo"]["k"], 1);
    futures::executor::block_on(system.shutdown(Duration::from_secs(5))).unwrap();
}

#[actix::test]
async fn system_handle_works_inside_an_actix_test() {
    let system = start_generic(1).await;
    let v = system
        .call("echo", json!({"inside": "actix"}))
        .await
        .unwrap();
    assert_eq!(v["echo"]["inside"], "actix");
    system.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_workers() {
    let system = start_generic(1).await;
    let pids = worker_pids(&system).await;
    drop(system);
    for pid in pids {
        assert!(
            eventually(Duration::from_secs(5), || !pid_alive(pid)).await,
            "worker {pid} outlived its system"
        );
    }
}
