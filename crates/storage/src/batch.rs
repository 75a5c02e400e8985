//! Kafka RecordBatch v2 header helpers.
//!
//! The record batch v2 is the unit Sluice stores on disk, so this module knows its header
//! layout (big endian):
//!
//! | field                | type | at |
//! | -------------------- | ---- | -- |
//! | baseOffset           | i64  | 0  |
//! | batchLength          | i32  | 8  |
//! | partitionLeaderEpoch | i32  | 12 |
//! | magic (= 2)          | i8   | 16 |
//! | crc (CRC-32C 21..)   | u32  | 17 |
//! | attributes           | i16  | 21 |
//! | lastOffsetDelta      | i32  | 23 |
//! | baseTimestamp        | i64  | 27 |
//! | maxTimestamp         | i64  | 35 |
//! | producerId           | i64  | 43 |
//! | producerEpoch        | i16  | 51 |
//! | baseSequence         | i32  | 53 |
//! | recordsCount         | i32  | 57 |
//!
//! `batchLength` counts the bytes after itself, so a batch occupies `batchLength + 12` bytes.
//! Everything here is pure and allocation free; records are never decoded.

/// Size of the fixed v2 batch header.
pub const HEADER_SIZE: usize = 61;
/// Bytes before and including `batchLength`, not counted by it.
pub const LOG_OVERHEAD: usize = 12;
/// The only supported batch format.
pub const MAGIC_V2: i8 = 2;
/// Offset of the first byte covered by the batch CRC.
pub const CRC_START: usize = 21;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// Why bytes are not a well-formed v2 batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch too short: {len} bytes, need at least {HEADER_SIZE}")]
    TooShort { len: usize },
    #[error("record batch length field says {declared} total bytes but {available} are present")]
    LengthMismatch { declared: i64, available: usize },
    #[error("unsupported record batch magic {0} (only v2 is supported)")]
    BadMagic(i8),
    #[error("negative lastOffsetDelta {0}")]
    NegativeOffsetDelta(i32),
}

/// Compression codec from the low attribute bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
    /// A codec id Kafka does not define (5..=7).
    Unknown(u8),
}

/// The decoded fixed header of a record batch v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

/// Total size (`batchLength + 12`) declared by the batch starting at `buf[0]`, if at least the
/// first 12 bytes are present. May be nonsense for garbage input; callers check it.
pub fn declared_size(buf: &[u8]) -> Option<i64> {
    if buf.len() < LOG_OVERHEAD {
        return None;
    }
    Some(be_i32(buf, 8) as i64 + LOG_OVERHEAD as i64)
}

impl BatchHeader {
    /// Parses the header of a batch that spans exactly `buf`.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        let h = Self::parse_prefix(buf)?;
        if h.total_size() != buf.len() {
            return Err(BatchError::LengthMismatch {
                declared: h.batch_length as i64 + LOG_OVERHEAD as i64,
                available: buf.len(),
            });
        }
        Ok(h)
    }

    /// Parses the header of a batch that starts at `buf[0]`; `buf` may hold more bytes after it
    /// (but must hold the whole batch).
    pub fn parse_prefix(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_SIZE {
            return Err(BatchError::TooShort { len: buf.len() });
        }
        let batch_length = be_i32(buf, 8);
        let declared = batch_length as i64 + LOG_OVERHEAD as i64;
        if declared < HEADER_SIZE as i64 || declared > buf.len() as i64 {
            return Err(BatchError::LengthMismatch {
                declared,
                available: buf.len(),
            });
        }
        let magic = buf[16] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(magic));
        }
        let last_offset_delta = be_i32(buf, 23);
        if last_offset_delta < 0 {
            return Err(BatchError::NegativeOffsetDelta(last_offset_delta));
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length,
            partition_leader_epoch: be_i32(buf, 12),
            magic,
            crc: u32::from_be_bytes([buf[17], buf[18], buf[19], buf[20]]),
            attributes: be_i16(buf, 21),
            last_offset_delta,
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            records_count: be_i32(buf, 57),
        })
    }

    /// Bytes the whole batch occupies.
    pub fn total_size(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }
    /// Offset of the last record (`baseOffset + lastOffsetDelta`).
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }
    /// Number of offsets the batch occupies (`lastOffsetDelta + 1`).
    pub fn offset_count(&self) -> i64 {
        self.last_offset_delta as i64 + 1
    }
    pub fn record_count(&self) -> i32 {
        self.records_count
    }
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }
    /// True when timestamps are LogAppendTime rather than CreateTime.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_TIMESTAMP_TYPE != 0
    }
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }
    pub fn producer_epoch(&self) -> i16 {
        self.producer_epoch
    }
    pub fn base_sequence(&self) -> i32 {
        self.base_sequence
    }
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }
    pub fn compression(&self) -> Compression {
        match (self.attributes & ATTR_COMPRESSION_MASK) as u8 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => Compression::Unknown(other),
        }
    }
}

/// Control record types (the `type` field of a control record's key).
pub const CONTROL_ABORT: i16 = 0;
pub const CONTROL_COMMIT: i16 = 1;

/// The type of the control record in a control batch (`CONTROL_ABORT`, `CONTROL_COMMIT`, or
/// another Kafka control type), read from the first record's key (version i16, type i16).
/// None when `buf` is not a control batch or its first record is malformed. Control batches
/// are never compressed.
pub fn control_type(buf: &[u8]) -> Option<i16> {
    let h = BatchHeader::parse_prefix(buf).ok()?;
    if !h.is_control() || h.records_count < 1 {
        return None;
    }
    let mut at = HEADER_SIZE;
    let end = h.total_size();
    let _len = read_varlong(buf, &mut at, end)?;
    at += 1; // record attributes
    let _ts_delta = read_varlong(buf, &mut at, end)?;
    let _offset_delta = read_varlong(buf, &mut at, end)?;
    let key_len = read_varlong(buf, &mut at, end)?;
    if key_len < 4 || at + 4 > end {
        return None;
    }
    Some(be_i16(buf, at + 2))
}

/// Reads a zig-zag varint at `*at` (before `end`), advancing `*at`.
fn read_varlong(buf: &[u8], at: &mut usize, end: usize) -> Option<i64> {
    let mut z: u64 = 0;
    let mut shift = 0;
    loop {
        if *at >= end || shift > 63 {
            return None;
        }
        let b = buf[*at];
        *at += 1;
        z |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    Some((z >> 1) as i64 ^ -((z & 1) as i64))
}

/// CRC-32C of a batch as Kafka computes it (over bytes 21..end). `buf` must be one whole batch
/// of at least [`CRC_START`] bytes.
pub fn compute_crc(buf: &[u8]) -> u32 {
    crc32c::crc32c(buf.get(CRC_START..).unwrap_or(&[]))
}

/// True when `buf` is long enough and its stored CRC matches its contents.
pub fn validate_crc(buf: &[u8]) -> bool {
    if buf.len() < HEADER_SIZE {
        return false;
    }
    let stored = u32::from_be_bytes([buf[17], buf[18], buf[19], buf[20]]);
    stored == compute_crc(buf)
}

/// Sets `baseOffset` and `partitionLeaderEpoch`, which the CRC does not cover, so the batch
/// stays valid. Panics if `buf` is shorter than the header (an invariant: callers parse first).
pub fn stamp(buf: &mut [u8], base_offset: i64, leader_epoch: i32) {
    assert!(buf.len() >= HEADER_SIZE, "stamp needs a parsed batch");
    buf[0..8].copy_from_slice(&base_offset.to_be_bytes());
    buf[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Walks a concatenation of batches, yielding each batch's `(start, end)` byte range. Stops
/// after the first error.
pub fn split_batches(bytes: &[u8]) -> SplitBatches<'_> {
    SplitBatches {
        bytes,
        pos: 0,
        failed: false,
    }
}

/// Iterator returned by [`split_batches`].
pub struct SplitBatches<'a> {
    bytes: &'a [u8],
    pos: usize,
    failed: bool,
}

impl Iterator for SplitBatches<'_> {
    type Item = Result<(usize, usize), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.bytes.len() {
            return None;
        }
        let rest = &self.bytes[self.pos..];
        match BatchHeader::parse_prefix(rest) {
            Ok(h) => {
                let start = self.pos;
                self.pos += h.total_size();
                Some(Ok((start, self.pos)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[doc(hidden)]
pub mod testutil {
    //! Builds minimal valid v2 batches for tests (no kafka-protocol dependency); used by this
    //! crate's tests and the replication tests of `raft`.

    /// A batch of `records` records whose values are `value_len` bytes each, filled from `seed`.
    /// Timestamps: base `ts`, record i has delta i, max = ts + records - 1.
    pub fn build_batch(
        base_offset: i64,
        records: i32,
        ts: i64,
        value_len: usize,
        seed: u64,
    ) -> Vec<u8> {
        let recs = (0..records)
            .map(|i| {
                let value = (0..value_len)
                    .map(|j| {
                        let x = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add((i as u64) << 20 | j as u64);
                        (x >> 33) as u8
                    })
                    .collect();
                (None, value)
            })
            .collect();
        assemble(base_offset, ts, 0, (-1, -1, -1), recs)
    }

    /// `records` key-less records with values `<prefix>-<i>`.
    fn small_records(prefix: &str, records: i32) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
        (0..records)
            .map(|i| (None, format!("{prefix}-{i}").into_bytes()))
            .collect()
    }

    /// An idempotent (non-transactional) batch of `records` small records of producer
    /// (`pid`, `epoch`), sequences from `seq`.
    pub fn build_producer_batch(
        base_offset: i64,
        records: i32,
        pid: i64,
        epoch: i16,
        seq: i32,
    ) -> Vec<u8> {
        assemble(
            base_offset,
            0,
            0,
            (pid, epoch, seq),
            small_records("idem", records),
        )
    }

    /// A transactional batch of `records` small records of producer (`pid`, `epoch`),
    /// sequences from `seq`.
    pub fn build_txn_batch(
        base_offset: i64,
        records: i32,
        pid: i64,
        epoch: i16,
        seq: i32,
    ) -> Vec<u8> {
        assemble(
            base_offset,
            0,
            0x10,
            (pid, epoch, seq),
            small_records("txn", records),
        )
    }

    /// A transaction marker (control batch) of producer (`pid`, `epoch`): `kind` 0 abort,
    /// 1 commit.
    pub fn build_control_batch(base_offset: i64, pid: i64, epoch: i16, kind: i16) -> Vec<u8> {
        let mut key = 0i16.to_be_bytes().to_vec();
        key.extend_from_slice(&kind.to_be_bytes());
        let mut value = 0i16.to_be_bytes().to_vec();
        value.extend_from_slice(&0i32.to_be_bytes());
        assemble(
            base_offset,
            0,
            0x30,
            (pid, epoch, -1),
            vec![(Some(key), value)],
        )
    }

    /// A v2 batch of (key, value) records with the given attributes and producer fields
    /// (id, epoch, base sequence). Timestamps: base `ts`, record i has delta i.
    fn assemble(
        base_offset: i64,
        ts: i64,
        attributes: i16,
        (pid, epoch, seq): (i64, i16, i32),
        records: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    ) -> Vec<u8> {
        let n = records.len() as i32;
        assert!(n >= 1);
        let mut recs = Vec::new();
        for (i, (key, value)) in records.into_iter().enumerate() {
            let mut body = Vec::new();
            body.push(0u8); // record attributes
            put_varlong(&mut body, i as i64); // timestamp delta
            put_varlong(&mut body, i as i64); // offset delta
            match key {
                None => put_varlong(&mut body, -1),
                Some(k) => {
                    put_varlong(&mut body, k.len() as i64);
                    body.extend_from_slice(&k);
                }
            }
            put_varlong(&mut body, value.len() as i64);
            body.extend_from_slice(&value);
            put_varlong(&mut body, 0); // headers
            put_varlong(&mut recs, body.len() as i64);
            recs.extend_from_slice(&body);
        }
        let mut b = Vec::with_capacity(61 + recs.len());
        b.extend_from_slice(&base_offset.to_be_bytes());
        let batch_len = (61 - 12 + recs.len()) as i32;
        b.extend_from_slice(&batch_len.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
        b.push(2); // magic
        b.extend_from_slice(&[0; 4]); // crc placeholder
        b.extend_from_slice(&attributes.to_be_bytes());
        b.extend_from_slice(&(n - 1).to_be_bytes());
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&(ts + n as i64 - 1).to_be_bytes());
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&epoch.to_be_bytes());
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&recs);
        let crc = super::compute_crc(&b);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn put_varlong(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            if z < 0x80 {
                out.push(z as u8);
                return;
            }
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::build_batch;
    use super::*;

    #[test]
    fn parse_reads_every_field() {
        let b = build_batch(42, 3, 1000, 5, 1);
        let h = BatchHeader::parse(&b).expect("valid");
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.last_offset(), 44);
        assert_eq!(h.record_count(), 3);
        assert_eq!(h.max_timestamp(), 1002);
        assert_eq!(h.producer_id(), -1);
        assert_eq!(h.producer_epoch(), -1);
        assert_eq!(h.base_sequence(), -1);
        assert_eq!(h.compression(), Compression::None);
        assert!(!h.is_control());
        assert!(!h.is_transactional());
        assert_eq!(h.total_size(), b.len());
        assert!(validate_crc(&b));
    }

    #[test]
    fn parse_rejects_bad_input() {
        let b = build_batch(0, 1, 0, 0, 1);
        assert!(matches!(
            BatchHeader::parse(&b[..60]),
            Err(BatchError::TooShort { .. })
        ));
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(
            BatchHeader::parse(&longer),
            Err(BatchError::LengthMismatch { .. })
        ));
        assert!(BatchHeader::parse_prefix(&longer).is_ok());
        let mut bad = b.clone();
        bad[16] = 1;
        assert_eq!(BatchHeader::parse(&bad), Err(BatchError::BadMagic(1)));
        let mut neg = b.clone();
        neg[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            BatchHeader::parse(&neg),
            Err(BatchError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn stamp_keeps_crc_valid() {
        let mut b = build_batch(0, 2, 0, 3, 9);
        stamp(&mut b, 1234, 7);
        let h = BatchHeader::parse(&b).expect("valid");
        assert_eq!(h.base_offset, 1234);
        assert_eq!(h.partition_leader_epoch, 7);
        assert!(validate_crc(&b));
        b[70] ^= 1;
        assert!(!validate_crc(&b));
    }

    #[test]
    fn attributes_decode() {
        let mut b = build_batch(0, 1, 0, 0, 0);
        b[21..23].copy_from_slice(&(0x20i16 | 0x10 | 0x08 | 4).to_be_bytes());
        let h = BatchHeader::parse(&b).expect("valid");
        assert!(h.is_control() && h.is_transactional() && h.is_log_append_time());
        assert_eq!(h.compression(), Compression::Zstd);
    }

    #[test]
    fn split_walks_concatenation_and_stops_on_error() {
        let a = build_batch(0, 1, 0, 10, 1);
        let b = build_batch(1, 4, 0, 3, 2);
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let ranges: Vec<_> = split_batches(&all)
            .collect::<Result<_, _>>()
            .expect("valid");
        assert_eq!(ranges, vec![(0, a.len()), (a.len(), a.len() + b.len())]);
        all.extend_from_slice(&[1, 2, 3]);
        let items: Vec<_> = split_batches(&all).collect();
        assert_eq!(items.len(), 3);
        assert!(items[2].is_err());
        assert_eq!(split_batches(&[]).count(), 0);
    }
}
