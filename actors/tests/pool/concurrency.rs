//! Many requests in flight per worker: capacity, least-loaded dispatch, no more than the
//! slots there are.

use std::time::Duration;

use crate::prelude::*;

fn slow(worker_id: &str, req: &Request) -> FakeAction {
    match req.command.as_str() {
        "slow" => FakeAction::delay(
            Duration::from_millis(300),
            FakeAction::Reply(json!({"worker": worker_id, "args": req.args})),
        ),
        _ => default_action(worker_id, req),
    }
}

#[actix::test]
async fn one_worker_runs_as_many_requests_at_once_as_it_has_slots_and_no_more() {
    let launcher = InMemoryLauncher::with_script(slow);
    let mut c = config(1);
    c.pool.worker_concurrency = 4;
    let sup = start(c, &launcher).await;
    let answers: Vec<_> = (0..10)
        .map(|i| {
            send(&sup, |r| {
                Execute::new(Call::new("slow", json!({"i": i})).batch(), r)
            })
        })
        .collect();
    wait_until("four requests run at once", || async {
        pool_status(&sup).await.in_flight == 4
    })
    .await;
    let status = pool_status(&sup).await;
    assert_eq!((status.capacity, status.queue_depth), (4, 6));
    assert_eq!(status.workers[0].in_flight, 4);
    for (i, answer) in answers.into_iter().enumerate() {
        let v = answer.await.unwrap().unwrap();
        assert_eq!(
            v["args"],
            json!({"i": i}),
            "each caller gets its own answer"
        );
    }
    assert_eq!(
        launcher.peak_in_flight(),
        4,
        "never more than the worker's slots"
    );
}

#[actix::test]
async fn requests_spread_over_workers_by_load() {
    let launcher = InMemoryLauncher::with_script(slow);
    let mut c = config(3);
    c.pool.worker_concurrency = 2;
    let sup = start(c, &launcher).await;
    let answers: Vec<_> = (0..6)
        .map(|i| {
            send(&sup, |r| {
                Execute::new(Call::new("slow", json!({"i": i})).batch(), r)
            })
        })
        .collect();
    let mut per_worker = std::collections::BTreeMap::<String, usize>::new();
    for answer in answers {
        let v = answer.await.unwrap().unwrap();
        *per_worker
            .entry(v["worker"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        per_worker.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "six requests over three workers of two slots: two each ({per_worker:?})"
    );
}

#[actix::test]
async fn strict_affinity_waits_for_a_slot_on_its_worker() {
    let launcher = InMemoryLauncher::with_script(slow);
    let mut c = config(2);
    c.pool.worker_concurrency = 2;
    c.pool.affinity = Affinity::Strict;
    let sup = start(c, &launcher).await;
    let answers: Vec<_> = (0..4)
        .map(|i| {
            send(&sup, |r| {
                Execute::new(Call::new("slow", json!({"i": i})).session("s"), r)
            })
        })
        .collect();
    let mut workers = Vec::new();
    for answer in answers {
        workers.push(answer.await.unwrap().unwrap()["worker"].clone());
    }
    assert!(
        workers.iter().all(|w| *w == workers[0]),
        "every request of the session ran on its worker: {workers:?}"
    );
}
