//! Layer-2 tests of the actor tree: the real Supervisor, PoolManager, SessionRegistry and
//! Workers speaking the real protocol to scripted in-memory workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dspex_actors::session::{End, List, Track};
use dspex_actors::supervisor::{
    AwaitReady, CrashTarget, Execute, GetStatus, InjectCrash, Shutdown, Supervisor, SystemHealth,
    ToRegistry,
};
use dspex_actors::testing::{default_action, FakeAction, InMemoryLauncher};
use dspex_actors::{ActorError, ActorsConfig, Affinity, TimeoutStage};
use serde_json::{json, Value};
use tokio::sync::oneshot;

fn config(size: usize) -> ActorsConfig {
    let mut c = ActorsConfig {
        name: "t".into(),
        ..Default::default()
    };
    c.pool.size = size;
    c.pool.startup_concurrency = size;
    c.pool.checkout_timeout = Duration::from_secs(5);
    c.pool.request_timeout = Duration::from_secs(5);
    c.pool.health_check_interval = Duration::ZERO;
    c.shutdown.graceful_timeout = Duration::from_secs(2);
    c.shutdown.kill_timeout = Duration::from_millis(200);
    c
}

async fn start(config: ActorsConfig, launcher: &InMemoryLauncher) -> Addr<Supervisor> {
    let size = config.pool.size;
    let sup = Supervisor::new(config.name.clone(), config, Arc::new(launcher.clone())).start();
    sup.send(AwaitReady { min_ready: size })
        .await
        .unwrap()
        .unwrap();
    sup
}

async fn exec(
    sup: &Addr<Supervisor>,
    command: &str,
    args: Value,
    session: Option<&str>,
) -> Result<Value, ActorError> {
    let (reply, rx) = oneshot::channel();
    sup.do_send(Execute {
        command: command.into(),
        args,
        session_id: session.map(Into::into),
        timeout: None,
        reply,
    });
    rx.await.expect("every request gets an answer")
}

/// Which worker answered: the fake echoes its id for `whoami`.
fn whoami_script(worker_id: &str, req: &dspex_actors::protocol::Request) -> FakeAction {
    match req.command.as_str() {
        "whoami" => FakeAction::Reply(json!({"worker": worker_id})),
        _ => default_action(worker_id, req),
    }
}

async fn whoami(sup: &Addr<Supervisor>, session: Option<&str>) -> String {
    let v = exec(sup, "whoami", json!({}), session).await.unwrap();
    v["worker"].as_str().unwrap().to_owned()
}

async fn wait_full(sup: &Addr<Supervisor>, size: usize) {
    tokio::time::timeout(
        Duration::from_secs(10),
        sup.send(AwaitReady { min_ready: size }),
    )
    .await
    .expect("pool refilled in time")
    .unwrap()
    .unwrap();
}

#[actix::test]
async fn pool_serves_a_request_and_reports_healthy() {
    let launcher = InMemoryLauncher::new();
    let sup = start(config(2), &launcher).await;
    let v = exec(&sup, "echo", json!({"x": 1}), None).await.unwrap();
    assert_eq!(v, json!({"echo": {"x": 1}}));
    let status = sup.send(GetStatus).await.unwrap();
    assert_eq!(status.health, SystemHealth::Healthy);
    let pool = status.pool.unwrap();
    assert_eq!((pool.size, pool.ready), (2, 2));
    assert_eq!(
        pool.workers.iter().map(|w| w.stats.requests).sum::<u64>(),
        1
    );
    assert!(pool
        .workers
        .iter()
        .all(|w| w.health.as_str() == "ready" && !w.busy));
}

#[actix::test]
async fn pool_worker_same_session_keeps_affinity_through_the_pool() {
    let launcher = InMemoryLauncher::with_script(whoami_script);
    let sup = start(config(3), &launcher).await;
    let first = whoami(&sup, Some("s1")).await;
    for _ in 0..5 {
        // Anonymous requests in between do not steal the binding.
        whoami(&sup, None).await;
        assert_eq!(whoami(&sup, Some("s1")).await, first);
    }
    let status = sup.send(GetStatus).await.unwrap().pool.unwrap();
    let bound = status.workers.iter().find(|w| w.id == first).unwrap();
    assert_eq!(bound.session.as_deref(), Some("s1"));
    assert_eq!(bound.stats.sessions_served, 1);
}

#[actix::test]
async fn crashed_worker_request_is_retried_on_another_worker_and_pool_refills() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        // Only the first worker ever started dies; any other answers.
        "fragile" if worker_id.ends_with(".w1") => FakeAction::Die,
        "fragile" => FakeAction::Reply(json!({"worker": worker_id})),
        _ => default_action(worker_id, req),
    });
    let mut c = config(2);
    c.pool.affinity = Affinity::Strict;
    let sup = start(c, &launcher).await;
    // Pin the request to w1 through affinity.
    let w = whoami_or_bind(&sup, &launcher).await;
    let v = exec(&sup, "fragile", json!({}), Some(&w)).await.unwrap();
    assert_ne!(v["worker"], json!(format!("{w}")));
    wait_full(&sup, 2).await;
    let pool = sup.send(GetStatus).await.unwrap().pool.unwrap();
    assert_eq!(pool.totals.retried, 1);
    assert_eq!(pool.totals.crashed, 1);
    assert_eq!(launcher.launches(), 3);
}

/// Bind a session named after worker w1 to w1 and return the session id.
async fn whoami_or_bind(sup: &Addr<Supervisor>, _launcher: &InMemoryLauncher) -> String {
    // With an idle pool, the first idle worker in id order is w1.
    let v = exec(sup, "echo", json!({}), Some("pinned")).await.unwrap();
    assert!(v.get("echo").is_some());
    "pinned".to_owned()
}

#[actix::test]
async fn request_failing_on_every_retry_ends_in_worker_crashed() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        "poison" => FakeAction::Die,
        _ => default_action(worker_id, req),
    });
    let sup = start(config(2), &launcher).await;
    let err = exec(&sup, "poison", json!({}), None).await.unwrap_err();
    assert!(matches!(err, ActorError::WorkerCrashed { .. }), "{err:?}");
    assert_eq!(err.kind(), "worker_crashed");
    wait_full(&sup, 2).await;
    assert_eq!(
        exec(&sup, "echo", json!(1), None).await.unwrap(),
        json!({"echo": 1})
    );
    let pool = sup.send(GetStatus).await.unwrap().pool.unwrap();
    assert_eq!(
        pool.totals.retried, 1,
        "retried once (pool.retry_on_crash = 1)"
    );
}

#[actix::test]
async fn hung_handler_times_out_at_request_stage_and_worker_is_replaced() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        "hang" => FakeAction::Hang,
        _ => default_action(worker_id, req),
    });
    let sup = start(config(1), &launcher).await;
    let (reply, rx) = oneshot::channel();
    let started = Instant::now();
    sup.do_send(Execute {
        command: "hang".into(),
        args: json!({}),
        session_id: None,
        timeout: Some(Duration::from_millis(200)),
        reply,
    });
    let err = rx.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ActorError::Timeout {
                stage: TimeoutStage::Request,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_full(&sup, 1).await;
    assert_eq!(launcher.launches(), 2, "the hung worker was replaced");
    assert_eq!(
        exec(&sup, "echo", json!(2), None).await.unwrap(),
        json!({"echo": 2})
    );
}

#[actix::test]
async fn garbage_frame_from_worker_is_a_protocol_error_and_the_worker_is_replaced() {
    for bytes in [
        b"\x00\x00\x00\x05nope!".to_vec(),    // not JSON
        b"\x00\x00\x00\x02\xff\xfe".to_vec(), // not UTF-8
        vec![0x7f, 0xff, 0xff, 0xff],         // oversized length
    ] {
        let bad = bytes.clone();
        let launcher =
            InMemoryLauncher::with_script(move |worker_id, req| match req.command.as_str() {
                "bad" => FakeAction::Raw(bad.clone()),
                _ => default_action(worker_id, req),
            });
        let mut c = config(1);
        c.worker.max_frame_bytes = 1024 * 1024;
        let sup = start(c, &launcher).await;
        let err = exec(&sup, "bad", json!({}), None).await.unwrap_err();
        assert_eq!(err.kind(), "protocol", "{bytes:?}: {err:?}");
        wait_full(&sup, 1).await;
        assert_eq!(
            exec(&sup, "echo", json!(3), None).await.unwrap(),
            json!({"echo": 3})
        );
        assert_eq!(launcher.launches(), 2);
    }
}

#[actix::test]
async fn truncated_frame_then_exit_is_a_protocol_error() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        // A header promising 100 bytes, 3 of them, then the worker dies.
        "cut" => FakeAction::Raw(b"\x00\x00\x00\x64abc".to_vec()),
        "cut2" => FakeAction::Die,
        _ => default_action(worker_id, req),
    });
    let sup = start(config(1), &launcher).await;
    let (reply, rx) = oneshot::channel();
    sup.do_send(Execute {
        command: "cut".into(),
        args: json!({}),
        session_id: None,
        timeout: Some(Duration::from_millis(300)),
        reply,
    });
    // The worker never finishes the frame: the request times out (the frame is
    // incomplete), and the worker is killed; either way the caller gets an answer and
    // the pool keeps serving.
    let err = rx.await.unwrap().unwrap_err();
    assert!(matches!(err.kind(), "timeout" | "protocol"), "{err:?}");
    wait_full(&sup, 1).await;
    assert_eq!(
        exec(&sup, "echo", json!(4), None).await.unwrap(),
        json!({"echo": 4})
    );
}

#[actix::test]
async fn full_queue_answers_pool_busy_and_waiting_past_checkout_timeout_times_out() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        "slow" => FakeAction::delay(Duration::from_millis(800), FakeAction::Reply(json!("done"))),
        _ => default_action(worker_id, req),
    });
    let mut c = config(1);
    c.pool.max_queue = 1;
    c.pool.checkout_timeout = Duration::from_millis(200);
    let sup = start(c, &launcher).await;
    let running = {
        let sup = sup.clone();
        actix::spawn(async move { exec(&sup, "slow", json!({}), None).await })
    };
    // Let the first request reach the worker before queueing behind it.
    while sup.send(GetStatus).await.unwrap().pool.unwrap().busy == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued = {
        let sup = sup.clone();
        actix::spawn(async move { exec(&sup, "echo", json!({}), None).await })
    };
    while sup.send(GetStatus).await.unwrap().pool.unwrap().queue_depth == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let busy = exec(&sup, "echo", json!({}), None).await.unwrap_err();
    assert!(
        matches!(busy, ActorError::PoolBusy { queued: 1 }),
        "{busy:?}"
    );
    let timed_out = queued.await.unwrap().unwrap_err();
    assert!(
        matches!(
            timed_out,
            ActorError::Timeout {
                stage: TimeoutStage::Checkout,
                ..
            }
        ),
        "{timed_out:?}"
    );
    assert_eq!(running.await.unwrap().unwrap(), json!("done"));
}

#[actix::test]
async fn session_end_tells_the_worker_that_served_it_to_clean_up() {
    let launcher = InMemoryLauncher::with_script(whoami_script);
    let sup = start(config(2), &launcher).await;
    let served_by = whoami(&sup, Some("s9")).await;
    sup.send(ToRegistry(End {
        session_id: "s9".into(),
    }))
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cleanups: Vec<_> = launcher
            .requests()
            .into_iter()
            .filter(|(_, r)| r.command == "cleanup_session")
            .collect();
        if !cleanups.is_empty() {
            assert_eq!(cleanups.len(), 1, "only the worker that served s9 is told");
            assert_eq!(cleanups[0].0, served_by);
            assert_eq!(cleanups[0].1.args["session_id"], "s9");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cleanup_session reached a worker"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = sup
        .send(ToRegistry(End {
            session_id: "s9".into(),
        }))
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), "session_not_found");
}

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
    assert_eq!(err.kind(), "system_failed", "{err:?}");
}

#[actix::test]
async fn graceful_shutdown_lets_running_and_queued_requests_finish() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        "slow" => FakeAction::delay(Duration::from_millis(200), FakeAction::Reply(json!("ok"))),
        _ => default_action(worker_id, req),
    });
    let sup = start(config(1), &launcher).await;
    let mut calls = Vec::new();
    for _ in 0..3 {
        let sup = sup.clone();
        calls.push(actix::spawn(async move {
            exec(&sup, "slow", json!({}), None).await
        }));
    }
    while sup.send(GetStatus).await.unwrap().pool.unwrap().queue_depth < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sup.send(Shutdown {
        graceful: Duration::from_secs(5),
    })
    .await
    .unwrap();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), json!("ok"));
    }
    let err = exec(&sup, "echo", json!({}), None).await.unwrap_err();
    assert_eq!(err.kind(), "shutting_down");
    assert!(launcher
        .commands_for("t.w1")
        .contains(&"shutdown".to_owned()));
}

#[actix::test]
async fn workers_that_cannot_start_fail_await_ready_with_the_cause() {
    let launcher = InMemoryLauncher::new().refuse_launch_when(|_| true);
    let sup = Supervisor::new("t".into(), config(2), Arc::new(launcher.clone())).start();
    let err = sup
        .send(AwaitReady { min_ready: 1 })
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), "environment", "{err:?}");
    assert!(err.to_string().contains("refused"), "{err}");
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
    sup.do_send(dspex_actors::supervisor::RunHealthCheck);
    let deadline = Instant::now() + Duration::from_secs(5);
    while launcher.launches() < 2 {
        assert!(Instant::now() < deadline, "unhealthy worker not replaced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_full(&sup, 1).await;
    assert_eq!(
        exec(&sup, "echo", json!(5), None).await.unwrap(),
        json!({"echo": 5})
    );
}

#[actix::test]
async fn shutdown_while_workers_are_still_starting_stops_them_and_never_serves() {
    // Handshakes take 300 ms; shut down before any answers.
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        "ping" => FakeAction::delay(Duration::from_millis(300), default_action(worker_id, req)),
        _ => default_action(worker_id, req),
    });
    let sup = Supervisor::new("t".into(), config(2), Arc::new(launcher.clone())).start();
    let (reply, rx) = oneshot::channel();
    sup.do_send(Execute {
        command: "echo".into(),
        args: json!({}),
        session_id: None,
        timeout: None,
        reply,
    });
    sup.send(Shutdown {
        graceful: Duration::from_millis(100),
    })
    .await
    .unwrap();
    let err = rx.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), "shutting_down", "{err:?}");
    let echoes = launcher
        .requests()
        .iter()
        .filter(|(_, r)| r.command == "echo")
        .count();
    assert_eq!(
        echoes, 0,
        "no request reached a worker that was shutting down"
    );
}
