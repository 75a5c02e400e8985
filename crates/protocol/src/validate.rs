//! Validation of the record batches a client produces, before anything is appended.

use bytes::{Bytes, BytesMut};
use storage::batch::{self, BatchHeader};

use crate::codes;

/// Attribute bit for LogAppendTime.
const TIMESTAMP_TYPE_BIT: u16 = 1 << 3;

/// Batches that passed validation, ready to be proposed.
#[derive(Debug)]
pub struct Validated {
    pub batches: Vec<BytesMut>,
    pub records: u64,
    pub bytes: u64,
}

/// A refusal: Kafka error code and message.
pub type Refusal = (i16, String);

/// Checks the record batches of one partition as Kafka does before appending: magic v2
/// framing, CRC, size against `max_message_bytes`, record counts; no control batches from
/// clients, transactional ones only with a producer id. With `log_append_time`, stamps it as Kafka does.
pub fn produce_batches(
    records: &Bytes,
    max_message_bytes: i32,
    log_append_time: Option<i64>,
) -> Result<Validated, Refusal> {
    if records.is_empty() {
        return Err((
            codes::INVALID_RECORD,
            "produce request without records".into(),
        ));
    }
    let mut out = Validated {
        batches: Vec::with_capacity(1),
        records: 0,
        bytes: 0,
    };
    let mut pos = 0usize;
    while pos < records.len() {
        let rest = &records[pos..];
        if rest.len() < 17 {
            return Err((
                codes::CORRUPT_MESSAGE,
                format!("truncated batch header at byte {pos}"),
            ));
        }
        let length = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let magic = rest[16] as i8;
        if magic != 2 {
            return Err((
                codes::INVALID_RECORD,
                format!("record batch magic {magic}: only magic v2 batches are accepted"),
            ));
        }
        if length < (batch::HEADER_SIZE - batch::LOG_OVERHEAD) as i32 {
            return Err((
                codes::CORRUPT_MESSAGE,
                format!("batch length {length} is too small"),
            ));
        }
        let size = length as usize + batch::LOG_OVERHEAD;
        if size > max_message_bytes.max(0) as usize {
            return Err((
                codes::MESSAGE_TOO_LARGE,
                format!(
                    "batch of {size} bytes is larger than max.message.bytes ({max_message_bytes})"
                ),
            ));
        }
        if size > rest.len() {
            return Err((
                codes::CORRUPT_MESSAGE,
                format!(
                    "batch of {size} bytes but only {} bytes left in the request",
                    rest.len()
                ),
            ));
        }
        let raw = &rest[..size];
        let header = BatchHeader::parse(raw)
            .map_err(|e| (codes::CORRUPT_MESSAGE, format!("bad batch header: {e}")))?;
        if !batch::validate_crc(raw) {
            return Err((codes::CORRUPT_MESSAGE, "record batch CRC mismatch".into()));
        }
        if let batch::Compression::Unknown(id) = header.compression() {
            return Err((
                codes::CORRUPT_MESSAGE,
                format!("unknown compression codec id {id}"),
            ));
        }
        if header.records_count < 1
            || i64::from(header.last_offset_delta) != i64::from(header.records_count) - 1
        {
            return Err((
                codes::INVALID_RECORD,
                format!(
                    "batch has {} records but lastOffsetDelta {}",
                    header.records_count, header.last_offset_delta
                ),
            ));
        }
        if header.is_control() {
            return Err((
                codes::INVALID_RECORD,
                "clients may not produce control batches".into(),
            ));
        }
        if header.is_transactional() && header.producer_id < 0 {
            return Err((
                codes::INVALID_RECORD,
                "a transactional batch needs a producer id".into(),
            ));
        }
        let mut b = BytesMut::from(raw);
        if let Some(ts) = log_append_time {
            set_log_append_time(&mut b, ts);
        }
        out.records += header.records_count as u64;
        out.bytes += size as u64;
        out.batches.push(b);
        pos += size;
    }
    Ok(out)
}

/// Stamps LogAppendTime as Kafka does: timestamp type bit set, max timestamp = `ts`, CRC
/// recomputed (both fields are covered by it).
fn set_log_append_time(b: &mut [u8], ts: i64) {
    let attrs = u16::from_be_bytes([b[21], b[22]]) | TIMESTAMP_TYPE_BIT;
    b[21..23].copy_from_slice(&attrs.to_be_bytes());
    b[35..43].copy_from_slice(&ts.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn one_record_batch() -> BytesMut {
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from_static(b"value")),
            headers: Default::default(),
        };
        let mut buf = BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, [&record], &opts).expect("encode");
        buf
    }

    /// Sets the compression bits of the attributes and recomputes the CRC, so only the codec
    /// id is wrong.
    fn with_codec(mut b: BytesMut, id: u16) -> Bytes {
        let attrs = (u16::from_be_bytes([b[21], b[22]]) & !0x7) | id;
        b[21..23].copy_from_slice(&attrs.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b.freeze()
    }

    #[test]
    fn accepts_a_valid_batch() {
        let v = produce_batches(&one_record_batch().freeze(), 1 << 20, None).expect("valid");
        assert_eq!((v.batches.len(), v.records), (1, 1));
    }

    #[test]
    fn refuses_unknown_compression_codecs() {
        for id in 5..=7 {
            let err = produce_batches(&with_codec(one_record_batch(), id), 1 << 20, None)
                .expect_err("unknown codec must be refused");
            assert_eq!(err.0, codes::CORRUPT_MESSAGE, "codec {id}: {}", err.1);
        }
    }

    #[test]
    fn refuses_a_flipped_byte() {
        let mut b = one_record_batch();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        let err = produce_batches(&b.freeze(), 1 << 20, None).expect_err("bad CRC");
        assert_eq!(err.0, codes::CORRUPT_MESSAGE);
    }
}
