//! The partition log: one Raft log per partition that is also its Kafka log.
//!
//! # Entries and offsets
//! Each [`Entry`] is one Raft log entry (`term`, `index`). An [`EntryKind::Batch`] entry
//! carries exactly one Kafka record batch v2 whose `baseOffset` is already stamped and
//! occupies offsets `base..=last`; an [`EntryKind::Raft`] entry (blank entry of a new term,
//! membership change) carries an opaque payload, takes no Kafka offset and is invisible to
//! Kafka reads. Offsets therefore follow from the log prefix and are never reassigned.
//!
//! # On-disk format
//! A partition directory holds segments named by their base offset (20 digits):
//! - `<base>.log`: frames, each a 32-byte header then the payload. Header (big endian):
//!   `magic u8 = 0x53`, `kind u8` (1 batch, 2 raft), `reserved u16 = 0`, `payload_len u32`,
//!   `term u64`, `index u64`, `crc32c u32` over header bytes 0..24 and the payload,
//!   `reserved u32 = 0`. Batch payloads are the record batch bytes as stored and served.
//! - `<base>.index`: sparse index, one 12-byte entry (relative offset u32, relative raft
//!   index u32, file position u32) each time `index_interval_bytes` have been written since
//!   the last one. Offsets and indexes both grow with position, so one index serves both.
//! - `<base>.timeindex`: 12-byte entries (max timestamp so far i64, relative offset u32 of
//!   the batch carrying it), added at index points when the max timestamp grew, and when the
//!   segment is sealed.
//! - `<base>.seg`: summary of a sealed segment (first/last index, next offset, max
//!   timestamp, term runs, CRCs of the two index files), written durably on roll and, for the
//!   active segment, on clean close. Lets open() skip scanning sealed segments.
//! - `log-start-offset.checkpoint`: the Kafka log start offset set by DeleteRecords (i64 +
//!   CRC-32C), written durably.
//! - `.clean-shutdown`: marker written by [`PartitionLog::close`], removed by open.
//!
//! Index files are never fsynced; the CRCs in the durable `.seg` detect a torn one, which is
//! then rebuilt by scanning. Every segment but the last holds at least one batch, so base
//! offsets are strictly increasing and file names unique.
//!
//! # Recovery
//! Without the clean marker the last segment is scanned, every frame's header, CRC, index
//! continuity, term monotonicity and batch base offset checked; the file is truncated at the
//! first bad frame. Any segment whose `.seg` or index files disagree is scanned the same way;
//! a truncation there deletes all later segments.
//!
//! # Durability (every fsync on the write path)
//! - [`PartitionLog::sync`]: fdatasync of the active segment, outside the lock readers and
//!   appenders use (group commit). Returns the highest durable index.
//! - Roll: fdatasync of the sealed segment, then `.seg` (temp file fsync + rename + directory
//!   fsync), then a directory fsync after creating the new segment. Done under the write lock,
//!   once per `segment_bytes`.
//! - `truncate_suffix`: fdatasync of the truncated segment and a directory fsync.
//! - `delete_records_before`: the checkpoint (temp fsync + rename + directory fsync).
//! - Segment deletion (purge, retention, DeleteRecords): a directory fsync, outside the lock.
//! - open: fdatasync of the last segment and the directory after recovery, so everything
//!   present is durable; `close`: sync, `.seg` of the active segment, the clean marker.
//!
//! A failed fsync poisons the log: it is never retried and every later write returns
//! [`Error::Poisoned`]. Reads keep working.

mod format;
mod segment;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};

use crate::batch::BatchHeader;
use crate::error::{Error, Result};
use format::{
    decode_checkpoint, encode_checkpoint, encode_frame_header, BatchInfo, FRAME_HEADER_LEN,
    MAX_PAYLOAD,
};
use segment::{log_name, meta_name, open_segment_file, parse_log_name, Expect, Segment};

const CLEAN_MARKER: &str = ".clean-shutdown";
const CHECKPOINT: &str = "log-start-offset.checkpoint";
/// Cap on `segment_bytes` so in-segment positions fit the index's u32.
const MAX_SEGMENT_BYTES: u64 = 2 << 30;

/// Kind of a Raft log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// Payload is exactly one record batch v2 with its base offset stamped.
    Batch = 1,
    /// Raft's own entry (blank, membership); no Kafka offset, never served to Kafka reads.
    Raft = 2,
}

impl EntryKind {
    fn from_u8(v: u8) -> Option<EntryKind> {
        match v {
            1 => Some(EntryKind::Batch),
            2 => Some(EntryKind::Raft),
            _ => None,
        }
    }
}

/// One Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub term: u64,
    pub index: u64,
    pub kind: EntryKind,
    pub payload: Bytes,
}

/// When the caller fsyncs. The log only exposes [`PartitionLog::sync`]; the policy lives here
/// so configuration has one home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before acknowledging (group-committed).
    Always,
    /// Kafka-style: fsync at most this often, acknowledging before.
    Interval(Duration),
}

/// Per-log configuration.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would exceed this (capped at 2 GiB).
    pub segment_bytes: u64,
    /// Roll when the active segment is older than this (ms), if set.
    pub segment_ms: Option<u64>,
    /// Bytes between sparse index entries.
    pub index_interval_bytes: u32,
    pub fsync: FsyncPolicy,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            index_interval_bytes: 4096,
            fsync: FsyncPolicy::Always,
        }
    }
}

/// Result of [`PartitionLog::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub last_index: u64,
    pub last_term: u64,
    /// Log end offset after the append.
    pub next_offset: i64,
}

/// Result of a Kafka read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Concatenated record batches as stored.
    pub data: Bytes,
    /// Base offset of the first returned batch (`from_offset` when nothing is returned).
    pub first_offset: i64,
    /// Offset after the last returned batch (`from_offset` when nothing is returned).
    pub next_offset: i64,
}

struct Inner {
    /// Never empty. Only the last (active) segment may hold no batch.
    segments: Vec<Segment>,
    log_start: i64,
    /// Value in the log-start checkpoint file, if one exists.
    checkpoint: Option<i64>,
    /// Highest raft index known durable (0: none).
    durable: u64,
    /// Bumped by truncation so a concurrent sync does not claim truncated entries.
    truncate_epoch: u64,
    closed: bool,
}

impl Inner {
    fn active(&self) -> &Segment {
        self.segments.last().expect("a log always has a segment")
    }
    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has a segment")
    }
    fn next_offset(&self) -> i64 {
        self.active().next_offset
    }
    fn last_nonempty(&self) -> Option<&Segment> {
        self.segments.iter().rev().find(|s| s.first_index.is_some())
    }
    fn first_index(&self) -> Option<u64> {
        self.segments.iter().find_map(|s| s.first_index)
    }
    fn last_index(&self) -> Option<u64> {
        self.last_nonempty().map(|s| s.last_index)
    }
    fn last_term(&self) -> Option<u64> {
        self.last_nonempty().and_then(|s| s.last_term())
    }
    /// Index of the segment that holds `offset` (or would, at the end).
    fn segment_for_offset(&self, offset: i64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1)
    }
    /// Index of the segment that holds raft index `index`.
    fn segment_for_index(&self, index: u64) -> Option<usize> {
        let i = self
            .segments
            .partition_point(|s| s.first_index.is_some_and(|f| f <= index));
        let i = i.checked_sub(1)?;
        (index <= self.segments[i].last_index).then_some(i)
    }
    fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// How many whole segments from the front are past `retention.ms` / `retention.bytes`
    /// and end at or below `upper_offset` (never the active segment).
    fn segments_past_retention(
        &self,
        now_ms: i64,
        retention_ms: Option<i64>,
        retention_bytes: Option<u64>,
        upper_offset: i64,
    ) -> usize {
        let mut total = self.size_bytes();
        let n = self.segments.len() - 1;
        let mut count = 0;
        for s in &self.segments[..n] {
            let by_time = retention_ms.is_some_and(|r| s.max_ts < now_ms.saturating_sub(r));
            let by_size = retention_bytes.is_some_and(|r| total.saturating_sub(r) >= s.size);
            // Entirely below the log start DeleteRecords set.
            let deleted = s.next_offset <= self.log_start;
            if !(by_time || by_size || deleted) || s.next_offset > upper_offset {
                break;
            }
            total -= s.size;
            count += 1;
        }
        count
    }
}

/// A partition's segmented log. `Send + Sync`; share it through an `Arc`.
///
/// Appends, truncation and deletions take an internal write lock; reads take the read lock.
/// `sync()` fsyncs without either, so reads and appends never wait for a group commit.
pub struct PartitionLog {
    dir: PathBuf,
    config: RwLock<LogConfig>,
    inner: RwLock<Inner>,
    /// Serializes sync() calls.
    sync_lock: Mutex<()>,
    poisoned: AtomicBool,
    /// Test hook: the next fsync fails.
    fail_next_fsync: AtomicBool,
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl PartitionLog {
    /// Opens (creating if needed) the log in `dir`, recovering from an unclean shutdown.
    pub fn open(dir: &Path, config: LogConfig) -> Result<PartitionLog> {
        let mut config = config;
        config.segment_bytes = config.segment_bytes.clamp(1, MAX_SEGMENT_BYTES);
        config.index_interval_bytes = config.index_interval_bytes.max(1);
        fs::create_dir_all(dir)?;
        let log = PartitionLog {
            dir: dir.to_path_buf(),
            config: RwLock::new(config),
            inner: RwLock::new(Inner {
                segments: Vec::new(),
                log_start: 0,
                checkpoint: None,
                durable: 0,
                truncate_epoch: 0,
                closed: false,
            }),
            sync_lock: Mutex::new(()),
            poisoned: AtomicBool::new(false),
            fail_next_fsync: AtomicBool::new(false),
        };
        log.recover()?;
        Ok(log)
    }

    fn recover(&self) -> Result<()> {
        let dir = &self.dir;
        let clean_path = dir.join(CLEAN_MARKER);
        let clean = clean_path.exists();
        if clean {
            // Gone before any write, so a crash from here on counts as unclean.
            fs::remove_file(&clean_path)?;
            self.fsync_dir()?;
        }
        let mut bases = Vec::new();
        let mut others = Vec::new();
        for de in fs::read_dir(dir)? {
            let name = de?.file_name().to_string_lossy().into_owned();
            if let Some(b) = parse_log_name(&name) {
                bases.push(b);
            } else if name.ends_with(".tmp") {
                fs::remove_file(dir.join(&name))?;
            } else {
                others.push(name);
            }
        }
        bases.sort_unstable();
        // Index/meta files whose segment is gone (a deletion interrupted by a crash).
        for name in others {
            if let Some((stem, ext)) = name.split_once('.') {
                let orphan = matches!(ext, "index" | "timeindex" | "seg")
                    && stem.len() == 20
                    && stem
                        .parse::<i64>()
                        .is_ok_and(|b| bases.binary_search(&b).is_err());
                if orphan {
                    fs::remove_file(dir.join(&name))?;
                }
            }
        }
        let checkpoint = match fs::read(dir.join(CHECKPOINT)) {
            Ok(b) => Some(decode_checkpoint(&b).ok_or_else(|| Error::Corrupt {
                path: dir.join(CHECKPOINT),
                reason: "bad log start checkpoint".into(),
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };

        let now = now_ms();
        let interval = self.config.read().index_interval_bytes as u64;
        let mut segments: Vec<Segment> = Vec::new();
        let n = bases.len();
        let mut i = 0;
        while i < n {
            let base = bases[i];
            let is_last = i + 1 == n;
            let prev = segments.last();
            if let Some(p) = prev.filter(|p| p.next_offset != base) {
                tracing::warn!(
                    dir = %dir.display(),
                    base,
                    expected = p.next_offset,
                    "segment does not continue the log; deleting it and every later segment"
                );
                for &b in &bases[i..] {
                    Segment::remove_files(dir, b)?;
                }
                break;
            }
            let expect = Expect {
                index: prev.and_then(|p| p.first_index.map(|_| p.last_index + 1)),
                term: prev.and_then(|p| p.last_term()),
            };
            let file = Arc::new(open_segment_file(&dir.join(log_name(base)), false)?);
            let trusted = if clean || !is_last {
                Segment::load_trusted(dir, base, file.clone(), expect, now)
            } else {
                None
            };
            let scanned = trusted.is_none();
            let (seg, cut) = match trusted {
                Some(s) => (s, None),
                None => {
                    let (s, stop) = Segment::scan(dir, base, file, expect, interval, now)?;
                    (s, stop)
                }
            };
            if let Some(reason) = &cut {
                tracing::warn!(
                    segment = %seg.path.display(),
                    valid_bytes = seg.size,
                    reason = %reason,
                    "truncating log at first invalid entry"
                );
                seg.file.set_len(seg.size)?;
                self.fsync_file(&seg.file)?;
                for &b in &bases[i + 1..] {
                    Segment::remove_files(dir, b)?;
                }
            }
            let ends_here = cut.is_some() || is_last;
            if !ends_here && seg.first_index.is_none() {
                // Only the active segment may be empty; drop a stray empty one.
                tracing::warn!(segment = %seg.path.display(), "removing empty non-final segment");
                drop(seg);
                Segment::remove_files(dir, base)?;
                i += 1;
                continue;
            }
            if !ends_here && scanned {
                // Sealed segment we had to scan: persist its summary so the next open is cheap.
                let mut seg = seg;
                seg.push_time_entry();
                let meta = seg.write_indexes(dir)?;
                self.write_durable(&meta_name(base), &meta.encode())?;
                segments.push(seg);
            } else {
                segments.push(seg);
            }
            if ends_here {
                break;
            }
            i += 1;
        }
        if segments.is_empty() {
            let base = checkpoint.unwrap_or(0).max(0);
            let path = dir.join(log_name(base));
            let file = Arc::new(open_segment_file(&path, true)?);
            file.set_len(0)?;
            segments.push(Segment::new(base, path, file, now));
        }
        let active = segments.last().expect("at least one segment");
        // Whatever survived recovery is made durable now, so durable_index == last_index.
        self.fsync_file(&active.file)?;
        self.fsync_dir()?;
        let first_base = segments[0].base_offset;
        let next = active.next_offset;
        let mut inner = self.inner.write();
        inner.log_start = checkpoint.unwrap_or(first_base).max(first_base).min(next);
        inner.checkpoint = checkpoint;
        inner.segments = segments;
        inner.durable = inner.last_index().unwrap_or(0);
        Ok(())
    }

    // ---- fsync helpers: every fsync goes through these, so failure poisons the log. ----

    fn fsync_file(&self, f: &File) -> Result<()> {
        let r = if self.fail_next_fsync.swap(false, Ordering::SeqCst) {
            Err(io::Error::other("injected fsync failure"))
        } else {
            let started = std::time::Instant::now();
            let r = f.sync_data();
            crate::metrics::FSYNC_SECONDS.observe(started.elapsed().as_secs_f64());
            r
        };
        r.map_err(|e| self.poison(e))
    }

    fn fsync_dir(&self) -> Result<()> {
        let r = if self.fail_next_fsync.swap(false, Ordering::SeqCst) {
            Err(io::Error::other("injected fsync failure"))
        } else {
            crate::durable::fsync_dir(&self.dir)
        };
        r.map_err(|e| self.poison(e))
    }

    fn poison(&self, e: io::Error) -> Error {
        tracing::error!(dir = %self.dir.display(), error = %e, "fsync failed; log poisoned");
        self.poisoned.store(true, Ordering::SeqCst);
        Error::Io(e)
    }

    /// Temp file, fsync, rename, fsync the directory.
    fn write_durable(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        self.fsync_file(&f)?;
        drop(f);
        fs::rename(&tmp, self.dir.join(name))?;
        self.fsync_dir()
    }

    fn check_writable(&self) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    /// Makes the next fsync fail, as a disk error would (tests of the poisoned path).
    #[doc(hidden)]
    pub fn inject_fsync_failure(&self) {
        self.fail_next_fsync.store(true, Ordering::SeqCst);
    }

    /// True after a failed fsync.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> LogConfig {
        self.config.read().clone()
    }

    /// Changes segment rolling and index density from the next append on (topic config
    /// changes take effect without a restart). The fsync policy is the caller's.
    pub fn set_config(&self, config: LogConfig) {
        let mut config = config;
        config.segment_bytes = config.segment_bytes.clamp(1, MAX_SEGMENT_BYTES);
        config.index_interval_bytes = config.index_interval_bytes.max(1);
        *self.config.write() = config;
    }

    // ---- writes ----

    /// Appends entries; see the module docs for the rules. Nothing is fsynced (but a roll
    /// fsyncs the sealed segment); call [`PartitionLog::sync`] for durability.
    pub fn append(&self, entries: &[Entry]) -> Result<AppendInfo> {
        self.append_at(entries, now_ms())
    }

    fn append_at(&self, entries: &[Entry], now: i64) -> Result<AppendInfo> {
        self.check_writable()?;
        let mut inner = self.inner.write();
        if inner.closed {
            return Err(Error::Closed);
        }
        // Validate everything before writing anything.
        let mut want_index = inner.last_index().map(|l| l + 1);
        let mut floor_term = inner.last_term();
        let mut next_off = inner.next_offset();
        let mut infos = Vec::with_capacity(entries.len());
        for e in entries {
            if e.index == 0 || want_index.is_some_and(|w| w != e.index) {
                return Err(Error::InvalidAppend(format!(
                    "entry index {} does not follow {:?}",
                    e.index,
                    want_index.map(|w| w - 1)
                )));
            }
            if floor_term.is_some_and(|t| e.term < t) {
                return Err(Error::InvalidAppend(format!(
                    "entry {} has term {} below the log's last term {floor_term:?}",
                    e.index, e.term
                )));
            }
            if e.payload.len() > MAX_PAYLOAD {
                return Err(Error::InvalidAppend(format!(
                    "entry {} payload of {} bytes is too large",
                    e.index,
                    e.payload.len()
                )));
            }
            let info = match e.kind {
                EntryKind::Raft => None,
                EntryKind::Batch => {
                    let h = BatchHeader::parse(&e.payload)
                        .map_err(|err| Error::InvalidAppend(format!("entry {}: {err}", e.index)))?;
                    if h.base_offset != next_off {
                        return Err(Error::InvalidAppend(format!(
                            "entry {} batch base offset {} is not the log end offset {next_off}",
                            e.index, h.base_offset
                        )));
                    }
                    next_off = h.last_offset() + 1;
                    Some(BatchInfo::of(&h))
                }
            };
            want_index = Some(e.index + 1);
            floor_term = Some(e.term);
            infos.push(info);
        }

        let mut buf: Vec<u8> = Vec::new();
        let mut pending: Vec<(u64, usize)> = Vec::new(); // (pos, entry i)
        let mut pending_batch = false;
        for (i, (e, info)) in entries.iter().zip(&infos).enumerate() {
            let frame_len = (FRAME_HEADER_LEN + e.payload.len()) as u64;
            let active = inner.active();
            let size = active.size + buf.len() as u64;
            let has_batch = active.has_batch() || pending_batch;
            let rel_overflow = info.is_some_and(|b| b.last - active.base_offset >= u32::MAX as i64)
                || active
                    .first_index
                    .is_some_and(|f| e.index - f >= u32::MAX as u64);
            let too_old = self
                .config
                .read()
                .segment_ms
                .is_some_and(|ms| now - active.created_ms >= ms as i64);
            if size > 0
                && has_batch
                && (size + frame_len > self.config.read().segment_bytes || too_old || rel_overflow)
            {
                self.flush(&mut inner, &mut buf, &mut pending, entries, &infos)?;
                self.roll(&mut inner, now)?;
                pending_batch = false;
            }
            let pos = inner.active().size + buf.len() as u64;
            buf.extend_from_slice(&encode_frame_header(e.kind, e.term, e.index, &e.payload));
            buf.extend_from_slice(&e.payload);
            pending.push((pos, i));
            pending_batch |= info.is_some();
        }
        self.flush(&mut inner, &mut buf, &mut pending, entries, &infos)?;
        Ok(AppendInfo {
            last_index: inner.last_index().unwrap_or(0),
            last_term: inner.last_term().unwrap_or(0),
            next_offset: inner.next_offset(),
        })
    }

    /// Writes buffered frames to the active segment and records them.
    fn flush(
        &self,
        inner: &mut Inner,
        buf: &mut Vec<u8>,
        pending: &mut Vec<(u64, usize)>,
        entries: &[Entry],
        infos: &[Option<BatchInfo>],
    ) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let interval = self.config.read().index_interval_bytes as u64;
        let active = inner.active_mut();
        if let Err(e) = active.file.write_all_at(buf, active.size) {
            // Drop any partial write so the file matches memory; if even that fails the file
            // is in an unknown state, so refuse further writes.
            if active.file.set_len(active.size).is_err() {
                self.poisoned.store(true, Ordering::SeqCst);
            }
            return Err(e.into());
        }
        for &(pos, i) in pending.iter() {
            let e = &entries[i];
            let frame_len = (FRAME_HEADER_LEN + e.payload.len()) as u64;
            active.track(pos, frame_len, e.term, e.index, infos[i], interval);
        }
        buf.clear();
        pending.clear();
        Ok(())
    }

    /// Seals the active segment and starts a new one at its next offset.
    fn roll(&self, inner: &mut Inner, now: i64) -> Result<()> {
        let active = inner.active_mut();
        self.fsync_file(&active.file)?;
        active.push_time_entry();
        let meta = active.write_indexes(&self.dir)?;
        let (base, sealed_last) = (active.next_offset, active.last_index);
        self.write_durable(&meta_name(active.base_offset), &meta.encode())?;
        let path = self.dir.join(log_name(base));
        let file = Arc::new(open_segment_file(&path, true)?);
        file.set_len(0)?;
        self.fsync_dir()?;
        inner.segments.push(Segment::new(base, path, file, now));
        inner.durable = inner.durable.max(sealed_last);
        Ok(())
    }

    /// Rolls the active segment if it is older than `segment_ms` and holds a batch. For
    /// callers that want age-based rolls while the partition is idle.
    pub fn maybe_roll(&self, now_ms: i64) -> Result<bool> {
        self.check_writable()?;
        let mut inner = self.inner.write();
        if inner.closed {
            return Err(Error::Closed);
        }
        let a = inner.active();
        let due = self
            .config
            .read()
            .segment_ms
            .is_some_and(|ms| now_ms - a.created_ms >= ms as i64);
        if due && a.has_batch() {
            self.roll(&mut inner, now_ms)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Group commit: fsyncs the active segment without holding the log's lock during the
    /// fsync. Returns the highest raft index now durable (0 when the log is empty).
    pub fn sync(&self) -> Result<u64> {
        self.check_writable()?;
        let _one_at_a_time = self.sync_lock.lock();
        self.check_writable()?;
        let (file, target, epoch, durable) = {
            let inner = self.inner.read();
            (
                inner.active().file.clone(),
                // An empty log (everything purged or truncated) has nothing to sync.
                inner.last_index().unwrap_or(inner.durable),
                inner.truncate_epoch,
                inner.durable,
            )
        };
        if target <= durable {
            return Ok(durable);
        }
        // Sealed segments were fsynced when rolled, so the active file covers everything
        // written up to `target`. If a roll happened meanwhile, it fsynced this file too.
        self.fsync_file(&file)?;
        let mut inner = self.inner.write();
        if inner.truncate_epoch == epoch {
            inner.durable = inner.durable.max(target);
        }
        Ok(inner.durable)
    }

    /// Highest raft index known to be on stable storage (0: none). Entries purged since keep
    /// it; truncation lowers it to below the truncation point.
    pub fn durable_index(&self) -> u64 {
        self.inner.read().durable
    }

    /// Removes entries with index >= `from_index`, across segments. The truncated file is
    /// fsynced; Kafka's next offset rolls back accordingly.
    pub fn truncate_suffix(&self, from_index: u64) -> Result<()> {
        self.check_writable()?;
        let mut inner = self.inner.write();
        if inner.closed {
            return Err(Error::Closed);
        }
        let Some(last) = inner.last_index() else {
            return Ok(());
        };
        if from_index > last {
            return Ok(());
        }
        let first = inner.first_index().unwrap_or(from_index);
        // Segment that keeps a (possibly empty) prefix: the one holding from_index, or the
        // first segment when everything goes.
        let k = if from_index <= first {
            0
        } else {
            inner
                .segment_for_index(from_index)
                .expect("from_index is within the log")
        };
        inner.truncate_epoch += 1;
        // Later segments go newest first, so a crash leaves a prefix of the log.
        while inner.segments.len() > k + 1 {
            let seg = inner.segments.pop().expect("len > k+1");
            let base = seg.base_offset;
            drop(seg);
            Segment::remove_files(&self.dir, base)?;
        }
        let seg = inner.active();
        let cut = if from_index <= first || seg.first_index.is_none_or(|f| from_index <= f) {
            0
        } else {
            let (mut pos, _) = seg.pos_for_index(from_index);
            let mut r = segment::FrameReader::new(&seg.file, seg.size);
            loop {
                let f = r
                    .frame(pos)?
                    .map_err(|fault| seg.corrupt(fault.reason().to_string()))?;
                if f.index >= from_index {
                    break;
                }
                pos += f.len;
            }
            pos
        };
        let base = seg.base_offset;
        let file = seg.file.clone();
        inner.active_mut().truncate_to(cut, from_index)?;
        file.set_len(cut)?;
        crate::durable::remove_if_exists(&self.dir.join(meta_name(base)))?;
        self.fsync_file(&file)?;
        self.fsync_dir()?;
        inner.durable = inner.durable.min(from_index - 1);
        let next = inner.next_offset();
        inner.log_start = inner.log_start.min(next);
        if inner.checkpoint.is_some_and(|c| c > next) {
            // Only reachable when truncating below a DeleteRecords point (callers never
            // truncate committed data); keep a restart from resurrecting the old start.
            self.write_durable(CHECKPOINT, &encode_checkpoint(next))?;
            inner.checkpoint = Some(next);
        }
        Ok(())
    }

    /// Empties the log and starts it again at offset `next_offset` (the next entry may have
    /// any index): a replica too far behind its leader's retention takes the leader's
    /// position instead of entries it can no longer get. Old segments go newest first, then
    /// the new empty segment and the log start checkpoint are made durable; a crash part-way
    /// leaves a prefix of the old log or an empty log, both of which the replica's leader
    /// repairs the same way.
    pub fn reset_to(&self, next_offset: i64) -> Result<()> {
        self.check_writable()?;
        let mut inner = self.inner.write();
        if inner.closed {
            return Err(Error::Closed);
        }
        inner.truncate_epoch += 1;
        while let Some(seg) = inner.segments.pop() {
            let base = seg.base_offset;
            drop(seg);
            Segment::remove_files(&self.dir, base)?;
        }
        self.fsync_dir()?;
        let path = self.dir.join(log_name(next_offset));
        let file = Arc::new(open_segment_file(&path, true)?);
        file.set_len(0)?;
        self.fsync_file(&file)?;
        inner
            .segments
            .push(Segment::new(next_offset, path, file, now_ms()));
        self.write_durable(CHECKPOINT, &encode_checkpoint(next_offset))?;
        inner.checkpoint = Some(next_offset);
        inner.log_start = next_offset;
        inner.durable = 0;
        Ok(())
    }

    /// Deletes whole segments (never the active one) whose entries all have index <=
    /// `up_to_index`. Returns how many were deleted.
    pub fn purge_prefix(&self, up_to_index: u64) -> Result<usize> {
        self.check_writable()?;
        let removed = {
            let mut inner = self.inner.write();
            let n = inner.segments.len() - 1;
            let count = inner.segments[..n]
                .iter()
                .take_while(|s| s.first_index.is_some() && s.last_index <= up_to_index)
                .count();
            self.remove_front(&mut inner, count)?
        };
        if removed > 0 {
            self.fsync_dir()?;
        }
        Ok(removed)
    }

    /// Removes the first `count` segments (caller guarantees the active one survives).
    fn remove_front(&self, inner: &mut Inner, count: usize) -> Result<usize> {
        for seg in inner.segments.drain(..count) {
            let base = seg.base_offset;
            drop(seg);
            Segment::remove_files(&self.dir, base)?;
        }
        let first_base = inner.segments[0].base_offset;
        inner.log_start = inner.log_start.max(first_base);
        Ok(count)
    }

    /// DeleteRecords as a replica applies it: moves the log start offset to `offset` and
    /// persists it durably, deleting nothing (the whole segments below it are then handed
    /// out by [`PartitionLog::retention_cut`], so Raft purges them). Returns the new log
    /// start offset.
    pub fn advance_log_start(&self, offset: i64) -> Result<i64> {
        self.check_writable()?;
        let mut inner = self.inner.write();
        self.move_log_start(&mut inner, offset)?;
        Ok(inner.log_start)
    }

    /// Moves the log start forward to `offset` (at most the log end) and persists it
    /// durably; false when it is already there or past it.
    fn move_log_start(&self, inner: &mut Inner, offset: i64) -> Result<bool> {
        let (start, end) = (inner.log_start, inner.next_offset());
        if offset > end {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start: start,
                log_end: end,
            });
        }
        if offset <= start {
            return Ok(false);
        }
        self.write_durable(CHECKPOINT, &encode_checkpoint(offset))?;
        inner.checkpoint = Some(offset);
        inner.log_start = offset;
        Ok(true)
    }

    /// DeleteRecords on a log without Raft: moves the log start offset to `offset` (the
    /// caller checks it is at most the high watermark), persists it durably, then deletes
    /// segments entirely below it. Returns the new log start offset.
    pub fn delete_records_before(&self, offset: i64) -> Result<i64> {
        self.check_writable()?;
        let removed = {
            let mut inner = self.inner.write();
            if !self.move_log_start(&mut inner, offset)? {
                return Ok(inner.log_start);
            }
            let n = inner.segments.len() - 1;
            let count = inner.segments[..n]
                .iter()
                .take_while(|s| s.next_offset <= offset)
                .count();
            self.remove_front(&mut inner, count)?
        };
        if removed > 0 {
            self.fsync_dir()?;
        }
        Ok(self.log_start_offset())
    }

    /// Deletes whole non-active segments, oldest first, while the oldest is expired by time
    /// (its max timestamp < `now_ms - retention_ms`) or by size (the log exceeds
    /// `retention_bytes` by at least its size). Never deletes anything at or above
    /// `upper_offset`. Returns how many segments were deleted.
    pub fn enforce_retention(
        &self,
        now_ms: i64,
        retention_ms: Option<i64>,
        retention_bytes: Option<u64>,
        upper_offset: i64,
    ) -> Result<usize> {
        self.check_writable()?;
        let removed = {
            let mut inner = self.inner.write();
            let count =
                inner.segments_past_retention(now_ms, retention_ms, retention_bytes, upper_offset);
            self.remove_front(&mut inner, count)?
        };
        if removed > 0 {
            self.fsync_dir()?;
        }
        Ok(removed)
    }

    /// What [`PartitionLog::enforce_retention`] would delete, without deleting: the Raft index
    /// of the last entry in the last segment past retention or wholly below the log start
    /// (None when nothing is). A
    /// replicated log hands that index to Raft, which purges through
    /// [`PartitionLog::purge_prefix`] once no replication needs the entries.
    pub fn retention_cut(
        &self,
        now_ms: i64,
        retention_ms: Option<i64>,
        retention_bytes: Option<u64>,
        upper_offset: i64,
    ) -> Option<u64> {
        let inner = self.inner.read();
        let count =
            inner.segments_past_retention(now_ms, retention_ms, retention_bytes, upper_offset);
        inner.segments[..count]
            .iter()
            .rev()
            .find(|s| s.first_index.is_some())
            .map(|s| s.last_index)
    }

    /// Clean shutdown: sync, persist the active segment's summary and indexes, write the
    /// clean-shutdown marker. Later writes return [`Error::Closed`]; reads still work.
    pub fn close(&self) -> Result<()> {
        self.sync()?;
        let mut inner = self.inner.write();
        if inner.closed {
            return Ok(());
        }
        self.check_writable()?;
        let active = inner.active_mut();
        active.push_time_entry();
        let meta = active.write_indexes(&self.dir)?;
        let base = active.base_offset;
        self.write_durable(&meta_name(base), &meta.encode())?;
        self.write_durable(CLEAN_MARKER, b"")?;
        inner.closed = true;
        Ok(())
    }

    /// Removes the log's directory and everything in it.
    pub fn delete(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    // ---- Kafka reads ----

    /// Reads batches starting with the one containing `from_offset`, stopping before the
    /// first batch whose last offset is >= `upper_offset` (the high watermark) and before
    /// exceeding `max_bytes`, except that the first batch is returned whole (KIP-74).
    pub fn read(
        &self,
        from_offset: i64,
        max_bytes: usize,
        upper_offset: i64,
    ) -> Result<ReadResult> {
        let inner = self.inner.read();
        let (start, end) = (inner.log_start, inner.next_offset());
        if from_offset < start || from_offset > end {
            return Err(Error::OffsetOutOfRange {
                offset: from_offset,
                log_start: start,
                log_end: end,
            });
        }
        let upper = upper_offset.min(end);
        let mut out = BytesMut::new();
        let mut first = None;
        let mut next = from_offset;
        if from_offset < upper {
            'segments: for seg in &inner.segments[inner.segment_for_offset(from_offset)..] {
                if seg.base_offset >= upper {
                    break;
                }
                let mut pos = seg.pos_for_offset(from_offset);
                let mut r = segment::FrameReader::new(&seg.file, seg.size);
                while pos < seg.size {
                    let f = r
                        .frame(pos)?
                        .map_err(|fault| seg.corrupt(fault.reason().to_string()))?;
                    pos += f.len;
                    let Some(b) = f.batch else { continue };
                    if b.last < from_offset {
                        continue;
                    }
                    if b.last >= upper
                        || (first.is_some() && out.len() + f.payload.len() > max_bytes)
                    {
                        break 'segments;
                    }
                    out.extend_from_slice(f.payload);
                    first.get_or_insert(b.base);
                    next = b.last + 1;
                }
            }
        }
        Ok(ReadResult {
            data: out.freeze(),
            first_offset: first.unwrap_or(from_offset),
            next_offset: next,
        })
    }

    /// The first batch at or after the log start and below `upper_offset` whose max
    /// timestamp is >= `ts`, as stored.
    pub fn find_offset_by_timestamp(&self, ts: i64, upper_offset: i64) -> Result<Option<Bytes>> {
        let inner = self.inner.read();
        let start = inner.log_start;
        let upper = upper_offset.min(inner.next_offset());
        for seg in &inner.segments {
            if seg.next_offset <= start || seg.max_ts < ts {
                continue;
            }
            if seg.base_offset >= upper {
                break;
            }
            let from = seg.offset_for_time(ts).max(start);
            let mut pos = seg.pos_for_offset(from);
            let mut r = segment::FrameReader::new(&seg.file, seg.size);
            while pos < seg.size {
                let f = r
                    .frame(pos)?
                    .map_err(|fault| seg.corrupt(fault.reason().to_string()))?;
                pos += f.len;
                let Some(b) = f.batch else { continue };
                if b.last < start {
                    continue;
                }
                if b.last >= upper {
                    return Ok(None);
                }
                if b.max_ts >= ts {
                    return Ok(Some(Bytes::copy_from_slice(f.payload)));
                }
            }
        }
        Ok(None)
    }

    /// The batch with the largest max timestamp (the first such batch on ties) among those
    /// at or after the log start and below `upper_offset` (Kafka's MAX_TIMESTAMP lookup):
    /// that timestamp and the batch as stored; the caller refines to the record.
    pub fn max_timestamp(&self, upper_offset: i64) -> Result<Option<(i64, Bytes)>> {
        let inner = self.inner.read();
        let start = inner.log_start;
        let upper = upper_offset.min(inner.next_offset());
        let mut best: Option<(i64, usize, i64)> = None; // (ts, segment, batch base)
        for (si, seg) in inner.segments.iter().enumerate() {
            if seg.next_offset <= start || !seg.has_batch() {
                continue;
            }
            if seg.base_offset >= upper {
                break;
            }
            let candidate = if seg.base_offset >= start && seg.next_offset <= upper {
                Some((seg.max_ts, seg.max_ts_offset))
            } else {
                let mut found: Option<(i64, i64)> = None;
                let mut pos = seg.pos_for_offset(start);
                let mut r = segment::FrameReader::new(&seg.file, seg.size);
                while pos < seg.size {
                    let f = r
                        .frame(pos)?
                        .map_err(|fault| seg.corrupt(fault.reason().to_string()))?;
                    pos += f.len;
                    let Some(b) = f.batch else { continue };
                    if b.last < start {
                        continue;
                    }
                    if b.last >= upper {
                        break;
                    }
                    if found.is_none_or(|(t, _)| b.max_ts > t) {
                        found = Some((b.max_ts, b.base));
                    }
                }
                found
            };
            if let Some((t, off)) = candidate {
                if best.is_none_or(|(bt, _, _)| t > bt) {
                    best = Some((t, si, off));
                }
            }
        }
        let Some((ts, si, off)) = best else {
            return Ok(None);
        };
        let seg = &inner.segments[si];
        let mut pos = seg.pos_for_offset(off);
        let mut r = segment::FrameReader::new(&seg.file, seg.size);
        while pos < seg.size {
            let f = r
                .frame(pos)?
                .map_err(|fault| seg.corrupt(fault.reason().to_string()))?;
            pos += f.len;
            if f.batch.is_some_and(|b| b.base == off) {
                return Ok(Some((ts, Bytes::copy_from_slice(f.payload))));
            }
        }
        Err(seg.corrupt(format!("batch at offset {off} missing")))
    }

    /// Kafka log start offset.
    pub fn log_start_offset(&self) -> i64 {
        self.inner.read().log_start
    }

    /// Log end offset: the offset the next batch takes.
    pub fn next_offset(&self) -> i64 {
        self.inner.read().next_offset()
    }

    /// Bytes of all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.inner.read().size_bytes()
    }

    pub fn segment_count(&self) -> usize {
        self.inner.read().segments.len()
    }

    // ---- Raft reads ----

    /// Entries with `from_index <= index < to_index_exclusive`, stopping before the payloads
    /// exceed `max_bytes` but always returning at least one entry of a non-empty range.
    pub fn entries(
        &self,
        from_index: u64,
        to_index_exclusive: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry>> {
        let inner = self.inner.read();
        if from_index >= to_index_exclusive {
            return Ok(Vec::new());
        }
        let (first, last) = match (inner.first_index(), inner.last_index()) {
            (Some(f), Some(l)) => (f, l),
            _ => (0, 0),
        };
        if first == 0 || from_index < first || to_index_exclusive > last + 1 {
            return Err(Error::IndexOutOfRange {
                from: from_index,
                to: to_index_exclusive,
                first,
                last,
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let si = inner
            .segment_for_index(from_index)
            .expect("index checked to be in range");
        'segments: for seg in &inner.segments[si..] {
            if seg.first_index.is_none() {
                break;
            }
            let (mut pos, _) = seg.pos_for_index(from_index);
            let mut r = segment::FrameReader::new(&seg.file, seg.size);
            while pos < seg.size {
                let f = r
                    .frame(pos)?
                    .map_err(|fault| seg.corrupt(fault.reason().to_string()))?;
                pos += f.len;
                if f.index < from_index {
                    continue;
                }
                if f.index >= to_index_exclusive
                    || (!out.is_empty() && bytes + f.payload.len() > max_bytes)
                {
                    break 'segments;
                }
                bytes += f.payload.len();
                out.push(Entry {
                    term: f.term,
                    index: f.index,
                    kind: f.kind,
                    payload: Bytes::copy_from_slice(f.payload),
                });
            }
        }
        Ok(out)
    }

    /// Index of the first entry present; 0 when the log holds no entry (Raft indexes start
    /// at 1).
    pub fn first_index(&self) -> u64 {
        self.inner.read().first_index().unwrap_or(0)
    }

    /// Index of the last entry; 0 when the log holds no entry.
    pub fn last_index(&self) -> u64 {
        self.inner.read().last_index().unwrap_or(0)
    }

    /// Term of the last entry; 0 when the log holds no entry.
    pub fn last_term(&self) -> u64 {
        self.inner.read().last_term().unwrap_or(0)
    }

    /// Term of entry `index`, if present.
    pub fn term_of(&self, index: u64) -> Option<u64> {
        let inner = self.inner.read();
        let si = inner.segment_for_index(index)?;
        inner.segments[si].term_of(index)
    }

    /// The Kafka offset after entry `index` (the log end offset once `index` is the last
    /// entry): what the high watermark is when `index` is the commit index. None when the
    /// entry is not present.
    pub fn offset_for_index(&self, index: u64) -> Result<Option<i64>> {
        let inner = self.inner.read();
        let Some(si) = inner.segment_for_index(index) else {
            return Ok(None);
        };
        let seg = &inner.segments[si];
        if index == seg.last_index {
            return Ok(Some(seg.next_offset));
        }
        let (mut pos, mut offset) = seg.pos_for_index(index);
        let mut r = segment::FrameReader::new(&seg.file, seg.size);
        while pos < seg.size {
            let f = r
                .frame(pos)?
                .map_err(|fault| seg.corrupt(fault.reason().to_string()))?;
            pos += f.len;
            if let Some(b) = f.batch {
                offset = b.last + 1;
            }
            if f.index == index {
                return Ok(Some(offset));
            }
        }
        Err(seg.corrupt(format!("entry {index} missing")))
    }
}
