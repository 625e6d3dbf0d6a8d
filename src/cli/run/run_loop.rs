//! The run loop: read a row, send it, write what comes back, in input order.
//!
//! Three things happen concurrently in one task: the input is read while fewer rows are
//! in flight than the pool can take (plus a lookahead, see [`Window`]), finished rows
//! come back in any order, and a reorder buffer releases them to the output in input
//! order. Every row, whatever happened to it (it ran, it failed before it could run, its
//! line was too long, a resume kept it from before, a signal stopped it), ends in
//! [`RunLoop::finish`], the one place a row becomes an output line.
//!
//! Rows are sent as batch requests: they wait for a free slot in the pool however long
//! that takes, never against `pool.checkout_timeout` or `pool.max_queue`, since this loop
//! bounds how many it has outstanding itself.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use dspex::config::Config;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;

use super::input::{Content, Line, Lines, Reader};
use super::output::Writer;
use super::progress::{self, RunProgress};
use super::reorder::Reorder;
use super::resume::{Kept, KeptLines};
use super::rows::{self, Id, RowError};
use super::sidecar::Shard;
use super::streak::{FailureStreak, RUN_ADVICE};
use super::Signals;
use crate::cli::source::{RowOutput, Runner};
use crate::cli::{CliError, Outcome, Signal};

type RowFuture<'a> = Pin<Box<dyn Future<Output = (u64, dspex::Result<RowOutput>)> + Send + 'a>>;

/// How many rows the loop keeps outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Rows sent and not yet answered.
    pub in_flight: usize,
    /// Rows read but not yet written (in rows of this run's shard): bounds the reorder
    /// buffer behind one slow row.
    pub ahead: u64,
}

impl Window {
    /// Every slot of the pool (`pool.size × pool.worker_concurrency`) busy, plus one row per
    /// worker waiting in the pool: when a worker answers, its next row is already there, so
    /// a slot never idles for a round trip through this loop, and the lookahead stays
    /// small enough that rows do not pile up in the pool's queue. The reorder buffer may
    /// run 8 windows ahead (at least 1024 rows) before reading pauses.
    pub fn for_pool(config: &Config) -> Window {
        let in_flight = config.pool.capacity() + config.pool.size;
        Window {
            in_flight,
            ahead: (8 * in_flight as u64).max(1024),
        }
    }
}

/// What happened to a row.
pub enum Done {
    /// It ran; the program's outputs or the library's error.
    Ran(dspex::Result<RowOutput>),
    /// It failed before it could run (not JSON, not an object, invalid inputs).
    Rejected(RowError),
    /// Its line is longer than `run.max_line_bytes`.
    TooLong { line: u64 },
    /// An earlier run's line for it, kept by `--resume`.
    Kept(Kept),
    /// A signal stopped the run before it finished.
    Stopped(Signal),
}

/// A finished row waiting for its predecessors.
struct Finished {
    line: String,
    ok: bool,
    kept: bool,
    end_offset: u64,
}

/// A row sent to the pool.
struct Sent {
    id: Id,
    end_offset: u64,
}

/// How a run loop ended.
pub struct Ended {
    pub outcome: Outcome,
    pub progress: RunProgress,
    /// Rows in the input, when it was read to its end.
    pub rows: Option<u64>,
    /// Whether every row of the input (of this shard) has its output line.
    pub complete: bool,
}

pub struct RunLoop<'a> {
    runner: &'a Runner,
    lines: Lines<Reader>,
    shard: Option<Shard>,
    kept: Option<KeptLines>,
    max_line_bytes: u64,
    window: Window,
    grace: Duration,
    in_flight: FuturesUnordered<RowFuture<'a>>,
    sent: HashMap<u64, Sent>,
    reorder: Reorder<Finished>,
    writer: Writer,
    progress: RunProgress,
    /// Rows failing alike, to tell the user (see [`FailureStreak`]).
    streak: FailureStreak,
    /// The index the next non-blank input line gets.
    next_index: u64,
}

impl<'a> RunLoop<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        runner: &'a Runner,
        reader: Reader,
        writer: Writer,
        progress: RunProgress,
        config: &Config,
        shard: Option<Shard>,
        kept: Option<KeptLines>,
    ) -> Self {
        let (first, step) = shard.map_or((0, 1), |s| (s.index, s.count));
        RunLoop {
            runner,
            lines: Lines::new(reader, config.run.max_line_bytes),
            shard,
            kept,
            max_line_bytes: config.run.max_line_bytes,
            window: Window::for_pool(config),
            grace: config.shutdown.graceful_timeout,
            in_flight: FuturesUnordered::new(),
            sent: HashMap::new(),
            reorder: Reorder::new(first, step),
            writer,
            progress,
            streak: FailureStreak::new(RUN_ADVICE),
            next_index: 0,
        }
    }

    /// Runs every row and writes the output; stops early on a signal.
    pub async fn run(mut self, signals: &mut Signals) -> Result<Ended, CliError> {
        let step = self.shard.map_or(1, |s| s.count);
        let mut eof = false;
        let mut read_error = None;
        let mut stopped_by = None;
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + progress::LINE_INTERVAL,
            progress::LINE_INTERVAL,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

        while !(eof && self.in_flight.is_empty()) {
            let ahead = self.next_index.saturating_sub(self.reorder.next_index());
            let can_read = !eof
                && self.in_flight.len() < self.window.in_flight
                && ahead < self.window.ahead * step;
            tokio::select! {
                biased;
                signal = signals.recv() => {
                    stopped_by = Some(signal);
                    break;
                }
                Some((index, result)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.ran(index, result)?;
                    // Take every row that is already done too, so one write covers them all.
                    while let Some(Some((index, result))) = self.in_flight.next().now_or_never() {
                        self.ran(index, result)?;
                    }
                    self.flush()?;
                }
                read = self.lines.next_line(), if can_read => match read {
                    Ok(Some(line)) => self.read(line)?,
                    Ok(None) => eof = true,
                    Err(e) => {
                        // Rows already read still finish; then the run fails.
                        eof = true;
                        read_error = Some(e);
                    }
                },
                _ = tick.tick() => {
                    self.flush()?;
                    self.progress.tick();
                }
            }
        }

        if let Some(signal) = stopped_by {
            self.stop(signal, signals).await?;
        }
        let complete = stopped_by.is_none() && read_error.is_none();
        debug_assert!(
            !complete || self.reorder.waiting() == 0,
            "every row read was written"
        );
        let rows = complete.then_some(self.next_index);
        self.keep_the_rest()?;
        let RunLoop {
            writer,
            mut progress,
            ..
        } = self;
        let written = writer.rows();
        writer.finish()?;
        progress.stop_clock();
        if let Some(source) = read_error {
            progress.note(&format!(
                "dspex: {written} rows written before the input failed"
            ));
            return Err(CliError::Io {
                action: "read input",
                path: "(input)".into(),
                source,
            });
        }
        let outcome = match stopped_by {
            Some(signal) => Outcome::Interrupted(signal),
            None if progress.failed() == 0 => Outcome::Success,
            None => Outcome::Failed,
        };
        Ok(Ended {
            outcome,
            progress,
            rows,
            complete,
        })
    }

    /// A line was read: the row runs, or finishes at once.
    fn read(&mut self, line: Line) -> Result<(), CliError> {
        let index = self.next_index;
        self.next_index += 1;
        if self.shard.is_some_and(|s| !s.contains(index)) {
            return Ok(());
        }
        if let Some(kept) = &mut self.kept {
            let line = kept.take(index).map_err(|source| CliError::Io {
                action: "read the output being resumed,",
                path: self.writer.output().to_owned(),
                source,
            })?;
            if let Some(kept) = line {
                self.finish(index, &rows::null_id(), 0, Done::Kept(kept));
                return self.flush_if_full();
            }
        }
        let end_offset = line.end_offset;
        let row = match line.content {
            Content::TooLong => {
                let done = Done::TooLong { line: line.number };
                self.finish(index, &rows::null_id(), end_offset, done);
                return self.flush();
            }
            Content::Text(bytes) => rows::parse(&bytes, line.number, self.runner),
        };
        match row {
            Ok(row) => {
                self.sent.insert(
                    index,
                    Sent {
                        id: row.id,
                        end_offset,
                    },
                );
                let runner = self.runner;
                self.in_flight.push(Box::pin(
                    async move { (index, runner.run(row.input).await) },
                ));
                Ok(())
            }
            Err(rejected) => {
                self.finish(
                    index,
                    &rejected.id,
                    end_offset,
                    Done::Rejected(rejected.error),
                );
                self.flush()
            }
        }
    }

    /// A row came back from the pool.
    fn ran(&mut self, index: u64, result: dspex::Result<RowOutput>) -> Result<(), CliError> {
        let sent = self.sent.remove(&index).unwrap_or(Sent {
            id: rows::null_id(),
            end_offset: 0,
        });
        self.finish(index, &sent.id, sent.end_offset, Done::Ran(result));
        Ok(())
    }

    /// The output line of a row that ran and failed, telling the user once rows keep failing
    /// alike.
    fn failed(&mut self, index: u64, id: &Id, error: RowError) -> String {
        if let Some(note) = self.streak.failed(&error.kind, &error.message) {
            self.progress.note(&note);
        }
        rows::render(index, id, &Err(error))
    }

    /// The one place a row finishes: its output line is made and queued in input order.
    fn finish(&mut self, index: u64, id: &Id, end_offset: u64, done: Done) {
        let (line, ok, kept) = match done {
            Done::Ran(Ok(output)) => {
                self.progress.add_usage(&output.usage);
                self.streak.ok();
                (rows::render(index, id, &Ok(output)), true, false)
            }
            Done::Ran(Err(e)) => (self.failed(index, id, RowError::from(&e)), false, false),
            // A row rejected before it ran says nothing about how the others run.
            Done::Rejected(error) => (rows::render(index, id, &Err(error)), false, false),
            Done::TooLong { line } => (
                rows::too_long(index, line, self.max_line_bytes),
                false,
                false,
            ),
            Done::Kept(Kept { line, ok }) => (line, ok, true),
            Done::Stopped(signal) => {
                let error = RowError::new(
                    "shutting_down",
                    format!("stopped by {} before this row finished", signal.name()),
                );
                (rows::render(index, id, &Err(error)), false, false)
            }
        };
        self.reorder.insert(
            index,
            Finished {
                line,
                ok,
                kept,
                end_offset,
            },
        );
        while let Some(row) = self.reorder.pop() {
            self.writer.line(&row.line);
            let offset = (row.end_offset > 0).then_some(row.end_offset);
            if row.kept {
                self.progress.row_kept(row.ok, offset);
            } else {
                self.progress.row_written(row.ok, offset);
            }
        }
    }

    /// Writes the queued lines, so the output grows steadily rather than in bursts.
    fn flush(&mut self) -> Result<(), CliError> {
        self.writer.flush().map_err(|e| self.writer.error(e))
    }

    /// Kept rows come in long runs; writing them in large batches keeps a resume cheap.
    fn flush_if_full(&mut self) -> Result<(), CliError> {
        if self.writer.buffered() >= 64 * 1024 {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// After a signal: no more rows are read, rows in flight get the grace period (a
    /// second signal ends it), the rest are written as stopped.
    async fn stop(&mut self, signal: Signal, signals: &mut Signals) -> Result<(), CliError> {
        self.progress.note(&format!(
            "dspex: {}: reading no more rows; waiting up to {:?} for {} in flight",
            signal.name(),
            self.grace,
            self.in_flight.len()
        ));
        let deadline = tokio::time::Instant::now() + self.grace;
        while !self.in_flight.is_empty() {
            tokio::select! {
                Some((index, result)) = self.in_flight.next() => {
                    self.ran(index, result)?;
                    self.flush()?;
                }
                _ = tokio::time::sleep_until(deadline) => break,
                _ = signals.recv() => break,
            }
        }
        self.in_flight = FuturesUnordered::new();
        let mut unfinished: Vec<(u64, Sent)> = self.sent.drain().collect();
        unfinished.sort_by_key(|(index, _)| *index);
        for (index, sent) in unfinished {
            self.finish(index, &sent.id, sent.end_offset, Done::Stopped(signal));
        }
        self.flush()
    }

    /// A resume that ends early still writes every row it kept, so nothing the earlier
    /// run produced is lost when the new output replaces the old one.
    fn keep_the_rest(&mut self) -> Result<(), CliError> {
        let Some(kept) = &mut self.kept else {
            return Ok(());
        };
        let (writer, progress) = (&mut self.writer, &mut self.progress);
        kept.rest(|Kept { line, ok }| {
            writer.line(&line);
            progress.row_kept(ok, None);
        })
        .map_err(|source| CliError::Io {
            action: "read the output being resumed,",
            path: writer.output().to_owned(),
            source,
        })?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_fills_every_slot_plus_one_row_per_worker() {
        let mut config = Config::default();
        config.pool.size = 4;
        config.pool.worker_concurrency = 8;
        let window = Window::for_pool(&config);
        assert_eq!(window.in_flight, 4 * 8 + 4);
        assert_eq!(window.ahead, 1024);
        config.pool.size = 64;
        assert_eq!(Window::for_pool(&config).ahead, 8 * (64 * 8 + 64));
    }
}
