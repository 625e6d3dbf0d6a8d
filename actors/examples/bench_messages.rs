//! How long the Supervisor, PoolManager and SessionRegistry take per message (DESIGN.md
//! "Budgets": microseconds). Round trips through the real actors on one actix system, with
//! in-memory workers so no process time is counted.
//!
//! `cargo run --release -p dspex-actors --example bench_messages`

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dspex_actors::session::{Metrics, Touch, Track};
use dspex_actors::testing::InMemoryLauncher;
use dspex_actors::ActorsConfig;
use dspex_actors::{AwaitReady, Call, Execute, GetStatus, Supervisor, ToRegistry, WorkerFaults};
use serde_json::json;
use tokio::sync::oneshot;

fn per_op(label: &str, n: u32, elapsed: Duration) {
    println!(
        "{label:<46} {:>8.2} µs/op ({n} ops)",
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
}

fn main() {
    actix::System::new().block_on(async {
        let mut config = ActorsConfig::default();
        config.pool.size = 2;
        config.pool.health_check_interval = Duration::ZERO;
        let sup = Supervisor::new(
            "bench".into(),
            config,
            Arc::new(InMemoryLauncher::new()),
            WorkerFaults,
        )
        .start();
        sup.send(AwaitReady { min_ready: 2 })
            .await
            .unwrap()
            .unwrap();
        let n = 20_000;

        let t = Instant::now();
        for _ in 0..n {
            sup.send(ToRegistry(Metrics)).await.unwrap().unwrap();
        }
        per_op("Supervisor → SessionRegistry (Metrics)", n, t.elapsed());

        sup.send(ToRegistry(Track {
            session_id: "s".into(),
        }))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        let t = Instant::now();
        for _ in 0..n {
            sup.send(ToRegistry(Touch {
                session_id: "s".into(),
                create: false,
            }))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        }
        per_op("Supervisor → SessionRegistry (Touch)", n, t.elapsed());

        let t = Instant::now();
        for _ in 0..n / 10 {
            sup.send(GetStatus).await.unwrap();
        }
        per_op(
            "Supervisor → PoolManager + Registry (GetStatus)",
            n / 10,
            t.elapsed(),
        );

        let t = Instant::now();
        for _ in 0..n {
            let (reply, rx) = oneshot::channel();
            sup.do_send(Execute::new(Call::new("echo", json!({})), reply));
            rx.await.unwrap().unwrap();
        }
        per_op(
            "Execute echo: Supervisor→Pool→Worker→fake→caller",
            n,
            t.elapsed(),
        );
        System::current().stop();
    });
}
