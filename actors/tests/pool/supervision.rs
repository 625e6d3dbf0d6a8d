//! The supervisor restarts a panicking PoolManager or SessionRegistry with its state,
//! gives up past the restart intensity, and serves with the workers that could start.

use std::time::Duration;

use dspex_actors::session::{List, Track};
use dspex_actors::{CrashTarget, InjectCrash, RunHealthCheck, ToRegistry};

use crate::prelude::*;

#[actix::test]
async fn panicking_pool_manager_is_restarted_and_keeps_its_workers() {
    let launcher = InMemoryLauncher::with_script(whoami_script);
    let sup = start(config(2), &launcher).await;
    let before = whoami(&sup, Some("a")).await;
    sup.do_send(InjectCrash(CrashTarget::Pool));
    // Requests sent right after the crash are held until the successor is up.
    assert_eq!(
        whoami(&sup, Some("a")).await,
        before,
        "affinity survived the restart"
    );
    let status = sup.send(GetStatus).await.unwrap();
    assert_eq!(status.restarts.pool, 1);
    assert_eq!(status.pool.unwrap().ready, 2);
    assert_eq!(launcher.launches(), 2, "workers adopted, not replaced");
}

#[actix::test]
async fn a_restarted_pool_manager_answers_the_requests_in_flight_across_the_restart() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        "slow" => FakeAction::delay(
            Duration::from_millis(300),
            FakeAction::Reply(json!({"got": req.args})),
        ),
        _ => default_action(worker_id, req),
    });
    let mut c = config(1);
    c.pool.worker_concurrency = 2;
    let sup = start(c, &launcher).await;
    let answers: Vec<_> = (0..4)
        .map(|i| {
            send(&sup, |r| {
                Execute::new(Call::new("slow", json!({"i": i})).batch(), r)
            })
        })
        .collect();
    wait_until("two run and two wait", || async {
        let s = pool_status(&sup).await;
        s.in_flight == 2 && s.queue_depth == 2
    })
    .await;
    sup.do_send(InjectCrash(CrashTarget::Pool));
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.await.unwrap().unwrap()["got"], json!({"i": i}));
    }
    let status = pool_status(&sup).await;
    assert_eq!((status.in_flight, status.queue_depth), (0, 0));
    assert_eq!(launcher.launches(), 1);
}

#[actix::test]
async fn panicking_session_registry_is_restarted_with_every_session() {
    let launcher = InMemoryLauncher::new();
    let sup = start(config(1), &launcher).await;
    for id in ["a", "b", "c"] {
        sup.send(ToRegistry(Track {
            session_id: id.into(),
        }))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    }
    sup.do_send(InjectCrash(CrashTarget::Registry));
    let sessions = sup.send(ToRegistry(List)).await.unwrap().unwrap();
    let ids: Vec<_> = sessions.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(sup.send(GetStatus).await.unwrap().restarts.registry, 1);
}

#[actix::test]
async fn panics_past_the_restart_intensity_fail_the_system() {
    let launcher = InMemoryLauncher::new();
    let mut c = config(1);
    c.supervisor.max_restarts = 2;
    c.supervisor.max_window = Duration::from_secs(60);
    let sup = start(c, &launcher).await;
    for _ in 0..3 {
        sup.do_send(InjectCrash(CrashTarget::Registry));
        // Wait for the crash to be handled before the next one.
        let _ = sup.send(ToRegistry(List)).await;
    }
    let status = sup.send(GetStatus).await.unwrap();
    assert_eq!(status.health, SystemHealth::Failed);
    let err = exec(&sup, "echo", json!({}), None).await.unwrap_err();
    assert!(matches!(err, ActorError::SystemFailed(_)), "{err:?}");
}

#[actix::test]
async fn workers_that_cannot_start_fail_await_ready_with_the_cause() {
    let launcher = InMemoryLauncher::new().refuse_launch_when(|_| true);
    let sup = launch(config(2), &launcher);
    let err = sup
        .send(AwaitReady { min_ready: 1 })
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ActorError::Spawn(_)), "{err:?}");
    assert!(err.to_string().contains("refused"), "{err}");
}

#[actix::test]
async fn the_pool_serves_with_the_workers_that_started_and_says_why_the_others_did_not() {
    // Of four workers, every launch after the second fails (say, the process limit).
    let launcher = InMemoryLauncher::new().refuse_launch_when(|n| n >= 2);
    let sup = launch(config(4), &launcher);
    sup.send(AwaitReady { min_ready: 1 })
        .await
        .unwrap()
        .expect("two workers are enough to serve");
    assert_eq!(
        exec(&sup, "echo", json!(1), None).await.unwrap(),
        json!({"echo": 1})
    );
    wait_until("the failure is reported", || async {
        pool_status(&sup).await.last_start_error.is_some()
    })
    .await;
    let status = sup.send(GetStatus).await.unwrap();
    assert_eq!(status.health, SystemHealth::Degraded);
    let pool = status.pool.unwrap();
    assert_eq!(pool.ready, 2);
    assert!(
        pool.last_start_error
            .as_deref()
            .unwrap()
            .contains("refused"),
        "{:?}",
        pool.last_start_error
    );
    wait_until("the pool keeps trying", || async {
        launcher.launches() >= 5
    })
    .await;
}

#[actix::test]
async fn failed_health_ping_replaces_the_worker() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| {
        let health_ping = req.command == "ping" && req.args.get("initialization").is_none();
        if health_ping && worker_id.ends_with(".w1") {
            FakeAction::fail("RuntimeError", "sick")
        } else {
            default_action(worker_id, req)
        }
    });
    let sup = start(config(1), &launcher).await;
    sup.do_send(RunHealthCheck);
    wait_until("the unhealthy worker is replaced", || async {
        launcher.launches() == 2
    })
    .await;
    wait_full(&sup, 1).await;
    assert_eq!(
        exec(&sup, "echo", json!(5), None).await.unwrap(),
        json!({"echo": 5})
    );
}

#[actix::test]
async fn a_busy_worker_is_pinged_too_and_a_sequential_one_is_not() {
    for ping_when_busy in [true, false] {
        let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
            "slow" => FakeAction::delay(Duration::from_millis(300), FakeAction::Reply(json!(1))),
            _ => default_action(worker_id, req),
        });
        let mut c = config(1);
        c.worker.ping_when_busy = ping_when_busy;
        let sup = start(c, &launcher).await;
        let slow = send(&sup, |r| Execute::new(Call::new("slow", json!({})), r));
        wait_until("the worker is busy", || async {
            pool_status(&sup).await.in_flight == 1
        })
        .await;
        sup.do_send(RunHealthCheck);
        slow.await.unwrap().unwrap();
        let pings = launcher
            .commands_for("t.w1")
            .iter()
            .filter(|c| *c == "ping")
            .count();
        assert_eq!(
            pings,
            if ping_when_busy { 2 } else { 1 },
            "ping_when_busy = {ping_when_busy}"
        );
    }
}
