//! The transaction coordinator: the state of every `transactional.id`, kept in the internal
//! `__transaction_state` topic (replicated like `__consumer_offsets`). The coordinator of an
//! id is the leader of partition `hash(id) mod N`; it rebuilds the state of a partition from
//! its log when it becomes leader and finishes the transactions it finds half-ended.
//!
//! A transaction moves Empty -> Ongoing (AddPartitionsToTxn / AddOffsetsToTxn) ->
//! PrepareCommit | PrepareAbort (EndTxn, or its timeout) -> CompleteCommit | CompleteAbort
//! once a marker has been written to every partition in it. The Prepare record is the
//! decision: once it is committed the outcome is fixed, and a coordinator that takes over
//! writes the markers again (a second marker for an ended transaction changes nothing).
//! Every state change is written to the log before it is answered, except Complete, which
//! only needs writing when nothing newer of the id supersedes it ([`COMPLETE_WRITE_DELAY_MS`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::api::codes;
use crate::groups::{partition_for, OFFSETS_TOPIC};
use crate::led::{Change, Led};
use crate::{now_ms, Broker};

pub const TXN_TOPIC: &str = "__transaction_state";
/// The cluster transport group key the coordinator sends markers to other nodes under.
pub const MARKERS_GROUP: &str = "__txn_markers";
/// Kafka's `transaction.max.timeout.ms` default.
pub const MAX_TIMEOUT_MS: i32 = 900_000;
/// Once every marker of a transaction is written, its Complete state is written to the log
/// only if nothing newer of the id supersedes it within this time: a producer that goes on
/// with its next transaction writes Ongoing (which says as much) and the Complete record
/// never costs a Raft entry on its path. Until then the log says Prepare, so a coordinator
/// taking over writes the markers once more, which changes nothing on the partitions: the
/// producer has no transaction open there (its next one needs an Ongoing record first).
pub const COMPLETE_WRITE_DELAY_MS: i64 = 500;
/// EndTxn is answered once its Prepare record is committed (as in Kafka); the markers follow.
/// A request for the id that comes while they are being written (the producer's next
/// AddPartitionsToTxn, mostly) waits for them this long before it is answered
/// CONCURRENT_TRANSACTIONS, which clients retry only after their backoff (100 ms).
pub const COMPLETING_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Empty => "Empty",
            Status::Ongoing => "Ongoing",
            Status::PrepareCommit => "PrepareCommit",
            Status::PrepareAbort => "PrepareAbort",
            Status::CompleteCommit => "CompleteCommit",
            Status::CompleteAbort => "CompleteAbort",
        }
    }

    fn preparing(self) -> bool {
        matches!(self, Status::PrepareCommit | Status::PrepareAbort)
    }

    fn complete(self) -> bool {
        matches!(self, Status::CompleteCommit | Status::CompleteAbort)
    }
}

/// The state of one transactional id, as written to `__transaction_state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: Status,
    /// (topic, partition) of every partition in the current transaction.
    pub partitions: BTreeSet<(String, i32)>,
    /// When the current transaction started (first partition added); -1 when none.
    pub start_ms: i64,
    pub updated_ms: i64,
    /// The abort was decided by the coordinator at the transaction's timeout.
    #[serde(default)]
    pub timed_out: bool,
}

/// A summary for DescribeTransactions / ListTransactions.
#[derive(Debug, Clone)]
pub struct TxnSummary {
    pub id: String,
    pub meta: TxnMeta,
}

/// One marker to write: the end of `producer_id`'s transaction on a partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    pub topic: String,
    pub partition: i32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
}

type Slot = Arc<tokio::sync::Mutex<Option<TxnMeta>>>;

pub struct TxnCoordinator {
    led: Led,
    /// `transactional.id.expiration.ms`: an id with no transaction open or being completed
    /// for this long is forgotten.
    expiration_ms: i64,
    /// Transactional id -> its state (None: being created). One async lock per id keeps
    /// the changes of one id in order.
    txns: Mutex<HashMap<String, Slot>>,
    /// Ids made Complete in memory whose record is not written yet (the log still says
    /// Prepare), until their next state is written (see [`COMPLETE_WRITE_DELAY_MS`]).
    unwritten: Mutex<HashSet<String>>,
    /// Woken whenever a transaction's completion (its markers) ends or stops.
    completed: tokio::sync::Notify,
}

/// Fenced: older request versions only know INVALID_PRODUCER_EPOCH.
fn fenced(new_code: bool) -> i16 {
    if new_code {
        codes::PRODUCER_FENCED
    } else {
        codes::INVALID_PRODUCER_EPOCH
    }
}

impl TxnCoordinator {
    pub fn start(
        node_id: raft::NodeId,
        partitions: Vec<Option<raft::Partition>>,
        expiration_ms: i64,
        broker: Weak<Broker>,
    ) -> Arc<TxnCoordinator> {
        let c = Arc::new(TxnCoordinator {
            led: Led::new(node_id, partitions),
            expiration_ms,
            txns: Mutex::new(HashMap::new()),
            unwritten: Mutex::new(HashSet::new()),
            completed: tokio::sync::Notify::new(),
        });
        tokio::spawn(tick_loop(Arc::downgrade(&c), broker));
        c
    }

    pub async fn settle(&self, timeout: Duration) -> bool {
        self.led.settle(timeout).await
    }

    /// The partition of `__transaction_state` holding `id`.
    pub fn partition_of(&self, id: &str) -> usize {
        partition_for(id, self.led.len())
    }

    pub fn not_serving(&self, id: &str) -> Option<i16> {
        self.led.not_serving(self.partition_of(id))
    }

    fn slot(&self, id: &str) -> Slot {
        self.txns
            .lock()
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(None)))
            .clone()
    }

    /// Locks the id's slot once no transaction of it is being completed (its markers written
    /// after EndTxn was answered), waiting up to [`COMPLETING_WAIT`] for that; after it, the
    /// slot as it is (the caller answers CONCURRENT_TRANSACTIONS). The code to answer when
    /// this node stops serving the id meanwhile (the next coordinator completes it).
    async fn lock_completed<'a>(
        &self,
        id: &str,
        slot: &'a Slot,
    ) -> Result<tokio::sync::MutexGuard<'a, Option<TxnMeta>>, i16> {
        let deadline = tokio::time::Instant::now() + COMPLETING_WAIT;
        loop {
            let completed = self.completed.notified();
            tokio::pin!(completed);
            // Registered before the state is read, so a completion in between wakes it.
            completed.as_mut().enable();
            if let Some(code) = self.not_serving(id) {
                return Err(code);
            }
            let guard = slot.lock().await;
            if !guard.as_ref().is_some_and(|m| m.status.preparing()) {
                return Ok(guard);
            }
            drop(guard);
            if tokio::time::timeout_at(deadline, completed).await.is_err() {
                return Ok(slot.lock().await);
            }
        }
    }

    /// Writes the state of `id` to its partition; answered once committed.
    async fn persist(&self, id: &str, meta: &TxnMeta) -> Result<(), i16> {
        let value = serde_json::to_vec(meta).expect("serialisable");
        self.write_record(id, Some(Bytes::from(value))).await
    }

    /// Writes the record of `id` (a tombstone when `value` is None); answered once committed.
    async fn write_record(&self, id: &str, value: Option<Bytes>) -> Result<(), i16> {
        let k = self.partition_of(id);
        let Some(p) = self.led.partition(k) else {
            return Err(codes::NOT_COORDINATOR);
        };
        let Some(term) = self.led.serving_term(k) else {
            return Err(codes::NOT_COORDINATOR);
        };
        let batch = encode(Bytes::copy_from_slice(id.as_bytes()), value);
        match p.propose(vec![batch]).await {
            Ok(out) if matches!(out.first(), Some(raft::ProposeOutcome::Appended { .. })) => {
                // Written; but if the partition was reloaded meanwhile (a new term), the
                // reload may not have seen it: load again rather than serve stale state.
                if self.led.serving_term(k) != Some(term) {
                    self.led.invalidate(k);
                    return Err(codes::NOT_COORDINATOR);
                }
                Ok(())
            }
            Ok(out) => {
                tracing::warn!(txn = id, outcome = ?out, "transaction state not written");
                Err(codes::COORDINATOR_NOT_AVAILABLE)
            }
            Err(raft::Error::NotLeader { .. } | raft::Error::Closed) => Err(codes::NOT_COORDINATOR),
            Err(e) => {
                tracing::warn!(txn = id, error = %e, "writing transaction state");
                Err(codes::COORDINATOR_NOT_AVAILABLE)
            }
        }
    }

    /// The coordinator epoch markers carry: the term of the state partition.
    fn coordinator_epoch(&self, id: &str) -> i32 {
        self.led
            .serving_term(self.partition_of(id))
            .map_or(-1, |t| i32::try_from(t).unwrap_or(i32::MAX))
    }

    /// InitProducerId with a transactional id: the id's producer id with its epoch bumped
    /// (fencing every older producer of the id); an open transaction is aborted first.
    /// `expected` is the (producer id, epoch) a KIP-360 client claims to have.
    pub async fn init_producer(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        new_codes: bool,
    ) -> Result<(i64, i16), i16> {
        if let Some(code) = self.not_serving(id) {
            return Err(code);
        }
        if timeout_ms <= 0 || timeout_ms > MAX_TIMEOUT_MS {
            return Err(codes::INVALID_TRANSACTION_TIMEOUT);
        }
        let slot = self.slot(id);
        let mut guard = self.lock_completed(id, &slot).await?;
        let now = now_ms();
        let mut meta = match guard.clone() {
            None => {
                let pid = broker.next_producer_id().await.map_err(|e| {
                    tracing::warn!(error = %e.message, "allocating a producer id");
                    codes::COORDINATOR_NOT_AVAILABLE
                })?;
                TxnMeta {
                    producer_id: pid,
                    producer_epoch: -1,
                    timeout_ms,
                    status: Status::Empty,
                    partitions: BTreeSet::new(),
                    start_ms: -1,
                    updated_ms: now,
                    timed_out: false,
                }
            }
            Some(m) => m,
        };
        if let Some((pid, epoch)) = expected {
            if pid != meta.producer_id || epoch != meta.producer_epoch {
                return Err(fenced(new_codes));
            }
        }
        if meta.status.preparing() {
            return Err(codes::CONCURRENT_TRANSACTIONS);
        }
        if meta.status == Status::Ongoing {
            // The previous producer of this id left a transaction open: abort it with a
            // bumped epoch, so its markers fence that producer on every partition.
            meta = self.bump(broker, meta).await?;
            meta.status = Status::PrepareAbort;
            meta.timed_out = false;
            meta.updated_ms = now;
            self.persist(id, &meta).await?;
            *guard = Some(meta.clone());
            drop(guard);
            self.finish(broker, id).await?;
            guard = slot.lock().await;
            meta = guard.clone().ok_or(codes::NOT_COORDINATOR)?;
            if meta.status.preparing() {
                return Err(codes::CONCURRENT_TRANSACTIONS);
            }
        }
        let mut next = self.bump(broker, meta).await?;
        next.status = Status::Empty;
        next.partitions.clear();
        next.start_ms = -1;
        next.timeout_ms = timeout_ms;
        next.updated_ms = now;
        self.persist(id, &next).await?;
        let out = (next.producer_id, next.producer_epoch);
        *guard = Some(next);
        Ok(out)
    }

    /// The next epoch of a producer, or a new producer id once the epoch is exhausted.
    async fn bump(&self, broker: &Arc<Broker>, mut meta: TxnMeta) -> Result<TxnMeta, i16> {
        if meta.producer_epoch >= i16::MAX - 1 {
            meta.producer_id = broker
                .next_producer_id()
                .await
                .map_err(|_| codes::COORDINATOR_NOT_AVAILABLE)?;
            meta.producer_epoch = 0;
        } else {
            meta.producer_epoch += 1;
        }
        Ok(meta)
    }

    /// Checks a request's producer against the id's state.
    fn check_producer(
        meta: &Option<TxnMeta>,
        pid: i64,
        epoch: i16,
        new_codes: bool,
    ) -> Result<TxnMeta, i16> {
        let Some(meta) = meta else {
            return Err(codes::INVALID_PRODUCER_ID_MAPPING);
        };
        if meta.producer_id != pid {
            return Err(codes::INVALID_PRODUCER_ID_MAPPING);
        }
        if meta.producer_epoch != epoch {
            return Err(fenced(new_codes));
        }
        Ok(meta.clone())
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: adds partitions to the id's transaction
    /// (starting one if none is open).
    pub async fn add_partitions(
        &self,
        id: &str,
        pid: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
        new_codes: bool,
    ) -> Result<(), i16> {
        if let Some(code) = self.not_serving(id) {
            return Err(code);
        }
        let slot = self.slot(id);
        let mut guard = self.lock_completed(id, &slot).await?;
        let mut meta = Self::check_producer(&guard, pid, epoch, new_codes)?;
        if meta.status.preparing() {
            return Err(codes::CONCURRENT_TRANSACTIONS);
        }
        let now = now_ms();
        if meta.status != Status::Ongoing {
            meta.partitions.clear();
            meta.start_ms = now;
            meta.timed_out = false;
        } else if partitions.iter().all(|p| meta.partitions.contains(p)) {
            return Ok(());
        }
        meta.status = Status::Ongoing;
        meta.partitions.extend(partitions);
        meta.updated_ms = now;
        self.persist(id, &meta).await?;
        *guard = Some(meta);
        Ok(())
    }

    /// EndTxn: decides the transaction (the Prepare record), answered once that is committed,
    /// as in Kafka; the markers are written after it ([`TxnCoordinator::finish`]), and the
    /// id's next request waits for them ([`COMPLETING_WAIT`]). So the producer's next
    /// transaction cannot put records on a partition before the marker ending this one.
    pub async fn end_txn(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        id: &str,
        pid: i64,
        epoch: i16,
        commit: bool,
        new_codes: bool,
    ) -> Result<(), i16> {
        if let Some(code) = self.not_serving(id) {
            return Err(code);
        }
        let slot = self.slot(id);
        let mut guard = self.lock_completed(id, &slot).await?;
        let mut meta = Self::check_producer(&guard, pid, epoch, new_codes)?;
        match (meta.status, commit) {
            (Status::Ongoing, _) => {}
            (Status::CompleteCommit, true) | (Status::CompleteAbort, false) => return Ok(()),
            (Status::PrepareCommit, true) | (Status::PrepareAbort, false) => {
                return Err(codes::CONCURRENT_TRANSACTIONS)
            }
            _ => return Err(codes::INVALID_TXN_STATE),
        }
        meta.status = if commit {
            Status::PrepareCommit
        } else {
            Status::PrepareAbort
        };
        meta.timed_out = false;
        meta.updated_ms = now_ms();
        self.persist(id, &meta).await?;
        *guard = Some(meta);
        drop(guard);
        let (c, b, id2) = (self.clone(), broker.clone(), id.to_string());
        tokio::spawn(async move { c.finish(&b, &id2).await });
        Ok(())
    }

    /// Writes the markers of a prepared transaction until every partition has one, then
    /// makes it Complete (written to the log later; see [`COMPLETE_WRITE_DELAY_MS`]). Stops
    /// (leaving it to the next coordinator) when this node no longer serves the id. Wakes
    /// the requests waiting for it in [`TxnCoordinator::lock_completed`] either way.
    async fn finish(&self, broker: &Arc<Broker>, id: &str) -> Result<(), i16> {
        let out = self.write_markers(broker, id).await;
        self.completed.notify_waiters();
        out
    }

    async fn write_markers(&self, broker: &Arc<Broker>, id: &str) -> Result<(), i16> {
        let slot = self.slot(id);
        let meta = slot.lock().await.clone().ok_or(codes::NOT_COORDINATOR)?;
        if !meta.status.preparing() {
            return Ok(());
        }
        let commit = meta.status == Status::PrepareCommit;
        let mut left: Vec<(String, i32)> = meta.partitions.iter().cloned().collect();
        let mut delay = Duration::from_millis(50);
        loop {
            if let Some(code) = self.not_serving(id) {
                return Err(code);
            }
            let epoch = self.coordinator_epoch(id);
            let markers: Vec<Marker> = left
                .iter()
                .map(|(t, p)| Marker {
                    topic: t.clone(),
                    partition: *p,
                    producer_id: meta.producer_id,
                    producer_epoch: meta.producer_epoch,
                    commit,
                    coordinator_epoch: epoch,
                })
                .collect();
            let results = send_markers(broker, markers).await;
            left = results
                .into_iter()
                .filter(|(m, code)| {
                    // A partition deleted meanwhile needs no marker.
                    *code != codes::NONE && *code != codes::UNKNOWN_TOPIC_OR_PARTITION && {
                        tracing::debug!(txn = id, topic = %m.topic, partition = m.partition, code, "marker not written yet");
                        true
                    }
                })
                .map(|(m, _)| (m.topic, m.partition))
                .collect();
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
        let mut guard = slot.lock().await;
        let Some(mut done) = guard.clone() else {
            return Err(codes::NOT_COORDINATOR);
        };
        if done.status != meta.status || done.producer_epoch != meta.producer_epoch {
            return Ok(());
        }
        done.status = if commit {
            Status::CompleteCommit
        } else {
            Status::CompleteAbort
        };
        done.partitions.clear();
        done.start_ms = -1;
        done.updated_ms = now_ms();
        // Written later, unless the id's next change supersedes it first.
        *guard = Some(done);
        self.unwritten.lock().insert(id.to_string());
        let result = match (commit, meta.timed_out) {
            (true, _) => "commit",
            (false, false) => "abort",
            (false, true) => "timeout",
        };
        broker
            .metrics
            .transactions
            .with_label_values(&[result])
            .inc();
        Ok(())
    }

    /// Aborts the transactions open longer than their timeout, with an epoch bump that
    /// fences their producer (as Kafka does).
    /// The ids (and their slots) of the partitions this node serves now.
    fn served_slots(&self) -> Vec<(String, Slot)> {
        let served = self.led.served();
        self.txns
            .lock()
            .iter()
            .filter(|(id, _)| served[self.partition_of(id)])
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect()
    }

    /// Forgets the ids idle (Empty or Complete) for longer than `transactional.id.expiration.ms`:
    /// a tombstone in their partition, then out of memory. The id's next InitProducerId
    /// starts it afresh with a new producer id, as in Kafka.
    async fn expire_ids(&self) {
        let now = now_ms();
        let slots = self.served_slots();
        for (id, slot) in slots {
            let Ok(mut guard) = slot.try_lock() else {
                continue;
            };
            let idle = guard.as_ref().is_some_and(|m| {
                matches!(
                    m.status,
                    Status::Empty | Status::CompleteCommit | Status::CompleteAbort
                ) && now.saturating_sub(m.updated_ms) > self.expiration_ms
            });
            if !idle || self.write_record(&id, None).await.is_err() {
                continue;
            }
            tracing::info!(txn = %id, "transactional id expired");
            *guard = None;
            drop(guard);
            // Out of the map unless a request holds the slot (it then finds it empty, as
            // for an id never seen).
            let mut txns = self.txns.lock();
            if txns.get(&id).is_some_and(|s| Arc::ptr_eq(s, &slot)) && Arc::strong_count(&slot) == 2
            {
                txns.remove(&id);
            }
        }
    }

    /// Writes the Complete states that nothing superseded within [`COMPLETE_WRITE_DELAY_MS`].
    async fn write_completed(&self) {
        let now = now_ms();
        let ids: Vec<String> = self.unwritten.lock().iter().cloned().collect();
        let writes = ids.into_iter().map(|id| async move {
            let slot = self.txns.lock().get(&id).cloned();
            // Gone (expired, or its partition no longer led here: the next coordinator
            // finishes it from the Prepare record).
            let Some(slot) = slot.filter(|_| self.not_serving(&id).is_none()) else {
                self.unwritten.lock().remove(&id);
                return;
            };
            let Ok(guard) = slot.try_lock() else {
                return;
            };
            // Superseded: a later state was written (or the id expired).
            let Some(meta) = guard.clone().filter(|m| m.status.complete()) else {
                self.unwritten.lock().remove(&id);
                return;
            };
            if now.saturating_sub(meta.updated_ms) < COMPLETE_WRITE_DELAY_MS {
                return;
            }
            if self.persist(&id, &meta).await.is_ok() {
                self.unwritten.lock().remove(&id);
            }
        });
        futures_util::future::join_all(writes).await;
    }

    async fn abort_expired(self: &Arc<Self>, broker: &Arc<Broker>) {
        let now = now_ms();
        let slots = self.served_slots();
        for (id, slot) in slots {
            let Ok(mut guard) = slot.try_lock() else {
                continue;
            };
            let Some(meta) = guard.clone() else { continue };
            let expired = meta.status == Status::Ongoing
                && meta.start_ms >= 0
                && now - meta.start_ms > i64::from(meta.timeout_ms);
            if !expired {
                continue;
            }
            let Ok(mut next) = self.bump(broker, meta).await else {
                continue;
            };
            next.status = Status::PrepareAbort;
            next.updated_ms = now;
            next.timed_out = true;
            if self.persist(&id, &next).await.is_err() {
                continue;
            }
            tracing::info!(txn = %id, producer_id = next.producer_id, "transaction timed out: aborting");
            *guard = Some(next);
            drop(guard);
            let (c, b) = (self.clone(), broker.clone());
            tokio::spawn(async move { c.finish(&b, &id).await });
        }
    }

    /// Follows leadership of the state partitions: loads those led here in a new term and
    /// drops the state of those no longer led.
    fn check_leadership(self: &Arc<Self>, broker: &Arc<Broker>) {
        for change in self.led.check() {
            match change {
                Change::Drop(k) => {
                    let n = self.led.len();
                    self.txns.lock().retain(|id, _| partition_for(id, n) != k);
                    self.unwritten.lock().retain(|id| partition_for(id, n) != k);
                }
                Change::Load(k, p, term) => {
                    let (c, b) = (self.clone(), broker.clone());
                    tokio::spawn(async move { c.load_partition(&b, k, p, term).await });
                }
            }
        }
    }

    async fn load_partition(
        self: Arc<Self>,
        broker: &Arc<Broker>,
        k: usize,
        p: raft::Partition,
        term: u64,
    ) {
        if let Err(why) = self.led.caught_up(k, &p, term).await {
            tracing::debug!(partition = k, term, why, "{TXN_TOPIC} partition not loaded");
            return;
        }
        let part = p.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut state: BTreeMap<String, TxnMeta> = BTreeMap::new();
            let r = crate::committed::for_each(&part, 0, |r| {
                let Some(key) = r.key else { return Ok(()) };
                let id = String::from_utf8_lossy(&key).into_owned();
                match r
                    .value
                    .and_then(|v| serde_json::from_slice::<TxnMeta>(&v).ok())
                {
                    Some(m) => {
                        state.insert(id, m);
                    }
                    None => {
                        state.remove(&id);
                    }
                }
                Ok(())
            });
            if let Err(e) = r {
                tracing::warn!(partition = k, error = %e, "{TXN_TOPIC}: replay stopped early");
            }
            state
        })
        .await;
        let Ok(state) = read else {
            self.led.give_up(k, term, "the replay task failed");
            return;
        };
        let prepared: Vec<String> = state
            .iter()
            .filter(|(_, m)| m.status.preparing())
            .map(|(id, _)| id.clone())
            .collect();
        let count = state.len();
        let installed = self.led.loaded(k, &p, term, || {
            let mut txns = self.txns.lock();
            for (id, m) in state {
                txns.insert(id, Arc::new(tokio::sync::Mutex::new(Some(m))));
            }
        });
        if !installed {
            return;
        }
        if count > 0 {
            tracing::info!(
                partition = k,
                term,
                transactional_ids = count,
                prepared = prepared.len(),
                "loaded transaction state of a partition led here"
            );
        }
        for id in prepared {
            let (c, b) = (self.clone(), broker.clone());
            tokio::spawn(async move { c.finish(&b, &id).await });
        }
    }

    /// DescribeTransactions: the state of each id (None where this node does not serve it
    /// or it is unknown, with the code to answer).
    pub async fn describe(&self, id: &str) -> Result<TxnMeta, i16> {
        if let Some(code) = self.not_serving(id) {
            return Err(code);
        }
        let slot = self.txns.lock().get(id).cloned();
        let Some(slot) = slot else {
            return Err(codes::TRANSACTIONAL_ID_NOT_FOUND);
        };
        let meta = slot.lock().await.clone();
        meta.ok_or(codes::TRANSACTIONAL_ID_NOT_FOUND)
    }

    /// Every transactional id this node coordinates now.
    pub async fn list(&self) -> Vec<TxnSummary> {
        let slots = self.served_slots();
        let mut out = Vec::new();
        for (id, slot) in slots {
            if let Some(meta) = slot.lock().await.clone() {
                out.push(TxnSummary { id, meta });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

async fn tick_loop(c: Weak<TxnCoordinator>, broker: Weak<Broker>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        let (Some(c), Some(b)) = (c.upgrade(), broker.upgrade()) else {
            // The broker is not built yet at start-up; stop once the coordinator is gone.
            if c.strong_count() == 0 {
                return;
            }
            continue;
        };
        c.check_leadership(&b);
        c.write_completed().await;
        n += 1;
        if n.is_multiple_of(10) {
            c.abort_expired(&b).await;
            c.expire_ids().await;
        }
    }
}

/// Encodes one record (key, value) as an uncompressed batch for the state partition.
fn encode(key: Bytes, value: Option<Bytes>) -> BytesMut {
    crate::groups::store::encode_batch(&[(key, value)], now_ms())
}

/// A control batch ending `producer_id`'s transaction (Kafka's end transaction marker).
pub fn control_batch(m: &Marker, now: i64) -> BytesMut {
    let kind: i16 = if m.commit {
        storage::batch::CONTROL_COMMIT
    } else {
        storage::batch::CONTROL_ABORT
    };
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&m.coordinator_epoch.to_be_bytes());
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: m.producer_id,
        producer_epoch: m.producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: now,
        key: Some(Bytes::from(key)),
        value: Some(Bytes::from(value)),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        std::slice::from_ref(&record),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encoding an uncompressed batch cannot fail");
    buf
}

/// Writes markers on the partitions this node leads (WriteTxnMarkers, or forwarded from a
/// coordinator on another node). Per marker, the Kafka error code.
pub async fn write_markers_local(broker: &Arc<Broker>, markers: Vec<Marker>) -> Vec<(Marker, i16)> {
    let now = now_ms();
    let mut pending = Vec::with_capacity(markers.len());
    for m in markers {
        let Some(part) = broker
            .topics
            .get(&m.topic)
            .and_then(|t| t.partition(m.partition).cloned())
        else {
            pending.push((m, None));
            continue;
        };
        let replica = match part.leader() {
            Ok(r) => r.clone(),
            Err(code) => {
                pending.push((m, Some(Err(code))));
                continue;
            }
        };
        let fut = replica.propose(vec![control_batch(&m, now)]);
        pending.push((m, Some(Ok(fut))));
    }
    let mut out = Vec::with_capacity(pending.len());
    for (m, p) in pending {
        let code = match p {
            None => codes::UNKNOWN_TOPIC_OR_PARTITION,
            Some(Err(code)) => code,
            Some(Ok(fut)) => match fut.await {
                Ok(o) if matches!(o.first(), Some(raft::ProposeOutcome::Appended { .. })) => {
                    if m.topic == OFFSETS_TOPIC {
                        broker
                            .groups()
                            .complete_txn(m.partition as usize, m.producer_id, m.commit);
                    }
                    codes::NONE
                }
                Ok(o) => match o.first() {
                    Some(raft::ProposeOutcome::Rejected(code)) => *code,
                    _ => codes::UNKNOWN_SERVER_ERROR,
                },
                Err(raft::Error::NotLeader { .. } | raft::Error::Closed) => {
                    codes::NOT_LEADER_OR_FOLLOWER
                }
                Err(_) => codes::KAFKA_STORAGE_ERROR,
            },
        };
        out.push((m, code));
    }
    out
}

/// Sends markers to the leaders of their partitions: written here for the partitions led
/// here, forwarded over the cluster transport for the others.
async fn send_markers(broker: &Arc<Broker>, markers: Vec<Marker>) -> Vec<(Marker, i16)> {
    let me = broker.config.node_id;
    let mut by_node: BTreeMap<i32, Vec<Marker>> = BTreeMap::new();
    let mut out = Vec::new();
    for m in markers {
        let leader = broker
            .topics
            .get(&m.topic)
            .and_then(|t| t.partition(m.partition).map(|p| p.leader_id()));
        match leader {
            None => out.push((m, codes::UNKNOWN_TOPIC_OR_PARTITION)),
            Some(l) if l < 0 => out.push((m, codes::LEADER_NOT_AVAILABLE)),
            Some(l) => by_node.entry(l).or_default().push(m),
        }
    }
    let local = by_node.remove(&me).unwrap_or_default();
    // Markers for this node's partitions are written while the others are in flight.
    let calls = by_node.into_iter().map(|(node, ms)| {
        let broker = broker.clone();
        async move {
            let body = Bytes::from(serde_json::to_vec(&ms).expect("serialisable"));
            let answer = broker
                .forward(node, MARKERS_GROUP, body, Duration::from_secs(10))
                .await;
            let codes_back: Option<Vec<i16>> = match answer {
                Ok(b) => serde_json::from_slice(&b).ok(),
                Err(e) => {
                    tracing::debug!(node, error = %e, "sending transaction markers");
                    None
                }
            };
            match codes_back {
                Some(c) if c.len() == ms.len() => ms.into_iter().zip(c).collect::<Vec<_>>(),
                _ => ms
                    .into_iter()
                    .map(|m| (m, codes::NOT_LEADER_OR_FOLLOWER))
                    .collect(),
            }
        }
    });
    let (here, there) = tokio::join!(
        async {
            if local.is_empty() {
                Vec::new()
            } else {
                write_markers_local(broker, local).await
            }
        },
        futures_util::future::join_all(calls)
    );
    out.extend(here);
    for r in there {
        out.extend(r);
    }
    out
}

/// The forwarder other nodes' coordinators send markers through.
pub fn markers_forwarder(broker: Weak<Broker>) -> raft::Forwarder {
    Arc::new(move |body: Bytes| {
        let broker = broker.clone();
        Box::pin(async move {
            let broker = broker.upgrade().ok_or("shutting down")?;
            let markers: Vec<Marker> =
                serde_json::from_slice(&body).map_err(|e| format!("bad markers: {e}"))?;
            let codes: Vec<i16> = write_markers_local(&broker, markers)
                .await
                .into_iter()
                .map(|(_, c)| c)
                .collect();
            Ok(Bytes::from(
                serde_json::to_vec(&codes).expect("serialisable"),
            ))
        })
    })
}
