//! The partition handle, backed (for now) by a single local replica.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use storage::batch::{self, BatchHeader};
use storage::{Entry, EntryKind, PartitionLog};
use tokio::sync::{mpsc, oneshot, watch};

pub use storage::{FsyncPolicy, LogConfig};

use crate::{Error, Result};

/// How many proposals one group commit takes at most before it fsyncs.
const MAX_GROUP: usize = 4096;

/// How many trailing log entries are replayed through the [`BatchFilter`] on open, so that a
/// producer retrying across a restart is still recognised (idempotent producers keep at most
/// five batches in flight per partition).
const FILTER_REPLAY_ENTRIES: u64 = 10_000;

/// The verdict of a [`BatchFilter`] on one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Append the batch.
    Append,
    /// The batch was already appended at `base_offset`; answer without a second write.
    Duplicate { base_offset: i64 },
    /// Refuse the batch with a caller-defined code (carried back unchanged).
    Reject(i16),
}

/// Admission check run on the proposing replica, in log order, before an offset is assigned.
/// The broker implements it with its idempotent-producer table.
pub trait BatchFilter: Send + 'static {
    /// Decide on a batch about to be appended (bytes as stored, offset not yet stamped).
    fn admit(&mut self, batch: &[u8]) -> Admit;
    /// A batch was appended with these offsets (also called when the log is replayed on open).
    fn appended(&mut self, batch: &[u8], base_offset: i64, last_offset: i64);
}

/// A filter that admits everything.
pub struct AdmitAll;

impl BatchFilter for AdmitAll {
    fn admit(&mut self, _batch: &[u8]) -> Admit {
        Admit::Append
    }
    fn appended(&mut self, _batch: &[u8], _base_offset: i64, _last_offset: i64) {}
}

/// What happened to one proposed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProposeOutcome {
    /// Committed with this base offset.
    Appended { base_offset: i64 },
    /// A duplicate of a batch committed earlier at this base offset.
    Duplicate { base_offset: i64 },
    /// Refused by the filter with this code.
    Rejected(i16),
}

/// Options for opening a partition.
#[derive(Debug, Clone)]
pub struct PartitionOptions {
    pub log: LogConfig,
}

/// Committed data read from a partition.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Concatenated record batches, as stored.
    pub data: Bytes,
    /// The high watermark when the read was made.
    pub high_watermark: i64,
    /// The log start offset when the read was made.
    pub log_start_offset: i64,
}

enum Msg {
    Propose(Proposal),
    Close(oneshot::Sender<()>),
}

struct Proposal {
    batches: Vec<BytesMut>,
    reply: oneshot::Sender<Result<Vec<ProposeOutcome>>>,
}

struct Inner {
    log: PartitionLog,
    filter: Mutex<Box<dyn BatchFilter>>,
    hw: watch::Sender<i64>,
    tx: mpsc::UnboundedSender<Msg>,
    term: u64,
    fsync_always: bool,
    closed: AtomicBool,
}

/// Handle to one partition replica. Cheap to clone.
#[derive(Clone)]
pub struct Partition {
    inner: Arc<Inner>,
}

impl Partition {
    /// Opens (recovering if needed) the partition stored in `dir` and starts its writer task.
    /// Blocking I/O: call it from a blocking context or at start-up. Needs a tokio runtime.
    pub fn open(
        dir: &Path,
        options: PartitionOptions,
        filter: Box<dyn BatchFilter>,
    ) -> Result<Self> {
        let fsync = options.log.fsync.clone();
        let log = PartitionLog::open(dir, options.log)?;
        let mut filter = filter;
        replay_filter(&log, filter.as_mut())?;
        // Everything that survived recovery is committed: with one replica, committed means
        // "in the log" (under `always`, every acknowledged batch was fsynced first).
        let hw = log.next_offset();
        // A local replica is its own leader for term 1 until openraft provides real terms.
        let term = log.last_term().max(1);
        let (tx, rx) = mpsc::unbounded_channel();
        let (hw_tx, _) = watch::channel(hw);
        let inner = Arc::new(Inner {
            log,
            filter: Mutex::new(filter),
            hw: hw_tx,
            tx,
            term,
            fsync_always: matches!(fsync, FsyncPolicy::Always),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(writer(inner.clone(), rx));
        if let FsyncPolicy::Interval(every) = fsync {
            tokio::spawn(interval_flusher(Arc::downgrade(&inner), every));
        }
        Ok(Partition { inner })
    }

    /// Proposes record batches (each exactly one v2 batch, as the client sent it). The proposal
    /// is queued before this returns, so proposals keep the order of the calls; the future
    /// resolves once they are committed. Dropping the future does not withdraw them (acks=0).
    pub fn propose(
        &self,
        batches: Vec<BytesMut>,
    ) -> impl Future<Output = Result<Vec<ProposeOutcome>>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = !self.inner.closed.load(Ordering::Acquire)
            && self
                .inner
                .tx
                .send(Msg::Propose(Proposal { batches, reply }))
                .is_ok();
        async move {
            if !sent {
                return Err(Error::Closed);
            }
            rx.await.unwrap_or(Err(Error::Closed))
        }
    }

    /// Reads committed batches starting with the one containing `offset`, up to `max_bytes`
    /// (the first batch is returned whole even when larger).
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult> {
        let hw = *self.inner.hw.borrow();
        let start = self.inner.log.log_start_offset();
        let end = self.inner.log.next_offset();
        if offset < start || offset > end {
            return Err(Error::OffsetOutOfRange { offset, start, end });
        }
        let data = if offset >= hw {
            Bytes::new()
        } else {
            self.inner.log.read(offset, max_bytes, hw)?.data
        };
        Ok(ReadResult {
            data,
            high_watermark: hw,
            log_start_offset: start,
        })
    }

    /// The high watermark: the offset after the last committed record.
    pub fn high_watermark(&self) -> i64 {
        *self.inner.hw.borrow()
    }

    /// A receiver that sees every change of the high watermark (long-poll fetch waits on it).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.hw.subscribe()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.inner.log.log_start_offset()
    }

    pub fn log_end_offset(&self) -> i64 {
        self.inner.log.next_offset()
    }

    /// The leader epoch stamped into batches (the Raft term).
    pub fn leader_epoch(&self) -> i32 {
        i32::try_from(self.inner.term).unwrap_or(i32::MAX)
    }

    /// Applies new segment settings (topic config change) from the next append on.
    pub fn set_log_config(&self, config: LogConfig) {
        self.inner.log.set_config(config);
    }

    /// Bytes on disk.
    pub fn size_bytes(&self) -> u64 {
        self.inner.log.size_bytes()
    }

    /// DeleteRecords: moves the log start offset to `offset` (`-1` = the high watermark).
    /// Returns the new log start offset.
    pub fn delete_records(&self, offset: i64) -> Result<i64> {
        let hw = self.high_watermark();
        let target = if offset == -1 { hw } else { offset };
        let start = self.log_start_offset();
        if target < 0 || target > hw {
            return Err(Error::OffsetOutOfRange {
                offset: target,
                start,
                end: hw,
            });
        }
        if target > start {
            self.inner.log.delete_records_before(target)?;
        }
        Ok(self.log_start_offset())
    }

    /// The first committed batch whose max timestamp is `>= ts`, as stored.
    pub fn find_by_timestamp(&self, ts: i64) -> Result<Option<Bytes>> {
        Ok(self
            .inner
            .log
            .find_offset_by_timestamp(ts, self.high_watermark())?)
    }

    /// The committed batch holding the largest timestamp, with that timestamp.
    pub fn max_timestamp(&self) -> Result<Option<(i64, Bytes)>> {
        Ok(self.inner.log.max_timestamp(self.high_watermark())?)
    }

    /// Deletes whole segments past retention. Returns how many were deleted.
    pub fn enforce_retention(
        &self,
        now_ms: i64,
        retention_ms: Option<i64>,
        retention_bytes: Option<u64>,
    ) -> Result<usize> {
        Ok(self.inner.log.enforce_retention(
            now_ms,
            retention_ms,
            retention_bytes,
            self.high_watermark(),
        )?)
    }

    /// Commits what is queued, syncs and closes the log. Later proposals fail with `Closed`.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Msg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Feeds the tail of the log through the filter so its state survives a restart.
fn replay_filter(log: &PartitionLog, filter: &mut dyn BatchFilter) -> Result<()> {
    let last = log.last_index();
    if last == 0 {
        return Ok(());
    }
    let mut from = log
        .first_index()
        .max(last.saturating_sub(FILTER_REPLAY_ENTRIES) + 1);
    while from <= last {
        let entries = log.entries(from, last + 1, 8 << 20)?;
        let Some(tail) = entries.last() else { break };
        from = tail.index + 1;
        for e in &entries {
            if e.kind == EntryKind::Batch {
                if let Ok(h) = BatchHeader::parse(&e.payload) {
                    filter.appended(&e.payload, h.base_offset, h.last_offset());
                }
            }
        }
    }
    Ok(())
}

async fn writer(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut group = Vec::new();
    while let Some(msg) = rx.recv().await {
        let mut close = None;
        match msg {
            Msg::Propose(p) => group.push(p),
            Msg::Close(done) => close = Some(done),
        }
        while close.is_none() && group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Msg::Propose(p)) => group.push(p),
                Ok(Msg::Close(done)) => close = Some(done),
                Err(_) => break,
            }
        }
        if !group.is_empty() {
            let batch = std::mem::take(&mut group);
            let inner2 = inner.clone();
            // Appends and fsyncs are blocking file I/O.
            let _ = tokio::task::spawn_blocking(move || inner2.commit_group(batch)).await;
        }
        if let Some(done) = close {
            inner.closed.store(true, Ordering::Release);
            let inner2 = inner.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = inner2.log.close() {
                    tracing::error!(error = %e, "closing partition log");
                }
            })
            .await;
            // Fail whatever raced in after the close.
            rx.close();
            while let Ok(msg) = rx.try_recv() {
                if let Msg::Propose(p) = msg {
                    let _ = p.reply.send(Err(Error::Closed));
                }
            }
            let _ = done.send(());
            return;
        }
    }
}

async fn interval_flusher(inner: std::sync::Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let res = tokio::task::spawn_blocking(move || inner.log.sync()).await;
        if let Ok(Err(e)) = res {
            tracing::error!(error = %e, "interval fsync failed; partition refuses writes");
        }
    }
}

impl Inner {
    /// One group commit: admit, stamp and append every batch, fsync once (policy `always`),
    /// advance the high watermark, answer every proposal.
    fn commit_group(&self, group: Vec<Proposal>) {
        let mut outcomes: Vec<Vec<ProposeOutcome>> = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        let mut entries = Vec::new();
        let result = {
            let mut filter = self.filter.lock();
            let mut next_offset = self.log.next_offset();
            let mut next_index = self.log.last_index() + 1;
            let epoch = i32::try_from(self.term).unwrap_or(i32::MAX);
            for p in group {
                let mut out = Vec::with_capacity(p.batches.len());
                for mut b in p.batches {
                    let header = match BatchHeader::parse(&b) {
                        Ok(h) => h,
                        Err(_) => {
                            // The broker validates before proposing; this is a defect upstream.
                            out.push(ProposeOutcome::Rejected(-1));
                            continue;
                        }
                    };
                    match filter.admit(&b) {
                        Admit::Append => {
                            batch::stamp(&mut b, next_offset, epoch);
                            let last = next_offset + i64::from(header.last_offset_delta);
                            filter.appended(&b, next_offset, last);
                            out.push(ProposeOutcome::Appended {
                                base_offset: next_offset,
                            });
                            entries.push(Entry {
                                term: self.term,
                                index: next_index,
                                kind: EntryKind::Batch,
                                payload: b.freeze(),
                            });
                            next_offset = last + 1;
                            next_index += 1;
                        }
                        Admit::Duplicate { base_offset } => {
                            out.push(ProposeOutcome::Duplicate { base_offset })
                        }
                        Admit::Reject(code) => out.push(ProposeOutcome::Rejected(code)),
                    }
                }
                outcomes.push(out);
                replies.push(p.reply);
            }
            if entries.is_empty() {
                Ok(())
            } else {
                self.log.append(&entries).map(|_| ())
            }
        };
        let result = result.and_then(|()| {
            if self.fsync_always && !entries.is_empty() {
                self.log.sync().map(|_| ())
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                let hw = self.log.next_offset();
                self.hw.send_if_modified(|cur| {
                    let changed = *cur != hw;
                    *cur = hw;
                    changed
                });
                for (reply, out) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(out));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "append failed; partition refuses further writes");
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(Error::Failed(msg.clone())));
                }
            }
        }
    }
}
