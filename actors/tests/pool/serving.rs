//! Serving requests: answers, affinity, the bounded queue and its deadlines, batch
//! requests, session clean-up, events, oversized requests.

use std::time::Duration;

use dspex_actors::session::End;
use dspex_actors::ToRegistry;

use crate::prelude::*;

#[actix::test]
async fn pool_serves_a_request_and_reports_healthy() {
    let launcher = InMemoryLauncher::new();
    let sup = start(config(2), &launcher).await;
    let v = exec(&sup, "echo", json!({"x": 1}), None).await.unwrap();
    assert_eq!(v, json!({"echo": {"x": 1}}));
    let status = sup.send(GetStatus).await.unwrap();
    assert_eq!(status.health, SystemHealth::Healthy);
    let pool = status.pool.unwrap();
    assert_eq!((pool.size, pool.ready, pool.capacity), (2, 2, 2));
    assert_eq!(
        pool.workers.iter().map(|w| w.stats.requests).sum::<u64>(),
        1
    );
    assert!(pool
        .workers
        .iter()
        .all(|w| w.health.as_str() == "ready" && !w.busy && w.in_flight == 0));
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
    let status = pool_status(&sup).await;
    let bound = status.workers.iter().find(|w| w.id == first).unwrap();
    assert_eq!(bound.session.as_deref(), Some("s1"));
    assert_eq!(bound.stats.sessions_served, 1);
}

fn slow_script(worker_id: &str, req: &Request) -> FakeAction {
    match req.command.as_str() {
        "slow" => FakeAction::delay(Duration::from_millis(800), FakeAction::Reply(json!("done"))),
        _ => default_action(worker_id, req),
    }
}

#[actix::test]
async fn full_queue_answers_pool_busy_and_waiting_past_checkout_timeout_times_out() {
    let launcher = InMemoryLauncher::with_script(slow_script);
    let mut c = config(1);
    c.pool.max_queue = 1;
    c.pool.checkout_timeout = Duration::from_millis(200);
    let sup = start(c, &launcher).await;
    let running = send(&sup, |r| Execute::new(Call::new("slow", json!({})), r));
    wait_until("the slow request runs", || async {
        pool_status(&sup).await.in_flight == 1
    })
    .await;
    let queued = send(&sup, |r| Execute::new(Call::new("echo", json!({})), r));
    wait_until("one request waits", || async {
        pool_status(&sup).await.queue_depth == 1
    })
    .await;
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
async fn batch_requests_wait_past_checkout_timeout_and_beyond_max_queue() {
    let launcher = InMemoryLauncher::with_script(slow_script);
    let mut c = config(1);
    c.pool.max_queue = 0;
    c.pool.checkout_timeout = Duration::from_millis(100);
    let sup = start(c, &launcher).await;
    let answers: Vec<_> = (0..3)
        .map(|_| {
            send(&sup, |r| {
                Execute::new(Call::new("slow", json!({})).batch(), r)
            })
        })
        .collect();
    for answer in answers {
        assert_eq!(answer.await.unwrap().unwrap(), json!("done"));
    }
    let totals = pool_status(&sup).await.totals;
    assert_eq!((totals.checkout_timeouts, totals.rejected_busy), (0, 0));
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
    wait_until("cleanup_session reaches a worker", || async {
        launcher
            .requests()
            .iter()
            .any(|(_, r)| r.command == "cleanup_session")
    })
    .await;
    let cleanups: Vec<_> = launcher
        .requests()
        .into_iter()
        .filter(|(_, r)| r.command == "cleanup_session")
        .collect();
    assert_eq!(cleanups.len(), 1, "only the worker that served s9 is told");
    assert_eq!(cleanups[0].0, served_by);
    assert_eq!(cleanups[0].1.args["session_id"], "s9");
    let err = sup
        .send(ToRegistry(End {
            session_id: "s9".into(),
        }))
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ActorError::SessionNotFound(_)));
}

#[actix::test]
async fn a_request_carries_its_session_id_and_the_callers_args_unchanged() {
    let launcher = InMemoryLauncher::new();
    let sup = start(config(1), &launcher).await;
    exec(&sup, "echo", json!({"a": [1, 2]}), Some("s1"))
        .await
        .unwrap();
    exec(&sup, "echo", json!({"session_id": "explicit"}), Some("s1"))
        .await
        .unwrap();
    let echoes: Vec<Value> = launcher
        .requests()
        .into_iter()
        .filter(|(_, r)| r.command == "echo")
        .map(|(_, r)| r.args)
        .collect();
    assert_eq!(
        echoes,
        [
            json!({"a": [1, 2], "session_id": "s1"}),
            json!({"session_id": "explicit"})
        ]
    );
}

#[actix::test]
async fn events_a_worker_reports_reach_the_caller_before_the_answer() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        "work" => FakeAction::emit(
            json!({"kind": "progress", "n": 1}),
            FakeAction::emit(
                json!({"kind": "progress", "n": 2}),
                FakeAction::Reply(json!("done")),
            ),
        ),
        _ => default_action(worker_id, req),
    });
    let sup = start(config(1), &launcher).await;
    let (events, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let answer = send(&sup, |r| {
        Execute::new(Call::new("work", json!({})).events(events), r)
    });
    assert_eq!(answer.await.unwrap().unwrap(), json!("done"));
    let mut got = Vec::new();
    while let Ok(event) = seen.try_recv() {
        got.push(event["n"].clone());
    }
    assert_eq!(got, [json!(1), json!(2)]);
}

#[actix::test]
async fn a_request_over_the_frame_limit_fails_alone_and_the_worker_stays() {
    let launcher = InMemoryLauncher::new();
    let mut c = config(1);
    c.worker.max_frame_bytes = 4096;
    let sup = start(c, &launcher).await;
    let err = exec(&sup, "echo", json!({"blob": "x".repeat(10_000)}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ActorError::RequestTooLarge { limit: 4096, bytes } if bytes > 10_000),
        "{err:?}"
    );
    assert_eq!(
        exec(&sup, "echo", json!(1), None).await.unwrap(),
        json!({"echo": 1})
    );
    assert_eq!(launcher.launches(), 1, "the worker was kept");
    assert_eq!(pool_status(&sup).await.in_flight, 0, "its slot was freed");
}
