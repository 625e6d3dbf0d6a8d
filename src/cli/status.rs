//! `dspex status`: what a system built from this configuration looks like once it is up.
//!
//! It starts its own system (there is no daemon to ask), waits until every worker is
//! ready, prints one snapshot and shuts down. That answers "does my configuration give
//! me N healthy workers, and what does each cost in memory".

use std::fmt::Write as _;

use clap::Args;
use dspex::SystemStatus;

use super::{CliError, ConfigArgs, Outcome};

pub const HELP: &str = "\
Examples:
  dspex status
  dspex status --json | jq '.pool.ready'
  DSPEX_POOL__SIZE=4 dspex status

Starts workers from the configuration, waits until pool.size of them are ready, prints
system health, the pool's slots and LM rate control, each worker (id, pid, health,
requests in flight of its slots, requests, errors, RSS), sessions, pool metrics and LM
usage per model, then shuts the workers down.";

/// Flags of `dspex status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the full status as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

pub async fn status(args: StatusArgs) -> Result<Outcome, CliError> {
    let config = args.config.load(&[])?;
    let system = super::start_system(&config, true, config.pool.size).await?;
    let snapshot = system.status().await;
    let sessions = system.sessions().await;
    let usage = system.usage();
    let _ = system.shutdown(config.shutdown.graceful_timeout).await;
    let snapshot = snapshot?;
    if args.json {
        // The system's status, and the LM usage of this system per model.
        let mut value = serde_json::to_value(&snapshot)
            .map_err(|e| CliError::Usage(format!("cannot serialise the status: {e}")))?;
        value["usage"] = serde_json::to_value(&usage).unwrap_or_default();
        let text = serde_json::to_string_pretty(&value)
            .map_err(|e| CliError::Usage(format!("cannot serialise the status: {e}")))?;
        super::print(text)?;
    } else {
        let session_ids: Vec<String> = sessions
            .map(|list| list.into_iter().map(|s| s.id).collect())
            .unwrap_or_default();
        let mut text = render(&snapshot, &session_ids);
        text.push_str(&render_usage(&usage));
        super::print(text.trim_end_matches('\n'))?;
    }
    Ok(Outcome::Success)
}

/// The human-readable report.
fn render(status: &SystemStatus, session_ids: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "system {}: {}", status.name, status.health);
    if let Some(failure) = &status.failure {
        let _ = writeln!(out, "failure: {failure}");
    }
    if let Some(pool) = &status.pool {
        let _ = writeln!(
            out,
            "pool: {} of {} workers ready, {} starting; {} of {} slots in flight, {} queued",
            pool.ready, pool.size, pool.starting, pool.in_flight, pool.capacity, pool.queue_depth
        );
        let r = &pool.rate;
        let _ = writeln!(
            out,
            "lm rate control: {} of {} LM calls allowed at once, {} in flight, {} refused (429){}{}",
            r.limit,
            r.max,
            r.in_flight,
            r.throttled,
            r.requests_per_minute
                .map(|n| format!(", at most {n} per minute"))
                .unwrap_or_default(),
            if r.paused_ms > 0 {
                format!(", paused {} ms (Retry-After)", r.paused_ms)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "  {:<28} {:>8}  {:<9} {:>9} {:>8} {:>6} {:>10}",
            "WORKER", "PID", "HEALTH", "IN FLIGHT", "REQUESTS", "ERRORS", "RSS"
        );
        for w in &pool.workers {
            let pid = w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            let rss = w.rss_bytes.map(mib).unwrap_or_else(|| "-".into());
            let slots = format!("{}/{}", w.in_flight, w.capacity);
            let _ = writeln!(
                out,
                "  {:<28} {:>8}  {:<9} {:>9} {:>8} {:>6} {:>10}",
                w.id,
                pid,
                w.health.as_str(),
                slots,
                w.stats.requests,
                w.stats.errors,
                rss
            );
        }
        let t = &pool.totals;
        let _ = writeln!(
            out,
            "metrics: {} submitted, {} completed, {} retried, {} crashed, {} workers started, \
             {} start failures, {} replaced, {} checkout timeouts, {} rejected busy",
            t.submitted,
            t.completed,
            t.retried,
            t.crashed,
            t.started,
            t.start_failures,
            t.replaced,
            t.checkout_timeouts,
            t.rejected_busy
        );
        let l = &pool.latency;
        let _ = writeln!(
            out,
            "latency: {} samples, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l.samples, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        );
        if let Some(error) = &pool.last_start_error {
            let _ = writeln!(out, "last start error: {error}");
        }
    }
    if let Some(s) = &status.sessions {
        let _ = writeln!(
            out,
            "sessions: {} active, {} created, {} ended, {} expired{}",
            s.active,
            s.total_created,
            s.total_ended,
            s.stale_cleaned,
            if session_ids.is_empty() {
                String::new()
            } else {
                format!(" ({})", session_ids.join(", "))
            }
        );
    }
    let _ = writeln!(
        out,
        "restarts: pool {}, session registry {}",
        status.restarts.pool, status.restarts.registry
    );
    out
}

/// LM usage per model, one line each (nothing when no LM was called).
fn render_usage(usage: &dspex::Usage) -> String {
    let mut out = String::new();
    for (model, u) in &usage.0 {
        let cost = u
            .cost
            .map(|c| format!(", cost ${c:.4}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "lm {model}: {} calls, {} tokens ({} prompt + {} completion){cost}",
            u.calls, u.total_tokens, u.prompt_tokens, u.completion_tokens
        );
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_shown_in_mebibytes() {
        assert_eq!(mib(3 * 1024 * 1024 / 2), "1.5 MiB");
    }

    #[test]
    fn usage_is_shown_per_model() {
        let usage = dspex::Usage::from_wire(Some(&serde_json::json!({
            "openai/gpt-4o-mini": {"prompt_tokens": 30, "completion_tokens": 12,
                                   "total_tokens": 42, "cost": 0.0021, "calls": 3},
            "dummy": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                      "cost": null, "calls": 1},
        })));
        assert_eq!(
            render_usage(&usage),
            "lm dummy: 1 calls, 7 tokens (5 prompt + 2 completion)\n\
             lm openai/gpt-4o-mini: 3 calls, 42 tokens (30 prompt + 12 completion), cost $0.0021\n"
        );
        assert_eq!(render_usage(&dspex::Usage::default()), "");
    }
}
