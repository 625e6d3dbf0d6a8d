//! Scoring a program on a devset across the pool, the way `dspy.Evaluate` scores it.
//!
//! `dspy.Evaluate` runs a program over a devset in threads of one process; here each row is
//! one `evaluate` request (run + metric, in the worker) spread over every worker, and the
//! host adds up. For the numbers to be the ones a DSPy user knows, the sum follows DSPy
//! 3.4's `dspy/evaluate/evaluate.py`:
//!
//! ```text
//! score = round(100 * sum(row scores) / len(devset), 2)
//! ```
//!
//! where a row that failed (its program or its metric raised, its inputs did not validate,
//! its worker died) scores 0 and still counts in `len(devset)`, and the sum runs in devset
//! order. [`EvalReport::score`] is that number; [`EvalReport::mean`] is the same mean as a
//! fraction, unrounded. Unlike `dspy.Evaluate`, which gives up after `max_errors` failed
//! rows, every row is run and reported.

use futures::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Program, Scored, Usage};
use crate::error::{Error, Result};
use crate::signature::ValidationError;

/// What [`Program::evaluate`] found.
#[derive(Debug)]
pub struct EvalReport {
    /// One outcome per devset row, in devset order.
    pub rows: Vec<RowOutcome>,
    /// `dspy.Evaluate`'s score: `round(100 * sum / rows, 2)`, failed rows counting 0.
    pub score: f64,
    /// The mean row score (failed rows count 0), unrounded: `score` is `100 × mean`
    /// rounded to two decimals.
    pub mean: f64,
    /// How many rows failed.
    pub failed: usize,
    /// The LM calls of the rows that succeeded, per model.
    pub usage: Usage,
}

/// One devset row's result: its prediction and score, or why it failed.
#[derive(Debug)]
pub struct RowOutcome {
    /// The row's position in the devset (from 0).
    pub index: usize,
    pub result: Result<Scored>,
}

impl RowOutcome {
    /// The row's score; 0 when it failed, as `dspy.Evaluate` counts it.
    pub fn score(&self) -> f64 {
        self.result.as_ref().map_or(0.0, |scored| scored.score)
    }
}

/// `dspy.Evaluate`'s score for per-row scores in devset order (`None`: a failed row).
///
/// `round(x, 2)` in Python rounds the exact binary value half to even, which is what
/// Rust's `{:.2}` formatting does, so the result is the same float `dspy.Evaluate`
/// reports.
///
/// # Examples
///
/// ```
/// use dspex::program::evaluate_score;
/// assert_eq!(evaluate_score(&[Some(1.0), Some(0.0), None, Some(1.0)]), Some(50.0));
/// assert_eq!(evaluate_score(&[Some(1.0), Some(1.0), Some(0.0)]), Some(66.67));
/// assert_eq!(evaluate_score(&[]), None);
/// ```
pub fn evaluate_score(scores: &[Option<f64>]) -> Option<f64> {
    if scores.is_empty() {
        return None;
    }
    // Python's sum() adds left to right from 0; the same order gives the same float.
    let sum = scores.iter().fold(0.0, |sum, s| sum + s.unwrap_or(0.0));
    let percent = 100.0 * sum / scores.len() as f64;
    format!("{percent:.2}").parse().ok()
}

impl EvalReport {
    fn new(rows: Vec<RowOutcome>) -> Self {
        let scores: Vec<Option<f64>> = rows
            .iter()
            .map(|row| row.result.as_ref().ok().map(|s| s.score))
            .collect();
        let sum: f64 = scores.iter().map(|s| s.unwrap_or(0.0)).sum();
        let mut usage = Usage::default();
        for scored in rows.iter().filter_map(|row| row.result.as_ref().ok()) {
            usage.add(&scored.prediction.usage);
        }
        EvalReport {
            score: evaluate_score(&scores).unwrap_or(0.0),
            mean: sum / rows.len().max(1) as f64,
            failed: scores.iter().filter(|s| s.is_none()).count(),
            usage,
            rows,
        }
    }
}

/// A summary of an [`EvalReport`] without the rows, e.g. for a JSON status line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalSummary {
    pub rows: usize,
    pub score: f64,
    pub mean: f64,
    pub failed: usize,
}

impl EvalReport {
    pub fn summary(&self) -> EvalSummary {
        EvalSummary {
            rows: self.rows.len(),
            score: self.score,
            mean: self.mean,
            failed: self.failed,
        }
    }
}

impl Program {
    /// Runs the program on every row of `devset` and scores each prediction with `metric`
    /// (`"package.module:function"`, called in the worker as DSPy calls it:
    /// `metric(example, prediction)`, the example being the row's inputs and the rest of
    /// the row as labels). At most `concurrency` rows are in flight (0 counts as 1); they
    /// wait for a free slot without `pool.checkout_timeout`, as batch work does.
    ///
    /// A row's own problem (inputs that do not validate, a program or metric that raises,
    /// a worker that dies) fails that row only; see [`evaluate_score`] for how the
    /// score counts it. A row's `id` field, if any, is neither an input nor a label.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(program: dspex::Program, devset: Vec<serde_json::Map<String, serde_json::Value>>) -> dspex::Result<()> {
    /// let report = program.evaluate(devset, "my_metrics:exact_match", 16).await?;
    /// println!("{} ({} of {} rows failed)", report.score, report.failed, report.rows.len());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// `validation` for an empty devset. Everything else is a row's outcome: check the
    /// metric first with [`Session::create_checked`](super::Session::create_checked) to
    /// fail before the first row rather than on every row.
    pub async fn evaluate(
        &self,
        devset: Vec<Map<String, Value>>,
        metric: &str,
        concurrency: usize,
    ) -> Result<EvalReport> {
        if devset.is_empty() {
            return Err(Error::Validation(ValidationError::new(
                "devset",
                "the devset is empty; give at least one row",
            )));
        }
        let program = self.clone().for_batch();
        let program = &program;
        let mut rows: Vec<RowOutcome> = stream::iter(devset.into_iter().enumerate())
            .map(|(index, row)| async move {
                let result = match program.split_row(row) {
                    Ok((inputs, mut labels)) => {
                        labels.remove("id");
                        program.score(inputs, labels, metric).await
                    }
                    Err(e) => Err(Error::Validation(e)),
                };
                RowOutcome { index, result }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        rows.sort_by_key(|row| row.index);
        Ok(EvalReport::new(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_follows_dspy_evaluate_and_failed_rows_count_zero() {
        assert_eq!(
            evaluate_score(&[Some(1.0), Some(0.0), None, Some(1.0)]),
            Some(50.0)
        );
        assert_eq!(
            evaluate_score(&[Some(1.0), Some(1.0), Some(0.0)]),
            Some(66.67)
        );
        assert_eq!(evaluate_score(&[None, None]), Some(0.0));
        assert_eq!(evaluate_score(&[Some(0.5)]), Some(50.0));
        // Python: round(100 * 1 / 8 / 100 ... ) style ties round half to even.
        assert_eq!(evaluate_score(&[Some(0.00125)]), Some(0.12));
        assert_eq!(evaluate_score(&[]), None);
    }

    #[test]
    fn a_report_sums_in_devset_order_and_counts_failures() {
        let scored = |score: f64| {
            Ok(Scored {
                prediction: super::super::Prediction {
                    outputs: Map::new(),
                    usage: Usage::from_wire(Some(&serde_json::json!({"dummy": {
                        "prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3, "calls": 1
                    }}))),
                },
                score,
            })
        };
        let rows = vec![
            RowOutcome {
                index: 0,
                result: scored(1.0),
            },
            RowOutcome {
                index: 1,
                result: Err(Error::Lm("down".into())),
            },
            RowOutcome {
                index: 2,
                result: scored(0.5),
            },
        ];
        let report = EvalReport::new(rows);
        assert_eq!(report.score, 50.0);
        assert_eq!(report.mean, 0.5);
        assert_eq!(report.failed, 1);
        assert_eq!(report.usage.total().calls, 2);
        assert_eq!(report.rows[1].score(), 0.0);
        assert_eq!(
            report.summary(),
            EvalSummary {
                rows: 3,
                score: 50.0,
                mean: 0.5,
                failed: 1
            }
        );
    }
}
