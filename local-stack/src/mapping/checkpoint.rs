//! A shard's checkpoint under `ParallelizationFactor`: the shard's records are delivered in
//! several concurrent batches, and they finish out of order; the checkpoint (where the mapping
//! would resume after a restart) only advances past a record once it and every record before it
//! has finished, as Lambda does.
//!
//! ```
//! use local_stack::mapping::checkpoint::Checkpoint;
//! let mut c = Checkpoint::default();
//! let (a, b, d) = (c.read("1"), c.read("2"), c.read("3"));
//! c.finish(b); // a later record done first: the checkpoint stays
//! assert_eq!(c.position(), None);
//! c.finish(a);
//! assert_eq!(c.position(), Some("2"));
//! c.finish(d);
//! assert_eq!(c.position(), Some("3"));
//! ```

use std::collections::VecDeque;

/// Records read from a shard and not yet past the checkpoint, in shard order.
#[derive(Debug, Default)]
pub struct Checkpoint {
    /// The index of the first record in `open`.
    base: u64,
    /// Sequence numbers and whether each has finished.
    open: VecDeque<(String, bool)>,
    /// The last record the checkpoint has passed.
    passed: Option<String>,
}

impl Checkpoint {
    /// Registers the next record read from the shard; its index, for [`finish`](Self::finish).
    pub fn read(&mut self, seq: &str) -> u64 {
        self.open.push_back((seq.to_owned(), false));
        self.base + self.open.len() as u64 - 1
    }

    /// Marks a record finished (succeeded, filtered or given up on) and moves the checkpoint
    /// past every finished record at the head.
    pub fn finish(&mut self, index: u64) {
        let Some(i) = index.checked_sub(self.base) else {
            return;
        };
        if let Some(slot) = self.open.get_mut(i as usize) {
            slot.1 = true;
        }
        while self.open.front().is_some_and(|(_, done)| *done) {
            if let Some((seq, _)) = self.open.pop_front() {
                self.passed = Some(seq);
                self.base += 1;
            }
        }
    }

    /// The sequence number the checkpoint is at: every record up to it has finished.
    pub fn position(&self) -> Option<&str> {
        self.passed.as_deref()
    }

    /// Records read and not yet past the checkpoint.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_waits_for_the_lowest_unfinished_record() {
        let mut c = Checkpoint::default();
        let ids: Vec<u64> = (1..=6).map(|i| c.read(&i.to_string())).collect();
        for i in [5, 4, 3, 1] {
            c.finish(ids[i]);
        }
        assert_eq!(c.position(), None, "record 1 is unfinished");
        c.finish(ids[0]);
        assert_eq!(c.position(), Some("2"), "record 3 is unfinished");
        c.finish(ids[2]);
        assert_eq!(c.position(), Some("6"));
        assert_eq!(c.open(), 0);
        c.finish(ids[2]); // again, or an index long passed: nothing moves
        assert_eq!(c.position(), Some("6"));
        let next = c.read("7");
        assert_eq!(next, 6);
        assert_eq!(c.position(), Some("6"));
    }
}
