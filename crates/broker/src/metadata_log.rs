//! The cluster metadata log: topics, partition assignments and topic configs as records in
//! the internal partition `__cluster_metadata-0`, replicated by its own Raft group (the
//! controller group) like any other partition. Every node reads the committed records in
//! order and applies them to its local view (`topics::TopicManager`).
//!
//! Records are JSON values in ordinary v2 record batches (one record per batch). Applying
//! them is idempotent: a record that no longer matches the view (a topic created twice, a
//! delete of a topic id that is gone, partitions added from a count that changed) is
//! skipped, so a proposal retried after an unknown outcome does no harm.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;
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
    let mut offset = from.max(part.log_start_offset());
    let hw = part.high_watermark();
    while offset < hw {
        let read = part.read(offset, 4 << 20)?;
        if read.data.is_empty() {
            break;
        }
        let mut data = read.data;
        let mut next = offset;
        while !data.is_empty() {
            let set = match RecordBatchDecoder::decode(&mut data) {
                Ok(s) => s,
                Err(e) => {
                    return Err(raft::Error::Failed(format!(
                        "undecodable batch in {METADATA_TOPIC} at offset {next}: {e}"
                    )))
                }
            };
            for r in set.records {
                next = next.max(r.offset + 1);
                if r.control || r.offset < offset || r.offset >= hw {
                    continue;
                }
                let Some(value) = r.value else { continue };
                match serde_json::from_slice::<MetaRecord>(&value) {
                    Ok(rec) => out.push((r.offset + 1, rec)),
                    Err(e) => {
                        return Err(raft::Error::Failed(format!(
                            "undecodable record in {METADATA_TOPIC} at offset {}: {e}",
                            r.offset
                        )))
                    }
                }
            }
        }
        if next <= offset {
            break;
        }
        offset = next;
    }
    Ok((out, hw.max(from)))
}

#[cfg(test)]
mod tests {
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
