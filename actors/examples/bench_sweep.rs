//! Measures the SessionRegistry's TTL sweep against its budget (DESIGN.md "Budgets": a sweep
//! of 100 000 sessions takes < 50 ms and does not stall requests).
//!
//! Run with `cargo run --release -p dspex-actors --example bench_sweep`. It times the bare
//! [`SessionTable::sweep`] with none, half and all of the sessions stale, then a `Sweep`
//! message through a running registry, and prints the results. It measures; it asserts
//! nothing, because timings depend on the machine.

use std::time::{Duration, Instant};

use actix::prelude::*;
use dspex_actors::session::{
    RegistryStopped, SessionRegistry, SessionTable, SessionsEnded, Sweep, Track,
};
use dspex_actors::SessionConfig;

const SESSIONS: usize = 100_000;
const BUDGET: Duration = Duration::from_millis(50);
const ROUNDS: usize = 5;

/// Builds a table of `SESSIONS` sessions where every `stale_every`-th one (0 = none) was
/// last active at `t0` and the rest at `t0 + 10 s`.
fn build(t0: Instant, stale_every: usize) -> SessionTable {
    let mut table = SessionTable::default();
    let later = t0 + Duration::from_secs(10);
    for i in 0..SESSIONS {
        let id = format!("session-{i:06}");
        table.track(&id, t0, 0).expect("no limit");
        let stale = stale_every != 0 && i % stale_every == 0;
        if !stale {
            table.touch(&id, later, false, 0).expect("just tracked");
        }
    }
    table
}

fn report(label: &str, removed: usize, times: &[Duration]) {
    let best = times.iter().min().copied().unwrap_or_default();
    let worst = times.iter().max().copied().unwrap_or_default();
    let verdict = if worst < BUDGET { "within" } else { "OVER" };
    println!(
        "{label:<34} removed {removed:>6}   best {best:>10.3?}   worst {worst:>10.3?}   \
         ({verdict} the {BUDGET:?} budget)"
    );
}

fn bench_table() {
    let t0 = Instant::now();
    // Sweep at t0 + 15 s with a 10 s TTL: only sessions last active at t0 are stale.
    let at = t0 + Duration::from_secs(15);
    let ttl = Duration::from_secs(10);
    for (label, stale_every) in [
        ("table sweep, none stale", 0),
        ("table sweep, half stale", 2),
        ("table sweep, all stale", 1),
    ] {
        let mut times = Vec::with_capacity(ROUNDS);
        let mut removed = 0;
        for _ in 0..ROUNDS {
            let mut table = build(t0, stale_every);
            let started = Instant::now();
            let ids = table.sweep(at, ttl);
            times.push(started.elapsed());
            // Freeing the returned ids is the receiver's cost, not the sweep's.
            removed = ids.len();
        }
        report(label, removed, &times);
    }
}

/// Swallows the registry's events; the benchmark only needs somewhere to send them.
struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<SessionsEnded> for Sink {
    type Result = ();
    fn handle(&mut self, _: SessionsEnded, _: &mut Context<Self>) {}
}

impl Handler<RegistryStopped> for Sink {
    type Result = ();
    fn handle(&mut self, _: RegistryStopped, _: &mut Context<Self>) {}
}

/// A `Sweep` round trip through a live registry whose sessions are all stale. Besides the
/// sweep it includes copying the removed ids, once for the reply and once for the
/// `SessionsEnded` event (the interval sweep, which nobody awaits, skips that copy).
fn bench_actor() {
    System::new().block_on(async {
        let sink = Sink.start();
        let config = SessionConfig {
            ttl: Duration::from_millis(1),
            cleanup_interval: Duration::ZERO,
            max_sessions: 0,
        };
        let mut times = Vec::with_capacity(ROUNDS);
        let mut removed = 0;
        for _ in 0..ROUNDS {
            let registry = SessionRegistry::new(
                config.clone(),
                build(Instant::now(), 1),
                sink.clone().recipient(),
                sink.clone().recipient(),
            )
            .start();
            // One round trip first so the registry has started before the clock runs, and
            // so every session is idle past the 1 ms TTL by the time the sweep arrives.
            registry
                .send(Track {
                    session_id: "warm-up".into(),
                })
                .await
                .expect("registry alive")
                .expect("no limit");
            std::thread::sleep(Duration::from_millis(5));
            let started = Instant::now();
            let ids = registry.send(Sweep).await.expect("registry alive");
            times.push(started.elapsed());
            removed = ids.len();
        }
        report("Sweep message, all stale", removed, &times);
    });
}

fn main() {
    println!("sweeping {SESSIONS} sessions, {ROUNDS} rounds each");
    bench_table();
    bench_actor();
}
