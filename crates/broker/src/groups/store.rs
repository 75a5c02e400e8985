//! The records of `__consumer_offsets`: keys and values in Kafka's own binary layout, so
//! tools that decode that topic read ours too.
//!
//! - offset commit: key v1 `(group, topic, partition)`, value v3 `(offset, leader epoch,
//!   metadata, commit timestamp)`;
//! - group metadata: key v2 `(group)`, value v3 `(protocol type, generation, protocol,
//!   leader, state timestamp, members)`.
//!
//! - consumer-protocol (KIP-848) group: Sluice's own keys, key v100 `(group)` with value v0
//!   `(JSON: group epoch, assignment epoch, assignor, subscribed topics' partition counts)`
//!   and key v101 `(group, member)` with value v0 `(JSON: the member, its epochs,
//!   subscription, assignment, revoking partitions and target)`. Kafka spreads the same
//!   state over key versions 3-8; here a member's own change rewrites one small record.
//!
//! A null value (tombstone) deletes the key. Values are non-flexible (no tagged fields).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// A key of `__consumer_offsets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group(String),
    /// A consumer-protocol group's group-level record.
    ConsumerGroup(String),
    /// A consumer-protocol group member's record.
    ConsumerGroupMember {
        group: String,
        member: String,
    },
}

/// The key version of Sluice's consumer-protocol group records.
pub const CONSUMER_GROUP_KEY_VERSION: i16 = 100;
/// The key version of Sluice's consumer-protocol member records.
pub const CONSUMER_GROUP_MEMBER_KEY_VERSION: i16 = 101;

/// A committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

/// One member in a stored group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// A group's membership as stored after each completed rebalance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp: i64,
    pub members: Vec<MemberValue>,
}

/// Something that was decoded from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Offset(OffsetValue),
    Group(GroupValue),
    /// A consumer-protocol record's JSON (`consumer::GroupMeta` or
    /// `consumer::MemberSnapshot`, by key).
    Json(Bytes),
}

fn put_str(b: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(i16::MAX as usize)];
    b.put_i16(s.len() as i16);
    b.put_slice(s);
}

fn put_opt_str(b: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(b, s),
        None => b.put_i16(-1),
    }
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_i32(v.len() as i32);
    b.put_slice(v);
}

pub fn encode_key(key: &Key) -> Bytes {
    let mut b = BytesMut::new();
    match key {
        Key::Offset {
            group,
            topic,
            partition,
        } => {
            b.put_i16(1);
            put_str(&mut b, group);
            put_str(&mut b, topic);
            b.put_i32(*partition);
        }
        Key::Group(group) => {
            b.put_i16(2);
            put_str(&mut b, group);
        }
        Key::ConsumerGroup(group) => {
            b.put_i16(CONSUMER_GROUP_KEY_VERSION);
            put_str(&mut b, group);
        }
        Key::ConsumerGroupMember { group, member } => {
            b.put_i16(CONSUMER_GROUP_MEMBER_KEY_VERSION);
            put_str(&mut b, group);
            put_str(&mut b, member);
        }
    }
    b.freeze()
}

/// A consumer-protocol record's value: version 0, then the JSON.
pub fn encode_json(json: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + json.len());
    b.put_i16(0);
    b.put_slice(json);
    b.freeze()
}

pub fn encode_offset(v: &OffsetValue) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(3);
    b.put_i64(v.offset);
    b.put_i32(v.leader_epoch);
    put_str(&mut b, &v.metadata);
    b.put_i64(v.commit_timestamp);
    b.freeze()
}

pub fn encode_group(v: &GroupValue) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(3);
    put_str(&mut b, &v.protocol_type);
    b.put_i32(v.generation);
    put_opt_str(&mut b, v.protocol.as_deref());
    put_opt_str(&mut b, v.leader.as_deref());
    b.put_i64(v.state_timestamp);
    b.put_i32(v.members.len() as i32);
    for m in &v.members {
        put_str(&mut b, &m.member_id);
        put_opt_str(&mut b, m.group_instance_id.as_deref());
        put_str(&mut b, &m.client_id);
        put_str(&mut b, &m.client_host);
        b.put_i32(m.rebalance_timeout_ms);
        b.put_i32(m.session_timeout_ms);
        put_bytes(&mut b, &m.subscription);
        put_bytes(&mut b, &m.assignment);
    }
    b.freeze()
}

/// A reader that reports truncation instead of panicking.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Option<()> {
        (self.0.remaining() >= n).then_some(())
    }
    fn i16(&mut self) -> Option<i16> {
        self.need(2)?;
        Some(self.0.get_i16())
    }
    fn i32(&mut self) -> Option<i32> {
        self.need(4)?;
        Some(self.0.get_i32())
    }
    fn i64(&mut self) -> Option<i64> {
        self.need(8)?;
        Some(self.0.get_i64())
    }
    fn opt_str(&mut self) -> Option<Option<String>> {
        let n = self.i16()?;
        if n < 0 {
            return Some(None);
        }
        self.need(n as usize)?;
        let s = self.0.split_to(n as usize);
        Some(Some(String::from_utf8_lossy(&s).into_owned()))
    }
    fn str(&mut self) -> Option<String> {
        self.opt_str().map(Option::unwrap_or_default)
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.i32()?;
        if n < 0 {
            return Some(Bytes::new());
        }
        self.need(n as usize)?;
        Some(self.0.split_to(n as usize))
    }
}

pub fn decode_key(key: Bytes) -> Option<Key> {
    let mut r = Reader(key);
    match r.i16()? {
        0 | 1 => Some(Key::Offset {
            group: r.str()?,
            topic: r.str()?,
            partition: r.i32()?,
        }),
        2 => Some(Key::Group(r.str()?)),
        CONSUMER_GROUP_KEY_VERSION => Some(Key::ConsumerGroup(r.str()?)),
        CONSUMER_GROUP_MEMBER_KEY_VERSION => Some(Key::ConsumerGroupMember {
            group: r.str()?,
            member: r.str()?,
        }),
        _ => None,
    }
}

/// Decodes a value for `key` (offset values v1 and v3, group values v3).
pub fn decode_value(key: &Key, value: Bytes) -> Option<Value> {
    let mut r = Reader(value);
    let version = r.i16()?;
    match key {
        Key::ConsumerGroup(_) | Key::ConsumerGroupMember { .. } => {
            (version == 0).then_some(Value::Json(r.0))
        }
        Key::Offset { .. } => {
            let offset = r.i64()?;
            let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
            let metadata = r.str()?;
            let commit_timestamp = r.i64()?;
            Some(Value::Offset(OffsetValue {
                offset,
                leader_epoch,
                metadata,
                commit_timestamp,
            }))
        }
        Key::Group(_) => {
            if version != 3 {
                return None;
            }
            let protocol_type = r.str()?;
            let generation = r.i32()?;
            let protocol = r.opt_str()?;
            let leader = r.opt_str()?;
            let state_timestamp = r.i64()?;
            let n = r.i32()?.max(0) as usize;
            let mut members = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                members.push(MemberValue {
                    member_id: r.str()?,
                    group_instance_id: r.opt_str()?,
                    client_id: r.str()?,
                    client_host: r.str()?,
                    rebalance_timeout_ms: r.i32()?,
                    session_timeout_ms: r.i32()?,
                    subscription: r.bytes()?,
                    assignment: r.bytes()?,
                });
            }
            Some(Value::Group(GroupValue {
                protocol_type,
                generation,
                protocol,
                leader,
                state_timestamp,
                members,
            }))
        }
    }
}

/// Like [`encode_batch`], as part of the transaction of producer `pid` (TxnOffsetCommit).
pub fn encode_txn_batch(
    records: &[(Bytes, Option<Bytes>)],
    pid: i64,
    epoch: i16,
    now_ms: i64,
) -> BytesMut {
    encode(records, now_ms, Some((pid, epoch)))
}

/// Encodes `(key, value)` pairs (None = tombstone) as one uncompressed record batch v2,
/// ready for `Partition::propose` (offsets are stamped by the partition).
pub fn encode_batch(records: &[(Bytes, Option<Bytes>)], now_ms: i64) -> BytesMut {
    encode(records, now_ms, None)
}

fn encode(
    records: &[(Bytes, Option<Bytes>)],
    now_ms: i64,
    producer: Option<(i64, i16)>,
) -> BytesMut {
    let (producer_id, producer_epoch) = producer.unwrap_or((-1, -1));
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: producer.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder keeps one batch only while offset - sequence stays constant; the
            // batch's base sequence is the first record's (-1: no idempotence).
            sequence: i as i32 - 1,
            timestamp: now_ms,
            key: Some(k.clone()),
            value: v.clone(),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encoding an uncompressed batch cannot fail");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn keys_and_values_round_trip_through_a_batch() {
        let ok = Key::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 7,
        };
        let ov = OffsetValue {
            offset: 42,
            leader_epoch: 3,
            metadata: "meta".into(),
            commit_timestamp: 1234,
        };
        let gk = Key::Group("g".into());
        let gv = GroupValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            state_timestamp: 99,
            members: vec![MemberValue {
                member_id: "m1".into(),
                group_instance_id: Some("i1".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300_000,
                session_timeout_ms: 45_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        let batch = encode_batch(
            &[
                (encode_key(&ok), Some(encode_offset(&ov))),
                (encode_key(&gk), Some(encode_group(&gv))),
                (encode_key(&gk), None),
            ],
            1,
        );
        storage::batch::BatchHeader::parse(&batch).expect("valid v2 batch");
        let mut bytes = batch.freeze();
        let set = RecordBatchDecoder::decode(&mut bytes).expect("decode");
        assert_eq!(set.records.len(), 3);
        let k0 = decode_key(set.records[0].key.clone().unwrap()).unwrap();
        assert_eq!(k0, ok);
        assert_eq!(
            decode_value(&k0, set.records[0].value.clone().unwrap()),
            Some(Value::Offset(ov))
        );
        let k1 = decode_key(set.records[1].key.clone().unwrap()).unwrap();
        assert_eq!(
            decode_value(&k1, set.records[1].value.clone().unwrap()),
            Some(Value::Group(gv))
        );
        assert!(set.records[2].value.is_none());
        // Truncated input is refused, not a panic.
        assert_eq!(decode_key(Bytes::from_static(&[0, 1, 0])), None);
        assert_eq!(
            decode_value(&k1, Bytes::from_static(&[0, 3, 0, 9, 1])),
            None
        );
    }

    #[test]
    fn partition_for_matches_java_string_hash_code() {
        // "abc".hashCode() == 96354; "polygenelubricants".hashCode() == Integer.MIN_VALUE.
        assert_eq!(super::super::java_hash("abc"), 96354);
        assert_eq!(
            super::super::java_hash("polygenelubricants"),
            i32::MIN,
            "the classic MIN_VALUE example"
        );
        assert_eq!(super::super::partition_for("polygenelubricants", 50), 0);
        assert_eq!(super::super::partition_for("abc", 50), 96354 % 50);
    }
}
