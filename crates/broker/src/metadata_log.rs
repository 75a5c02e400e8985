//! The cluster metadata log: topics, partition assignments and topic configs as records in
//! the internal partition `__cluster_metadata-0`, replicated by its own Raft group (the
//! controller group) like any other partition. Every node reads the committed records in
//! order and applies them to its local view (`topics::TopicManager`).
//!
//! Records are JSON values in ordinary v2 record batches (one record per batch). Applying
//! them is idempotent: a record that no longer matches the view (a topic created twice, a
//! delete of a topic id that is gone, partitions added from a count that changed) is
//! skipped, so a proposal retried after an unknown outcome does no harm.

use std::collections::{BTreeMap, HashMap};

use bytes::{Bytes, BytesMut};
use raft::Partition;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The internal topic holding the metadata log (one partition).
pub const METADATA_TOPIC: &str = "__cluster_metadata";
/// Its partition's Raft group key.
pub const METADATA_GROUP: &str = "__cluster_metadata-0";

/// One change of cluster metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MetaRecord {
    /// A topic with its partitions' replica lists (the first replica is the preferred leader).
    CreateTopic {
        name: String,
        id: Uuid,
        replicas: Vec<Vec<i32>>,
        configs: BTreeMap<String, String>,
    },
    /// Deletes the topic `name` if it still has this id.
    DeleteTopic { name: String, id: Uuid },
    /// Appends partitions to a topic that has exactly `from` partitions.
    AddPartitions {
        name: String,
        id: Uuid,
        from: i32,
        replicas: Vec<Vec<i32>>,
    },
    /// Replaces the explicitly set configs of a topic.
    SetConfigs {
        name: String,
        id: Uuid,
        configs: BTreeMap<String, String>,
    },
    /// The cluster id (the first such record counts).
    InitCluster { cluster_id: String },
    /// Producer ids `first..first + count` for `node` to hand out. Taken only if `first` is
    /// at or past the cluster's next free id (else another node got there first and the
    /// record is skipped), so no id is ever given to two producers in the cluster.
    AllocateProducerIds { node: i32, first: i64, count: i64 },
    /// In-sync replicas of partitions as their leaders computed them (Kafka's
    /// AlterPartition), so that every node answers Metadata with the leader's ISR. A change
    /// counts only if its leader epoch is at least the one recorded for the partition.
    SetIsr { changes: Vec<IsrChange> },
    /// A node's Kafka listeners as clients should reach them (the latest registration
    /// counts). `host`/`port` are the default (first) listener; `listeners` lists them all
    /// (absent in records written before named listeners existed).
    RegisterBroker {
        node: i32,
        host: String,
        port: u16,
        rack: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        listeners: Vec<Endpoint>,
    },
}

/// One partition's in-sync replicas, from its leader in `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsrChange {
    pub topic: String,
    pub id: Uuid,
    pub partition: i32,
    pub epoch: i32,
    pub isr: Vec<i32>,
}

/// The recorded in-sync replicas per (topic id, partition): (leader epoch, replicas).
#[derive(Debug, Default, Clone)]
pub struct IsrView(HashMap<(Uuid, i32), (i32, Vec<i32>)>);

impl IsrView {
    /// Folds changes in, skipping any from an older leader epoch than the one recorded.
    pub fn apply(&mut self, changes: &[IsrChange]) {
        for c in changes {
            let slot = self
                .0
                .entry((c.id, c.partition))
                .or_insert((i32::MIN, Vec::new()));
            if c.epoch >= slot.0 {
                *slot = (c.epoch, c.isr.clone());
            }
        }
    }

    pub fn get(&self, id: Uuid, partition: i32) -> Option<&(i32, Vec<i32>)> {
        self.0.get(&(id, partition))
    }

    /// Forgets a deleted topic's partitions.
    pub fn remove_topic(&mut self, id: Uuid) {
        self.0.retain(|(t, _), _| *t != id);
    }
}

/// The producer id blocks handed out so far (folded from `AllocateProducerIds`).
#[derive(Debug, Default, Clone)]
pub struct ProducerIdBlocks {
    /// The first id no block holds.
    pub next: i64,
    /// The latest block of each node: (first, end).
    pub latest: BTreeMap<i32, (i64, i64)>,
}

impl ProducerIdBlocks {
    pub fn apply(&mut self, node: i32, first: i64, count: i64) {
        if first >= self.next && count > 0 {
            self.next = first.saturating_add(count);
            self.latest.insert(node, (first, self.next));
        }
    }
}

/// A named Kafka listener's advertised address (`advertised.listeners`: `NAME://HOST:PORT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// A node as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub node: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    pub listeners: Vec<Endpoint>,
}

impl BrokerInfo {
    /// The address for clients that connected on listener `name`: that listener's when the
    /// node has one of that name, else its default listener's.
    pub fn address(&self, name: &str) -> (&str, u16) {
        match self.listeners.iter().find(|e| e.name == name) {
            Some(e) => (&e.host, e.port),
            None => (&self.host, self.port),
        }
    }
}

/// Encodes a record as a batch ready to propose.
pub fn encode(rec: &MetaRecord, now_ms: i64) -> BytesMut {
    let value = serde_json::to_vec(rec).expect("metadata records serialise");
    crate::groups::store::encode_batch(
        &[(Bytes::from_static(b"meta"), Some(Bytes::from(value)))],
        now_ms,
    )
}

/// A committed record with the offset after it.
pub type Committed = (i64, MetaRecord);

/// Reads the committed records of the metadata partition from `from` (an offset) up to the
/// high watermark. Returns them with the offset after each, and the high watermark read up
/// to. Blocking read.
pub fn read_committed(part: &Partition, from: i64) -> Result<(Vec<Committed>, i64), raft::Error> {
    let mut out = Vec::new();
    let hw = crate::committed::for_each(part, from, |r| {
        let Some(value) = r.value else { return Ok(()) };
        let rec = serde_json::from_slice::<MetaRecord>(&value).map_err(|e| {
            raft::Error::Failed(format!(
                "undecodable record in {METADATA_TOPIC} at offset {}: {e}",
                r.offset
            ))
        })?;
        out.push((r.offset + 1, rec));
        Ok(())
    })
    .map_err(|e| raft::Error::Failed(format!("{METADATA_TOPIC}: {e}")))?;
    Ok((out, hw))
}

#[cfg(test)]
mod tests {
    #[test]
    fn isr_changes_from_an_older_leader_epoch_are_skipped() {
        let id = uuid::Uuid::new_v4();
        let change = |partition, epoch, isr: &[i32]| super::IsrChange {
            topic: "t".into(),
            id,
            partition,
            epoch,
            isr: isr.to_vec(),
        };
        let mut v = super::IsrView::default();
        v.apply(&[change(0, 3, &[1, 2, 3]), change(1, 3, &[2, 3])]);
        // A deposed leader's late record (epoch 2) does not undo the newer one.
        v.apply(&[change(0, 2, &[1])]);
        assert_eq!(v.get(id, 0), Some(&(3, vec![1, 2, 3])));
        // The same or a newer epoch replaces it.
        v.apply(&[change(0, 3, &[1, 3]), change(1, 4, &[3])]);
        assert_eq!(v.get(id, 0), Some(&(3, vec![1, 3])));
        assert_eq!(v.get(id, 1), Some(&(4, vec![3])));
        // Serialized as the metadata log holds it, and back.
        let rec = super::MetaRecord::SetIsr {
            changes: vec![change(5, 7, &[2, 1])],
        };
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.contains("\"op\":\"set_isr\""), "{json}");
        assert_eq!(
            serde_json::from_str::<super::MetaRecord>(&json).unwrap(),
            rec
        );
        v.remove_topic(id);
        assert_eq!(v.get(id, 0), None);
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut b = super::ProducerIdBlocks::default();
        b.apply(1, 0, 1000);
        // Node 2 proposed the same block concurrently: committed second, it is skipped.
        b.apply(2, 0, 1000);
        assert_eq!(b.latest.get(&2), None);
        b.apply(2, 1000, 1000);
        // A floor past the cluster's next id (an old data directory) is honoured.
        b.apply(1, 5000, 1000);
        assert_eq!(b.latest[&1], (5000, 6000));
        assert_eq!(b.latest[&2], (1000, 2000));
        assert_eq!(b.next, 6000);
    }

    use super::*;

    #[test]
    fn records_round_trip_as_json() {
        let rec = MetaRecord::AddPartitions {
            name: "t".into(),
            id: Uuid::nil(),
            from: 2,
            replicas: vec![vec![1, 2], vec![2, 1]],
        };
        let json = serde_json::to_string(&rec).expect("json");
        assert!(json.starts_with(r#"{"op":"add_partitions""#), "{json}");
        assert_eq!(
            serde_json::from_str::<MetaRecord>(&json).expect("back"),
            rec
        );
    }
}
