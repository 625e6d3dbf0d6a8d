//! Requests past `pool.request_timeout`: answered at once, their slot held until the
//! worker answers or is recycled; a worker with half its slots stuck is drained and
//! replaced. Also workers that break the protocol.

use std::time::{Duration, Instant};

use crate::prelude::*;

fn hang_script(worker_id: &str, req: &Request) -> FakeAction {
    match req.command.as_str() {
        "hang" => FakeAction::Hang,
        "late" => FakeAction::delay(Duration::from_millis(400), FakeAction::Reply(json!("late"))),
        _ => default_action(worker_id, req),
    }
}

fn with_timeout(
    command: &str,
    timeout: Duration,
) -> impl FnOnce(oneshot::Sender<Result<Value, ActorError>>) -> Execute + '_ {
    move |r| Execute::new(Call::new(command, json!({})).timeout(timeout), r)
}

fn is_request_timeout(err: &ActorError) -> bool {
    matches!(
        err,
        ActorError::Timeout {
            stage: TimeoutStage::Request,
            ..
        }
    )
}

#[actix::test]
async fn hung_request_on_a_one_slot_worker_times_out_and_the_worker_is_replaced() {
    let launcher = InMemoryLauncher::with_script(hang_script);
    let sup = start(config(1), &launcher).await;
    let started = Instant::now();
    let err = send(&sup, with_timeout("hang", Duration::from_millis(200)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(is_request_timeout(&err), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_until("the stuck worker is replaced", || async {
        launcher.launches() == 2
    })
    .await;
    wait_full(&sup, 1).await;
    assert_eq!(
        exec(&sup, "echo", json!(2), None).await.unwrap(),
        json!({"echo": 2})
    );
}

#[actix::test]
async fn a_timed_out_request_keeps_its_slot_and_half_the_slots_stuck_drain_the_worker() {
    let launcher = InMemoryLauncher::with_script(hang_script);
    let mut c = config(1);
    c.pool.worker_concurrency = 4;
    let sup = start(c, &launcher).await;
    let err = send(&sup, with_timeout("hang", Duration::from_millis(100)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(is_request_timeout(&err), "{err:?}");
    let status = pool_status(&sup).await;
    assert_eq!(
        (status.in_flight, status.workers[0].stuck, status.capacity),
        (1, 1, 4),
        "the slot stays taken"
    );
    // One stuck slot of four: the worker keeps serving.
    assert_eq!(
        exec(&sup, "echo", json!(1), None).await.unwrap(),
        json!({"echo": 1})
    );
    assert_eq!(launcher.launches(), 1);
    // A second stuck slot is half of four: drained, then replaced.
    let err = send(&sup, with_timeout("hang", Duration::from_millis(100)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(is_request_timeout(&err), "{err:?}");
    wait_until("the stuck worker is replaced", || async {
        launcher.launches() == 2
    })
    .await;
    wait_full(&sup, 1).await;
    let status = pool_status(&sup).await;
    assert_eq!(status.workers.len(), 1, "{:?}", status.workers);
    assert_eq!((status.in_flight, status.workers[0].stuck), (0, 0));
    assert_eq!(status.totals.replaced, 1);
}

#[actix::test]
async fn a_late_answer_frees_the_slot_and_is_dropped() {
    let launcher = InMemoryLauncher::with_script(hang_script);
    let mut c = config(1);
    c.pool.worker_concurrency = 4;
    let sup = start(c, &launcher).await;
    let err = send(&sup, with_timeout("late", Duration::from_millis(50)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(is_request_timeout(&err), "{err:?}");
    assert_eq!(pool_status(&sup).await.workers[0].stuck, 1);
    wait_until("the late answer frees the slot", || async {
        let s = pool_status(&sup).await;
        s.in_flight == 0 && s.workers[0].stuck == 0
    })
    .await;
    assert_eq!(launcher.launches(), 1);
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
        assert!(matches!(err, ActorError::Protocol(_)), "{bytes:?}: {err:?}");
        wait_full(&sup, 1).await;
        assert_eq!(
            exec(&sup, "echo", json!(3), None).await.unwrap(),
            json!({"echo": 3})
        );
        assert_eq!(launcher.launches(), 2);
    }
}

#[actix::test]
async fn truncated_frame_then_exit_is_answered_and_the_pool_keeps_serving() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        // A header promising 100 bytes, 3 of them.
        "cut" => FakeAction::Raw(b"\x00\x00\x00\x64abc".to_vec()),
        _ => default_action(worker_id, req),
    });
    let sup = start(config(1), &launcher).await;
    // The worker never finishes the frame: the request times out and the one-slot worker
    // is recycled; either way the caller gets an answer and the pool keeps serving.
    let err = send(&sup, with_timeout("cut", Duration::from_millis(300)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, ActorError::Timeout { .. } | ActorError::Protocol(_)),
        "{err:?}"
    );
    wait_until("the broken worker is replaced", || async {
        launcher.launches() == 2
    })
    .await;
    wait_full(&sup, 1).await;
    assert_eq!(
        exec(&sup, "echo", json!(4), None).await.unwrap(),
        json!({"echo": 4})
    );
}
