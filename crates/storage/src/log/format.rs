//! Byte layouts of the log's files: entry frames, index files and segment metadata.

use crate::batch::BatchHeader;

use super::EntryKind;

/// First byte of every entry frame ('S').
pub(crate) const FRAME_MAGIC: u8 = 0x53;
/// Size of the frame header that precedes each payload.
pub(crate) const FRAME_HEADER_LEN: usize = 32;
/// Largest payload accepted (keeps in-segment positions within u32 together with the
/// 2 GiB cap on `segment_bytes`).
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;
/// Bytes per offset-index entry: relative offset u32, relative raft index u32, position u32.
pub(crate) const INDEX_ENTRY_LEN: usize = 12;
/// Bytes per time-index entry: max timestamp so far i64, relative offset u32.
pub(crate) const TIME_ENTRY_LEN: usize = 12;

const SEG_MAGIC: &[u8; 4] = b"SLSG";
const SEG_VERSION: u32 = 1;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameHeader {
    pub kind: EntryKind,
    pub payload_len: u32,
    pub term: u64,
    pub index: u64,
    pub crc: u32,
}

/// Encodes the 32-byte header for `payload`. Layout (big endian): magic u8, kind u8,
/// reserved u16 (0), payload_len u32, term u64, index u64, crc32c u32, reserved u32 (0).
/// The CRC-32C covers header bytes 0..24 (magic through index) and then the payload.
pub(crate) fn encode_frame_header(
    kind: EntryKind,
    term: u64,
    index: u64,
    payload: &[u8],
) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0] = FRAME_MAGIC;
    h[1] = kind as u8;
    h[4..8].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    h[8..16].copy_from_slice(&term.to_be_bytes());
    h[16..24].copy_from_slice(&index.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[..24]), payload);
    h[24..28].copy_from_slice(&crc.to_be_bytes());
    h
}

/// Decodes a frame header's fields (not its CRC, which needs the payload).
pub(crate) fn decode_frame_header(h: &[u8]) -> Result<FrameHeader, String> {
    if h.len() < FRAME_HEADER_LEN {
        return Err("short frame header".into());
    }
    if h[0] != FRAME_MAGIC {
        return Err(format!("bad frame magic {:#x}", h[0]));
    }
    let kind = EntryKind::from_u8(h[1]).ok_or_else(|| format!("bad entry kind {}", h[1]))?;
    if h[2] != 0 || h[3] != 0 || h[28..32] != [0; 4] {
        return Err("nonzero reserved frame bytes".into());
    }
    Ok(FrameHeader {
        kind,
        payload_len: u32_at(h, 4),
        term: u64_at(h, 8),
        index: u64_at(h, 16),
        crc: u32_at(h, 24),
    })
}

/// True when the stored CRC matches `header[..24]` + `payload`.
pub(crate) fn frame_crc_ok(header: &[u8], fh: &FrameHeader, payload: &[u8]) -> bool {
    crc32c::crc32c_append(crc32c::crc32c(&header[..24]), payload) == fh.crc
}

/// The offsets and timestamp a batch entry contributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchInfo {
    pub base: i64,
    pub last: i64,
    pub max_ts: i64,
}

impl BatchInfo {
    pub(crate) fn of(h: &BatchHeader) -> Self {
        BatchInfo {
            base: h.base_offset,
            last: h.last_offset(),
            max_ts: h.max_timestamp,
        }
    }
}

/// One sparse offset-index entry, relative to the segment's base offset and first index.
/// `rel_offset` is the Kafka offset the entry at `pos` starts at (for a Raft entry: the offset
/// the next batch will take).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub rel_offset: u32,
    pub rel_index: u32,
    pub pos: u32,
}

/// One time-index entry: every batch up to and including the batch at `rel_offset` has a max
/// timestamp <= `ts`, and that batch's max timestamp is `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub ts: i64,
    pub rel_offset: u32,
}

pub(crate) fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * INDEX_ENTRY_LEN);
    for e in entries {
        out.extend_from_slice(&e.rel_offset.to_be_bytes());
        out.extend_from_slice(&e.rel_index.to_be_bytes());
        out.extend_from_slice(&e.pos.to_be_bytes());
    }
    out
}

pub(crate) fn decode_index(b: &[u8]) -> Option<Vec<IndexEntry>> {
    if b.len() % INDEX_ENTRY_LEN != 0 {
        return None;
    }
    Some(
        b.chunks_exact(INDEX_ENTRY_LEN)
            .map(|c| IndexEntry {
                rel_offset: u32_at(c, 0),
                rel_index: u32_at(c, 4),
                pos: u32_at(c, 8),
            })
            .collect(),
    )
}

pub(crate) fn encode_time_index(entries: &[TimeEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * TIME_ENTRY_LEN);
    for e in entries {
        out.extend_from_slice(&e.ts.to_be_bytes());
        out.extend_from_slice(&e.rel_offset.to_be_bytes());
    }
    out
}

pub(crate) fn decode_time_index(b: &[u8]) -> Option<Vec<TimeEntry>> {
    if b.len() % TIME_ENTRY_LEN != 0 {
        return None;
    }
    Some(
        b.chunks_exact(TIME_ENTRY_LEN)
            .map(|c| TimeEntry {
                ts: u64_at(c, 0) as i64,
                rel_offset: u32_at(c, 8),
            })
            .collect(),
    )
}

/// Contents of `<base>.seg`: what a sealed segment holds, so that opening a log need not scan
/// sealed segments. Written durably (temp, fsync, rename, fsync dir) when a segment is rolled
/// and, for the active segment, on clean close. Carries CRCs of the index files, which are
/// written without fsync, so a torn index file is detected and rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegMeta {
    pub base_offset: i64,
    pub size: u64,
    /// 0 when the segment holds no entries.
    pub first_index: u64,
    pub last_index: u64,
    pub next_offset: i64,
    pub max_ts: i64,
    pub max_ts_offset: i64,
    pub index_len: u32,
    pub index_crc: u32,
    pub time_len: u32,
    pub time_crc: u32,
    /// (first index of the run, term) for each run of equal terms.
    pub terms: Vec<(u64, u64)>,
}

impl SegMeta {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(96 + self.terms.len() * 16);
        b.extend_from_slice(SEG_MAGIC);
        b.extend_from_slice(&SEG_VERSION.to_be_bytes());
        b.extend_from_slice(&self.base_offset.to_be_bytes());
        b.extend_from_slice(&self.size.to_be_bytes());
        b.extend_from_slice(&self.first_index.to_be_bytes());
        b.extend_from_slice(&self.last_index.to_be_bytes());
        b.extend_from_slice(&self.next_offset.to_be_bytes());
        b.extend_from_slice(&self.max_ts.to_be_bytes());
        b.extend_from_slice(&self.max_ts_offset.to_be_bytes());
        b.extend_from_slice(&self.index_len.to_be_bytes());
        b.extend_from_slice(&self.index_crc.to_be_bytes());
        b.extend_from_slice(&self.time_len.to_be_bytes());
        b.extend_from_slice(&self.time_crc.to_be_bytes());
        b.extend_from_slice(&(self.terms.len() as u32).to_be_bytes());
        for (i, t) in &self.terms {
            b.extend_from_slice(&i.to_be_bytes());
            b.extend_from_slice(&t.to_be_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<SegMeta> {
        const FIXED: usize = 4 + 4 + 8 * 7 + 4 * 5;
        if b.len() < FIXED + 4 || &b[0..4] != SEG_MAGIC || u32_at(b, 4) != SEG_VERSION {
            return None;
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body) != u32_at(crc, 0) {
            return None;
        }
        let n = u32_at(b, FIXED - 4) as usize;
        if body.len() != FIXED + n * 16 {
            return None;
        }
        let terms = (0..n)
            .map(|i| {
                let at = FIXED + i * 16;
                (u64_at(b, at), u64_at(b, at + 8))
            })
            .collect();
        Some(SegMeta {
            base_offset: u64_at(b, 8) as i64,
            size: u64_at(b, 16),
            first_index: u64_at(b, 24),
            last_index: u64_at(b, 32),
            next_offset: u64_at(b, 40) as i64,
            max_ts: u64_at(b, 48) as i64,
            max_ts_offset: u64_at(b, 56) as i64,
            index_len: u32_at(b, 64),
            index_crc: u32_at(b, 68),
            time_len: u32_at(b, 72),
            time_crc: u32_at(b, 76),
            terms,
        })
    }
}

/// The log-start-offset checkpoint: i64 + CRC-32C.
pub(crate) fn encode_checkpoint(offset: i64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&offset.to_be_bytes());
    let crc = crc32c::crc32c(&b[..8]);
    b[8..].copy_from_slice(&crc.to_be_bytes());
    b
}

pub(crate) fn decode_checkpoint(b: &[u8]) -> Option<i64> {
    if b.len() != 12 || crc32c::crc32c(&b[..8]) != u32_at(b, 8) {
        return None;
    }
    Some(u64_at(b, 0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seg_meta_roundtrip_and_crc() {
        let m = SegMeta {
            base_offset: 5,
            size: 1000,
            first_index: 3,
            last_index: 9,
            next_offset: 77,
            max_ts: -1,
            max_ts_offset: 6,
            index_len: 2,
            index_crc: 0xdead,
            time_len: 1,
            time_crc: 0xbeef,
            terms: vec![(3, 1), (7, 2)],
        };
        let mut b = m.encode();
        assert_eq!(SegMeta::decode(&b), Some(m));
        b[10] ^= 1;
        assert_eq!(SegMeta::decode(&b), None);
    }

    #[test]
    fn frame_header_roundtrip() {
        let h = encode_frame_header(EntryKind::Raft, 7, 9, b"abc");
        let d = decode_frame_header(&h).expect("valid");
        assert_eq!(
            (d.kind, d.term, d.index, d.payload_len),
            (EntryKind::Raft, 7, 9, 3)
        );
        assert!(frame_crc_ok(&h, &d, b"abc"));
        assert!(!frame_crc_ok(&h, &d, b"abd"));
        assert_eq!(decode_checkpoint(&encode_checkpoint(-3)), Some(-3));
    }
}
