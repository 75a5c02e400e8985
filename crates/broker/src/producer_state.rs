//! Idempotent producers: producer id allocation and the per-partition sequence table.
//!
//! The table is a [`raft::BatchFilter`]: it runs in log order on the proposing replica, before
//! an offset is assigned, so a duplicate batch is answered with its original offsets and never
//! written twice, and an out-of-order sequence is refused. Every replica keeps a copy fed
//! from its applied batches and saved every so often (see `raft::BatchFilter`), so a new
//! leader or a restarted node rebuilds it from that state plus a short log tail.

use std::collections::{HashMap, VecDeque};

use raft::{Admit, BatchFilter};
use storage::batch::BatchHeader;
use storage::MetaStore;

use crate::topics::{ApiError, TopicManager};
use crate::Error;

use protocol::codes::{INVALID_PRODUCER_EPOCH, OUT_OF_ORDER_SEQUENCE_NUMBER, UNKNOWN_PRODUCER_ID};

/// Batches remembered per producer for duplicate detection (Kafka's in-flight limit is 5).
const REMEMBERED_BATCHES: usize = 5;

/// Producer ids are handed out from blocks reserved through the cluster metadata log
/// (`TopicManager::allocate_producer_ids`), so no id is given twice in the cluster, across
/// restarts included. A data directory from before cluster-wide blocks remembers the end of
/// its last local block in the metadata store: new blocks start after it.
pub struct ProducerIds {
    /// Ids below this were handed out by the old local allocation.
    floor: i64,
    /// (next id, end of the current block).
    state: tokio::sync::Mutex<(i64, i64)>,
}

const PID_KEY: &[u8] = b"producer_id_block_end";
/// Ids per block.
pub const PID_BLOCK: i64 = 1000;

impl ProducerIds {
    pub fn open(meta: &MetaStore) -> Result<Self, Error> {
        let floor = match meta.get("default", PID_KEY)? {
            Some(v) => {
                let arr: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Metadata("producer id block is not 8 bytes".into()))?;
                i64::from_be_bytes(arr)
            }
            None => 0,
        };
        Ok(ProducerIds {
            floor,
            state: tokio::sync::Mutex::new((0, 0)),
        })
    }

    /// A fresh producer id, reserving a new block from the cluster when this one is used up.
    pub async fn next(&self, topics: &TopicManager) -> Result<i64, ApiError> {
        let mut st = self.state.lock().await;
        if st.0 >= st.1 {
            *st = topics.allocate_producer_ids(self.floor, PID_BLOCK).await?;
        }
        let id = st.0;
        st.0 += 1;
        Ok(id)
    }
}

#[derive(Debug, Clone, Copy)]
struct BatchMeta {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
    /// Wall-clock ms of its last write here (or of the replay that restored it).
    last_ms: i64,
    /// A transactional batch was written and no marker has ended it yet.
    open_txn: bool,
}

/// Kafka's `producer.id.expiration.ms` default: one day.
pub const DEFAULT_PRODUCER_ID_EXPIRATION_MS: i64 = 86_400_000;

/// Appends between two sweeps for expired producers.
const SWEEP_EVERY: u32 = 1024;

/// Sequence state of every idempotent producer that wrote to one partition. A producer with
/// no write for `producer.id.expiration.ms` and no open transaction is forgotten (swept
/// every [`SWEEP_EVERY`] appends, so the table is bounded by the producers active within
/// that time); its next batch must start a new sequence (UNKNOWN_PRODUCER_ID otherwise,
/// which clients answer by resetting it), as in Kafka.
pub struct ProducerTable {
    producers: HashMap<i64, ProducerEntry>,
    expiration_ms: i64,
    appends: u32,
}

impl Default for ProducerTable {
    fn default() -> Self {
        ProducerTable::new(DEFAULT_PRODUCER_ID_EXPIRATION_MS)
    }
}

impl ProducerTable {
    pub fn new(expiration_ms: i64) -> ProducerTable {
        ProducerTable {
            producers: HashMap::new(),
            expiration_ms,
            appends: 0,
        }
    }

    /// Forgets producers idle since `now_ms - producer.id.expiration.ms` with no open
    /// transaction. Returns how many.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let before = self.producers.len();
        let limit = now_ms.saturating_sub(self.expiration_ms);
        self.producers
            .retain(|_, e| e.open_txn || e.last_ms > limit);
        before - self.producers.len()
    }
}

/// Format of [`BatchFilter::save`]: this byte, then per producer its id (i64), epoch (i16),
/// last write (i64 ms), open transaction (u8), batch count (u8) and per batch first and last
/// sequence (i32) and base offset (i64), all big-endian. Version 1 (no last write, no open
/// transaction) is still read: its producers count as written at load time.
const STATE_VERSION: u8 = 2;

fn decode_state(mut b: &[u8], now_ms: i64) -> Option<HashMap<i64, ProducerEntry>> {
    fn take<const N: usize>(b: &mut &[u8]) -> Option<[u8; N]> {
        let (head, rest) = b.split_first_chunk::<N>()?;
        *b = rest;
        Some(*head)
    }
    let [version] = take::<1>(&mut b)?;
    if version != 1 && version != STATE_VERSION {
        return None;
    }
    let mut producers = HashMap::new();
    while !b.is_empty() {
        let pid = i64::from_be_bytes(take(&mut b)?);
        let epoch = i16::from_be_bytes(take(&mut b)?);
        let (last_ms, open_txn) = if version >= 2 {
            let last = i64::from_be_bytes(take(&mut b)?);
            let [open] = take::<1>(&mut b)?;
            (last, open != 0)
        } else {
            (now_ms, false)
        };
        let [n] = take::<1>(&mut b)?;
        let mut batches = VecDeque::with_capacity(usize::from(n));
        for _ in 0..n {
            batches.push_back(BatchMeta {
                first_seq: i32::from_be_bytes(take(&mut b)?),
                last_seq: i32::from_be_bytes(take(&mut b)?),
                base_offset: i64::from_be_bytes(take(&mut b)?),
            });
        }
        producers.insert(
            pid,
            ProducerEntry {
                epoch,
                batches,
                last_ms,
                open_txn,
            },
        );
    }
    Some(producers)
}

fn seq_after(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

fn last_seq(h: &BatchHeader) -> i32 {
    let n = h.last_offset_delta;
    // Sequences wrap around at i32::MAX like Kafka's.
    let wide = i64::from(h.base_sequence) + i64::from(n);
    if wide > i64::from(i32::MAX) {
        (wide - i64::from(i32::MAX) - 1) as i32
    } else {
        wide as i32
    }
}

impl BatchFilter for ProducerTable {
    fn admit(&mut self, batch: &[u8]) -> Admit {
        let Ok(h) = BatchHeader::parse(batch) else {
            return Admit::Append;
        };
        if h.producer_id < 0 || h.base_sequence < 0 {
            return Admit::Append;
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            // A producer we know nothing about must start at sequence 0.
            return if h.base_sequence == 0 {
                Admit::Append
            } else {
                Admit::Reject(UNKNOWN_PRODUCER_ID)
            };
        };
        if h.producer_epoch < entry.epoch {
            return Admit::Reject(INVALID_PRODUCER_EPOCH);
        }
        if h.producer_epoch > entry.epoch {
            return if h.base_sequence == 0 {
                Admit::Append
            } else {
                Admit::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
            };
        }
        let last = last_seq(&h);
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last)
        {
            return Admit::Duplicate {
                base_offset: dup.base_offset,
            };
        }
        match entry.batches.back() {
            Some(prev) if h.base_sequence != seq_after(prev.last_seq) => {
                Admit::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
            }
            _ => Admit::Append,
        }
    }

    fn clear(&mut self) {
        self.producers.clear();
    }

    fn save(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.producers.len() * (11 + 16));
        out.push(STATE_VERSION);
        for (pid, entry) in &self.producers {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&entry.epoch.to_be_bytes());
            out.extend_from_slice(&entry.last_ms.to_be_bytes());
            out.push(u8::from(entry.open_txn));
            out.push(entry.batches.len() as u8);
            for b in &entry.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
            }
        }
        out
    }

    fn load(&mut self, state: &[u8]) -> bool {
        self.producers.clear();
        match decode_state(state, crate::now_ms()) {
            Some(producers) => {
                self.producers = producers;
                true
            }
            None => false,
        }
    }

    fn fresh(&self) -> Box<dyn BatchFilter> {
        Box::new(ProducerTable::new(self.expiration_ms))
    }

    fn appended(&mut self, batch: &[u8], base_offset: i64, _last_offset: i64) {
        let Ok(h) = BatchHeader::parse(batch) else {
            return;
        };
        let now = crate::now_ms();
        self.appends += 1;
        if self.appends >= SWEEP_EVERY {
            self.appends = 0;
            self.expire(now);
        }
        if h.is_control() && h.producer_id >= 0 {
            // A transaction marker carries the producer's current epoch (bumped when the
            // coordinator fenced it): later writes of older epochs are refused.
            let entry = self.producers.entry(h.producer_id).or_default();
            entry.last_ms = now;
            entry.open_txn = false;
            if h.producer_epoch > entry.epoch {
                entry.epoch = h.producer_epoch;
                entry.batches.clear();
            }
            return;
        }
        if h.producer_id < 0 || h.base_sequence < 0 {
            return;
        }
        let entry = self.producers.entry(h.producer_id).or_default();
        entry.last_ms = now;
        entry.open_txn = h.is_transactional();
        if h.producer_epoch != entry.epoch {
            entry.batches.clear();
            entry.epoch = h.producer_epoch;
        }
        entry.batches.push_back(BatchMeta {
            first_seq: h.base_sequence,
            last_seq: last_seq(&h),
            base_offset,
        });
        while entry.batches.len() > REMEMBERED_BATCHES {
            entry.batches.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::batch::testutil::{build_control_batch, build_producer_batch, build_txn_batch};

    fn append(t: &mut ProducerTable, b: &[u8], base: i64) {
        let h = BatchHeader::parse(b).expect("batch");
        t.appended(b, base, base + i64::from(h.last_offset_delta));
    }

    #[test]
    fn saved_state_gives_the_same_verdicts() {
        let mut t = ProducerTable::default();
        // Producer 7: two batches of 3 records at offsets 10 and 20.
        append(&mut t, &build_producer_batch(0, 3, 7, 0, 0), 10);
        append(&mut t, &build_producer_batch(0, 3, 7, 0, 3), 20);
        // Producer 8 fenced to epoch 2 by a marker.
        append(&mut t, &build_producer_batch(0, 1, 8, 1, 0), 30);
        append(&mut t, &build_control_batch(0, 8, 2, 0), 31);

        let mut u = ProducerTable::default();
        assert!(u.load(&t.save()));
        assert_eq!(u.save().len(), t.save().len());
        for table in [&mut t, &mut u] {
            assert_eq!(
                table.admit(&build_producer_batch(0, 3, 7, 0, 3)),
                Admit::Duplicate { base_offset: 20 }
            );
            assert_eq!(
                table.admit(&build_producer_batch(0, 1, 7, 0, 7)),
                Admit::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
            );
            assert_eq!(
                table.admit(&build_producer_batch(0, 1, 7, 0, 6)),
                Admit::Append
            );
            assert_eq!(
                table.admit(&build_producer_batch(0, 1, 8, 1, 1)),
                Admit::Reject(INVALID_PRODUCER_EPOCH)
            );
            assert_eq!(
                table.admit(&build_producer_batch(0, 1, 9, 0, 4)),
                Admit::Reject(UNKNOWN_PRODUCER_ID)
            );
        }
    }

    #[test]
    fn idle_producers_expire_unless_their_transaction_is_open() {
        let mut t = ProducerTable::new(60_000);
        append(&mut t, &build_producer_batch(0, 3, 7, 0, 0), 10);
        append(&mut t, &build_txn_batch(0, 2, 8, 0, 0), 20);
        let now = crate::now_ms();
        assert_eq!(t.expire(now + 30_000), 0, "not idle long enough");
        // The state survives a save and load with its timestamps.
        let mut u = ProducerTable::new(60_000);
        assert!(u.load(&t.save()));
        for table in [&mut t, &mut u] {
            assert_eq!(
                table.expire(now + 61_000),
                1,
                "producer 7 expired, 8 is in a transaction"
            );
            assert_eq!(
                table.admit(&build_producer_batch(0, 1, 7, 0, 3)),
                Admit::Reject(UNKNOWN_PRODUCER_ID),
                "an expired producer must start over"
            );
            assert_eq!(table.admit(&build_txn_batch(0, 1, 8, 0, 2)), Admit::Append);
        }
        // Its marker ends the transaction: then it expires too.
        append(&mut t, &build_control_batch(0, 8, 0, 0), 30);
        assert_eq!(t.expire(crate::now_ms() + 61_000), 1);
        assert!(t.producers.is_empty());
    }

    #[test]
    fn version_1_state_is_still_read() {
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&7i64.to_be_bytes());
        v1.extend_from_slice(&0i16.to_be_bytes());
        v1.push(1);
        v1.extend_from_slice(&0i32.to_be_bytes());
        v1.extend_from_slice(&2i32.to_be_bytes());
        v1.extend_from_slice(&10i64.to_be_bytes());
        let mut t = ProducerTable::default();
        assert!(t.load(&v1));
        assert_eq!(
            t.admit(&build_producer_batch(0, 3, 7, 0, 0)),
            Admit::Duplicate { base_offset: 10 }
        );
    }

    #[test]
    fn unreadable_state_is_refused_and_clears() {
        let mut t = ProducerTable::default();
        append(&mut t, &build_producer_batch(0, 3, 7, 0, 0), 10);
        let saved = t.save();
        let mut u = ProducerTable::default();
        append(&mut u, &build_producer_batch(0, 1, 5, 0, 0), 0);
        assert!(!u.load(&saved[..saved.len() - 1]), "truncated state");
        assert!(u.producers.is_empty());
        assert!(!u.load(&[9]), "unknown version");
        assert!(!u.load(&[]), "empty");
        assert!(u.load(&[STATE_VERSION]), "no producers");
        assert!(u.producers.is_empty());
    }
}
