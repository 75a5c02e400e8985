//! openraft storage over a partition's Kafka log: the Raft log of a partition **is** its
//! `storage::PartitionLog` (one copy of the data on disk), and the Raft vote, purge point,
//! membership and committed hint live in the `raft` column family of the node's RocksDB
//! [`MetaStore`].
//!
//! Index mapping: openraft writes its first entry (the initial membership) at index 0, while
//! the partition log numbers entries from 1. Stored index = Raft index + 1, converted only in
//! [`to_log`] / [`to_raft`].
//!
//! Offsets: every replica stamps each batch's `baseOffset` with its own log end offset at
//! append time and `partitionLeaderEpoch` with the entry's term. Raft's log matching makes the
//! prefix identical on every replica, so the stamps are too. The leader pre-stamps what it
//! proposes, so normally nothing is copied here.
//!
//! The state machine is the high watermark: applying a batch moves it past the batch's last
//! offset. It has no other state, so after a restart it is "applied" up to the committed hint
//! without replaying the log.

use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::{Stream, StreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder,
    RaftStateMachine,
};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use storage::batch::{self, BatchHeader};
use storage::{EntryKind, MetaStore, PartitionLog};
use tokio::sync::{mpsc, watch};

use crate::partition::{BatchFilter, FILTER_REPLAY_ENTRIES};
use crate::txn::{AbortedTxn, TxnIndex, TxnSnapshot, SNAPSHOT_EVERY};
use crate::types::{
    from_stored, log_id, to_stored, Applied, Command, LogId, Payload, RaftEntryOf, Snapshot,
    SnapshotMeta, StoredMembership, TypeConfig, Vote,
};

const CF: &str = "raft";
/// Most bytes one `limited_get_log_entries` (replication) read returns.
const MAX_READ_BYTES: usize = 8 << 20;

/// Raft index -> partition log index.
pub(crate) fn to_log(raft_index: u64) -> u64 {
    raft_index + 1
}

/// Partition log index -> Raft index (`log_index` >= 1).
pub(crate) fn to_raft(log_index: u64) -> u64 {
    log_index - 1
}

/// What a replica shares between its log store, state machine and partition handle.
pub(crate) struct Shared {
    pub log: PartitionLog,
    pub meta: MetaStore,
    /// Prefix of this group's keys in the `raft` column family.
    pub key: String,
    /// The high watermark (offset after the last applied batch).
    pub hw: watch::Sender<i64>,
    pub fsync_always: bool,
    syncer: mpsc::UnboundedSender<IOFlushed<TypeConfig>>,
    /// Open and aborted transactions, in commit order (see `txn`).
    pub txn: Mutex<TxnIndex>,
    /// First offset of the oldest open transaction (`i64::MAX`: none), readable without the
    /// lock on every fetch.
    pub first_unstable: AtomicI64,
    /// The offset below which this replica's own log is durable as its fsync policy makes
    /// it (fsynced under `always`, written under `interval`): acks=1 answers from it.
    pub durable: watch::Sender<i64>,
    /// The batch filter as of the applied entries (see [`crate::BatchFilter`]).
    pub applied_filter: Mutex<AppliedFilter>,
    /// Log entries read by the last rebuild of a batch filter.
    pub filter_replayed: AtomicU64,
}

/// A batch filter fed from the state machine, and the log index it has seen up to.
pub(crate) struct AppliedFilter {
    pub filter: Box<dyn BatchFilter>,
    /// Log index of the last entry it has seen (0: none); entries up to it are skipped when
    /// applied again (after a restart that resumed from an older committed point).
    pub index: u64,
}

impl Shared {
    pub fn new(
        log: PartitionLog,
        meta: MetaStore,
        key: String,
        fsync_always: bool,
        applied_filter: Box<dyn BatchFilter>,
    ) -> io::Result<Arc<Shared>> {
        let (syncer, rx) = mpsc::unbounded_channel();
        let (hw, _) = watch::channel(log.log_start_offset());
        let (durable, _) = watch::channel(log.next_offset());
        let shared = Arc::new(Shared {
            log,
            meta,
            key,
            hw,
            fsync_always,
            syncer,
            txn: Mutex::new(TxnIndex::default()),
            first_unstable: AtomicI64::new(i64::MAX),
            durable,
            applied_filter: Mutex::new(AppliedFilter {
                filter: applied_filter,
                index: 0,
            }),
            filter_replayed: AtomicU64::new(0),
        });
        tokio::spawn(sync_loop(Arc::downgrade(&shared), rx));
        Ok(shared)
    }

    fn k(&self, what: &str) -> Vec<u8> {
        format!("{}/{what}", self.key).into_bytes()
    }

    fn load<T: for<'de> Deserialize<'de>>(&self, what: &str) -> io::Result<Option<T>> {
        match self.meta.get(CF, &self.k(what)).map_err(io::Error::other)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    fn save<T: Serialize>(&self, what: &str, value: &T, synced: bool) -> io::Result<()> {
        let v = serde_json::to_vec(value).map_err(io::Error::other)?;
        let k = self.k(what);
        let res = if synced {
            self.meta.put(CF, &k, &v)
        } else {
            self.meta.put_relaxed(CF, &k, &v)
        };
        res.map_err(io::Error::other)
    }

    /// Forgets every Raft key of this group (the partition is being deleted).
    pub fn forget(&self) -> io::Result<()> {
        forget(&self.meta, &self.key)
    }

    fn purged(&self) -> io::Result<Option<LogId>> {
        self.load("purged")
    }

    /// The last log id present (or the purge point when no entry is left).
    fn last_log_id(&self) -> io::Result<Option<LogId>> {
        let last = self.log.last_index();
        if last == 0 {
            return self.purged();
        }
        Ok(Some(log_id(self.log.last_term(), to_raft(last))))
    }

    /// The Kafka offset after Raft entry `raft_index` (None when not in the log).
    pub fn offset_after(&self, raft_index: u64) -> io::Result<Option<i64>> {
        self.log
            .offset_for_index(to_log(raft_index))
            .map_err(io::Error::other)
    }

    pub fn set_hw(&self, hw: i64) {
        self.hw.send_if_modified(|cur| {
            let changed = *cur < hw;
            if changed {
                *cur = hw;
            }
            changed
        });
    }

    fn aborted_key(&self, last_offset: i64) -> Vec<u8> {
        format!("{}/aborted/{last_offset:020}", self.key).into_bytes()
    }

    /// The last stable offset: the high watermark, or the first offset of the oldest open
    /// transaction when that is lower.
    pub fn last_stable_offset(&self) -> i64 {
        let hw = *self.hw.borrow();
        hw.min(self.first_unstable.load(Ordering::Acquire))
    }

    /// Rebuilds the transaction index at start-up: the last snapshot, the aborted
    /// transactions, and a scan of the committed log from the snapshot up to `hw`.
    fn recover_txns(&self, hw: i64) -> io::Result<()> {
        let snapshot: TxnSnapshot = self.load("txn")?.unwrap_or_default();
        let prefix = format!("{}/aborted/", self.key);
        let mut aborted = Vec::new();
        for (_, v) in self
            .meta
            .scan_prefix(CF, prefix.as_bytes())
            .map_err(io::Error::other)?
        {
            let a: AbortedTxn = serde_json::from_slice(&v)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            aborted.push(a);
        }
        let mut index = TxnIndex::restore(&snapshot, aborted);
        let mut offset = snapshot.next_offset.max(self.log.log_start_offset());
        while offset < hw {
            let read = self
                .log
                .read(offset, 4 << 20, hw)
                .map_err(io::Error::other)?;
            if read.data.is_empty() {
                break;
            }
            for (from, to) in batch::split_batches(&read.data).flatten() {
                let b = &read.data[from..to];
                if let Ok(h) = BatchHeader::parse(b) {
                    if let Some(a) = index.apply(b, &h) {
                        self.save_aborted(&a)?;
                    }
                }
            }
            if read.next_offset <= offset {
                break;
            }
            offset = read.next_offset;
        }
        self.first_unstable.store(
            index.first_unstable().unwrap_or(i64::MAX),
            Ordering::Release,
        );
        *self.txn.lock() = index;
        Ok(())
    }

    fn save_aborted(&self, a: &AbortedTxn) -> io::Result<()> {
        let v = serde_json::to_vec(a).map_err(io::Error::other)?;
        self.meta
            .put_relaxed(CF, &self.aborted_key(a.last_offset), &v)
            .map_err(io::Error::other)
    }

    /// Feeds a committed transactional batch to the transaction index.
    fn apply_txn(&self, data: &[u8], h: &BatchHeader) -> io::Result<()> {
        let mut t = self.txn.lock();
        let aborted = t.apply(data, h);
        self.first_unstable
            .store(t.first_unstable().unwrap_or(i64::MAX), Ordering::Release);
        drop(t);
        match aborted {
            Some(a) => self.save_aborted(&a),
            None => Ok(()),
        }
    }

    /// Saves the transaction index and the applied batch filter.
    pub fn save_snapshots(&self) -> io::Result<()> {
        self.save_txn_snapshot()?;
        self.save_filter()
    }

    /// Saves the applied batch filter: the log index it is valid at, then its state.
    fn save_filter(&self) -> io::Result<()> {
        let mut v = {
            let f = self.applied_filter.lock();
            let mut v = Vec::with_capacity(64);
            v.extend_from_slice(&f.index.to_be_bytes());
            v.extend_from_slice(&f.filter.save());
            v
        };
        v.shrink_to_fit();
        self.meta
            .put_relaxed(CF, &self.k("producers"), &v)
            .map_err(io::Error::other)
    }

    /// Rebuilds the applied batch filter at start-up: the saved state, then the log entries
    /// after it up to `applied` (a log index). Without a saved state (or an unreadable one),
    /// the last [`FILTER_REPLAY_ENTRIES`] entries.
    fn recover_filter(&self, applied: u64) -> io::Result<()> {
        let mut f = self.applied_filter.lock();
        f.filter.clear();
        f.index = 0;
        let saved = self
            .meta
            .get(CF, &self.k("producers"))
            .map_err(io::Error::other)?;
        let mut from = applied.saturating_sub(FILTER_REPLAY_ENTRIES) + 1;
        if let Some(v) = saved.filter(|v| v.len() >= 8) {
            let index = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
            if f.filter.load(&v[8..]) {
                f.index = index;
                from = index + 1;
            } else {
                tracing::warn!(group = %self.key, "unreadable producer state: rebuilding it from the log tail");
            }
        }
        let replayed = replay(&self.log, f.filter.as_mut(), from, applied)?;
        f.index = f.index.max(applied);
        self.filter_replayed.store(replayed, Ordering::Relaxed);
        Ok(())
    }

    /// Sets a leader's batch filter to the applied state plus every log entry after it (the
    /// writes not yet committed).
    pub fn lead_filter(&self, filter: &mut dyn BatchFilter) -> io::Result<()> {
        let (index, state) = {
            let f = self.applied_filter.lock();
            (f.index, f.filter.save())
        };
        if !filter.load(&state) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the batch filter could not load its own saved state",
            ));
        }
        let replayed = replay(&self.log, filter, index + 1, self.log.last_index())?;
        self.filter_replayed.store(replayed, Ordering::Relaxed);
        Ok(())
    }

    /// Applies a replicated command.
    fn apply_command(&self, c: Command) -> io::Result<()> {
        match c {
            Command::LogStart(offset) => {
                // Proposed at most at the leader's high watermark, so every batch below it
                // precedes this entry and is in this log; clamped all the same, as a failed
                // apply would stop the group.
                let offset = offset.min(self.log.next_offset());
                let start = self
                    .log
                    .advance_log_start(offset)
                    .map_err(io::Error::other)?;
                tracing::debug!(group = %self.key, log_start = start, "DeleteRecords applied");
                Ok(())
            }
        }
    }

    /// Feeds an applied entry to the applied batch filter (once per log index).
    fn apply_filter(&self, log_index: u64, batch: Option<(&[u8], &BatchHeader)>) {
        let mut f = self.applied_filter.lock();
        if log_index <= f.index {
            return;
        }
        f.index = log_index;
        if let Some((data, h)) = batch {
            f.filter.appended(data, h.base_offset, h.last_offset());
        }
    }

    /// Saves the open transactions as of the high watermark, and forgets aborted
    /// transactions retention has removed.
    fn save_txn_snapshot(&self) -> io::Result<()> {
        let hw = *self.hw.borrow();
        let start = self.log.log_start_offset();
        let (snapshot, trimmed) = {
            let mut t = self.txn.lock();
            (t.snapshot(hw), t.trim(start))
        };
        for a in trimmed {
            self.meta
                .delete(CF, &self.aborted_key(a.last_offset))
                .map_err(io::Error::other)?;
        }
        self.save("txn", &snapshot, false)
    }

    fn read_entries(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<RaftEntryOf>> {
        // The log may hold less than asked at either end (purged prefix, not yet appended
        // tail); both are tolerated by openraft.
        let first = self.log.first_index();
        let last = self.log.last_index();
        if first == 0 {
            return Ok(Vec::new());
        }
        let from = to_log(start).max(first);
        let to = to_log(end).min(last + 1);
        if from >= to {
            return Ok(Vec::new());
        }
        self.log
            .entries(from, to, max_bytes)
            .map_err(io::Error::other)?
            .into_iter()
            .map(|mut e| {
                e.index = to_raft(e.index);
                from_stored(e)
            })
            .collect()
    }
}

/// Deletes the Raft state of group `key` from the metadata store (vote, purge point,
/// membership, committed hint): a group created later under the same name starts afresh.
pub fn forget(meta: &MetaStore, key: &str) -> io::Result<()> {
    for what in [
        "vote",
        "purged",
        "membership",
        "committed",
        "txn",
        "producers",
    ] {
        meta.delete(CF, format!("{key}/{what}").as_bytes())
            .map_err(io::Error::other)?;
    }
    let prefix = format!("{key}/aborted/");
    for (k, _) in meta
        .scan_prefix(CF, prefix.as_bytes())
        .map_err(io::Error::other)?
    {
        meta.delete(CF, &k).map_err(io::Error::other)?;
    }
    Ok(())
}

/// Feeds the batches of log entries `from..=to` (log indexes; clamped to the log) to
/// `filter`. Returns how many entries it read.
fn replay(log: &PartitionLog, filter: &mut dyn BatchFilter, from: u64, to: u64) -> io::Result<u64> {
    let first = log.first_index();
    if first == 0 {
        return Ok(0);
    }
    let mut from = from.max(first);
    let to = to.min(log.last_index());
    let mut read = 0;
    while from <= to {
        let entries = log
            .entries(from, to + 1, 8 << 20)
            .map_err(io::Error::other)?;
        let Some(tail) = entries.last() else { break };
        from = tail.index + 1;
        read += entries.len() as u64;
        for e in &entries {
            if e.kind == EntryKind::Batch {
                if let Ok(h) = BatchHeader::parse(&e.payload) {
                    filter.appended(&e.payload, h.base_offset, h.last_offset());
                }
            }
        }
    }
    Ok(read)
}

/// fsyncs appended entries (group commit: one fsync for everything queued) and reports them
/// flushed to openraft.
async fn sync_loop(
    shared: std::sync::Weak<Shared>,
    mut rx: mpsc::UnboundedReceiver<IOFlushed<TypeConfig>>,
) {
    let mut pending = Vec::new();
    while let Some(cb) = rx.recv().await {
        pending.push(cb);
        while let Ok(cb) = rx.try_recv() {
            pending.push(cb);
        }
        let Some(s) = shared.upgrade() else { return };
        // Everything appended before this point is covered by the fsync below.
        let upto = s.log.next_offset();
        let s2 = s.clone();
        let res = tokio::task::spawn_blocking(move || s2.log.sync().map(|_| ()))
            .await
            .unwrap_or_else(|e| Err(storage::Error::Io(io::Error::other(e.to_string()))));
        let msg = res.as_ref().err().map(|e| e.to_string());
        if msg.is_none() {
            s.durable.send_if_modified(|d| {
                let changed = *d < upto;
                *d = (*d).max(upto);
                changed
            });
        }
        drop(s);
        for cb in pending.drain(..) {
            match &msg {
                None => cb.io_completed(Ok(())),
                Some(m) => cb.io_completed(Err(io::Error::other(m.clone()))),
            }
        }
        if let Some(m) = msg {
            tracing::error!(error = %m, "fsync failed; the partition refuses further writes");
        }
    }
}

fn range_to(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e + 1,
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX - 1,
    };
    (start, end)
}

/// Reads entries for replication and apply.
#[derive(Clone)]
pub(crate) struct LogReader {
    shared: Arc<Shared>,
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntryOf>, io::Error> {
        let (start, end) = range_to(&range);
        self.shared.read_entries(start, end, usize::MAX)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<RaftEntryOf>, io::Error> {
        self.shared.read_entries(start, end, MAX_READ_BYTES)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.shared.load("vote")
    }
}

/// The Raft log store of one partition group.
pub(crate) struct LogStore {
    shared: Arc<Shared>,
}

impl LogStore {
    pub fn new(shared: Arc<Shared>) -> Self {
        LogStore { shared }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        Ok(LogState {
            last_purged_log_id: self.shared.purged()?,
            last_log_id: self.shared.last_log_id()?,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let s = self.shared.clone();
        let vote = *vote;
        tokio::task::spawn_blocking(move || s.save("vote", &vote, true))
            .await
            .map_err(io::Error::other)?
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // A hint: it may go stale (relaxed write), never ahead of the truth.
        self.shared.save("committed", &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.shared.load::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = RaftEntryOf> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let log = &self.shared.log;
        let mut next_offset = log.next_offset();
        let mut stored = Vec::new();
        for e in entries {
            let mut s = to_stored(&e)?;
            s.index = to_log(s.index);
            if s.kind == EntryKind::Batch {
                let h = BatchHeader::parse(&s.payload)
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
                let epoch = i32::try_from(s.term).unwrap_or(i32::MAX);
                if h.base_offset != next_offset || h.partition_leader_epoch != epoch {
                    let mut b = BytesMut::from(&s.payload[..]);
                    batch::stamp(&mut b, next_offset, epoch);
                    s.payload = b.freeze();
                }
                next_offset += h.offset_count();
            }
            stored.push(s);
        }
        if !stored.is_empty() {
            // A page-cache write: the entries are readable when this returns, as openraft
            // requires; durability comes with the fsync below.
            log.append(&stored).map_err(io::Error::other)?;
        }
        if self.shared.fsync_always {
            if let Err(mpsc::error::SendError(cb)) = self.shared.syncer.send(callback) {
                cb.io_completed(Err(io::Error::other("partition closed")));
            }
        } else {
            self.shared.durable.send_replace(log.next_offset());
            callback.io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| to_log(l.index) + 1).unwrap_or(1);
        self.shared
            .log
            .truncate_suffix(from)
            .map_err(io::Error::other)?;
        let end = self.shared.log.next_offset();
        self.shared.durable.send_if_modified(|d| {
            let changed = *d > end;
            *d = (*d).min(end);
            changed
        });
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // The purge point first (durably): a crash between the two leaves entries that are
        // purged in Raft's eyes but still on disk, which is harmless.
        self.shared.save("purged", &log_id, true)?;
        self.shared
            .log
            .purge_prefix(to_log(log_id.index))
            .map(|_| ())
            .map_err(io::Error::other)
    }
}

/// What a snapshot of a partition carries besides its meta: where the Kafka offsets go on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotBody {
    pub next_offset: i64,
}

/// The state machine of a partition group: the high watermark.
pub(crate) struct StateMachine {
    shared: Arc<Shared>,
    applied: Option<LogId>,
    membership: StoredMembership,
    snapshot: Arc<Mutex<Option<(SnapshotMeta, SnapshotBody)>>>,
    /// Batches applied since the transaction index and the batch filter were last saved.
    since_snapshot: u64,
}

impl StateMachine {
    /// Restores the applied point from the committed hint (and the last applied membership),
    /// and the high watermark from it.
    pub fn open(shared: Arc<Shared>) -> io::Result<Self> {
        let membership: StoredMembership = shared.load("membership")?.unwrap_or_default();
        let committed: Option<LogId> = shared.load::<Option<LogId>>("committed")?.flatten();
        // Applied = the later of the committed hint and the applied membership, but never past
        // what the log holds (a log that lost its unsynced tail under `interval`).
        let mut applied = committed.max(*membership.log_id());
        let last = shared.last_log_id()?;
        if applied > last {
            applied = last;
        }
        let membership = if *membership.log_id() > applied {
            StoredMembership::default()
        } else {
            membership
        };
        let hw = match applied {
            Some(a) => shared
                .offset_after(a.index)?
                .unwrap_or_else(|| shared.log.log_start_offset()),
            None => shared.log.log_start_offset(),
        };
        shared.set_hw(hw);
        shared.recover_txns(hw)?;
        shared.recover_filter(applied.map_or(0, |a| to_log(a.index)))?;
        Ok(StateMachine {
            shared,
            applied,
            membership,
            snapshot: Arc::new(Mutex::new(None)),
            since_snapshot: 0,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotBody;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut hw = None;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let id = entry.log_id();
            let applied = match &entry.payload {
                EntryPayload::Normal(Payload::Command(c)) => {
                    self.shared.apply_filter(to_log(id.index), None);
                    self.shared.apply_command(*c)?;
                    Applied::default()
                }
                EntryPayload::Normal(Payload::Batch(b)) => {
                    let h = BatchHeader::parse(b).map_err(|err| {
                        io::Error::new(io::ErrorKind::InvalidData, err.to_string())
                    })?;
                    hw = Some(h.last_offset() + 1);
                    if h.is_transactional() {
                        self.shared.apply_txn(b, &h)?;
                    }
                    self.shared
                        .apply_filter(to_log(id.index), Some((&b[..], &h)));
                    self.since_snapshot += 1;
                    Applied {
                        offsets: Some((h.base_offset, h.last_offset())),
                    }
                }
                EntryPayload::Blank => {
                    self.shared.apply_filter(to_log(id.index), None);
                    Applied::default()
                }
                EntryPayload::Membership(m) => {
                    self.shared.apply_filter(to_log(id.index), None);
                    self.membership = StoredMembership::new(Some(id), m.clone());
                    self.shared.save("membership", &self.membership, true)?;
                    Applied::default()
                }
            };
            self.applied = Some(id);
            if let Some(r) = responder {
                // The high watermark covers a write before its proposer hears of it.
                if let Some(hw) = hw.take() {
                    self.shared.set_hw(hw);
                }
                r.send(applied);
            }
        }
        if let Some(hw) = hw {
            self.shared.set_hw(hw);
        }
        if self.since_snapshot >= SNAPSHOT_EVERY {
            self.since_snapshot = 0;
            self.shared.save_snapshots()?;
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
            applied: self.applied,
            membership: self.membership.clone(),
            snapshot: self.snapshot.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        body: SnapshotBody,
    ) -> Result<(), io::Error> {
        // A partition snapshot is a position, not data: a replica whose log already holds the
        // snapshot's last entry just moves its applied point there.
        let Some(last) = meta.last_log_id else {
            return Ok(());
        };
        let holds = self.shared.log.term_of(to_log(last.index)) == Some(last.leader_id.term);
        if !holds {
            // This replica fell behind the leader's retention: the entries it misses are gone
            // on the leader too. Its log starts over at the snapshot's position, empty, and
            // replication goes on from the next entry.
            tracing::warn!(
                group = %self.shared.key,
                snapshot = %last,
                next_offset = body.next_offset,
                "behind the leader's log start: resetting this replica's log to the snapshot"
            );
            self.shared
                .log
                .reset_to(body.next_offset)
                .map_err(io::Error::other)?;
            self.shared.save("purged", &last, true)?;
            *self.shared.txn.lock() = TxnIndex::default();
            {
                // The entries between this replica's log and the snapshot are gone everywhere:
                // the producers they would have told about are unknown from here on.
                let mut f = self.shared.applied_filter.lock();
                f.filter.clear();
                f.index = to_log(last.index);
            }
            self.shared
                .first_unstable
                .store(i64::MAX, Ordering::Release);
            self.shared.durable.send_replace(body.next_offset);
        }
        self.applied = Some(last);
        self.membership = meta.last_membership.clone();
        self.shared.save("membership", &self.membership, true)?;
        self.shared.save("committed", &Some(last), true)?;
        let hw = match self.shared.offset_after(last.index)? {
            Some(hw) => hw,
            None => body.next_offset,
        };
        self.shared.set_hw(hw);
        self.shared.save_snapshots()?;
        *self.snapshot.lock() = Some((meta.clone(), body));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SnapshotBody>>, io::Error> {
        Ok(self
            .snapshot
            .lock()
            .clone()
            .map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

/// Builds a partition snapshot: the applied position and membership.
pub(crate) struct SnapshotBuilder {
    shared: Arc<Shared>,
    applied: Option<LogId>,
    membership: StoredMembership,
    snapshot: Arc<Mutex<Option<(SnapshotMeta, SnapshotBody)>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotBody;

    async fn build_snapshot(&mut self) -> Result<Snapshot<SnapshotBody>, io::Error> {
        let next_offset = match self.applied {
            Some(a) => self
                .shared
                .offset_after(a.index)?
                .unwrap_or_else(|| self.shared.log.log_start_offset()),
            None => self.shared.log.log_start_offset(),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
        };
        let body = SnapshotBody { next_offset };
        *self.snapshot.lock() = Some((meta.clone(), body.clone()));
        Ok(Snapshot {
            meta,
            snapshot: body,
        })
    }
}
