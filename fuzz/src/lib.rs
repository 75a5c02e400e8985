//! Helpers shared by the fuzz targets and the seed generator: the broker's API version table,
//! a byte reader that never fails (fuzz input steers choices, running out reads zeros), and a
//! builder of valid record batches v2 (and of old clients' message sets) for targets that
//! mutate valid input.
//!
//! Never depends on the broker crate (it would pull in RocksDB and Raft); the version table is
//! the broker's own, from `protocol::versions`.

use kafka_protocol::messages::ApiKey;

pub use protocol::versions::SUPPORTED;

/// The broker's version check, as `protocol::request::parse_prefix` wants it.
pub use protocol::versions::supported_versions as supported;

/// Every supported (API, version) pair, in table order.
pub fn version_pairs() -> Vec<(ApiKey, i16)> {
    SUPPORTED
        .iter()
        .flat_map(|&(k, min, max)| (min..=max).map(move |v| (k, v)))
        .collect()
}

/// Reads fuzz input front to back; past the end every read yields zeros, so any input is a
/// complete set of choices.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }
    /// The unread bytes.
    pub fn rest(&self) -> &'a [u8] {
        self.data
    }
}

/// A record batch v2 to build; fields the validator looks at are settable.
#[derive(Debug, Clone, Copy)]
pub struct BatchSpec {
    pub base_offset: i64,
    pub records: i32,
    pub value_len: usize,
    pub attributes: i16,
    pub base_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            base_offset: 0,
            records: 1,
            value_len: 8,
            attributes: 0,
            base_timestamp: 1_700_000_000_000,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }
}

/// Encodes `spec` as an uncompressed record batch v2 with a correct CRC-32C (written here
/// from the format description, independently of the code under test).
pub fn build_batch(spec: &BatchSpec) -> Vec<u8> {
    let mut records = Vec::new();
    for i in 0..spec.records.max(0) {
        let mut rec = vec![0u8]; // record attributes
        put_varint(&mut rec, i64::from(i)); // timestamp delta
        put_varint(&mut rec, i64::from(i)); // offset delta
        put_varint(&mut rec, -1); // null key
        put_varint(&mut rec, spec.value_len as i64);
        rec.extend((0..spec.value_len).map(|j| (i as usize * 31 + j) as u8));
        put_varint(&mut rec, 0); // no headers
        put_varint(&mut records, rec.len() as i64);
        records.extend_from_slice(&rec);
    }
    let mut b = Vec::with_capacity(61 + records.len());
    b.extend_from_slice(&spec.base_offset.to_be_bytes());
    b.extend_from_slice(&((49 + records.len()) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    b.push(2); // magic
    b.extend_from_slice(&[0; 4]); // CRC, below
    b.extend_from_slice(&spec.attributes.to_be_bytes());
    b.extend_from_slice(&(spec.records - 1).to_be_bytes()); // last offset delta
    b.extend_from_slice(&spec.base_timestamp.to_be_bytes());
    let max_ts = spec
        .base_timestamp
        .wrapping_add(i64::from(spec.records.max(1) - 1));
    b.extend_from_slice(&max_ts.to_be_bytes());
    b.extend_from_slice(&spec.producer_id.to_be_bytes());
    b.extend_from_slice(&spec.producer_epoch.to_be_bytes());
    b.extend_from_slice(&spec.base_sequence.to_be_bytes());
    b.extend_from_slice(&spec.records.to_be_bytes());
    b.extend_from_slice(&records);
    set_crc(&mut b);
    b
}

/// Writes the CRC-32C of `batch[21..]` at bytes 17..21. `batch` must hold at least 21 bytes.
pub fn set_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Walks `bytes` as a concatenation of batches by their declared lengths and rewrites each
/// CRC, stopping at the first batch whose length does not fit: lets a mutation change header
/// fields and still get past the CRC check.
pub fn fix_crcs(bytes: &mut [u8]) {
    let mut pos = 0usize;
    while bytes.len() - pos >= 61 {
        let len = i32::from_be_bytes([
            bytes[pos + 8],
            bytes[pos + 9],
            bytes[pos + 10],
            bytes[pos + 11],
        ]);
        let Ok(len) = usize::try_from(len) else {
            return;
        };
        let size = len + 12;
        if size < 61 || size > bytes.len() - pos {
            return;
        }
        set_crc(&mut bytes[pos..pos + size]);
        pos += size;
    }
}

/// A message set of `n` uncompressed messages in record format `magic` (0 or 1), as a
/// pre-0.11 producer writes it: offset, size, CRC-32 (IEEE) of the rest, magic, attributes,
/// timestamp (magic 1), key, value.
pub fn message_set(magic: i8, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut body = vec![magic as u8, 0];
        if magic >= 1 {
            body.extend_from_slice(&(1_700_000_000_000i64 + i as i64).to_be_bytes());
        }
        let key = format!("k{i}");
        body.extend_from_slice(&(key.len() as i32).to_be_bytes());
        body.extend_from_slice(key.as_bytes());
        let value = vec![b'v'; i % 7];
        body.extend_from_slice(&(value.len() as i32).to_be_bytes());
        body.extend_from_slice(&value);
        out.extend_from_slice(&(i as i64).to_be_bytes());
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        out.extend_from_slice(&body);
    }
    out
}

/// Zigzag varint, as record fields are encoded.
fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}
