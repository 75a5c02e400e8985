//! The partition handle: one replica of a partition, replicated by its own openraft group.
//!
//! The broker proposes record batches and gets their offsets once a Raft majority has them;
//! it reads committed data below the high watermark and waits on it for long polls. Who leads
//! is Raft's business: proposing on a follower answers [`Error::NotLeader`].
//!
//! Proposals go through one proposer task per replica. On the leader it runs the batch filter
//! (idempotent producers) in log order, stamps each batch with the offset it will get (exact:
//! only this leader appends batches in its term, and nothing else takes offsets) and hands it
//! to openraft tied to the current term, so a write can never land in a later term than the one
//! its offsets were predicted for. When the term changes the filter is rebuilt from the log.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::impls::ProgressResponder;
use openraft::vote::leader_id_std::CommittedLeaderId;
use openraft::BasicNode;
use openraft::Instant as _;
use storage::batch::{self, BatchHeader};
use storage::{MetaStore, PartitionLog};
use tokio::sync::{mpsc, oneshot, watch};

pub use storage::{FsyncPolicy, LogConfig};

use crate::network::{BoxFut, CallError, GroupRaft, Network, Registry, Router};
use crate::store::{LogStore, Shared, StateMachine};
use crate::types::{Command, NodeId, Payload};
use crate::{Error, Result};

/// How many proposals the proposer takes at once.
const MAX_GROUP: usize = 4096;

/// When a replica opens without a snapshot of its batch filter (a data directory from
/// before filter snapshots), how many trailing log entries rebuild it.
pub(crate) const FILTER_REPLAY_ENTRIES: u64 = 10_000;

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

/// Admission check run on the leader, in log order, before an offset is assigned.
/// The broker implements it with its idempotent-producer table.
///
/// Every replica also keeps a second instance ([`BatchFilter::fresh`]) fed with the batches
/// it applies, saved with [`BatchFilter::save`] next to the transaction index. A replica
/// that becomes leader starts from a copy of that applied state and replays only the log
/// entries after it; a restart starts from the saved state and replays the entries applied
/// after it. Neither reads the whole log.
pub trait BatchFilter: Send + 'static {
    /// Decide on a batch about to be appended (bytes as stored, offset not yet stamped).
    fn admit(&mut self, batch: &[u8]) -> Admit;
    /// A batch was appended with these offsets (also called when the log is replayed).
    fn appended(&mut self, batch: &[u8], base_offset: i64, last_offset: i64);
    /// Forget everything (the state is about to be rebuilt from the log).
    fn clear(&mut self);
    /// The whole state as bytes.
    fn save(&self) -> Vec<u8>;
    /// Replaces the state with one [`BatchFilter::save`] made. False (and the state
    /// cleared) when the bytes are not readable.
    fn load(&mut self, state: &[u8]) -> bool;
    /// An empty filter of the same kind.
    fn fresh(&self) -> Box<dyn BatchFilter>;
}

/// A filter that admits everything.
pub struct AdmitAll;

impl BatchFilter for AdmitAll {
    fn admit(&mut self, _batch: &[u8]) -> Admit {
        Admit::Append
    }
    fn appended(&mut self, _batch: &[u8], _base_offset: i64, _last_offset: i64) {}
    fn clear(&mut self) {}
    fn save(&self) -> Vec<u8> {
        Vec::new()
    }
    fn load(&mut self, _state: &[u8]) -> bool {
        true
    }
    fn fresh(&self) -> Box<dyn BatchFilter> {
        Box::new(AdmitAll)
    }
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

/// The Raft side of a node, shared by all its partition replicas.
#[derive(Clone)]
pub struct RaftNode {
    pub id: NodeId,
    pub meta: MetaStore,
    pub router: Arc<dyn Router>,
    pub registry: Registry,
    pub config: Arc<openraft::Config>,
}

impl RaftNode {
    /// A node whose groups replicate to `router` with the timing of `config`.
    pub fn new(
        id: NodeId,
        meta: MetaStore,
        router: Arc<dyn Router>,
        registry: Registry,
        config: openraft::Config,
    ) -> Result<RaftNode> {
        let config = config
            .validate()
            .map_err(|e| Error::Failed(format!("raft config: {e}")))?;
        registry.set_router(router.clone());
        Ok(RaftNode {
            id,
            meta,
            router,
            registry,
            config: Arc::new(config),
        })
    }

    /// A lone node: every group has this one voter and no peer is ever called.
    pub fn single(id: NodeId, meta: MetaStore) -> RaftNode {
        RaftNode::new(
            id,
            meta,
            Arc::new(NoPeers),
            Registry::default(),
            default_config(),
        )
        .expect("the default raft config is valid")
    }
}

/// The Raft timing Sluice uses: heartbeats every 150 ms; a follower refuses to vote while its
/// leader's lease (election_timeout_max, 1 s since it last heard from the leader) holds, and
/// a leader accepts writes only while a quorum acknowledged it within that lease. A lone
/// node's election timer fires after 0.5-1 s. In a cluster openraft's timers are off and
/// `liveness` decides when to campaign.
/// No automatic snapshots (a partition's snapshot is only a position; retention asks for one
/// when it purges).
pub fn default_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "sluice".into(),
        heartbeat_interval: 150,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        snapshot_policy: openraft::SnapshotPolicy::Never,
        // Never purge on openraft's own after a snapshot is built (0 here purged every
        // applied entry, so one retention pass deleted far more than its cut): retention and
        // DeleteRecords purge exactly up to the cut they choose, through `purge_log`, which
        // ignores this setting.
        max_in_snapshot_log_to_keep: u64::MAX,
        max_payload_entries: 1024,
        ..Default::default()
    }
}

/// A router for a lone node: there is nobody to call.
struct NoPeers;

impl Router for NoPeers {
    fn call(
        &self,
        target: NodeId,
        _group: Bytes,
        _method: u8,
        _body: Bytes,
        _timeout: Duration,
    ) -> BoxFut<Result<Bytes, CallError>> {
        Box::pin(async move { Err(CallError::Unreachable(format!("no peer {target}"))) })
    }
}

/// Options for opening a partition replica.
#[derive(Clone)]
pub struct PartitionOptions {
    pub log: LogConfig,
    pub node: RaftNode,
    /// The group's name on the wire and in the metadata store (unique per node).
    pub group: String,
    /// The group's voters with their cluster addresses; used to initialise a new group.
    pub voters: BTreeMap<NodeId, String>,
    /// The voter that should lead the group whenever it can (a partition's first replica):
    /// it alone initialises a new group, see [`start_group`]. Changed later with
    /// [`Partition::set_preferred_leader`].
    pub preferred: Option<NodeId>,
}

impl PartitionOptions {
    /// A group whose only voter is `node`.
    pub fn single(log: LogConfig, node: RaftNode, group: impl Into<String>) -> Self {
        let voters = [(node.id, String::new())].into_iter().collect();
        PartitionOptions {
            log,
            node,
            group: group.into(),
            voters,
            preferred: None,
        }
    }
}

/// Committed data read from a partition.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Concatenated record batches, as stored.
    pub data: Bytes,
    /// The high watermark when the read was made.
    pub high_watermark: i64,
    /// The last stable offset when the read was made (no open transaction below it).
    pub last_stable_offset: i64,
    /// `read_committed` reads only: the aborted transactions overlapping the data.
    pub aborted: Option<Vec<crate::AbortedTxn>>,
    /// The log start offset when the read was made.
    pub log_start_offset: i64,
}

/// Who leads the group, as this replica last saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Role {
    pub leader: Option<NodeId>,
    pub term: u64,
}

enum Msg {
    Propose(Proposal),
    Close(oneshot::Sender<()>),
}

struct Proposal {
    batches: Vec<BytesMut>,
    /// Answer once the leader's own log has the batches (acks=1) instead of on commit.
    local: bool,
    reply: oneshot::Sender<Result<Vec<ProposeOutcome>>>,
}

struct Inner {
    shared: Arc<Shared>,
    node_id: NodeId,
    group: Bytes,
    registry: Registry,
    raft: OnceLock<GroupRaft>,
    role: watch::Sender<Role>,
    tx: mpsc::UnboundedSender<Msg>,
    /// True once the replica is closing or closed (waiters on a commit stop at it).
    closed: watch::Sender<bool>,
    /// Set once openraft is running (or failed to start: then with the reason).
    started: watch::Sender<Option<std::result::Result<(), String>>>,
    /// Writes handed to openraft whose outcome is not known yet.
    inflight: watch::Sender<usize>,
    /// A write was refused before it reached the log: the proposer must re-read the log.
    refused: AtomicBool,
    /// How old the leader's last quorum acknowledgement may be for a write to be submitted
    /// (openraft's lease, election_timeout_max, minus one heartbeat of margin).
    usable_lease: Duration,
}

/// Handle to one partition replica. Cheap to clone.
#[derive(Clone)]
pub struct Partition {
    inner: Arc<Inner>,
}

impl Partition {
    /// Opens (recovering if needed) the replica stored in `dir` and starts its Raft group in
    /// the background. Blocking I/O: call it at start-up or from a blocking context. Needs a
    /// tokio runtime. Reads work at once (up to the last known commit); proposals wait for
    /// the group to run.
    pub fn open(
        dir: &Path,
        options: PartitionOptions,
        filter: Box<dyn BatchFilter>,
    ) -> Result<Self> {
        let fsync_always = matches!(options.log.fsync, FsyncPolicy::Always);
        let interval = match options.log.fsync {
            FsyncPolicy::Interval(every) => Some(every),
            FsyncPolicy::Always => None,
        };
        let log = PartitionLog::open(dir, options.log)?;
        let node = options.node;
        let shared = Shared::new(
            log,
            node.meta.clone(),
            options.group.clone(),
            fsync_always,
            filter.fresh(),
        )
        .map_err(|e| Error::Failed(e.to_string()))?;
        let sm = StateMachine::open(shared.clone()).map_err(|e| Error::Failed(e.to_string()))?;
        if options.voters.len() == 1 && options.voters.contains_key(&node.id) {
            // A lone voter's log is committed as a whole once it leads again (nobody can
            // overwrite it), so reads may see all of it from the start, as before a restart.
            shared.set_hw(shared.log.next_offset());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let group = Bytes::from(options.group.into_bytes());
        // Before the group is registered: the liveness task reads it with the group.
        node.registry
            .set_preferred(group.clone(), options.preferred);
        let inner = Arc::new(Inner {
            shared: shared.clone(),
            node_id: node.id,
            group: group.clone(),
            registry: node.registry.clone(),
            raft: OnceLock::new(),
            role: watch::channel(Role::default()).0,
            tx,
            closed: watch::channel(false).0,
            started: watch::channel(None).0,
            inflight: watch::channel(0).0,
            refused: AtomicBool::new(false),
            usable_lease: Duration::from_millis(
                node.config
                    .election_timeout_max
                    .saturating_sub(node.config.heartbeat_interval),
            ),
        });
        let network = Network {
            router: node.router.clone(),
            group,
        };
        tokio::spawn(drive(
            inner.clone(),
            rx,
            filter,
            sm,
            network,
            node,
            options.voters,
        ));
        if let Some(every) = interval {
            tokio::spawn(interval_flusher(Arc::downgrade(&inner), every));
        }
        Ok(Partition { inner })
    }

    /// Proposes record batches (each exactly one v2 batch, as the client sent it). The proposal
    /// is queued before this returns, so proposals keep the order of the calls; the future
    /// resolves once they are committed by a Raft majority. Dropping the future does not
    /// withdraw them (acks=0).
    pub fn propose(
        &self,
        batches: Vec<BytesMut>,
    ) -> impl Future<Output = Result<Vec<ProposeOutcome>>> + Send + 'static {
        self.propose_acks(batches, false)
    }

    /// Like [`Partition::propose`]; with `local` (Kafka's acks=1) the future resolves once the
    /// leader's own log holds the batches as durably as its fsync policy makes them, without
    /// waiting for followers. Such a write can be lost if this leader fails before a
    /// majority has it (as in Kafka); consumers still only see it once committed.
    pub fn propose_acks(
        &self,
        batches: Vec<BytesMut>,
        local: bool,
    ) -> impl Future<Output = Result<Vec<ProposeOutcome>>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = !*self.inner.closed.borrow()
            && self
                .inner
                .tx
                .send(Msg::Propose(Proposal {
                    batches,
                    local,
                    reply,
                }))
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
        self.read_isolated(offset, max_bytes, false)
    }

    /// Like [`Partition::read`]; with `committed` (Kafka's `read_committed`) only up to the
    /// last stable offset, with the aborted transactions overlapping what was read.
    pub fn read_isolated(
        &self,
        offset: i64,
        max_bytes: usize,
        committed: bool,
    ) -> Result<ReadResult> {
        let shared = &self.inner.shared;
        let log = &shared.log;
        let lso = shared.last_stable_offset();
        let hw = self.high_watermark().max(lso);
        let start = log.log_start_offset();
        // Past the high watermark nothing is visible: a follower's uncommitted tail does not
        // count as the end of the log.
        let end = hw.max(start);
        if offset < start || offset > end {
            return Err(Error::OffsetOutOfRange { offset, start, end });
        }
        let upper = if committed { lso } else { hw };
        let (data, next) = if offset >= upper {
            (Bytes::new(), offset)
        } else {
            let r = log.read(offset, max_bytes, upper)?;
            (r.data, r.next_offset)
        };
        let aborted = committed.then(|| {
            if next > offset {
                shared.txn.lock().aborted(offset, next)
            } else {
                Vec::new()
            }
        });
        Ok(ReadResult {
            data,
            high_watermark: hw,
            last_stable_offset: lso.max(start),
            log_start_offset: start,
            aborted,
        })
    }

    /// The high watermark: the offset after the last committed record.
    pub fn high_watermark(&self) -> i64 {
        *self.inner.shared.hw.borrow()
    }

    /// The last stable offset: below it no transaction is open (`read_committed` reads up to
    /// here). The high watermark when no transaction is open.
    pub fn last_stable_offset(&self) -> i64 {
        self.inner
            .shared
            .last_stable_offset()
            .max(self.log_start_offset())
    }

    /// A receiver that sees every change of the high watermark (long-poll fetch waits on it).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.shared.hw.subscribe()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.inner.shared.log.log_start_offset()
    }

    /// The end of this replica's log, committed or not.
    pub fn log_end_offset(&self) -> i64 {
        self.inner.shared.log.next_offset()
    }

    /// The leader epoch (the Raft term) as this replica last saw it.
    pub fn leader_epoch(&self) -> i32 {
        i32::try_from(self.inner.role.borrow().term).unwrap_or(i32::MAX)
    }

    /// This replica's openraft handle, for tests that drive openraft directly.
    #[cfg(test)]
    pub(crate) fn raft_for_test(&self) -> crate::network::GroupRaft {
        self.inner.raft.get().expect("openraft started").clone()
    }

    /// Who leads, as this replica last saw it.
    pub fn role(&self) -> Role {
        *self.inner.role.borrow()
    }

    /// How many log entries the last rebuild of the batch filter read (at open, or when this
    /// replica last became leader): bounded by the snapshot interval, never the whole log.
    pub fn filter_replayed(&self) -> u64 {
        self.inner.shared.filter_replayed.load(Ordering::Relaxed)
    }

    /// Whether this replica leads its group.
    pub fn is_leader(&self) -> bool {
        self.role().leader == Some(self.inner.node_id)
    }

    /// A receiver that sees every change of leader or term.
    pub fn watch_role(&self) -> watch::Receiver<Role> {
        self.inner.role.subscribe()
    }

    /// The replicas in sync with the leader, this one first. On the leader: itself and the
    /// followers that kept up within `REPLICA_LAG_MAX` and whose nodes answer (a lone group:
    /// itself). Elsewhere the lag is not known here: the voters whose nodes this node sees
    /// answering.
    pub fn in_sync_replicas(&self) -> Vec<NodeId> {
        let me = self.inner.node_id;
        let Some(raft) = self.inner.raft.get() else {
            return vec![me];
        };
        let (leads, voters): (bool, Vec<NodeId>) = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            (
                m.current_leader == Some(me),
                m.membership_config.membership().voter_ids().collect(),
            )
        };
        if leads {
            if let Some(isr) = self.inner.registry.isr(&self.inner.group) {
                return isr;
            }
        }
        let mut isr: Vec<NodeId> = voters
            .into_iter()
            .filter(|v| *v == me || !self.inner.registry.is_down(*v))
            .collect();
        isr.sort_by_key(|v| *v != me);
        isr
    }

    /// The leader as this replica sees it, unless that leader's node failed its last
    /// liveness ping (it was killed or cut off and a new leader is about to be elected):
    /// what clients should be told.
    pub fn live_leader(&self) -> Option<NodeId> {
        self.role()
            .leader
            .filter(|l| *l == self.inner.node_id || !self.inner.registry.is_unreachable(*l))
    }

    /// On the leader: how many entries each follower is behind the leader's log (a batch is
    /// one entry). Empty elsewhere.
    pub fn follower_lag(&self) -> Vec<(NodeId, u64)> {
        let me = self.inner.node_id;
        let Some(raft) = self.inner.raft.get() else {
            return Vec::new();
        };
        let m = raft.metrics();
        let m = m.borrow_watched();
        let (Some(r), true) = (&m.replication, m.current_leader == Some(me)) else {
            return Vec::new();
        };
        let last = m.last_log_index.unwrap_or(0);
        r.iter()
            .filter(|(f, _)| **f != me)
            .map(|(f, l)| (*f, last.saturating_sub(l.as_ref().map_or(0, |l| l.index))))
            .collect()
    }

    /// Names the node that should lead this group whenever it is up and caught up (a
    /// partition's first replica); in a cluster the leader hands leadership back to it.
    pub fn set_preferred_leader(&self, node: Option<NodeId>) {
        self.inner
            .registry
            .set_preferred(self.inner.group.clone(), node);
    }

    /// Sends the group's commit index to its followers now (one heartbeat round) instead of
    /// with the next append; used after metadata changes, which every node applies.
    pub async fn flush_commit(&self) {
        if let Some(raft) = self.inner.raft.get() {
            let _ = raft.trigger().heartbeat().await;
        }
    }

    /// Waits until the group runs and has applied everything that was committed before this
    /// replica (re)started, so reads see all acknowledged data. Gives up after `timeout`.
    pub async fn ready(&self, timeout: Duration) -> Result<()> {
        let mut started = self.inner.started.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let res = tokio::time::timeout_at(deadline, started.wait_for(|s| s.is_some())).await;
        match res {
            Err(_) => return Err(Error::Failed("raft group did not start in time".into())),
            Ok(Err(_)) => return Err(Error::Closed),
            Ok(Ok(s)) => {
                if let Some(Err(e)) = s.as_ref() {
                    return Err(Error::Failed(e.clone()));
                }
            }
        }
        let raft = self.inner.raft.get().cloned().ok_or(Error::Closed)?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        raft.wait_for_recovery(Some(left))
            .await
            .map(|_| ())
            .map_err(|e| Error::Failed(format!("raft group did not recover: {e}")))
    }

    /// Applies new segment settings (topic config change) from the next append on.
    pub fn set_log_config(&self, config: LogConfig) {
        self.inner.shared.log.set_config(config);
    }

    /// Bytes on disk.
    pub fn size_bytes(&self) -> u64 {
        self.inner.shared.log.size_bytes()
    }

    /// DeleteRecords on the leader: replicates a new log start offset `offset` (`-1` = the
    /// high watermark) through the group; answered once it is committed and applied here.
    /// Every replica moves its log start when it applies it, and the whole segments below
    /// it go through Raft's purge like retention's. Returns the new log start offset.
    pub async fn delete_records(&self, offset: i64) -> Result<i64> {
        let raft = self.inner.raft.get().cloned().ok_or(Error::Closed)?;
        current_term_as_leader(&self.inner, &raft).await?;
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
        if target <= start {
            return Ok(start);
        }
        match raft
            .client_write(Payload::Command(Command::LogStart(target)))
            .await
        {
            Ok(_) => Ok(self.log_start_offset()),
            Err(openraft::error::RaftError::APIError(e)) => Err(write_error(e, self.inner.node_id)),
            Err(e) => Err(Error::Failed(e.to_string())),
        }
    }

    /// The first committed batch whose max timestamp is `>= ts`, as stored.
    pub fn find_by_timestamp(&self, ts: i64) -> Result<Option<Bytes>> {
        Ok(self
            .inner
            .shared
            .log
            .find_offset_by_timestamp(ts, self.high_watermark())?)
    }

    /// The committed batch holding the largest timestamp, with that timestamp.
    pub fn max_timestamp(&self) -> Result<Option<(i64, Bytes)>> {
        Ok(self.inner.shared.log.max_timestamp(self.high_watermark())?)
    }

    /// Retention: finds the whole segments past `retention.ms` / `retention.bytes` (below the
    /// high watermark) and asks Raft to purge them; Raft deletes them once no follower needs
    /// them. Returns whether a purge was requested.
    pub async fn enforce_retention(
        &self,
        now_ms: i64,
        retention_ms: Option<i64>,
        retention_bytes: Option<u64>,
    ) -> Result<bool> {
        let Some(cut) = self.inner.shared.log.retention_cut(
            now_ms,
            retention_ms,
            retention_bytes,
            self.high_watermark(),
        ) else {
            return Ok(false);
        };
        let Some(raft) = self.inner.raft.get() else {
            return Ok(false);
        };
        // A snapshot is the position the purge may go up to; then the purge itself.
        let raft_index = crate::store::to_raft(cut);
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| Error::Failed(e.to_string()))?;
        raft.trigger()
            .purge_log(raft_index)
            .await
            .map_err(|e| Error::Failed(e.to_string()))?;
        Ok(true)
    }

    /// Stops the group, syncs and closes the log. Later proposals fail with `Closed`.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Msg::Close(tx)).is_ok() {
            let _ = rx.await;
        } else {
            self.inner.closed.send_replace(true);
        }
        // The driver may not have started the group: close the log here too (idempotent).
        let shared = self.inner.shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = shared.save_snapshots() {
                tracing::warn!(error = %e, "saving the transaction index and producer state");
            }
            shared.log.close()
        })
        .await;
    }

    /// Forgets this replica's Raft state in the metadata store (after `close`, when the
    /// partition is deleted).
    pub fn forget(&self) -> Result<()> {
        self.inner
            .shared
            .forget()
            .map_err(|e| Error::Failed(e.to_string()))
    }
}

/// Starts openraft for the replica, then runs the proposer until closed.
async fn drive(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    mut filter: Box<dyn BatchFilter>,
    sm: StateMachine,
    network: Network,
    node: RaftNode,
    voters: BTreeMap<NodeId, String>,
) {
    let log_store = LogStore::new(inner.shared.clone());
    let raft = match GroupRaft::new(node.id, node.config.clone(), network, log_store, sm).await {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("starting raft group: {e}");
            tracing::error!(group = %String::from_utf8_lossy(&inner.group), error = %msg);
            inner.started.send_replace(Some(Err(msg.clone())));
            fail_all(&inner, &mut rx, Error::Failed(msg)).await;
            return;
        }
    };
    inner.registry.insert(inner.group.clone(), raft.clone());
    let _ = inner.raft.set(raft.clone());
    let preferred = node.registry.preferred(&inner.group);
    if let Err(e) = start_group(&raft, &node, &voters, preferred).await {
        tracing::error!(group = %String::from_utf8_lossy(&inner.group), error = %e, "initialising raft group");
    }
    inner.started.send_replace(Some(Ok(())));
    tokio::spawn(watch_metrics(Arc::downgrade(&inner), raft.clone()));

    let mut lead: Option<Lead> = None;
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
        for p in group.drain(..) {
            propose_one(&inner, &raft, &mut lead, filter.as_mut(), p).await;
        }
        if let Some(done) = close {
            inner.closed.send_replace(true);
            inner.registry.remove(&inner.group);
            if let Err(e) = raft.shutdown().await {
                tracing::warn!(error = %e, "raft group shutdown");
            }
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

/// How long the other voters of a new group leave its initialisation to the preferred
/// voter while that one is up (see [`start_group`]).
const INIT_DEFER: Duration = Duration::from_secs(3);

/// A new group is initialised with its voters (every voter may do it: the same membership at
/// the same position). openraft's initialisation starts an election at once, so the voter
/// that initialises first leads unless its vote requests reach no other voter. With a
/// preferred voter, only that one initialises a new group; the others take the membership
/// from its first append (a vote request it sends also makes them count as initialised),
/// and initialise it themselves only if nothing has come after [`INIT_DEFER`] or once the
/// liveness task sees the preferred voter down. Each node creates a new topic's groups as
/// it applies the metadata record, up to hundreds of milliseconds apart, so a replica that
/// got there first sometimes won (a test run saw one of 12 partitions led by another
/// replica), and leader balancing then moved the partition to its preferred replica 5 s
/// later, in the middle of clients' first writes.
/// A lone voter elects itself at once instead of waiting out a timeout.
async fn start_group(
    raft: &GroupRaft,
    node: &RaftNode,
    voters: &BTreeMap<NodeId, String>,
    preferred: Option<NodeId>,
) -> std::result::Result<(), String> {
    let me = node.id;
    let initialized = raft.is_initialized().await.map_err(|e| e.to_string())?;
    if !initialized {
        let members: BTreeMap<NodeId, BasicNode> = voters
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        match preferred.filter(|p| *p != me && voters.contains_key(p)) {
            Some(p) => {
                let raft = raft.clone();
                let registry = node.registry.clone();
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + INIT_DEFER;
                    loop {
                        tokio::time::sleep(crate::liveness::PING_EVERY).await;
                        match raft.is_initialized().await {
                            Ok(false) => {}
                            // Initialised by the preferred voter, or the group closed.
                            Ok(true) | Err(_) => return,
                        }
                        if registry.is_down(p) || tokio::time::Instant::now() >= deadline {
                            break;
                        }
                    }
                    if let Err(e) = raft.initialize(members).await {
                        tracing::debug!(error = %e, "initialize");
                    }
                });
            }
            None => {
                if let Err(e) = raft.initialize(members).await {
                    // Another voter may have initialised it first; that is fine.
                    tracing::debug!(error = %e, "initialize");
                }
            }
        }
    }
    // A new lone voter elects itself as part of initialize; a restarted one would wait out an
    // election timeout first.
    if initialized && voters.len() == 1 && voters.contains_key(&me) {
        raft.trigger()
            .elect(false)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn fail_all(inner: &Inner, rx: &mut mpsc::UnboundedReceiver<Msg>, err: Error) {
    inner.closed.send_replace(true);
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Propose(p) => {
                let _ = p.reply.send(Err(Error::Failed(err.to_string())));
            }
            Msg::Close(done) => {
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Mirrors openraft's view of leader and term into the replica's `role` channel.
async fn watch_metrics(inner: std::sync::Weak<Inner>, raft: GroupRaft) {
    let mut m = raft.metrics();
    loop {
        let role = {
            let m = m.borrow_watched();
            Role {
                leader: m.current_leader,
                term: m.current_term,
            }
        };
        match inner.upgrade() {
            Some(i) => {
                i.role.send_if_modified(|cur| {
                    let changed = *cur != role;
                    if role.leader.is_some() && cur.leader != role.leader {
                        crate::metrics::LEADER_CHANGES.inc();
                    }
                    *cur = role;
                    changed
                });
            }
            None => return,
        }
        if m.changed().await.is_err() {
            return;
        }
    }
}

/// The leader's state for proposing in one term.
struct Lead {
    term: u64,
    next_offset: i64,
}

/// How long a proposal waits for a leader to be elected (or for this leader to hold a fresh
/// lease) before answering NotLeader.
const WAIT_FOR_LEADER: Duration = Duration::from_secs(3);

/// Counts a write handed to openraft until its outcome is known.
struct InFlight(Arc<Inner>);

impl InFlight {
    fn new(inner: &Arc<Inner>) -> Self {
        inner.inflight.send_modify(|n| *n += 1);
        InFlight(inner.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn propose_one(
    inner: &Arc<Inner>,
    raft: &GroupRaft,
    lead: &mut Option<Lead>,
    filter: &mut dyn BatchFilter,
    p: Proposal,
) {
    let term = match current_term_as_leader(inner, raft).await {
        Ok(term) => term,
        Err(e) => {
            *lead = None;
            let _ = p.reply.send(Err(e));
            return;
        }
    };
    let stale = match lead.as_ref() {
        None => true,
        Some(l) => l.term != term || inner.refused.load(Ordering::Acquire),
    };
    if stale {
        // New term, or a write of this term was refused before it reached the log (so the
        // offsets and filter state predicted for it are wrong): the log becomes the truth
        // again, once every write handed to openraft earlier has reached it or failed.
        *lead = None;
        if !settle(inner).await {
            let _ = p.reply.send(Err(Error::NotLeader { leader: None }));
            return;
        }
        inner.refused.store(false, Ordering::Release);
        let log = &inner.shared.log;
        if let Err(e) = inner.shared.lead_filter(filter) {
            let _ = p.reply.send(Err(Error::Failed(e.to_string())));
            return;
        }
        *lead = Some(Lead {
            term,
            next_offset: log.next_offset(),
        });
    }
    let l = lead.as_mut().expect("set above");
    let epoch = i32::try_from(term).unwrap_or(i32::MAX);
    let mut waits: Vec<Wait> = Vec::with_capacity(p.batches.len());
    for mut b in p.batches {
        let header = match BatchHeader::parse(&b) {
            Ok(h) => h,
            Err(_) => {
                // The broker validates before proposing; this is a defect upstream.
                waits.push(Wait::Done(ProposeOutcome::Rejected(-1)));
                continue;
            }
        };
        match filter.admit(&b) {
            Admit::Append => {
                let base = l.next_offset;
                let last = base + i64::from(header.last_offset_delta);
                batch::stamp(&mut b, base, epoch);
                filter.appended(&b, base, last);
                l.next_offset = last + 1;
                let flight = InFlight::new(inner);
                let (responder, rx) = ProgressResponder::complete_only();
                let submitted = raft
                    .write(Payload::Batch(b.freeze()))
                    .with_leader(CommittedLeaderId::new(term))
                    .responder(responder)
                    .await;
                match submitted {
                    Err(e) => {
                        inner.refused.store(true, Ordering::Release);
                        waits.push(Wait::Failed(Error::Failed(e.to_string())));
                    }
                    Ok(()) if p.local => waits.push(Wait::Local(base, last, rx, flight)),
                    Ok(()) => waits.push(Wait::Commit(rx, flight)),
                }
            }
            Admit::Duplicate { base_offset } => waits.push(Wait::Dup(base_offset, header)),
            Admit::Reject(code) => {
                // Rare in a healthy cluster, and what a client that bumps its epoch or fails
                // answers: worth a line with the batch's identity.
                tracing::info!(
                    group = %inner.shared.key,
                    term,
                    producer_id = header.producer_id,
                    producer_epoch = header.producer_epoch,
                    base_sequence = header.base_sequence,
                    records = header.last_offset_delta + 1,
                    code,
                    "batch refused by the producer state"
                );
                waits.push(Wait::Done(ProposeOutcome::Rejected(code)));
            }
        }
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        let res = finish(&inner, waits).await;
        let _ = p.reply.send(res);
    });
}

/// Waits until no write handed to openraft is still without an outcome.
async fn settle(inner: &Inner) -> bool {
    let mut n = inner.inflight.subscribe();
    tokio::time::timeout(WAIT_FOR_LEADER, n.wait_for(|n| *n == 0))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Waits until this replica leads with a known term and a leader lease that will not run out
/// before openraft sees the write (openraft refuses writes on an expired lease, e.g. right
/// after an election or when the leader lost touch with its quorum). Answers NotLeader when
/// another node leads, or when this state is not reached within [`WAIT_FOR_LEADER`].
async fn current_term_as_leader(inner: &Inner, raft: &GroupRaft) -> Result<u64> {
    let mut metrics = raft.metrics();
    let deadline = tokio::time::Instant::now() + WAIT_FOR_LEADER;
    let mut last_heartbeat: Option<tokio::time::Instant> = None;
    loop {
        match raft.as_leader() {
            Ok(leader) => {
                let lone = metrics
                    .borrow_watched()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .count()
                    <= 1;
                let fresh = lone
                    || leader
                        .last_quorum_acked()
                        .is_some_and(|t| t.elapsed() < inner.usable_lease);
                if fresh {
                    return Ok(leader.term());
                }
                // Without periodic heartbeats (cluster mode) an idle leader's lease runs out:
                // one heartbeat round renews it.
                let now = tokio::time::Instant::now();
                if last_heartbeat.is_none_or(|t| now - t > Duration::from_millis(100)) {
                    last_heartbeat = Some(now);
                    let _ = raft.trigger().heartbeat().await;
                }
            }
            Err(fwd) if fwd.leader_id.is_some() => {
                return Err(Error::NotLeader {
                    leader: fwd.leader_id,
                })
            }
            Err(_) => {}
        }
        let changed = tokio::time::timeout_at(deadline, metrics.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            return Err(Error::NotLeader { leader: None });
        }
    }
}

type CommitRx = openraft::type_config::alias::OneshotReceiverOf<
    crate::types::TypeConfig,
    openraft::raft::ClientWriteResult<crate::types::TypeConfig>,
>;

enum Wait {
    Done(ProposeOutcome),
    /// A retry of the batch committed (or in flight) at this base offset.
    Dup(i64, BatchHeader),
    Failed(Error),
    Commit(CommitRx, InFlight),
    /// acks=1: (base offset, last offset) of a batch handed to openraft.
    Local(i64, i64, CommitRx, InFlight),
}

/// Waits for the outcome of every batch of a proposal (all of them, so none is still in flight
/// when it answers); the first failure answers the whole proposal.
async fn finish(inner: &Arc<Inner>, waits: Vec<Wait>) -> Result<Vec<ProposeOutcome>> {
    let mut out = Vec::with_capacity(waits.len());
    let mut failed = None;
    for w in waits {
        let outcome = match w {
            Wait::Done(o) => Ok(o),
            Wait::Failed(e) => Err(e),
            Wait::Dup(base_offset, header) => confirm_duplicate(inner, base_offset, &header)
                .await
                .map(|()| ProposeOutcome::Duplicate { base_offset }),
            Wait::Local(base, last, rx, flight) => {
                // The commit outcome is still tracked (in-flight count, refusals) in the
                // background; the answer comes when this log has the batch durably, or
                // earlier if the write failed.
                let (tx, mut failed) = oneshot::channel();
                let bg = inner.clone();
                tokio::spawn(async move {
                    let res = commit_outcome(&bg, rx).await;
                    drop(flight);
                    let _ = tx.send(res);
                });
                let mut durable = inner.shared.durable.subscribe();
                tokio::select! {
                    r = durable.wait_for(|d| *d > last) => match r {
                        Ok(_) => Ok(ProposeOutcome::Appended { base_offset: base }),
                        Err(_) => Err(Error::Closed),
                    },
                    r = &mut failed => match r {
                        Ok(Ok(o)) => Ok(o),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(Error::Closed),
                    },
                }
            }
            Wait::Commit(rx, flight) => {
                let res = commit_outcome(inner, rx).await;
                drop(flight);
                res
            }
        };
        match outcome {
            Ok(o) => out.push(o),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The outcome of a write handed to openraft, once known; a refusal before it reached the
/// log marks the proposer's predictions stale.
async fn commit_outcome(inner: &Inner, rx: CommitRx) -> Result<ProposeOutcome> {
    match rx.await {
        Err(_) => {
            // Dropped without an answer (the group stopped): whether it reached the log, and
            // whether another leader commits it, is unknown. Not NotLeader: clients take that
            // as "not written" and may resend the records as new ones (a producer that bumps
            // its epoch does), which would write them twice.
            inner.refused.store(true, Ordering::Release);
            Err(Error::OutcomeUnknown)
        }
        Ok(Err(e)) => {
            if matches!(
                e,
                ClientWriteError::ForwardToLeader(_) | ClientWriteError::PreconditionFailed(_)
            ) {
                // Refused before it reached the log.
                inner.refused.store(true, Ordering::Release);
            }
            Err(write_error(e, inner.node_id))
        }
        Ok(Ok(resp)) => match resp.data.offsets {
            Some((base_offset, _)) => Ok(ProposeOutcome::Appended { base_offset }),
            None => Err(Error::Failed("a batch applied without offsets".into())),
        },
    }
}

/// How long a duplicate waits for its original to commit before it is answered
/// [`Error::OutcomeUnknown`] (Kafka's default `request.timeout.ms`, by when the client has
/// given up on the request anyway).
const DUPLICATE_WAIT: Duration = Duration::from_secs(30);

/// A duplicate is answered once the original is committed, and only if the committed batch at
/// its offset really is the original (a write that was refused after the filter saw it leaves
/// its offset to another batch): otherwise a retriable error, by which time the filter has
/// been rebuilt from the log. The original is in this log, so it may well commit later: a
/// wait that runs out (or a partition closing meanwhile) is not a refusal. Answering
/// NotLeader there told the client the records were not written; a client that then bumped
/// its epoch resent them as new records after the original committed.
async fn confirm_duplicate(inner: &Inner, base_offset: i64, dup: &BatchHeader) -> Result<()> {
    let mut hw = inner.shared.hw.subscribe();
    let mut closed = inner.closed.subscribe();
    let reached = tokio::select! {
        r = tokio::time::timeout(DUPLICATE_WAIT, hw.wait_for(|h| *h > base_offset)) => {
            matches!(r, Ok(Ok(_)))
        }
        _ = closed.wait_for(|c| *c) => false,
    };
    if !reached {
        return Err(Error::OutcomeUnknown);
    }
    let log = &inner.shared.log;
    let hw = *inner.shared.hw.borrow();
    let data = log.read(base_offset, 1, hw)?.data;
    let same = BatchHeader::parse(&data).is_ok_and(|h| {
        h.base_offset == base_offset
            && h.producer_id == dup.producer_id
            && h.producer_epoch == dup.producer_epoch
            && h.base_sequence == dup.base_sequence
            && h.last_offset_delta == dup.last_offset_delta
    });
    if same {
        Ok(())
    } else {
        inner.refused.store(true, Ordering::Release);
        Err(Error::NotLeader { leader: None })
    }
}

fn write_error(e: ClientWriteError<crate::types::TypeConfig>, me: NodeId) -> Error {
    match e {
        ClientWriteError::ForwardToLeader(f) | ClientWriteError::LogEntryDiscarded(f) => {
            Error::NotLeader {
                leader: f.leader_id.filter(|l| *l != me),
            }
        }
        ClientWriteError::PreconditionFailed(_) => Error::NotLeader { leader: None },
        other => Error::Failed(other.to_string()),
    }
}

async fn interval_flusher(inner: std::sync::Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if *inner.closed.borrow() {
            return;
        }
        let shared = inner.shared.clone();
        drop(inner);
        let res = tokio::task::spawn_blocking(move || shared.log.sync()).await;
        if let Ok(Err(e)) = res {
            tracing::error!(error = %e, "interval fsync failed; partition refuses writes");
        }
    }
}
