//! A worker that dies with requests in flight: every one of them runs again elsewhere,
//! with exactly the command and arguments its caller sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::prelude::*;

#[actix::test]
async fn every_request_a_dead_worker_held_is_retried_with_its_own_args() {
    // The first worker holds requests until it has four, then dies with all of them.
    let died = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&died);
    let launcher =
        InMemoryLauncher::with_script(move |worker_id, req| match req.command.as_str() {
            "work" if worker_id.ends_with(".w1") && req.args["i"] == 3 => {
                flag.store(true, Ordering::SeqCst);
                FakeAction::Die
            }
            "work" if worker_id.ends_with(".w1") => FakeAction::Hang,
            "work" => FakeAction::Reply(json!({"worker": worker_id, "got": req.args})),
            _ => default_action(worker_id, req),
        });
    let mut c = config(1);
    c.pool.worker_concurrency = 4;
    let sup = start(c, &launcher).await;
    let sent: Vec<Value> = (0..4)
        .map(|i| json!({"i": i, "payload": format!("row-{i}"), "nested": {"list": [i, i + 1]}}))
        .collect();
    let answers: Vec<_> = sent
        .iter()
        .map(|args| {
            send(&sup, |r| {
                Execute::new(Call::new("work", args.clone()).batch(), r)
            })
        })
        .collect();
    for (args, answer) in sent.iter().zip(answers) {
        let v = answer.await.unwrap().unwrap();
        assert_eq!(&v["got"], args, "the retry carried the original args");
        assert!(v["worker"].as_str().unwrap().ends_with(".w2"));
    }
    assert!(died.load(Ordering::SeqCst));
    // What reached the second worker is exactly what reached the first.
    let by_worker = |suffix: &str| -> Vec<Value> {
        let mut args: Vec<Value> = launcher
            .requests()
            .into_iter()
            .filter(|(w, r)| w.ends_with(suffix) && r.command == "work")
            .map(|(_, r)| r.args)
            .collect();
        args.sort_by_key(|a| a["i"].as_i64());
        args
    };
    assert_eq!(by_worker(".w1"), sent);
    assert_eq!(by_worker(".w2"), sent);
    let totals = pool_status(&sup).await.totals;
    assert_eq!((totals.crashed, totals.retried), (1, 4));
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
    // With an idle pool the least-loaded worker first in id order is w1: bind to it.
    assert_eq!(whoami_bind(&sup).await, "t.w1");
    let v = exec(&sup, "fragile", json!({}), Some("pinned"))
        .await
        .unwrap();
    assert_ne!(v["worker"], json!("t.w1"));
    wait_full(&sup, 2).await;
    let pool = pool_status(&sup).await;
    assert_eq!((pool.totals.retried, pool.totals.crashed), (1, 1));
    assert_eq!(launcher.launches(), 3);
}

async fn whoami_bind(sup: &actix::Addr<Supervisor>) -> String {
    exec(sup, "echo", json!({}), Some("pinned")).await.unwrap();
    let status = pool_status(sup).await;
    status
        .workers
        .iter()
        .find(|w| w.session.as_deref() == Some("pinned"))
        .unwrap()
        .id
        .clone()
}

#[actix::test]
async fn request_failing_on_every_retry_ends_in_worker_crashed_with_the_output() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        "poison" => FakeAction::print(
            dspex_actors::LogStream::Stderr,
            "Fatal Python error: Segmentation fault",
            FakeAction::delay(Duration::from_millis(50), FakeAction::Die),
        ),
        _ => default_action(worker_id, req),
    });
    let sup = start(config(2), &launcher).await;
    let err = exec(&sup, "poison", json!({}), None).await.unwrap_err();
    let ActorError::WorkerCrashed {
        last_output,
        out_of_memory,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert!(!out_of_memory);
    assert!(
        last_output.contains("Segmentation fault"),
        "the crash report carries the worker's last output: {last_output:?}"
    );
    wait_full(&sup, 2).await;
    assert_eq!(
        exec(&sup, "echo", json!(1), None).await.unwrap(),
        json!({"echo": 1})
    );
    assert_eq!(
        pool_status(&sup).await.totals.retried,
        1,
        "retried once (pool.retry_on_crash = 1)"
    );
}

#[actix::test]
async fn a_frozen_worker_fails_its_health_ping_and_its_requests_run_elsewhere() {
    // Like SIGSTOP: w1 stops answering anything once it gets `work`.
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        "work" if worker_id.ends_with(".w1") => FakeAction::Freeze,
        "work" => FakeAction::Reply(json!({"worker": worker_id, "got": req.args})),
        _ => default_action(worker_id, req),
    });
    let mut c = config(2);
    c.pool.worker_concurrency = 2;
    c.pool.health_check_interval = Duration::from_millis(100);
    c.pool.request_timeout = Duration::from_secs(30);
    let sup = start(c, &launcher).await;
    exec(&sup, "echo", json!({}), Some("pin")).await.unwrap();
    let answer = send(&sup, |r| {
        Execute::new(Call::new("work", json!({"n": 7})).session("pin").batch(), r)
    });
    let v = tokio::time::timeout(PATIENCE, answer)
        .await
        .expect("answered well before the request timeout")
        .unwrap()
        .unwrap();
    assert_eq!(v["got"], json!({"n": 7, "session_id": "pin"}));
    assert_ne!(v["worker"], json!("t.w1"));
}
