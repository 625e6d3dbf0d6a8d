//! Pool overhead benchmark (DESIGN.md "Budgets"): `ping` throughput through a 2-worker
//! dspex pool, next to a bare pipe loop driving the same bridge processes directly (no
//! actors), measured in the same run. `benches/ping_processpool.py` is the Python
//! `ProcessPoolExecutor(2)` baseline on the same trivial task.
//!
//! `cargo run --release --example bench_ping -- [PINGS]` (default 20000).

use std::time::{Duration, Instant};

use dspex::config::PythonExecutable;
use dspex::python_env;
use dspex::{Config, System};
use dspex_actors::protocol::{FrameCodec, Request, Response};
use dspex_actors::{spawn_process, LaunchSpec};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_util::codec::{FramedRead, FramedWrite};

const WORKERS: usize = 2;

fn config() -> Config {
    let mut config = Config::default();
    config.python.executable = PythonExecutable::Path("python3".into());
    config.pool.size = WORKERS;
    config.pool.startup_concurrency = WORKERS;
    config
}

async fn bench_pool(pings: usize) -> Duration {
    let system = System::builder(config())
        .require_dspy(false)
        .wait_ready(WORKERS)
        .start()
        .await
        .unwrap();
    // Warm up.
    for _ in 0..100 {
        system.call("ping", json!({})).await.unwrap();
    }
    // ProcessPoolExecutor gets every task submitted at once; give the pool enough
    // concurrent callers to fill its slots (2 workers x 8) and keep them full.
    let callers = 64;
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let system = system.clone();
            tokio::spawn(async move {
                for _ in 0..pings / callers {
                    system.call("ping", json!({})).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    system.shutdown(Duration::from_secs(5)).await.unwrap();
    elapsed
}

async fn bare_loop(spec: LaunchSpec, id: String, pings: usize) {
    let conn = spawn_process(&spec, &id).unwrap();
    let mut tx = FramedWrite::new(conn.writer, FrameCodec::<Response, Request>::new(64 << 20));
    let mut rx = FramedRead::new(conn.reader, FrameCodec::<Response, Request>::new(64 << 20));
    let mut child = conn.process.unwrap();
    for i in 0..pings as u64 {
        tx.send(Request::new(i, "ping", json!({}))).await.unwrap();
        let response = rx.next().await.unwrap().unwrap();
        assert_eq!(response.id(), i);
    }
    drop(tx);
    child
        .terminate(Duration::from_secs(2), Duration::from_secs(1))
        .await;
}

async fn bench_bare(pings: usize) -> Duration {
    let config = config();
    let env =
        python_env::ensure(&dspex::launch::python_setup(&config, false), &mut |_| {}).unwrap();
    let spec = dspex::launch::launch_spec(&config, &env, false).unwrap();
    // The clock includes starting the two processes (tens of ms), which slightly favours
    // the pool in the ratio; the pool's start-up is outside its clock.
    let started = Instant::now();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            let spec = spec.clone();
            tokio::task::spawn_local(bare_loop(spec, format!("bare{w}"), pings / WORKERS))
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

fn main() {
    let pings: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let (pool, bare) = local.block_on(&runtime, async {
        let bare = bench_bare(pings).await;
        let pool = bench_pool(pings).await;
        (pool, bare)
    });
    let rate = |d: Duration| pings as f64 / d.as_secs_f64();
    println!("pings: {pings}, workers: {WORKERS}");
    println!(
        "bare pipe loop : {:>9.0} pings/s ({:?}, includes spawning the 2 processes)",
        rate(bare),
        bare
    );
    println!("dspex pool     : {:>9.0} pings/s ({:?})", rate(pool), pool);
    println!("pool / bare    : {:.2}", rate(pool) / rate(bare));
}
