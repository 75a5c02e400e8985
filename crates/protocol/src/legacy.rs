//! Wire formats Kafka 4 (and so the `kafka-protocol` crate) dropped but real clients still
//! speak: the request and response layouts of Produce v0-v2, Fetch v0-v3, CreateTopics
//! v0-v1 and OffsetCommit v1, and the conversion between message sets (record formats v0 and v1, "magic 0/1") and
//! the v2 record batches Sluice stores.
//!
//! Debian's kafka-go 0.2 sends nothing newer than Produce v2 and Fetch v2, and Sarama's
//! offset manager commits with OffsetCommit v1. A message set produced this way is converted
//! to one v2 batch (compressed with the producer's codec) before it is validated like any
//! other produce; a fetch in these versions gets its batches down-converted to messages of
//! the format the version implies, as Kafka 3 did. Pure functions: no I/O, no broker state.

use std::io::Read;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse, GroupId,
    OffsetCommitRequest, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE,
    NO_TIMESTAMP,
};
use storage::batch;

use crate::codes;
use crate::validate::Refusal;

// ------------------------------------------------------------------ request decoding

fn need(buf: &Bytes, n: usize) -> anyhow::Result<()> {
    anyhow::ensure!(buf.remaining() >= n, "truncated: need {n} more bytes");
    Ok(())
}

fn i16(buf: &mut Bytes) -> anyhow::Result<i16> {
    need(buf, 2)?;
    Ok(buf.get_i16())
}

fn i32(buf: &mut Bytes) -> anyhow::Result<i32> {
    need(buf, 4)?;
    Ok(buf.get_i32())
}

fn i64(buf: &mut Bytes) -> anyhow::Result<i64> {
    need(buf, 8)?;
    Ok(buf.get_i64())
}

fn nullable_string(buf: &mut Bytes) -> anyhow::Result<Option<StrBytes>> {
    let n = i16(buf)?;
    if n < 0 {
        return Ok(None);
    }
    need(buf, n as usize)?;
    Ok(Some(StrBytes::from_utf8(buf.split_to(n as usize))?))
}

fn string(buf: &mut Bytes) -> anyhow::Result<StrBytes> {
    nullable_string(buf)?.ok_or_else(|| anyhow::anyhow!("null in a non-nullable string"))
}

fn nullable_bytes(buf: &mut Bytes) -> anyhow::Result<Option<Bytes>> {
    let n = i32(buf)?;
    if n < 0 {
        return Ok(None);
    }
    need(buf, n as usize)?;
    Ok(Some(buf.split_to(n as usize)))
}

/// An array length, checked against what is left (each element takes at least `min_size`
/// bytes), so a lying length allocates nothing.
fn array_len(buf: &mut Bytes, min_size: usize) -> anyhow::Result<usize> {
    let n = i32(buf)?;
    anyhow::ensure!(n >= 0, "null or negative array length {n}");
    let n = n as usize;
    anyhow::ensure!(
        n.saturating_mul(min_size) <= buf.remaining(),
        "array of {n} elements in {} bytes",
        buf.remaining()
    );
    Ok(n)
}

/// OffsetCommit v1: group, generation, member, then per partition offset, a client commit
/// timestamp (ignored: the broker stamps its own) and metadata.
pub fn offset_commit_v1(buf: &mut Bytes) -> anyhow::Result<OffsetCommitRequest> {
    let group = string(buf)?;
    let generation = i32(buf)?;
    let member = string(buf)?;
    let topics_len = array_len(buf, 6)?;
    let mut topics = Vec::with_capacity(topics_len);
    for _ in 0..topics_len {
        let name = string(buf)?;
        let parts_len = array_len(buf, 22)?;
        let mut partitions = Vec::with_capacity(parts_len);
        for _ in 0..parts_len {
            let index = i32(buf)?;
            let offset = i64(buf)?;
            let _client_timestamp = i64(buf)?;
            let metadata = nullable_string(buf)?;
            partitions.push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(index)
                    .with_committed_offset(offset)
                    .with_committed_leader_epoch(-1)
                    .with_committed_metadata(metadata),
            );
        }
        topics.push(
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(name))
                .with_partitions(partitions),
        );
    }
    Ok(OffsetCommitRequest::default()
        .with_group_id(GroupId(group))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(member)
        .with_retention_time_ms(-1)
        .with_topics(topics))
}

/// Produce v0-v2 (one layout): acks, timeout, then per topic and partition a message set,
/// passed on as sent; [`message_set_to_batch`] converts it.
pub fn produce_request(buf: &mut Bytes) -> anyhow::Result<ProduceRequest> {
    let acks = i16(buf)?;
    let timeout = i32(buf)?;
    let topics_len = array_len(buf, 6)?;
    let mut topic_data = Vec::with_capacity(topics_len);
    for _ in 0..topics_len {
        let name = string(buf)?;
        let parts_len = array_len(buf, 8)?;
        let mut partition_data = Vec::with_capacity(parts_len);
        for _ in 0..parts_len {
            let index = i32(buf)?;
            let records = nullable_bytes(buf)?;
            partition_data.push(
                PartitionProduceData::default()
                    .with_index(index)
                    .with_records(records),
            );
        }
        topic_data.push(
            TopicProduceData::default()
                .with_name(TopicName(name))
                .with_partition_data(partition_data),
        );
    }
    Ok(ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout)
        .with_topic_data(topic_data))
}

/// Fetch v0-v3: v3 adds the response byte limit. Read uncommitted (isolation arrived in v4),
/// no fetch session.
pub fn fetch_request(buf: &mut Bytes, version: i16) -> anyhow::Result<FetchRequest> {
    let replica_id = i32(buf)?;
    let max_wait_ms = i32(buf)?;
    let min_bytes = i32(buf)?;
    let max_bytes = if version >= 3 { i32(buf)? } else { i32::MAX };
    let topics_len = array_len(buf, 6)?;
    let mut topics = Vec::with_capacity(topics_len);
    for _ in 0..topics_len {
        let name = string(buf)?;
        let parts_len = array_len(buf, 16)?;
        let mut partitions = Vec::with_capacity(parts_len);
        for _ in 0..parts_len {
            let partition = i32(buf)?;
            let fetch_offset = i64(buf)?;
            let partition_max_bytes = i32(buf)?;
            partitions.push(
                FetchPartition::default()
                    .with_partition(partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(fetch_offset)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(partition_max_bytes),
            );
        }
        topics.push(
            FetchTopic::default()
                .with_topic(TopicName(name))
                .with_partitions(partitions),
        );
    }
    Ok(FetchRequest::default()
        .with_replica_id(BrokerId(replica_id))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(max_bytes)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics))
}

/// CreateTopics v0-v1 (kafka-go 0.2's `Conn.CreateTopics` sends v0): per topic the name,
/// partitions, replication factor, manual assignments and configs, then the timeout; v1
/// adds validate-only.
pub fn create_topics_request(buf: &mut Bytes, version: i16) -> anyhow::Result<CreateTopicsRequest> {
    let topics_len = array_len(buf, 16)?;
    let mut topics = Vec::with_capacity(topics_len);
    for _ in 0..topics_len {
        let name = string(buf)?;
        let num_partitions = i32(buf)?;
        let replication_factor = i16(buf)?;
        let assignments_len = array_len(buf, 8)?;
        let mut assignments = Vec::with_capacity(assignments_len);
        for _ in 0..assignments_len {
            let partition_index = i32(buf)?;
            let ids_len = array_len(buf, 4)?;
            let mut broker_ids = Vec::with_capacity(ids_len);
            for _ in 0..ids_len {
                broker_ids.push(BrokerId(i32(buf)?));
            }
            assignments.push(
                CreatableReplicaAssignment::default()
                    .with_partition_index(partition_index)
                    .with_broker_ids(broker_ids),
            );
        }
        let configs_len = array_len(buf, 4)?;
        let mut configs = Vec::with_capacity(configs_len);
        for _ in 0..configs_len {
            let name = string(buf)?;
            let value = nullable_string(buf)?;
            configs.push(
                CreatableTopicConfig::default()
                    .with_name(name)
                    .with_value(value),
            );
        }
        topics.push(
            CreatableTopic::default()
                .with_name(TopicName(name))
                .with_num_partitions(num_partitions)
                .with_replication_factor(replication_factor)
                .with_assignments(assignments)
                .with_configs(configs),
        );
    }
    let timeout_ms = i32(buf)?;
    let validate_only = if version >= 1 {
        need(buf, 1)?;
        buf.get_u8() != 0
    } else {
        false
    };
    Ok(CreateTopicsRequest::default()
        .with_topics(topics)
        .with_timeout_ms(timeout_ms)
        .with_validate_only(validate_only))
}

// ------------------------------------------------------------------ response encoding

/// CreateTopics response v0-v1: per topic name and error code; v1 adds the message.
pub fn encode_create_topics_response(
    r: &CreateTopicsResponse,
    version: i16,
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    put_len(out, r.topics.len())?;
    for t in &r.topics {
        put_string(out, t.name.as_str())?;
        out.put_i16(t.error_code);
        if version >= 1 {
            match &t.error_message {
                Some(m) => put_string(out, m.as_str())?,
                None => out.put_i16(-1),
            }
        }
    }
    Ok(())
}

fn put_string(out: &mut BytesMut, s: &str) -> anyhow::Result<()> {
    out.put_i16(i16::try_from(s.len())?);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn put_len(out: &mut BytesMut, n: usize) -> anyhow::Result<()> {
    out.put_i32(i32::try_from(n)?);
    Ok(())
}

/// Produce response v0-v2: v1 adds the throttle time, v2 the log append time.
pub fn encode_produce_response(
    r: &ProduceResponse,
    version: i16,
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    put_len(out, r.responses.len())?;
    for t in &r.responses {
        put_string(out, t.name.as_str())?;
        put_len(out, t.partition_responses.len())?;
        for p in &t.partition_responses {
            out.put_i32(p.index);
            out.put_i16(p.error_code);
            out.put_i64(p.base_offset);
            if version >= 2 {
                out.put_i64(p.log_append_time_ms);
            }
        }
    }
    if version >= 1 {
        out.put_i32(r.throttle_time_ms);
    }
    Ok(())
}

/// Fetch response v0-v3: v1 adds the throttle time. The records must already be a message
/// set of the version's format ([`batches_to_message_set`]).
pub fn encode_fetch_response(
    r: &FetchResponse,
    version: i16,
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    if version >= 1 {
        out.put_i32(r.throttle_time_ms);
    }
    put_len(out, r.responses.len())?;
    for t in &r.responses {
        put_string(out, t.topic.as_str())?;
        put_len(out, t.partitions.len())?;
        for p in &t.partitions {
            out.put_i32(p.partition_index);
            out.put_i16(p.error_code);
            out.put_i64(p.high_watermark);
            let records = p.records.as_deref().unwrap_or_default();
            put_len(out, records.len())?;
            out.put_slice(records);
        }
    }
    Ok(())
}

/// The record format a Fetch version reads: magic 0 before v2, magic 1 for v2 and v3.
pub fn fetch_magic(version: i16) -> i8 {
    if version >= 2 {
        1
    } else {
        0
    }
}

// ------------------------------------------------------------------ message sets

/// Where a v2 batch has its magic byte (a message set has a CRC byte there).
const MAGIC_OFFSET: usize = 16;
/// Offset and size before every message.
const MESSAGE_LOG_OVERHEAD: usize = 12;
/// The smallest message body: crc, magic, attributes, key and value lengths.
const MIN_MESSAGE_SIZE: usize = 14;
/// Attribute bit of a magic 1 message: the timestamp is the broker's LogAppendTime.
const LOG_APPEND_TIME_BIT: u8 = 1 << 3;

fn corrupt(message: impl Into<String>) -> Refusal {
    (codes::CORRUPT_MESSAGE, message.into())
}

struct Message {
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
}

/// Converts a produced message set (magic 0 or 1, compressed or not) into one v2 record batch
/// of the same records, compressed with the producer's codec. Offsets are relative (the
/// broker assigns them on append); magic 0 messages get no timestamp (-1), as in Kafka's
/// up-conversion. Compressed messages inflate into at most `budget` bytes, which is reduced
/// by what they took (one budget serves a whole request). Input that already is a v2 batch
/// is returned as it is; validation then treats it like any other.
pub fn message_set_to_batch(data: &Bytes, budget: &mut usize) -> Result<Bytes, Refusal> {
    if data.len() > MAGIC_OFFSET && data[MAGIC_OFFSET] == batch::MAGIC_V2 as u8 {
        return Ok(data.clone());
    }
    let mut messages = Vec::new();
    let mut codec = Compression::None;
    let mut inflated = 0usize;
    parse_message_set(
        data.clone(),
        true,
        *budget,
        &mut inflated,
        &mut codec,
        &mut messages,
    )?;
    *budget = budget.saturating_sub(inflated);
    if messages.is_empty() {
        return Err((codes::INVALID_RECORD, "empty message set".into()));
    }
    // A v2 batch stores each timestamp as a delta from the smallest one.
    let (min, max) = messages.iter().fold((i64::MAX, i64::MIN), |(lo, hi), m| {
        (lo.min(m.timestamp), hi.max(m.timestamp))
    });
    if max.checked_sub(min).is_none() {
        return Err((
            codes::INVALID_TIMESTAMP,
            format!("timestamps {min} and {max} are too far apart for one batch"),
        ));
    }
    let records: Vec<Record> = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder keeps records in one batch while offset - sequence stays constant
            // and writes the first record's sequence as the base: -1 (none) for all of them.
            sequence: NO_SEQUENCE.wrapping_add(i as i32),
            timestamp: m.timestamp,
            key: m.key,
            value: m.value,
            headers: Default::default(),
        })
        .collect();
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: codec,
    };
    RecordBatchEncoder::encode(&mut out, &records, &options).map_err(|e| {
        (
            codes::CORRUPT_MESSAGE,
            format!("re-encoding the message set as a v2 batch: {e}"),
        )
    })?;
    Ok(out.freeze())
}

fn parse_message_set(
    mut buf: Bytes,
    outer: bool,
    max_inflated: usize,
    inflated: &mut usize,
    codec: &mut Compression,
    out: &mut Vec<Message>,
) -> Result<(), Refusal> {
    while buf.has_remaining() {
        if buf.remaining() < MESSAGE_LOG_OVERHEAD {
            return Err(corrupt("truncated message header"));
        }
        let _offset = buf.get_i64();
        let size = buf.get_i32();
        if size < MIN_MESSAGE_SIZE as i32 || size as usize > buf.remaining() {
            return Err(corrupt(format!(
                "message size {size} with {} bytes left",
                buf.remaining()
            )));
        }
        let body = buf.split_to(size as usize);
        let crc = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        if crc32fast::hash(&body[4..]) != crc {
            return Err(corrupt("message CRC mismatch"));
        }
        let magic = body[4] as i8;
        let attributes = body[5];
        let mut rest = body.slice(6..);
        let timestamp = match magic {
            0 => NO_TIMESTAMP,
            1 if rest.remaining() >= 8 => rest.get_i64(),
            1 => return Err(corrupt("truncated message timestamp")),
            _ => {
                return Err(corrupt(format!(
                    "message magic {magic} inside a message set"
                )))
            }
        };
        let (key, value) = match (nullable_bytes(&mut rest), nullable_bytes(&mut rest)) {
            (Ok(k), Ok(v)) if !rest.has_remaining() => (k, v),
            _ => return Err(corrupt("message key and value do not fill the message")),
        };
        let wrapped = match attributes & 0x7 {
            0 => {
                out.push(Message {
                    timestamp,
                    key,
                    value,
                });
                continue;
            }
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => {
                return Err((
                    codes::UNSUPPORTED_COMPRESSION_TYPE,
                    "zstd needs record format v2 (Produce v3 or newer)".into(),
                ))
            }
            id => return Err(corrupt(format!("unknown compression codec id {id}"))),
        };
        if !outer {
            return Err(corrupt("a compressed message inside a compressed message"));
        }
        let Some(value) = value else {
            return Err(corrupt("a compressed message without a value"));
        };
        let inner = inflate(wrapped, &value, max_inflated.saturating_sub(*inflated))?;
        *inflated += inner.len();
        *codec = wrapped;
        let first = out.len();
        parse_message_set(inner, false, max_inflated, inflated, codec, out)?;
        if magic == 1 && attributes & LOG_APPEND_TIME_BIT != 0 {
            for m in &mut out[first..] {
                m.timestamp = timestamp;
            }
        }
    }
    Ok(())
}

/// Decompresses a wrapper message's value, refusing more than `limit` bytes of output.
fn inflate(codec: Compression, data: &Bytes, limit: usize) -> Result<Bytes, Refusal> {
    let too_large = || {
        (
            codes::MESSAGE_TOO_LARGE,
            format!("compressed message set inflates beyond {limit} bytes"),
        )
    };
    let bad = |e: &dyn std::fmt::Display| corrupt(format!("decompressing {codec:?}: {e}"));
    let read_limited = |r: &mut dyn Read| -> Result<Bytes, Refusal> {
        let mut v = Vec::new();
        r.take(limit as u64 + 1)
            .read_to_end(&mut v)
            .map_err(|e| bad(&e))?;
        if v.len() > limit {
            return Err(too_large());
        }
        Ok(Bytes::from(v))
    };
    match codec {
        Compression::Gzip => read_limited(&mut flate2::read::MultiGzDecoder::new(&data[..])),
        Compression::Lz4 => {
            let mut d = lz4::Decoder::new(&data[..]).map_err(|e| bad(&e))?;
            read_limited(&mut d)
        }
        Compression::Snappy => snappy_inflate(data, limit).map_err(|e| match e {
            SnappyError::TooLarge => too_large(),
            SnappyError::Bad(m) => bad(&m),
        }),
        Compression::None | Compression::Zstd => Err(bad(&"not a message set codec")),
    }
}

enum SnappyError {
    TooLarge,
    Bad(String),
}

/// Snappy as Kafka clients write it: the xerial framing of the Java client (a 16-byte
/// header, then length-prefixed raw blocks) or one raw block (kafka-go, librdkafka).
fn snappy_inflate(data: &[u8], limit: usize) -> Result<Bytes, SnappyError> {
    const XERIAL: &[u8] = b"\x82SNAPPY\x00";
    let mut out = Vec::new();
    let block = |raw: &[u8], out: &mut Vec<u8>| -> Result<(), SnappyError> {
        let n = snap::raw::decompress_len(raw).map_err(|e| SnappyError::Bad(e.to_string()))?;
        if out.len().saturating_add(n) > limit {
            return Err(SnappyError::TooLarge);
        }
        let start = out.len();
        out.resize(start + n, 0);
        snap::raw::Decoder::new()
            .decompress(raw, &mut out[start..])
            .map_err(|e| SnappyError::Bad(e.to_string()))?;
        Ok(())
    };
    if data.len() >= 16 && data.starts_with(XERIAL) {
        let mut rest = &data[16..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(SnappyError::Bad("truncated xerial block length".into()));
            }
            let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            if n > rest.len() {
                return Err(SnappyError::Bad("truncated xerial block".into()));
            }
            block(&rest[..n], &mut out)?;
            rest = &rest[n..];
        }
    } else {
        block(data, &mut out)?;
    }
    Ok(Bytes::from(out))
}

/// Down-converts stored v2 batches (as a fetch read them) to a message set of `magic` 0 or
/// 1 for a Fetch v0-v3 client: one uncompressed message per record at its own offset,
/// skipping control records (transaction markers) and records before `from_offset` (a
/// batch is read whole). Headers have no place in these formats and are dropped, as Kafka
/// drops them. A partial batch at the end of a size-limited read is left out. Also returns
/// the offset after the last whole batch (`from_offset` if none): where to read on when
/// nothing was left to convert.
pub fn batches_to_message_set(data: &Bytes, magic: i8, from_offset: i64) -> (Bytes, i64) {
    let mut rest = data.clone();
    let mut out = BytesMut::with_capacity(data.len());
    let mut next = from_offset;
    while rest.len() >= batch::HEADER_SIZE {
        let length = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let size = (length.max(0) as usize).saturating_add(batch::LOG_OVERHEAD);
        if size < batch::HEADER_SIZE || size > rest.len() {
            break;
        }
        let mut one = rest.split_to(size);
        let Ok(header) = batch::BatchHeader::parse(&one) else {
            break;
        };
        let Ok(set) = RecordBatchDecoder::decode(&mut one) else {
            break;
        };
        for r in set.records.iter().filter(|r| !r.control) {
            if r.offset >= from_offset {
                put_message(&mut out, magic, r);
            }
        }
        next = next.max(header.last_offset() + 1);
    }
    (out.freeze(), next)
}

fn put_message(out: &mut BytesMut, magic: i8, r: &Record) {
    let key = r.key.as_deref();
    let value = r.value.as_deref();
    let body = MIN_MESSAGE_SIZE
        + if magic >= 1 { 8 } else { 0 }
        + key.map_or(0, <[u8]>::len)
        + value.map_or(0, <[u8]>::len);
    out.put_i64(r.offset);
    out.put_i32(body as i32);
    let crc_at = out.len();
    out.put_u32(0);
    out.put_i8(magic);
    let log_append = magic >= 1 && r.timestamp_type == TimestampType::LogAppend;
    out.put_u8(if log_append { LOG_APPEND_TIME_BIT } else { 0 });
    if magic >= 1 {
        out.put_i64(r.timestamp);
    }
    for field in [key, value] {
        match field {
            Some(b) => {
                out.put_i32(b.len() as i32);
                out.put_slice(b);
            }
            None => out.put_i32(-1),
        }
    }
    let crc = crc32fast::hash(&out[crc_at + 4..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::produce_batches;

    /// A magic 0/1 message as an old producer writes it.
    fn message(
        out: &mut BytesMut,
        offset: i64,
        magic: i8,
        attributes: u8,
        ts: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) {
        let mut body = BytesMut::new();
        body.put_i8(magic);
        body.put_u8(attributes);
        if magic == 1 {
            body.put_i64(ts);
        }
        for f in [key, value] {
            match f {
                Some(b) => {
                    body.put_i32(b.len() as i32);
                    body.put_slice(b);
                }
                None => body.put_i32(-1),
            }
        }
        out.put_i64(offset);
        out.put_i32(body.len() as i32 + 4);
        out.put_u32(crc32fast::hash(&body));
        out.put_slice(&body);
    }

    fn plain_set(magic: i8, n: usize) -> BytesMut {
        let mut set = BytesMut::new();
        for i in 0..n {
            let key = format!("k{i}");
            let value = format!("value-{i}");
            let k = (i % 3 != 2).then_some(key.as_bytes());
            message(
                &mut set,
                i as i64,
                magic,
                0,
                1_700_000_000_000 + i as i64,
                k,
                Some(value.as_bytes()),
            );
        }
        set
    }

    fn compress(codec: Compression, raw: &[u8]) -> Vec<u8> {
        use std::io::Write;
        match codec {
            Compression::Gzip => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(raw).unwrap();
                e.finish().unwrap()
            }
            Compression::Snappy => snap::raw::Encoder::new().compress_vec(raw).unwrap(),
            Compression::Lz4 => {
                let mut e = lz4::EncoderBuilder::new().build(Vec::new()).unwrap();
                e.write_all(raw).unwrap();
                let (v, r) = e.finish();
                r.unwrap();
                v
            }
            _ => unreachable!(),
        }
    }

    fn decode_batch(b: &Bytes) -> Vec<Record> {
        let mut buf = b.clone();
        RecordBatchDecoder::decode(&mut buf)
            .expect("a v2 batch")
            .records
    }

    /// Parses a message set back: (offset, magic, timestamp, key, value).
    #[allow(clippy::type_complexity)]
    fn read_messages(mut set: Bytes) -> Vec<(i64, i8, i64, Option<Bytes>, Option<Bytes>)> {
        let mut out = Vec::new();
        while set.has_remaining() {
            let offset = set.get_i64();
            let size = set.get_i32() as usize;
            let mut body = set.split_to(size);
            let crc = body.get_u32();
            assert_eq!(crc, crc32fast::hash(&body), "message CRC");
            let magic = body.get_i8();
            let _attributes = body.get_u8();
            let ts = if magic == 1 { body.get_i64() } else { -1 };
            let k = nullable_bytes(&mut body).unwrap();
            let v = nullable_bytes(&mut body).unwrap();
            assert!(!body.has_remaining());
            out.push((offset, magic, ts, k, v));
        }
        out
    }

    #[test]
    fn plain_magic_1_and_0_sets_become_one_valid_v2_batch() {
        for magic in [0i8, 1] {
            let set = plain_set(magic, 5).freeze();
            let b = message_set_to_batch(&set, &mut (1 << 20)).expect("converts");
            let valid = produce_batches(&b, 1 << 20, None).expect("a valid batch");
            assert_eq!((valid.batches.len(), valid.records), (1, 5));
            let h = batch::BatchHeader::parse(&b).unwrap();
            assert_eq!((h.base_sequence, h.producer_id), (-1, -1));
            let records = decode_batch(&b);
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.offset, i as i64);
                assert_eq!(r.value.as_deref(), Some(format!("value-{i}").as_bytes()));
                assert_eq!(r.key.is_none(), i % 3 == 2);
                let ts = if magic == 1 {
                    1_700_000_000_000 + i as i64
                } else {
                    -1
                };
                assert_eq!(r.timestamp, ts);
            }
        }
    }

    #[test]
    fn compressed_wrappers_keep_their_codec() {
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4] {
            let inner = plain_set(1, 20);
            let mut set = BytesMut::new();
            let wrapped = compress(codec, &inner);
            message(&mut set, 19, 1, codec as u8, 0, None, Some(&wrapped));
            let b = message_set_to_batch(&set.freeze(), &mut (1 << 20)).expect("converts");
            produce_batches(&b, 1 << 20, None).expect("a valid batch");
            let h = batch::BatchHeader::parse(&b).unwrap();
            assert_eq!(h.records_count, 20);
            assert_eq!(h.attributes & 0x7, codec as i16, "{codec:?}");
            let records = decode_batch(&b);
            assert_eq!(records[7].value.as_deref(), Some(&b"value-7"[..]));
            assert_eq!(records[7].timestamp, 1_700_000_000_007);
        }
    }

    #[test]
    fn timestamps_too_far_apart_for_one_batch_are_refused() {
        let mut set = BytesMut::new();
        message(&mut set, 0, 1, 0, i64::MIN + 1, None, Some(b"old"));
        message(&mut set, 1, 1, 0, 1_700_000_000_000, None, Some(b"new"));
        let (code, _) = message_set_to_batch(&set.freeze(), &mut (1 << 20)).unwrap_err();
        assert_eq!(code, codes::INVALID_TIMESTAMP);
    }

    #[test]
    fn bad_message_sets_get_kafka_error_codes() {
        let good = plain_set(1, 3);
        // A flipped value byte breaks the CRC.
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            message_set_to_batch(&bad.freeze(), &mut (1 << 20))
                .unwrap_err()
                .0,
            codes::CORRUPT_MESSAGE
        );
        // Truncated in the middle of a message.
        let cut = good.clone().freeze().slice(..good.len() - 3);
        assert_eq!(
            message_set_to_batch(&cut, &mut (1 << 20)).unwrap_err().0,
            codes::CORRUPT_MESSAGE
        );
        // zstd needs the v2 format.
        let mut z = BytesMut::new();
        message(&mut z, 0, 1, 4, 0, None, Some(b"x"));
        assert_eq!(
            message_set_to_batch(&z.freeze(), &mut (1 << 20))
                .unwrap_err()
                .0,
            codes::UNSUPPORTED_COMPRESSION_TYPE
        );
        // Nested compression.
        let mut inner = BytesMut::new();
        message(
            &mut inner,
            0,
            1,
            1,
            0,
            None,
            Some(&compress(Compression::Gzip, &good)),
        );
        let mut outer = BytesMut::new();
        let wrapped = compress(Compression::Gzip, &inner);
        message(&mut outer, 0, 1, 1, 0, None, Some(&wrapped));
        assert_eq!(
            message_set_to_batch(&outer.freeze(), &mut (1 << 20))
                .unwrap_err()
                .0,
            codes::CORRUPT_MESSAGE
        );
        // A bomb: 8 MiB of zeros in a small gzip wrapper, against a 1 MiB limit.
        let mut bomb = BytesMut::new();
        let mut zeros = BytesMut::new();
        message(&mut zeros, 0, 1, 0, 0, None, Some(&vec![0u8; 8 << 20]));
        let wrapped = compress(Compression::Gzip, &zeros);
        message(&mut bomb, 0, 1, 1, 0, None, Some(&wrapped));
        assert_eq!(
            message_set_to_batch(&bomb.freeze(), &mut (1 << 20))
                .unwrap_err()
                .0,
            codes::MESSAGE_TOO_LARGE
        );
        assert_eq!(
            message_set_to_batch(&Bytes::new(), &mut (1 << 20))
                .unwrap_err()
                .0,
            codes::INVALID_RECORD
        );
    }

    #[test]
    fn v2_batches_down_convert_to_messages_at_their_offsets() {
        let set = plain_set(1, 6).freeze();
        let b = message_set_to_batch(&set, &mut (1 << 20)).expect("converts");
        // As stored at offset 100: rewrite the base offset.
        let mut stored = BytesMut::from(&b[..]);
        stored[..8].copy_from_slice(&100i64.to_be_bytes());
        let mut two = stored.clone();
        two[..8].copy_from_slice(&106i64.to_be_bytes());
        stored.extend_from_slice(&two);
        // A partial third batch, as a size-limited read ends.
        stored.extend_from_slice(&two[..40]);
        let stored = stored.freeze();
        for magic in [0i8, 1] {
            let (set, next) = batches_to_message_set(&stored, magic, 103);
            assert_eq!(next, 112, "after the second, whole batch");
            let out = read_messages(set);
            let offsets: Vec<i64> = out.iter().map(|m| m.0).collect();
            assert_eq!(offsets, (103..112).collect::<Vec<_>>());
            assert!(out.iter().all(|m| m.1 == magic));
            let m = &out[0];
            assert_eq!(m.4.as_deref(), Some(&b"value-3"[..]));
            assert_eq!(m.3.as_deref(), Some(&b"k3"[..]));
            assert_eq!(out[2].3, None, "record 5 has no key");
            assert_eq!(m.2, if magic == 1 { 1_700_000_000_003 } else { -1 });
        }
    }

    #[test]
    fn control_batches_are_not_down_converted() {
        let record = Record {
            transactional: true,
            control: true,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: 7,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 0,
            key: Some(Bytes::from_static(&[0, 0, 0, 1])),
            value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0])),
            headers: Default::default(),
        };
        let mut marker = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut marker, [&record], &options).unwrap();
        let (set, next) = batches_to_message_set(&marker.freeze(), 1, 0);
        assert!(set.is_empty());
        assert_eq!(next, 1, "read on after the marker");
    }

    #[test]
    fn create_topics_v0_and_v1_decode() {
        for version in [0i16, 1] {
            let mut b = BytesMut::new();
            b.put_i32(1);
            b.put_i16(1);
            b.put_slice(b"t");
            b.put_i32(6);
            b.put_i16(3);
            b.put_i32(1); // one manual assignment
            b.put_i32(0);
            b.put_i32(2);
            b.put_i32(1);
            b.put_i32(2);
            b.put_i32(1); // one config
            b.put_i16(12);
            b.put_slice(b"retention.ms");
            b.put_i16(4);
            b.put_slice(b"1000");
            b.put_i32(5_000);
            if version == 1 {
                b.put_u8(1);
            }
            let mut buf = b.freeze();
            let r = create_topics_request(&mut buf, version).expect("decodes");
            assert!(!buf.has_remaining());
            let t = &r.topics[0];
            assert_eq!(
                (t.name.as_str(), t.num_partitions, t.replication_factor),
                ("t", 6, 3)
            );
            assert_eq!(t.assignments[0].broker_ids, vec![BrokerId(1), BrokerId(2)]);
            assert_eq!(t.configs[0].value.as_deref(), Some("1000"));
            assert_eq!((r.timeout_ms, r.validate_only), (5_000, version == 1));
        }
        // A lying array length fails without allocating.
        let mut lie = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0, 0]);
        assert!(create_topics_request(&mut lie, 0).is_err());
    }

    #[test]
    fn legacy_responses_have_the_old_layouts() {
        use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
        use kafka_protocol::messages::produce_response::{
            PartitionProduceResponse, TopicProduceResponse,
        };
        let r = ProduceResponse::default()
            .with_throttle_time_ms(9)
            .with_responses(vec![TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_responses(vec![PartitionProduceResponse::default()
                    .with_index(2)
                    .with_base_offset(40)
                    .with_log_append_time_ms(-1)])]);
        for (v, len) in [
            (0, 4 + 3 + 4 + 14),
            (1, 4 + 3 + 4 + 14 + 4),
            (2, 4 + 3 + 4 + 22 + 4),
        ] {
            let mut out = BytesMut::new();
            encode_produce_response(&r, v, &mut out).unwrap();
            assert_eq!(out.len(), len, "produce v{v}");
        }
        let f = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![PartitionData::default()
                .with_high_watermark(5)
                .with_records(Some(Bytes::from_static(b"abc")))])]);
        for (v, len) in [(0, 4 + 3 + 4 + 14 + 4 + 3), (2, 4 + 4 + 3 + 4 + 14 + 4 + 3)] {
            let mut out = BytesMut::new();
            encode_fetch_response(&f, v, &mut out).unwrap();
            assert_eq!(out.len(), len, "fetch v{v}");
        }
        use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
        let c = CreateTopicsResponse::default().with_topics(vec![CreatableTopicResult::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_error_code(36)
            .with_error_message(Some(StrBytes::from_static_str("exists")))]);
        for (v, len) in [(0, 4 + 3 + 2), (1, 4 + 3 + 2 + 8)] {
            let mut out = BytesMut::new();
            encode_create_topics_response(&c, v, &mut out).unwrap();
            assert_eq!(out.len(), len, "create topics v{v}");
        }
    }
}
