//! Progress of a run on stderr, and the summary line at its end.
//!
//! On a terminal an indicatif bar redraws in place; its length is the input file's size
//! in bytes and its position the bytes of input whose output is written, so it shows a
//! real fraction and an ETA (a pipe has no size: then it is a counter). Anywhere else
//! (CI logs, `2> file`) redrawing would spam, so a plain line is printed every few
//! seconds instead. Every write to stderr ignores errors: a run whose stderr reader went
//! away (`2>&1 | head -1`) still finishes its output.

use std::time::{Duration, Instant};

use dspex::{TokenUsage, Usage};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::note;

/// How often plain progress lines are printed when stderr is not a terminal.
pub const LINE_INTERVAL: Duration = Duration::from_secs(2);

/// Counts rows and shows how far the run is.
pub struct RunProgress {
    /// How long Python and the workers took before the first row could run.
    startup: Duration,
    started: Instant,
    /// When the last row was written: the workers' shutdown that follows is not the rows'
    /// time.
    stopped: Option<Instant>,
    ok: u64,
    failed: u64,
    /// Rows taken over from the output a resume completes, counted in `ok`/`failed`.
    kept: u64,
    /// Tokens and cost of the rows run now.
    usage: TokenUsage,
    bar: Option<ProgressBar>,
}

impl RunProgress {
    /// `input_bytes`: the input's size when it is a regular file; `startup`: the time
    /// spent before rows could run, reported apart so rows/s measures the rows alone.
    pub fn new(terminal: bool, input_bytes: Option<u64>, startup: Duration) -> Self {
        let bar = terminal.then(|| {
            let bar = match input_bytes {
                Some(len) => ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = match input_bytes {
                Some(_) => "{bar:30} {percent:>3}% {msg} [{elapsed_precise}, eta {eta}]",
                None => "{spinner} {msg} [{elapsed_precise}]",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        RunProgress {
            startup,
            started: Instant::now(),
            stopped: None,
            ok: 0,
            failed: 0,
            kept: 0,
            usage: TokenUsage::default(),
            bar,
        }
    }

    /// A row's output line was written; `end_offset` is where its input line ended.
    pub fn row_written(&mut self, ok: bool, end_offset: Option<u64>) {
        if ok {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        if let Some(bar) = &self.bar {
            if let Some(offset) = end_offset {
                bar.set_position(offset);
            }
            bar.set_message(self.counts());
        }
    }

    /// A row kept from an earlier output (`--resume`) was written.
    pub fn row_kept(&mut self, ok: bool, end_offset: Option<u64>) {
        self.kept += 1;
        self.row_written(ok, end_offset);
    }

    /// Adds a row's LM usage to the run's totals.
    pub fn add_usage(&mut self, usage: &Usage) {
        self.usage.add(&usage.total());
    }

    #[cfg(test)]
    pub fn ok(&self) -> u64 {
        self.ok
    }

    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// Rows this run ran: a resume's kept rows took none of its time.
    fn run_now(&self) -> u64 {
        self.ok + self.failed - self.kept
    }

    fn counts(&self) -> String {
        let elapsed = self.elapsed();
        format!(
            "{} rows ({} ok, {} failed), {:.1} rows/s",
            self.ok + self.failed,
            self.ok,
            self.failed,
            rate(self.run_now(), elapsed)
        )
    }

    /// The periodic plain line (no-op when a bar is drawn).
    pub fn tick(&self) {
        if self.bar.is_none() {
            note(format_args!(
                "dspex: {} in {:.1}s",
                self.counts(),
                self.started.elapsed().as_secs_f64()
            ));
        }
    }

    /// Prints a message without tearing the bar.
    pub fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => note(message),
        }
    }

    /// Removes the bar and prints the summary line (plus CPU use when asked for).
    /// The rows are done: the summary's time and rate stop here.
    pub fn stop_clock(&mut self) {
        self.stopped.get_or_insert_with(Instant::now);
    }

    fn elapsed(&self) -> Duration {
        self.stopped.unwrap_or_else(Instant::now) - self.started
    }

    pub fn finish(self, stopped_by: Option<&str>, report_cpu: bool) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let cpu = if report_cpu { own_cpu_time() } else { None };
        note(self.summary(self.elapsed(), stopped_by, cpu));
    }

    /// The summary line. Rows/s and CPU per row are over the rows run now (not the rows a
    /// resume kept), so a resumed run reports the speed it ran at.
    fn summary(
        &self,
        elapsed: Duration,
        stopped_by: Option<&str>,
        cpu: Option<(Duration, Duration)>,
    ) -> String {
        let run_now = self.run_now();
        let mut line = format!(
            "dspex: {} rows ok, {} failed in {:.2}s ({:.1} rows/s; start-up {:.2}s before that)",
            self.ok,
            self.failed,
            elapsed.as_secs_f64(),
            rate(run_now, elapsed),
            self.startup.as_secs_f64()
        );
        if self.kept > 0 {
            line.push_str(&format!("; {} rows kept from before", self.kept));
        }
        if let Some(usage) = usage_summary(&self.usage) {
            line.push_str(&format!("; {usage}"));
        }
        if let Some(signal) = stopped_by {
            line.push_str(&format!(
                "; stopped by {signal}, output covers the rows read"
            ));
        }
        if let Some((user, system)) = cpu {
            let total = user + system;
            line.push_str(&format!(
                "; cpu {:.3}s user + {:.3}s sys = {:.3} ms/row",
                user.as_secs_f64(),
                system.as_secs_f64(),
                if run_now == 0 {
                    0.0
                } else {
                    total.as_secs_f64() * 1000.0 / run_now as f64
                }
            ));
        }
        line
    }
}

/// `"1234 tokens (1000 prompt + 234 completion) in 10 LM calls, cost $0.0012"`; the cost
/// only when the provider's price was known for every call.
fn usage_summary(usage: &TokenUsage) -> Option<String> {
    if usage.calls == 0 && usage.total_tokens == 0 {
        return None;
    }
    let mut text = format!(
        "{} tokens ({} prompt + {} completion) in {} LM calls",
        usage.total_tokens, usage.prompt_tokens, usage.completion_tokens, usage.calls
    );
    if let Some(cost) = usage.cost {
        text.push_str(&format!(", cost ${cost:.4}"));
    }
    Some(text)
}

fn rate(rows: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        rows as f64 / secs
    } else {
        0.0
    }
}

/// User and system CPU time of this process (all its threads, no child processes).
fn own_cpu_time() -> Option<(Duration, Duration)> {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Some((time(usage.ru_utime), time(usage.ru_stime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ok_and_failed_rows() {
        let mut p = RunProgress::new(false, None, Duration::ZERO);
        p.row_written(true, Some(10));
        p.row_written(false, None);
        p.row_written(true, Some(30));
        assert_eq!((p.ok(), p.failed()), (2, 1));
        assert!(p.counts().starts_with("3 rows (2 ok, 1 failed)"));
    }

    #[test]
    fn a_resume_reports_the_rate_and_cpu_of_the_rows_it_ran_not_of_those_it_kept() {
        let mut p = RunProgress::new(false, None, Duration::ZERO);
        for _ in 0..3 {
            p.row_kept(true, None);
        }
        p.row_kept(false, None);
        p.row_written(true, None);
        p.row_written(false, None);
        let cpu = Some((Duration::from_millis(300), Duration::from_millis(100)));
        let line = p.summary(Duration::from_secs(4), None, cpu);
        assert!(
            line.starts_with("dspex: 4 rows ok, 2 failed in 4.00s (0.5 rows/s;"),
            "{line}"
        );
        assert!(line.contains("; 4 rows kept from before"), "{line}");
        assert!(line.ends_with("= 200.000 ms/row"), "{line}");
        assert!(
            p.counts().starts_with("6 rows (4 ok, 2 failed), "),
            "{}",
            p.counts()
        );
    }

    #[test]
    fn usage_totals_add_up_and_show_cost_only_when_known() {
        let row = |cost: Option<f64>| {
            dspex::Usage::from_wire(Some(&serde_json::json!({"m": {
                "prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                "cost": cost, "calls": 1
            }})))
        };
        let mut p = RunProgress::new(false, None, Duration::ZERO);
        assert_eq!(usage_summary(&p.usage), None);
        p.add_usage(&row(Some(0.5)));
        p.add_usage(&row(Some(0.25)));
        assert_eq!(
            usage_summary(&p.usage).unwrap(),
            "28 tokens (20 prompt + 8 completion) in 2 LM calls, cost $0.7500"
        );
        p.add_usage(&row(None));
        assert_eq!(
            usage_summary(&p.usage).unwrap(),
            "42 tokens (30 prompt + 12 completion) in 3 LM calls"
        );
    }

    #[test]
    fn own_cpu_time_is_measured() {
        // Burn a little CPU so the counter has moved past zero on any clock granularity.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let (user, system) = own_cpu_time().unwrap();
        assert!(user + system > Duration::ZERO);
    }

    #[test]
    fn rate_of_zero_elapsed_is_zero() {
        assert_eq!(rate(10, Duration::ZERO), 0.0);
        assert_eq!(rate(10, Duration::from_secs(2)), 5.0);
    }
}
