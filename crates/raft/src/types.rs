//! openraft's type configuration for Sluice, and the conversion between openraft's log entries
//! and the entries of `storage::PartitionLog` (one place, so a Raft index never passes for a
//! Kafka offset anywhere else).
//!
//! Choices, written down because they are load-bearing:
//! - Standard Raft leader ids (`leader_id_std`): one leader per term, so a committed leader id
//!   is just the term, which is exactly what the partition log stores per entry.
//! - The application data of a partition group is one Kafka record batch, as stored, or a
//!   replicated command (DeleteRecords' new log start). Entries that are not batches
//!   (commands, the blank entry of a new leader, membership changes) are stored as
//!   `EntryKind::Raft` with a small JSON payload; they take a Raft index but no Kafka offset,
//!   and the Kafka read path never sees them.

use std::fmt;

use bytes::Bytes;
use openraft::entry::RaftEntry;
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};
use storage::EntryKind;

/// Application data of a partition group: one record batch v2, bytes as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// One record batch v2: takes Kafka offsets.
    Batch(Bytes),
    /// A command every replica applies; takes no offset (stored as an `EntryKind::Raft`
    /// entry, never served to Kafka reads).
    Command(Command),
}

/// A replicated command of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// DeleteRecords: the log starts at this offset (records below are gone for readers,
    /// and whole segments below it are purged through Raft like retention's).
    LogStart(i64),
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Batch(b) => write!(f, "batch({} bytes)", b.len()),
            Payload::Command(c) => write!(f, "{c:?}"),
        }
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What applying an entry answers: the Kafka offsets a batch got (none for Raft's own entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Applied {
    /// `(base offset, last offset)` of the applied batch.
    pub offsets: Option<(i64, i64)>,
}

openraft::declare_raft_types!(
    /// The Raft type configuration of every Sluice group.
    pub TypeConfig:
        D = Payload,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

pub type NodeId = u64;
pub type RaftEntryOf = <TypeConfig as openraft::RaftTypeConfig>::Entry;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot<SD> = openraft::type_config::alias::SnapshotOf<TypeConfig, SD>;
pub type Membership = openraft::Membership<NodeId, openraft::BasicNode>;

/// A log id from a term and an index.
pub fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new_term_index(term, index)
}

/// Payload of an `EntryKind::Raft` entry on disk.
#[derive(Serialize, Deserialize)]
enum RaftOwn {
    Blank,
    Membership(Membership),
    Command(Command),
}

/// openraft entry -> stored entry. Batches keep their bytes (no copy); the caller stamps
/// offsets.
pub fn to_stored(e: &RaftEntryOf) -> std::io::Result<storage::Entry> {
    let (kind, payload) = match &e.payload {
        EntryPayload::Normal(Payload::Batch(b)) => (EntryKind::Batch, b.clone()),
        EntryPayload::Normal(Payload::Command(c)) => {
            (EntryKind::Raft, encode_own(&RaftOwn::Command(*c))?)
        }
        EntryPayload::Blank => (EntryKind::Raft, encode_own(&RaftOwn::Blank)?),
        EntryPayload::Membership(m) => (
            EntryKind::Raft,
            encode_own(&RaftOwn::Membership(m.clone()))?,
        ),
    };
    Ok(storage::Entry {
        term: e.log_id.leader_id.term,
        index: e.log_id.index,
        kind,
        payload,
    })
}

/// Stored entry -> openraft entry.
pub fn from_stored(e: storage::Entry) -> std::io::Result<RaftEntryOf> {
    let id = log_id(e.term, e.index);
    Ok(match e.kind {
        EntryKind::Batch => RaftEntryOf::new(id, EntryPayload::Normal(Payload::Batch(e.payload))),
        EntryKind::Raft => {
            let own: RaftOwn = serde_json::from_slice(&e.payload).map_err(|err| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("raft entry {}: {err}", e.index),
                )
            })?;
            match own {
                RaftOwn::Blank => RaftEntryOf::new(id, EntryPayload::Blank),
                RaftOwn::Membership(m) => RaftEntryOf::new(id, EntryPayload::Membership(m)),
                RaftOwn::Command(c) => {
                    RaftEntryOf::new(id, EntryPayload::Normal(Payload::Command(c)))
                }
            }
        }
    })
}

fn encode_own(own: &RaftOwn) -> std::io::Result<Bytes> {
    serde_json::to_vec(own)
        .map(Bytes::from)
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn stored_round_trip_keeps_kind_term_and_payload() {
        let batch = RaftEntryOf::new(
            log_id(3, 7),
            EntryPayload::Normal(Payload::Batch(Bytes::from_static(b"abc"))),
        );
        let s = to_stored(&batch).expect("encode");
        assert_eq!((s.term, s.index, s.kind), (3, 7, EntryKind::Batch));
        assert_eq!(&s.payload[..], b"abc");
        assert_eq!(from_stored(s).expect("decode"), batch);

        let blank = RaftEntryOf::new(log_id(4, 8), EntryPayload::Blank);
        let s = to_stored(&blank).expect("encode");
        assert_eq!(s.kind, EntryKind::Raft);
        assert_eq!(from_stored(s).expect("decode"), blank);

        let cmd = RaftEntryOf::new(
            log_id(4, 9),
            EntryPayload::Normal(Payload::Command(Command::LogStart(42))),
        );
        let s = to_stored(&cmd).expect("encode");
        assert_eq!(s.kind, EntryKind::Raft);
        assert_eq!(from_stored(s).expect("decode"), cmd);

        let mut nodes = BTreeMap::new();
        nodes.insert(1, openraft::BasicNode::new("a:1"));
        nodes.insert(2, openraft::BasicNode::new("b:2"));
        let m = Membership::new(vec![[1u64, 2].into_iter().collect()], nodes).expect("membership");
        let member = RaftEntryOf::new(log_id(4, 9), EntryPayload::Membership(m));
        let s = to_stored(&member).expect("encode");
        assert_eq!(from_stored(s).expect("decode"), member);
    }
}
