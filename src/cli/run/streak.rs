//! Noticing that rows keep failing the same way (`dspex run` and `dspex eval`).
//!
//! A run against an LM that cannot be reached, with a key that is wrong or a program that
//! always raises fails every row, each after its own retries: tens of thousands of rows can
//! take an hour to fail. The run goes on (a row's failure is that row's), but once
//! [`SAME_FAILURES`] rows in a row have run and failed with the same kind and message, the
//! user is told once what is happening and how to finish later without losing the rows
//! done. Rows rejected before they run (bad JSON, a missing input) fail at once, name their
//! line, and neither count nor break the count.

/// How many rows in a row must fail alike before the user is told.
pub const SAME_FAILURES: u32 = 10;

/// What `dspex run` tells: a resume keeps the rows done.
pub const RUN_ADVICE: &str = "if the rest will too, stop with Ctrl-C, fix the cause and run \
    again (with an output file, --resume --retry-failed keeps the rows already done)";

/// What `dspex eval` tells: it has no resume.
pub const EVAL_ADVICE: &str = "if the rest will too, stop with Ctrl-C and fix the cause first";

/// The current run of rows that failed alike.
#[derive(Debug)]
pub struct FailureStreak {
    /// What the note tells the user to do.
    advice: &'static str,
    last: Option<(String, String)>,
    count: u32,
    told: bool,
}

impl FailureStreak {
    pub fn new(advice: &'static str) -> Self {
        FailureStreak {
            advice,
            last: None,
            count: 0,
            told: false,
        }
    }

    /// A row succeeded: the streak is broken.
    pub fn ok(&mut self) {
        self.last = None;
        self.count = 0;
    }

    /// A row failed with `kind` and `message`; returns the note to print when this row
    /// makes [`SAME_FAILURES`] alike, the first time only.
    pub fn failed(&mut self, kind: &str, message: &str) -> Option<String> {
        let same = self
            .last
            .as_ref()
            .is_some_and(|(k, m)| k == kind && m == message);
        if same {
            self.count += 1;
        } else {
            self.last = Some((kind.to_owned(), message.to_owned()));
            self.count = 1;
        }
        if self.count < SAME_FAILURES || self.told {
            return None;
        }
        self.told = true;
        Some(format!(
            "dspex: the last {SAME_FAILURES} rows all failed the same way ({kind}: {message}); {}",
            self.advice
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenth_alike_failure_in_a_row_is_told_once() {
        let mut streak = FailureStreak::new(RUN_ADVICE);
        for _ in 1..SAME_FAILURES {
            assert_eq!(streak.failed("lm", "connection refused"), None);
        }
        let note = streak.failed("lm", "connection refused").unwrap();
        assert!(
            note.contains("last 10 rows all failed the same way (lm: connection refused)"),
            "{note}"
        );
        assert!(note.contains("--resume --retry-failed"), "{note}");
        for _ in 0..2 * SAME_FAILURES {
            assert_eq!(streak.failed("lm", "connection refused"), None);
        }
    }

    #[test]
    fn a_success_or_another_failure_starts_the_count_again() {
        let mut streak = FailureStreak::new(RUN_ADVICE);
        for _ in 1..SAME_FAILURES {
            streak.failed("lm", "connection refused");
        }
        streak.ok();
        for _ in 1..SAME_FAILURES {
            assert_eq!(streak.failed("lm", "connection refused"), None);
        }
        // Same kind, other message: rows failing each for its own reason are not alike.
        assert_eq!(streak.failed("lm", "HTTP 400 for this prompt"), None);
        for _ in 2..SAME_FAILURES {
            assert_eq!(streak.failed("lm", "HTTP 400 for this prompt"), None);
        }
        assert!(streak.failed("lm", "HTTP 400 for this prompt").is_some());
    }
}
