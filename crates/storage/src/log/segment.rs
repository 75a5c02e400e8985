//! One segment: a `<base>.log` file plus its in-memory summary and sparse indexes.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::BatchHeader;
use crate::error::{Error, Result};

use super::format::{
    decode_frame_header, decode_index, decode_time_index, encode_index, encode_time_index,
    frame_crc_ok, BatchInfo, IndexEntry, SegMeta, TimeEntry, FRAME_HEADER_LEN,
};
use super::EntryKind;

const READ_CHUNK: usize = 64 * 1024;

pub(crate) fn log_name(base: i64) -> String {
    format!("{base:020}.log")
}
pub(crate) fn index_name(base: i64) -> String {
    format!("{base:020}.index")
}
pub(crate) fn time_index_name(base: i64) -> String {
    format!("{base:020}.timeindex")
}
pub(crate) fn meta_name(base: i64) -> String {
    format!("{base:020}.seg")
}

/// Parses `<20 digits>.log`.
pub(crate) fn parse_log_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn open_segment_file(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

/// In-memory state of one segment. Mutated only under the log's write lock.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: i64,
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Bytes of valid frames; writes go at this position.
    pub size: u64,
    pub first_index: Option<u64>,
    /// Meaningful only when `first_index` is set.
    pub last_index: u64,
    pub next_offset: i64,
    /// (first index of the run, term), one per run of equal terms.
    pub terms: Vec<(u64, u64)>,
    /// Largest batch max timestamp, `i64::MIN` when the segment has no batch.
    pub max_ts: i64,
    /// Base offset of the first batch carrying `max_ts`.
    pub max_ts_offset: i64,
    pub index: Vec<IndexEntry>,
    pub time_index: Vec<TimeEntry>,
    /// Wall-clock ms when this process created or opened the segment (age-based rolling).
    pub created_ms: i64,
}

/// A frame read from a segment.
pub(crate) struct Frame<'a> {
    pub kind: EntryKind,
    pub term: u64,
    pub index: u64,
    pub payload: &'a [u8],
    pub batch: Option<BatchInfo>,
    /// Header + payload bytes.
    pub len: u64,
}

/// Why a frame could not be read. Recovery truncates at either; normal reads report Corrupt.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The file ends inside the frame.
    Torn(String),
    /// Header, CRC or batch header invalid.
    Corrupt(String),
}

impl Fault {
    pub(crate) fn reason(&self) -> &str {
        match self {
            Fault::Torn(r) | Fault::Corrupt(r) => r,
        }
    }
}

/// Sequential reader of frames using positional reads, with a read-ahead buffer.
pub(crate) struct FrameReader<'f> {
    file: &'f File,
    end: u64,
    buf: Vec<u8>,
    buf_pos: u64,
}

impl<'f> FrameReader<'f> {
    pub(crate) fn new(file: &'f File, end: u64) -> Self {
        FrameReader {
            file,
            end,
            buf: Vec::new(),
            buf_pos: 0,
        }
    }

    /// Bytes `[pos, pos+len)` clipped to the readable end of the file.
    fn window(&mut self, pos: u64, len: usize) -> io::Result<&[u8]> {
        let have_end = self.buf_pos + self.buf.len() as u64;
        if pos >= self.buf_pos && pos + len as u64 <= have_end {
            let s = (pos - self.buf_pos) as usize;
            return Ok(&self.buf[s..s + len]);
        }
        let avail = self.end.saturating_sub(pos);
        let want = (len.max(READ_CHUNK) as u64).min(avail) as usize;
        self.buf.resize(want, 0);
        let mut filled = 0;
        while filled < want {
            let n = self
                .file
                .read_at(&mut self.buf[filled..], pos + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        self.buf.truncate(filled);
        self.buf_pos = pos;
        Ok(&self.buf[..len.min(filled)])
    }

    /// Reads and verifies the frame at `pos`.
    pub(crate) fn frame(&mut self, pos: u64) -> io::Result<Result<Frame<'_>, Fault>> {
        let h = self.window(pos, FRAME_HEADER_LEN)?;
        if h.len() < FRAME_HEADER_LEN {
            return Ok(Err(Fault::Torn(format!("frame header at {pos} cut short"))));
        }
        let fh = match decode_frame_header(h) {
            Ok(fh) => fh,
            Err(e) => return Ok(Err(Fault::Corrupt(format!("{e} at {pos}")))),
        };
        let total = FRAME_HEADER_LEN + fh.payload_len as usize;
        if pos + total as u64 > self.end {
            return Ok(Err(Fault::Torn(format!(
                "frame at {pos} runs past end of file"
            ))));
        }
        let all = self.window(pos, total)?;
        if all.len() < total {
            return Ok(Err(Fault::Torn(format!("frame at {pos} cut short"))));
        }
        let (header, payload) = all.split_at(FRAME_HEADER_LEN);
        if !frame_crc_ok(header, &fh, payload) {
            return Ok(Err(Fault::Corrupt(format!("frame CRC mismatch at {pos}"))));
        }
        let batch = match fh.kind {
            EntryKind::Raft => None,
            EntryKind::Batch => match BatchHeader::parse(payload) {
                Ok(b) => Some(BatchInfo::of(&b)),
                Err(e) => {
                    return Ok(Err(Fault::Corrupt(format!(
                        "bad record batch at {pos}: {e}"
                    ))))
                }
            },
        };
        Ok(Ok(Frame {
            kind: fh.kind,
            term: fh.term,
            index: fh.index,
            payload,
            batch,
            len: total as u64,
        }))
    }
}

/// Where recovery expects a segment to continue from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect {
    pub index: Option<u64>,
    pub term: Option<u64>,
}

impl Segment {
    pub(crate) fn new(base_offset: i64, path: PathBuf, file: Arc<File>, now_ms: i64) -> Segment {
        Segment {
            base_offset,
            path,
            file,
            size: 0,
            first_index: None,
            last_index: 0,
            next_offset: base_offset,
            terms: Vec::new(),
            max_ts: i64::MIN,
            max_ts_offset: -1,
            index: Vec::new(),
            time_index: Vec::new(),
            created_ms: now_ms,
        }
    }

    pub(crate) fn has_batch(&self) -> bool {
        self.next_offset > self.base_offset
    }

    pub(crate) fn last_term(&self) -> Option<u64> {
        self.terms.last().map(|&(_, t)| t)
    }

    pub(crate) fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Records a frame written at `pos` (append and recovery share this, so both build the
    /// same indexes).
    pub(crate) fn track(
        &mut self,
        pos: u64,
        frame_len: u64,
        term: u64,
        index: u64,
        batch: Option<BatchInfo>,
        interval: u64,
    ) {
        let first = *self.first_index.get_or_insert(index);
        let last_pos = self.index.last().map_or(0, |e| e.pos as u64);
        if pos > 0 && pos - last_pos >= interval {
            self.index.push(IndexEntry {
                rel_offset: (self.next_offset - self.base_offset) as u32,
                rel_index: (index - first) as u32,
                pos: pos as u32,
            });
            self.push_time_entry();
        }
        if self.last_term() != Some(term) {
            self.terms.push((index, term));
        }
        self.last_index = index;
        if let Some(b) = batch {
            self.next_offset = b.last + 1;
            if b.max_ts > self.max_ts {
                self.max_ts = b.max_ts;
                self.max_ts_offset = b.base;
            }
        }
        self.size = pos + frame_len;
    }

    /// Appends a time-index entry if the max timestamp grew since the last one. Called at
    /// index points and when the segment is sealed (roll, close).
    pub(crate) fn push_time_entry(&mut self) {
        if self.has_batch() && self.time_index.last().is_none_or(|t| self.max_ts > t.ts) {
            self.time_index.push(TimeEntry {
                ts: self.max_ts,
                rel_offset: (self.max_ts_offset - self.base_offset) as u32,
            });
        }
    }

    /// A file position at or before the batch containing `offset` (or the first entry after).
    pub(crate) fn pos_for_offset(&self, offset: i64) -> u64 {
        let rel = offset - self.base_offset;
        let i = self.index.partition_point(|e| e.rel_offset as i64 <= rel);
        if i == 0 {
            0
        } else {
            self.index[i - 1].pos as u64
        }
    }

    /// A file position at or before the entry `index`, with the Kafka offset the scan from
    /// there starts at.
    pub(crate) fn pos_for_index(&self, index: u64) -> (u64, i64) {
        let Some(first) = self.first_index else {
            return (0, self.base_offset);
        };
        let rel = index.saturating_sub(first);
        let i = self.index.partition_point(|e| e.rel_index as u64 <= rel);
        if i == 0 {
            (0, self.base_offset)
        } else {
            let e = self.index[i - 1];
            (e.pos as u64, self.base_offset + e.rel_offset as i64)
        }
    }

    /// An offset from which scanning finds the first batch with max timestamp >= `ts`.
    pub(crate) fn offset_for_time(&self, ts: i64) -> i64 {
        let i = self.time_index.partition_point(|e| e.ts < ts);
        if i == 0 {
            self.base_offset
        } else {
            self.base_offset + self.time_index[i - 1].rel_offset as i64 + 1
        }
    }

    /// Term of `index`, if this segment holds it.
    pub(crate) fn term_of(&self, index: u64) -> Option<u64> {
        let first = self.first_index?;
        if index < first || index > self.last_index {
            return None;
        }
        let i = self.terms.partition_point(|&(start, _)| start <= index);
        self.terms.get(i.checked_sub(1)?).map(|&(_, t)| t)
    }

    /// Writes the index files (no fsync) and returns the metadata describing them.
    pub(crate) fn write_indexes(&self, dir: &Path) -> io::Result<SegMeta> {
        let idx = encode_index(&self.index);
        let time = encode_time_index(&self.time_index);
        fs::write(dir.join(index_name(self.base_offset)), &idx)?;
        fs::write(dir.join(time_index_name(self.base_offset)), &time)?;
        Ok(SegMeta {
            base_offset: self.base_offset,
            size: self.size,
            first_index: self.first_index.unwrap_or(0),
            last_index: self.last_index,
            next_offset: self.next_offset,
            max_ts: self.max_ts,
            max_ts_offset: self.max_ts_offset,
            index_len: self.index.len() as u32,
            index_crc: crc32c::crc32c(&idx),
            time_len: self.time_index.len() as u32,
            time_crc: crc32c::crc32c(&time),
            terms: self.terms.clone(),
        })
    }

    /// Removes this segment's files (data file first, so a crash leaves at worst orphan
    /// metadata, which open() deletes).
    pub(crate) fn remove_files(dir: &Path, base: i64) -> io::Result<()> {
        crate::durable::remove_if_exists(&dir.join(log_name(base)))?;
        crate::durable::remove_if_exists(&dir.join(index_name(base)))?;
        crate::durable::remove_if_exists(&dir.join(time_index_name(base)))?;
        crate::durable::remove_if_exists(&dir.join(meta_name(base)))
    }

    /// Builds a segment from its `.seg` metadata and index files without scanning the data.
    /// Returns None when anything disagrees (the caller then scans).
    pub(crate) fn load_trusted(
        dir: &Path,
        base: i64,
        file: Arc<File>,
        expect: Expect,
        now_ms: i64,
    ) -> Option<Segment> {
        let meta = SegMeta::decode(&fs::read(dir.join(meta_name(base))).ok()?)?;
        let file_len = file.metadata().ok()?.len();
        if meta.base_offset != base || meta.size != file_len || meta.next_offset < base {
            return None;
        }
        let first_index = (meta.first_index != 0).then_some(meta.first_index);
        let consistent = match first_index {
            None => meta.size == 0,
            Some(f) => {
                expect.index.is_none_or(|e| e == f)
                    && meta.last_index >= f
                    && meta.terms.first().map(|&(i, _)| i) == Some(f)
                    && expect
                        .term
                        .zip(meta.terms.first())
                        .is_none_or(|(e, &(_, t))| t >= e)
            }
        };
        if !consistent {
            return None;
        }
        let idx_bytes = fs::read(dir.join(index_name(base))).ok()?;
        let time_bytes = fs::read(dir.join(time_index_name(base))).ok()?;
        if crc32c::crc32c(&idx_bytes) != meta.index_crc
            || crc32c::crc32c(&time_bytes) != meta.time_crc
        {
            return None;
        }
        let index = decode_index(&idx_bytes)?;
        let time_index = decode_time_index(&time_bytes)?;
        if index.len() != meta.index_len as usize || time_index.len() != meta.time_len as usize {
            return None;
        }
        let seg = Segment {
            base_offset: base,
            path: dir.join(log_name(base)),
            file,
            size: meta.size,
            first_index,
            last_index: meta.last_index,
            next_offset: meta.next_offset,
            terms: meta.terms,
            max_ts: meta.max_ts,
            max_ts_offset: meta.max_ts_offset,
            index,
            time_index,
            created_ms: now_ms,
        };
        seg.indexes_plausible().then_some(seg)
    }

    /// Structural checks on the indexes: monotonic, inside the segment.
    pub(crate) fn indexes_plausible(&self) -> bool {
        let span_off = self.next_offset - self.base_offset;
        let span_idx = self
            .first_index
            .map_or(0, |f| self.last_index.saturating_sub(f));
        let idx_ok = self.index.windows(2).all(|w| {
            w[0].pos < w[1].pos
                && w[0].rel_index < w[1].rel_index
                && w[0].rel_offset <= w[1].rel_offset
        }) && self.index.iter().all(|e| {
            e.pos > 0
                && (e.pos as u64) < self.size
                && e.rel_offset as i64 <= span_off
                && e.rel_index as u64 <= span_idx
        });
        let time_ok = self
            .time_index
            .windows(2)
            .all(|w| w[0].ts < w[1].ts && w[0].rel_offset < w[1].rel_offset)
            && self
                .time_index
                .iter()
                .all(|e| (e.rel_offset as i64) < span_off && e.ts <= self.max_ts);
        idx_ok && time_ok && (self.first_index.is_some() || self.size == 0)
    }

    /// Scans `file` from the start, validating every frame, and builds the segment from the
    /// valid prefix. Returns the segment and, when the file had more bytes than the valid
    /// prefix, why the scan stopped (the caller truncates).
    pub(crate) fn scan(
        dir: &Path,
        base: i64,
        file: Arc<File>,
        expect: Expect,
        interval: u64,
        now_ms: i64,
    ) -> Result<(Segment, Option<String>)> {
        let path = dir.join(log_name(base));
        let len = file.metadata()?.len();
        let mut seg = Segment::new(base, path, file.clone(), now_ms);
        let mut reader = FrameReader::new(&file, len);
        let mut pos = 0u64;
        let mut stop = None;
        while pos < len {
            let f = match reader.frame(pos)? {
                Ok(f) => f,
                Err(fault) => {
                    stop = Some(fault.reason().to_string());
                    break;
                }
            };
            let want_index = if seg.first_index.is_some() {
                Some(seg.last_index + 1)
            } else {
                expect.index
            };
            let floor_term = seg.last_term().or(expect.term);
            let problem = if f.index == 0 || want_index.is_some_and(|w| w != f.index) {
                Some(format!(
                    "entry at {pos} has index {} (expected {want_index:?})",
                    f.index
                ))
            } else if floor_term.is_some_and(|t| f.term < t) {
                Some(format!(
                    "entry at {pos} has term {} below {floor_term:?}",
                    f.term
                ))
            } else if let Some(b) = f.batch.filter(|b| b.base != seg.next_offset) {
                Some(format!(
                    "batch at {pos} has base offset {} (expected {})",
                    b.base, seg.next_offset
                ))
            } else {
                None
            };
            if let Some(p) = problem {
                stop = Some(p);
                break;
            }
            let (flen, term, index, batch) = (f.len, f.term, f.index, f.batch);
            seg.track(pos, flen, term, index, batch, interval);
            pos += flen;
        }
        Ok((seg, stop))
    }

    /// Drops everything from file position `cut` (the frame of `from_index`) in memory,
    /// without rescanning the segment: indexes and term runs are trimmed, and only the frames
    /// after the last surviving index point are read to recompute the offsets and max
    /// timestamp. (Every time-index entry names a surviving batch whose timestamp bounds all
    /// batches before the index points created after it, so the surviving time-index tail plus
    /// the scanned frames give the exact maximum.) The caller truncates the file.
    pub(crate) fn truncate_to(&mut self, cut: u64, from_index: u64) -> Result<()> {
        if cut == 0 {
            self.first_index = None;
            self.last_index = 0;
            self.next_offset = self.base_offset;
            self.terms.clear();
            self.max_ts = i64::MIN;
            self.max_ts_offset = -1;
            self.index.clear();
            self.time_index.clear();
            self.size = 0;
            return Ok(());
        }
        self.index.retain(|e| (e.pos as u64) < cut);
        self.terms.retain(|&(start, _)| start < from_index);
        let (mut pos, mut next) = self.index.last().map_or((0, self.base_offset), |e| {
            (e.pos as u64, self.base_offset + e.rel_offset as i64)
        });
        let mut scanned_max: Option<(i64, i64)> = None;
        let mut r = FrameReader::new(&self.file, cut);
        while pos < cut {
            let f = r
                .frame(pos)?
                .map_err(|fault| self.corrupt(fault.reason().to_string()))?;
            pos += f.len;
            if let Some(b) = f.batch {
                next = b.last + 1;
                if scanned_max.is_none_or(|(t, _)| b.max_ts > t) {
                    scanned_max = Some((b.max_ts, b.base));
                }
            }
        }
        if pos != cut {
            return Err(self.corrupt(format!("truncation point {cut} is not a frame boundary")));
        }
        self.next_offset = next;
        let base = self.base_offset;
        self.time_index
            .retain(|t| base + (t.rel_offset as i64) < next);
        let (mut ts, mut ts_off) = self
            .time_index
            .last()
            .map_or((i64::MIN, -1), |t| (t.ts, base + t.rel_offset as i64));
        if let Some((t, o)) = scanned_max.filter(|&(t, _)| t > ts) {
            ts = t;
            ts_off = o;
        }
        self.max_ts = ts;
        self.max_ts_offset = ts_off;
        self.last_index = from_index - 1;
        self.size = cut;
        Ok(())
    }
}
