//! Rows finish in any order; output lines must come out in input order.
//!
//! The buffer holds finished rows until every row before them has finished, then
//! releases the contiguous run. Its size is bounded by the caller, which stops reading
//! input while the gap between the next row to read and the next row to write is too
//! wide (one slow row must not make memory grow with the input).
//!
//! A shard writes every `N`th row starting at `K`, so the buffer counts in steps: the
//! row after `i` is `i + step`.

use std::collections::BTreeMap;

/// Finished rows waiting for their predecessors.
#[derive(Debug)]
pub struct Reorder<T> {
    next: u64,
    step: u64,
    waiting: BTreeMap<u64, T>,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder::new(0, 1)
    }
}

impl<T> Reorder<T> {
    /// Releases rows `first`, `first + step`, `first + 2 * step`, ...
    pub fn new(first: u64, step: u64) -> Self {
        Reorder {
            next: first,
            step: step.max(1),
            waiting: BTreeMap::new(),
        }
    }

    /// The index of the next row to be released.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// How many finished rows wait for an earlier one.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Adds finished row `index`.
    ///
    /// # Panics
    ///
    /// If `index` was already released or added: each row finishes exactly once.
    pub fn insert(&mut self, index: u64, item: T) {
        assert!(
            index >= self.next && !self.waiting.contains_key(&index),
            "row {index} finished twice"
        );
        self.waiting.insert(index, item);
    }

    /// The next row in order, if it has finished.
    pub fn pop(&mut self) -> Option<T> {
        let item = self.waiting.remove(&self.next)?;
        self.next += self.step;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(r: &mut Reorder<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| r.pop()).collect()
    }

    #[test]
    fn releases_only_a_contiguous_prefix() {
        let mut r = Reorder::default();
        r.insert(1, "b");
        r.insert(2, "c");
        assert!(drain(&mut r).is_empty(), "row 0 has not finished");
        assert_eq!(r.waiting(), 2);
        r.insert(0, "a");
        assert_eq!(drain(&mut r), ["a", "b", "c"]);
        assert_eq!(r.next_index(), 3);
        r.insert(4, "e");
        assert!(drain(&mut r).is_empty());
        r.insert(3, "d");
        assert_eq!(drain(&mut r), ["d", "e"]);
        assert_eq!(r.waiting(), 0);
    }

    #[test]
    fn in_order_rows_pass_straight_through() {
        let mut r = Reorder::default();
        for (i, item) in ["x", "y", "z"].into_iter().enumerate() {
            r.insert(i as u64, item);
            assert_eq!(r.pop(), Some(item));
        }
    }

    #[test]
    fn a_shard_releases_every_step_th_row() {
        let mut r = Reorder::new(1, 3);
        r.insert(4, "e");
        assert!(drain(&mut r).is_empty());
        r.insert(1, "b");
        assert_eq!(drain(&mut r), ["b", "e"]);
        assert_eq!(r.next_index(), 7);
    }

    #[test]
    #[should_panic(expected = "row 0 finished twice")]
    fn a_row_released_already_cannot_come_back() {
        let mut r = Reorder::default();
        r.insert(0, "a");
        r.pop();
        r.insert(0, "again");
    }
}
