//! Idempotent producers: producer id allocation and the per-partition sequence table.
//!
//! The table is a [`raft::BatchFilter`]: it runs in log order on the proposing replica, before
//! an offset is assigned, so a duplicate batch is answered with its original offsets and never
//! written twice, and an out-of-order sequence is refused. Its state is rebuilt from the tail
//! of the log when a partition opens.

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
}

/// Sequence state of every idempotent producer that wrote to one partition.
#[derive(Default)]
pub struct ProducerTable {
    producers: HashMap<i64, ProducerEntry>,
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

    fn appended(&mut self, batch: &[u8], base_offset: i64, _last_offset: i64) {
        let Ok(h) = BatchHeader::parse(batch) else {
            return;
        };
        if h.is_control() && h.producer_id >= 0 {
            // A transaction marker carries the producer's current epoch (bumped when the
            // coordinator fenced it): later writes of older epochs are refused.
            let entry = self.producers.entry(h.producer_id).or_default();
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
