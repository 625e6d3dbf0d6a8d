//! Graceful shutdown: running and queued requests finish, new ones are refused, every
//! worker is stopped.

use std::time::Duration;

use dspex_actors::ShutdownSystem;

use crate::prelude::*;

#[actix::test]
async fn graceful_shutdown_lets_running_and_queued_requests_finish() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        "slow" => FakeAction::delay(Duration::from_millis(200), FakeAction::Reply(json!("ok"))),
        _ => default_action(worker_id, req),
    });
    let sup = start(config(1), &launcher).await;
    let calls: Vec<_> = (0..3)
        .map(|_| send(&sup, |r| Execute::new(Call::new("slow", json!({})), r)))
        .collect();
    wait_until("two requests wait", || async {
        pool_status(&sup).await.queue_depth == 2
    })
    .await;
    sup.send(ShutdownSystem {
        graceful: Duration::from_secs(5),
    })
    .await
    .unwrap();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), json!("ok"));
    }
    let err = exec(&sup, "echo", json!({}), None).await.unwrap_err();
    assert!(matches!(err, ActorError::ShuttingDown));
    assert!(launcher
        .commands_for("t.w1")
        .contains(&"shutdown".to_owned()));
}

#[actix::test]
async fn shutdown_does_not_wait_for_stuck_requests() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        "hang" => FakeAction::Hang,
        _ => default_action(worker_id, req),
    });
    let mut c = config(1);
    c.pool.worker_concurrency = 4;
    c.shutdown.graceful_timeout = Duration::from_secs(30);
    let sup = start(c, &launcher).await;
    let err = send(&sup, |r| {
        Execute::new(
            Call::new("hang", json!({})).timeout(Duration::from_millis(50)),
            r,
        )
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, ActorError::Timeout { .. }), "{err:?}");
    // The stuck request will never finish; the pool must not wait the graceful window.
    tokio::time::timeout(
        Duration::from_secs(5),
        sup.send(ShutdownSystem {
            graceful: Duration::from_secs(30),
        }),
    )
    .await
    .expect("shutdown did not wait for a stuck request")
    .unwrap();
}

#[actix::test]
async fn shutdown_while_workers_are_still_starting_stops_them_and_never_serves() {
    // Handshakes take 300 ms; shut down before any answers.
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        "ping" => FakeAction::delay(Duration::from_millis(300), default_action(worker_id, req)),
        _ => default_action(worker_id, req),
    });
    let sup = launch(config(2), &launcher);
    let answer = send(&sup, |r| Execute::new(Call::new("echo", json!({})), r));
    sup.send(ShutdownSystem {
        graceful: Duration::from_millis(100),
    })
    .await
    .unwrap();
    let err = answer.await.unwrap().unwrap_err();
    assert!(matches!(err, ActorError::ShuttingDown), "{err:?}");
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
