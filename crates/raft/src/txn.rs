//! Transaction state of a partition in commit order: which producers have a transaction open
//! (their first offset bounds the last stable offset) and which transactions were aborted
//! (the list `read_committed` fetches return so clients drop those records).
//!
//! Every replica keeps it from its state machine's apply, so it only ever sees committed
//! batches, is the same on every replica, and is ready the moment a replica becomes leader.
//! It survives restarts through a snapshot (open transactions and the offset it is valid at)
//! saved every [`SNAPSHOT_EVERY`] applied batches, plus one key per aborted transaction; on
//! open the log between the snapshot and the high watermark is scanned, never the whole log.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use storage::batch::{self, BatchHeader, CONTROL_ABORT};

/// Applied batches between two snapshots of the open transactions.
pub(crate) const SNAPSHOT_EVERY: u64 = 1024;

/// An aborted transaction: records of `producer_id` from `first_offset` up to the abort
/// marker at `last_offset` are to be dropped by `read_committed` consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// The open transactions at an offset (what a restart resumes from).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct TxnSnapshot {
    /// Valid after every batch below this offset was applied.
    pub next_offset: i64,
    /// (producer id, first offset of its open transaction).
    pub ongoing: Vec<(i64, i64)>,
}

#[derive(Debug, Default)]
pub(crate) struct TxnIndex {
    /// Producer id -> first offset of its open transaction.
    ongoing: BTreeMap<i64, i64>,
    /// Aborted transactions by marker offset.
    aborted: VecDeque<AbortedTxn>,
}

impl TxnIndex {
    pub fn restore(snapshot: &TxnSnapshot, mut aborted: Vec<AbortedTxn>) -> TxnIndex {
        aborted.sort_by_key(|a| a.last_offset);
        aborted.dedup();
        TxnIndex {
            ongoing: snapshot.ongoing.iter().copied().collect(),
            aborted: aborted.into(),
        }
    }

    /// Feeds one committed batch (whole, as stored). Returns the transaction it aborted, if
    /// it is an abort marker closing an open transaction.
    pub fn apply(&mut self, data: &[u8], h: &BatchHeader) -> Option<AbortedTxn> {
        if !h.is_transactional() || h.producer_id < 0 {
            return None;
        }
        if h.is_control() {
            let first = self.ongoing.remove(&h.producer_id)?;
            if batch::control_type(data) != Some(CONTROL_ABORT) {
                return None;
            }
            let a = AbortedTxn {
                producer_id: h.producer_id,
                first_offset: first,
                last_offset: h.base_offset,
            };
            self.aborted.push_back(a);
            return Some(a);
        }
        self.ongoing.entry(h.producer_id).or_insert(h.base_offset);
        None
    }

    /// The first offset of the oldest open transaction.
    pub fn first_unstable(&self) -> Option<i64> {
        self.ongoing.values().min().copied()
    }

    /// Aborted transactions overlapping offsets `from..upto`.
    pub fn aborted(&self, from: i64, upto: i64) -> Vec<AbortedTxn> {
        self.aborted
            .iter()
            .filter(|a| a.last_offset >= from && a.first_offset < upto)
            .copied()
            .collect()
    }

    /// Drops aborted transactions wholly below the log start; returns them.
    pub fn trim(&mut self, log_start: i64) -> Vec<AbortedTxn> {
        let mut out = Vec::new();
        while self
            .aborted
            .front()
            .is_some_and(|a| a.last_offset < log_start)
        {
            out.extend(self.aborted.pop_front());
        }
        out
    }

    pub fn snapshot(&self, next_offset: i64) -> TxnSnapshot {
        TxnSnapshot {
            next_offset,
            ongoing: self.ongoing.iter().map(|(p, f)| (*p, *f)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::batch::testutil::{build_control_batch, build_txn_batch};

    fn feed(index: &mut TxnIndex, b: Vec<u8>) -> Option<AbortedTxn> {
        let h = BatchHeader::parse(&b).expect("header");
        index.apply(&b, &h)
    }

    #[test]
    fn tracks_open_and_aborted_transactions() {
        let mut t = TxnIndex::default();
        assert_eq!(feed(&mut t, build_txn_batch(10, 2, 1, 0, 0)), None);
        assert_eq!(feed(&mut t, build_txn_batch(12, 2, 2, 0, 0)), None);
        assert_eq!(feed(&mut t, build_txn_batch(14, 1, 1, 0, 2)), None);
        assert_eq!(t.first_unstable(), Some(10));
        // Producer 1 commits: producer 2's transaction is now the oldest open one.
        assert_eq!(feed(&mut t, build_control_batch(15, 1, 0, 1)), None);
        assert_eq!(t.first_unstable(), Some(12));
        let a = feed(&mut t, build_control_batch(16, 2, 0, 0)).expect("aborted");
        assert_eq!((a.producer_id, a.first_offset, a.last_offset), (2, 12, 16));
        assert_eq!(t.first_unstable(), None);
        assert_eq!(t.aborted(0, 100), vec![a]);
        assert_eq!(t.aborted(17, 100), vec![]);
        assert_eq!(t.aborted(0, 12), vec![]);
        // A marker for a producer with nothing open changes nothing.
        assert_eq!(feed(&mut t, build_control_batch(17, 3, 0, 0)), None);
        // Snapshot and restore.
        feed(&mut t, build_txn_batch(18, 1, 4, 0, 0));
        let snap = t.snapshot(19);
        let r = TxnIndex::restore(&snap, vec![a]);
        assert_eq!(r.first_unstable(), Some(18));
        assert_eq!(r.aborted(0, 100), vec![a]);
        // Retention removed everything below 17.
        let mut r = r;
        assert_eq!(r.trim(17), vec![a]);
        assert_eq!(r.aborted(0, 100), vec![]);
    }

    #[test]
    fn reads_the_control_type() {
        assert_eq!(
            batch::control_type(&build_control_batch(0, 1, 0, 1)),
            Some(1)
        );
        assert_eq!(
            batch::control_type(&build_control_batch(0, 1, 0, 0)),
            Some(0)
        );
        assert_eq!(batch::control_type(&build_txn_batch(0, 1, 1, 0, 0)), None);
    }
}
