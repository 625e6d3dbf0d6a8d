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
system health, each worker (id, pid, health, busy, requests, errors, RSS), sessions and
pool metrics, then shuts the workers down.";

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
    let _ = system.shutdown(config.shutdown.graceful_timeout).await;
    let snapshot = snapshot?;
    if args.json {
        let text = serde_json::to_string_pretty(&snapshot)
            .map_err(|e| CliError::Usage(format!("cannot serialise the status: {e}")))?;
        super::print(text)?;
    } else {
        let session_ids: Vec<String> = sessions
            .map(|list| list.into_iter().map(|s| s.id).collect())
            .unwrap_or_default();
        super::print(render(&snapshot, &session_ids).trim_end_matches('\n'))?;
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
            "pool: {} of {} workers ready, {} busy, {} starting, {} queued",
            pool.ready, pool.size, pool.busy, pool.starting, pool.queue_depth
        );
        let _ = writeln!(
            out,
            "  {:<28} {:>8}  {:<9} {:<4} {:>8} {:>6} {:>10}",
            "WORKER", "PID", "HEALTH", "BUSY", "REQUESTS", "ERRORS", "RSS"
        );
        for w in &pool.workers {
            let pid = w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            let rss = w.rss_bytes.map(mib).unwrap_or_else(|| "-".into());
            let busy = if w.busy { "yes" } else { "no" };
            let _ = writeln!(
                out,
                "  {:<28} {:>8}  {:<9} {:<4} {:>8} {:>6} {:>10}",
                w.id,
                pid,
                w.health.as_str(),
                busy,
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
}
