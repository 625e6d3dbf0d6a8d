//! Pool-wide rate control of limited requests against a far end that refuses ("429")
//! above its own concurrency, or tells the pool when to come back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dspex_actors::protocol::WireError;

use crate::prelude::*;

/// What the dspex crate's classifier does with a bridge `RateLimited` error.
fn classify(error: &WireError) -> Disposition {
    match error.error_type.as_str() {
        "RateLimited" => Disposition::RateLimited {
            retry_after: error
                .details
                .get("retry_after")
                .and_then(Value::as_f64)
                .map(Duration::from_secs_f64),
        },
        _ => Disposition::WorkerFault,
    }
}

/// A far end that takes `delay` per call and refuses calls above `limit` at once.
#[derive(Clone, Default)]
struct Endpoint {
    accepted_until: Arc<Mutex<Vec<Instant>>>,
    refused: Arc<Mutex<u32>>,
    peak: Arc<Mutex<usize>>,
}

impl Endpoint {
    fn call(&self, limit: usize, delay: Duration, worker_id: &str, req: &Request) -> FakeAction {
        let now = Instant::now();
        let mut busy = self.accepted_until.lock().unwrap();
        busy.retain(|end| *end > now);
        if busy.len() >= limit {
            *self.refused.lock().unwrap() += 1;
            return FakeAction::fail("RateLimited", "429 Too Many Requests");
        }
        busy.push(now + delay);
        let mut peak = self.peak.lock().unwrap();
        *peak = (*peak).max(busy.len());
        FakeAction::delay(
            delay,
            FakeAction::Reply(json!({"worker": worker_id, "got": req.args})),
        )
    }
}

#[actix::test]
async fn refusals_above_the_far_ends_limit_lower_concurrency_and_no_request_fails() {
    let endpoint = Endpoint::default();
    let far = endpoint.clone();
    let launcher =
        InMemoryLauncher::with_script(move |worker_id, req| match req.command.as_str() {
            "lm" => far.call(4, Duration::from_millis(40), worker_id, req),
            _ => default_action(worker_id, req),
        });
    let mut c = config(2);
    c.pool.worker_concurrency = 8;
    c.rate.num_retries = 3;
    let sup = start_with(c, &launcher, classify).await;
    let answers: Vec<_> = (0..100)
        .map(|i| {
            send(&sup, |r| {
                Execute::new(Call::new("lm", json!({"i": i})).batch().limited(), r)
            })
        })
        .collect();
    for (i, answer) in answers.into_iter().enumerate() {
        let v = answer
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("row {i} failed: {e}"));
        assert_eq!(v["got"], json!({"i": i}));
    }
    let status = pool_status(&sup).await;
    let refused = *endpoint.refused.lock().unwrap();
    assert!(refused > 0, "the pool started above the far end's limit");
    assert_eq!(status.totals.throttled, u64::from(refused));
    assert!(
        status.rate.limit < 16,
        "the limit came down from the pool's capacity: {:?}",
        status.rate
    );
    assert_eq!(status.rate.in_flight, 0);
    assert!(*endpoint.peak.lock().unwrap() <= 4);
}

#[actix::test]
async fn a_request_refused_at_the_lowest_concurrency_fails_after_num_retries() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        "lm" => FakeAction::Fail {
            error_type: "RateLimited".into(),
            message: "429 Too Many Requests".into(),
        },
        _ => default_action(worker_id, req),
    });
    let mut c = config(1);
    c.rate.max_in_flight = 1;
    c.rate.num_retries = 2;
    let sup = start_with(c, &launcher, classify).await;
    let err = send(&sup, |r| {
        Execute::new(Call::new("lm", json!({})).batch().limited(), r)
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(&err, ActorError::Python { error_type, .. } if error_type == "RateLimited"),
        "{err:?}"
    );
    let attempts = launcher
        .requests()
        .iter()
        .filter(|(_, r)| r.command == "lm")
        .count();
    assert_eq!(attempts, 3, "one try and num_retries = 2 retries");
}

#[actix::test]
async fn retry_after_pauses_limited_dispatch_and_the_retry_succeeds() {
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let seen = Arc::clone(&arrivals);
    let launcher =
        InMemoryLauncher::with_script(move |worker_id, req| match req.command.as_str() {
            "lm" => {
                let mut seen = seen.lock().unwrap();
                seen.push(Instant::now());
                if seen.len() == 1 {
                    let mut error = WireError::new("RateLimited", "slow down");
                    error.details.insert("retry_after".into(), json!(0.3));
                    return FakeAction::Error(error);
                }
                FakeAction::Reply(json!("ok"))
            }
            _ => default_action(worker_id, req),
        });
    let sup = start_with(config(1), &launcher, classify).await;
    let v = send(&sup, |r| {
        Execute::new(Call::new("lm", json!({})).batch().limited(), r)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(v, json!("ok"));
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 2);
    assert!(
        arrivals[1] - arrivals[0] >= Duration::from_millis(300),
        "the retry came {:?} after the refusal, before its Retry-After",
        arrivals[1] - arrivals[0]
    );
}

#[actix::test]
async fn unlimited_requests_pass_a_closed_rate_limit() {
    let launcher = InMemoryLauncher::with_script(|worker_id, req| match req.command.as_str() {
        "lm" => FakeAction::delay(Duration::from_millis(500), FakeAction::Reply(json!("lm"))),
        _ => default_action(worker_id, req),
    });
    let mut c = config(1);
    c.pool.worker_concurrency = 4;
    c.rate.max_in_flight = 1;
    let sup = start_with(c, &launcher, classify).await;
    let slow = send(&sup, |r| {
        Execute::new(Call::new("lm", json!({})).batch().limited(), r)
    });
    let blocked = send(&sup, |r| {
        Execute::new(Call::new("lm", json!({})).batch().limited(), r)
    });
    wait_until("one limited request runs", || async {
        pool_status(&sup).await.rate.in_flight == 1
    })
    .await;
    let status = pool_status(&sup).await;
    assert_eq!((status.in_flight, status.queue_depth), (1, 1));
    assert_eq!(
        exec(&sup, "echo", json!(1), None).await.unwrap(),
        json!({"echo": 1}),
        "an unlimited request runs beside it"
    );
    assert_eq!(slow.await.unwrap().unwrap(), json!("lm"));
    assert_eq!(blocked.await.unwrap().unwrap(), json!("lm"));
}

#[actix::test]
async fn requests_per_minute_spaces_limited_requests_after_the_burst() {
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let seen = Arc::clone(&arrivals);
    let launcher =
        InMemoryLauncher::with_script(move |worker_id, req| match req.command.as_str() {
            "lm" => {
                seen.lock().unwrap().push(Instant::now());
                FakeAction::Reply(json!("ok"))
            }
            _ => default_action(worker_id, req),
        });
    let mut c = config(1);
    c.pool.worker_concurrency = 16;
    // One per second, a burst of ten.
    c.rate.requests_per_minute = 60;
    let sup = start_with(c, &launcher, classify).await;
    let answers: Vec<_> = (0..12)
        .map(|_| {
            send(&sup, |r| {
                Execute::new(Call::new("lm", json!({})).batch().limited(), r)
            })
        })
        .collect();
    for answer in answers {
        answer.await.unwrap().unwrap();
    }
    let arrivals = arrivals.lock().unwrap();
    assert!(
        arrivals[11] - arrivals[0] >= Duration::from_millis(1900),
        "two requests past the burst of ten came within {:?}",
        arrivals[11] - arrivals[0]
    );
}
