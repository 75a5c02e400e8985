//! The classic-protocol group coordinator.
//!
//! Every group lives in one partition of the internal topic `__consumer_offsets`
//! (`abs(javaHashCode(group)) % offsets.topic.num.partitions`, as Kafka places it). On a
//! single node this node coordinates every group. State is in memory behind one mutex
//! (operations are short and never wait on I/O under it); durable facts — committed offsets
//! and each group's membership after a rebalance — are written as records to the group's
//! offsets partition through `raft::Partition::propose`. The coordinator of a group is the
//! leader of its offsets partition: when this node becomes leader of one (at start-up or on
//! failover), it waits until its high watermark covers the log, replays the partition and
//! only then serves that partition's groups (COORDINATOR_LOAD_IN_PROGRESS until then,
//! NOT_COORDINATOR on other nodes); when it stops leading, it drops them.
//!
//! Rebalances follow Kafka's classic state machine: Empty → PreparingRebalance (waiting for
//! every known member to rejoin, up to the rebalance timeout; a new group first waits
//! `group.initial.rebalance.delay.ms`) → CompletingRebalance (the leader got the members'
//! metadata and computes the assignment) → Stable (SyncGroup handed every member its
//! assignment). A background tick (every 100 ms) expires sessions and rebalance deadlines.
//!
//! Groups of the consumer protocol (KIP-848, ConsumerGroupHeartbeat) are in `consumer`: a
//! group is one or the other; an empty group changes kind when a member of the other
//! protocol arrives, a non-empty one refuses it.

pub mod consumer;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indexmap::IndexMap;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupResponse, SyncGroupResponse};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use protocol::codes;
use store::{GroupValue, Key, MemberValue, OffsetValue, Value};

use crate::led::{Change, Led};
use crate::{now_ms, sb};

/// The internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Kafka's `String.hashCode()` over UTF-16 code units.
pub fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The offsets partition of a group: Kafka's `Utils.abs(hashCode) % n`.
pub fn partition_for(group: &str, partitions: usize) -> usize {
    let h = java_hash(group);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs as usize % partitions.max(1)
}

/// Coordinator settings (Kafka's names).
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// `group.min.session.timeout.ms`
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`
    pub initial_rebalance_delay_ms: i32,
    /// `group.consumer.heartbeat.interval.ms` (consumer-protocol groups)
    pub consumer_heartbeat_interval_ms: i32,
    /// `group.consumer.session.timeout.ms` (consumer-protocol groups)
    pub consumer_session_timeout_ms: i32,
    /// `offset.metadata.max.bytes`
    pub offset_metadata_max_bytes: usize,
    /// `group.max.size`
    pub max_size: usize,
    /// `offsets.retention.minutes`, in ms: offsets of an empty group expire this long after it
    /// became empty (standalone commits: after their commit).
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`
    pub offsets_retention_check_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    deadline: Instant,
    join_waiter: Option<oneshot::Sender<JoinGroupResponse>>,
    sync_waiter: Option<oneshot::Sender<SyncGroupResponse>>,
}

impl Member {
    fn metadata(&self, protocol: Option<&str>) -> Bytes {
        protocol
            .and_then(|p| self.protocols.iter().find(|(n, _)| n == p))
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

struct Committed {
    value: OffsetValue,
    seq: u64,
}

struct Group {
    id: String,
    partition: usize,
    state: GroupState,
    state_since_ms: i64,
    protocol_type: Option<String>,
    protocol: Option<String>,
    generation: i32,
    leader: Option<String>,
    members: IndexMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until they join or expire.
    pending: HashMap<String, Instant>,
    /// group.instance.id -> member id of static members.
    instances: HashMap<String, String>,
    join_deadline: Option<Instant>,
    join_not_before: Option<Instant>,
    offsets: HashMap<(String, i32), Committed>,
    /// Offsets committed inside open transactions, by producer id: visible once the
    /// transaction commits (its marker reaches this group's offsets partition).
    txn_offsets: HashMap<i64, HashMap<(String, i32), OffsetValue>>,
    /// Records to write to the offsets partition once the current operation is done.
    writes: Vec<(Bytes, Option<Bytes>)>,
    /// Set while the group is a consumer-protocol (KIP-848) group.
    cg: Option<Box<consumer::ConsumerGroup>>,
}

/// What JoinGroup gets: an answer now, or one when the rebalance completes.
pub enum JoinOutcome {
    Now(JoinGroupResponse),
    Wait(oneshot::Receiver<JoinGroupResponse>),
}

/// What SyncGroup gets.
pub enum SyncOutcome {
    Now(SyncGroupResponse),
    Wait(oneshot::Receiver<SyncGroupResponse>),
}

/// A JoinGroup request, version-normalised.
pub struct JoinArgs {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: new dynamic members must rejoin with the id they are given.
    pub require_known_member_id: bool,
}

/// One committed offset to write.
pub struct CommitItem {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

impl CommitItem {
    /// The offset values to write for `items`, stamped with commit time `ts`.
    fn values(items: Vec<CommitItem>, ts: i64) -> Vec<(String, i32, OffsetValue)> {
        items
            .into_iter()
            .map(|i| {
                (
                    i.topic,
                    i.partition,
                    OffsetValue {
                        offset: i.offset,
                        leader_epoch: i.leader_epoch,
                        metadata: i.metadata,
                        commit_timestamp: ts,
                    },
                )
            })
            .collect()
    }
}

/// A group as DescribeGroups/ListGroups see it.
pub struct GroupSummary {
    pub group_id: String,
    pub state: GroupState,
    /// "classic" or "consumer".
    pub group_type: &'static str,
    /// The state as ListGroups names it (the consumer protocol has its own states).
    pub state_name: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub members: Vec<MemberSummary>,
}

/// A consumer-protocol group as ConsumerGroupDescribe shows it.
pub struct ConsumerGroupSummary {
    pub state: &'static str,
    pub epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: Vec<ConsumerMemberSummary>,
}

pub struct ConsumerMemberSummary {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub topics: Vec<String>,
    pub regex: Option<String>,
    pub assignment: consumer::Assignment,
    pub target: consumer::Assignment,
}

pub struct MemberSummary {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

fn join_error(code: i16, member_id: &str) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(code)
        .with_generation_id(-1)
        .with_member_id(sb(member_id))
}

fn sync_error(code: i16) -> SyncGroupResponse {
    SyncGroupResponse::default().with_error_code(code)
}

impl Group {
    /// A classic member's commit in `generation`: the member must be known and in the
    /// group's generation; the commit counts as a sign of life.
    fn check_member_commit(
        &mut self,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<(), i16> {
        let current = self.generation;
        let Some(m) = self.members.get_mut(member_id) else {
            return Err(codes::UNKNOWN_MEMBER_ID);
        };
        if generation != current {
            return Err(codes::ILLEGAL_GENERATION);
        }
        m.deadline = now + m.session_timeout;
        Ok(())
    }

    fn new(id: &str, partitions: usize) -> Group {
        Group {
            id: id.to_string(),
            partition: partition_for(id, partitions),
            state: GroupState::Empty,
            state_since_ms: now_ms(),
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: IndexMap::new(),
            pending: HashMap::new(),
            instances: HashMap::new(),
            join_deadline: None,
            join_not_before: None,
            offsets: HashMap::new(),
            txn_offsets: HashMap::new(),
            writes: Vec::new(),
            cg: None,
        }
    }

    /// Makes it an empty consumer-protocol group (no classic members left).
    fn become_consumer(&mut self) {
        self.members.clear();
        self.instances.clear();
        self.state = GroupState::Empty;
        self.protocol_type = Some("consumer".to_string());
        self.protocol = None;
        self.cg = Some(Box::new(consumer::ConsumerGroup::new(&self.id)));
    }

    /// No member of either protocol, none joining.
    fn is_empty(&self) -> bool {
        self.state == GroupState::Empty
            && self.members.is_empty()
            && self.pending.is_empty()
            && self.cg.as_ref().is_none_or(|c| c.members.is_empty())
    }

    fn set_state(&mut self, s: GroupState) {
        self.state = s;
        self.state_since_ms = now_ms();
    }

    /// The protocols every member supports, in the first member's order of preference.
    fn candidates(&self, except: Option<&str>) -> Vec<String> {
        let mut it = self
            .members
            .values()
            .filter(|m| Some(m.id.as_str()) != except);
        let Some(first) = it.next() else {
            return Vec::new();
        };
        let mut c: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in it {
            c.retain(|p| m.protocols.iter().any(|(n, _)| n == p));
        }
        c
    }

    fn supports(&self, member: &str, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.keys().all(|k| k == member) {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let c = self.candidates(Some(member));
        protocols.iter().any(|(n, _)| c.contains(n))
    }

    fn select_protocol(&self) -> Option<String> {
        let c = self.candidates(None);
        let mut votes: Vec<usize> = vec![0; c.len()];
        for m in self.members.values() {
            if let Some(i) = m
                .protocols
                .iter()
                .find_map(|(n, _)| c.iter().position(|x| x == n))
            {
                votes[i] += 1;
            }
        }
        let best = votes.iter().copied().max()?;
        c.into_iter()
            .zip(votes)
            .find(|(_, v)| *v == best)
            .map(|(p, _)| p)
    }

    fn current_join_response(&self, member_id: &str) -> JoinGroupResponse {
        JoinGroupResponse::default()
            .with_generation_id(self.generation)
            .with_protocol_type(self.protocol_type.as_deref().map(sb))
            .with_protocol_name(self.protocol.as_deref().map(sb))
            .with_leader(sb(self.leader.as_deref().unwrap_or("")))
            .with_member_id(sb(member_id))
    }

    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        if self.state == GroupState::CompletingRebalance {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(sync_error(codes::REBALANCE_IN_PROGRESS));
                }
            }
        }
        let was_empty = self.state == GroupState::Empty;
        self.set_state(GroupState::PreparingRebalance);
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        let deadline = now + timeout;
        self.join_deadline = Some(deadline);
        self.join_not_before = was_empty.then(|| (now + initial_delay).min(deadline));
    }

    fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined =
            self.pending.is_empty() && self.members.values().all(|m| m.join_waiter.is_some());
        let delay_over = self.join_not_before.is_none_or(|t| now >= t);
        let timed_out = self.join_deadline.is_some_and(|d| now >= d);
        if (all_joined && delay_over) || timed_out {
            self.complete_join(now);
        }
    }

    fn complete_join(&mut self, now: Instant) {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            tracing::info!(group = %self.id, member = %id, "member did not rejoin in time; removed");
            self.drop_member(&id);
        }
        self.join_deadline = None;
        self.join_not_before = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.protocol = None;
            self.leader = None;
            self.set_state(GroupState::Empty);
            self.persist_group();
            tracing::info!(group = %self.id, generation = self.generation, "group is empty");
            return;
        }
        self.protocol = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.set_state(GroupState::CompletingRebalance);
        let protocol = self.protocol.clone();
        let list: Vec<JoinGroupResponseMember> = self
            .members
            .values()
            .map(|m| {
                JoinGroupResponseMember::default()
                    .with_member_id(sb(&m.id))
                    .with_group_instance_id(m.instance_id.as_deref().map(sb))
                    .with_metadata(m.metadata(protocol.as_deref()))
            })
            .collect();
        let base = self.current_join_response("");
        let leader = self.leader.clone();
        for m in self.members.values_mut() {
            m.assignment = Bytes::new();
            m.deadline = now + m.session_timeout;
            if let Some(w) = m.join_waiter.take() {
                let mut r = base.clone().with_member_id(sb(&m.id));
                if leader.as_deref() == Some(m.id.as_str()) {
                    r = r.with_members(list.clone());
                }
                let _ = w.send(r);
            }
        }
        tracing::info!(group = %self.id, generation = self.generation, members = self.members.len(),
            protocol = ?self.protocol, "rebalance: join phase complete");
    }

    /// Removes a member without any state transition.
    fn drop_member(&mut self, id: &str) -> Option<Member> {
        let m = self.members.shift_remove(id)?;
        if let Some(i) = &m.instance_id {
            if self.instances.get(i).map(String::as_str) == Some(id) {
                self.instances.remove(i);
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        Some(m)
    }

    /// A member leaves or its session expires: the rest rebalance.
    fn remove_member(&mut self, id: &str, now: Instant, initial_delay: Duration) {
        let Some(mut m) = self.drop_member(id) else {
            return;
        };
        if let Some(w) = m.join_waiter.take() {
            let _ = w.send(join_error(codes::UNKNOWN_MEMBER_ID, id));
        }
        if let Some(w) = m.sync_waiter.take() {
            let _ = w.send(sync_error(codes::UNKNOWN_MEMBER_ID));
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, initial_delay);
                self.try_complete_join(now);
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty => {}
        }
    }

    fn persist_group(&mut self) {
        let value = GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp: self.state_since_ms,
            members: self
                .members
                .values()
                .map(|m| MemberValue {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as i32,
                    session_timeout_ms: m.session_timeout.as_millis() as i32,
                    subscription: m.metadata(self.protocol.as_deref()),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        };
        self.writes.push((
            store::encode_key(&Key::Group(self.id.clone())),
            Some(store::encode_group(&value)),
        ));
    }

    /// Queues the consumer-protocol group's changed records.
    fn persist_consumer(&mut self) {
        let Some(cg) = self.cg.as_mut().filter(|c| c.dirty()) else {
            return;
        };
        let (meta, members) = cg.take_writes();
        if let Some(meta) = meta {
            let json = serde_json::to_vec(&meta).expect("group record serialises");
            self.writes.push((
                store::encode_key(&Key::ConsumerGroup(self.id.clone())),
                Some(store::encode_json(&json)),
            ));
        }
        for (member, m) in members {
            let value = m.map(|m| {
                store::encode_json(&serde_json::to_vec(&m).expect("member record serialises"))
            });
            let key = Key::ConsumerGroupMember {
                group: self.id.clone(),
                member,
            };
            self.writes.push((store::encode_key(&key), value));
        }
    }

    /// FENCED_INSTANCE_ID if `instance_id` belongs to another member.
    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id
            .and_then(|i| self.instances.get(i))
            .is_some_and(|m| m != member_id)
    }

    fn summary(&self) -> GroupSummary {
        let stable = self.state == GroupState::Stable;
        GroupSummary {
            group_id: self.id.clone(),
            state: self.state,
            group_type: if self.cg.is_some() {
                "consumer"
            } else {
                "classic"
            },
            state_name: match &self.cg {
                Some(c) => c.state_name(),
                None => self.state.name(),
            },
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol: if stable {
                self.protocol.clone().unwrap_or_default()
            } else {
                String::new()
            },
            members: self
                .members
                .values()
                .map(|m| MemberSummary {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata(self.protocol.as_deref())
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        }
    }
}

#[derive(Default)]
struct State {
    groups: HashMap<String, Group>,
    seq: u64,
}

/// The group coordinator of this node.
pub struct Coordinator {
    settings: GroupSettings,
    /// The offsets partitions by index and which of them are served here (its loads lock
    /// is taken before `state` when both are).
    led: Led,
    state: Mutex<State>,
    /// The node is shutting down: no group is served any more (see [`Coordinator::stop_serving`]).
    stopping: std::sync::atomic::AtomicBool,
}

impl Coordinator {
    /// Starts the coordinator of node `node_id` over the offsets partitions (by index;
    /// `None` where this node holds no replica) and its tick, which loads the groups of
    /// every partition this node leads. Needs a tokio runtime; [`Coordinator::settle`]
    /// waits for the first loads.
    pub fn start(
        settings: GroupSettings,
        node_id: raft::NodeId,
        partitions: Vec<Option<raft::Partition>>,
    ) -> Arc<Coordinator> {
        let c = Arc::new(Coordinator {
            settings,
            led: Led::new(node_id, partitions),
            state: Mutex::new(State::default()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        c.check_leadership();
        tokio::spawn(tick_loop(Arc::downgrade(&c)));
        c
    }

    /// Waits (at most `timeout`) until every offsets partition has a leader and those led
    /// here are loaded.
    pub async fn settle(&self, timeout: Duration) -> bool {
        self.led.settle(timeout).await
    }

    /// The error for a request about `group_id` if this node does not serve it now:
    /// NOT_COORDINATOR when it does not lead the group's offsets partition,
    /// COORDINATOR_LOAD_IN_PROGRESS while it is loading it.
    pub fn not_serving(&self, group_id: &str) -> Option<i16> {
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return Some(codes::NOT_COORDINATOR);
        }
        self.led
            .not_serving(partition_for(group_id, self.led.len()))
    }

    /// Follows leadership of the offsets partitions: starts loading those this node now
    /// leads (in a term it has not loaded), drops the groups of those it no longer leads.
    fn check_leadership(self: &Arc<Self>) {
        for change in self.led.check() {
            match change {
                Change::Drop(k) => {
                    let dropped = self.drop_partition(k);
                    if dropped > 0 {
                        tracing::info!(
                            partition = k,
                            groups = dropped,
                            "offsets partition no longer led here, or led in a new term: its groups were dropped"
                        );
                    }
                }
                Change::Load(k, p, term) => {
                    let c = self.clone();
                    tokio::spawn(async move { c.load_partition(k, p, term).await });
                }
            }
        }
    }

    /// Removes the groups of offsets partition `k` from memory; members waiting for a
    /// rebalance are told NOT_COORDINATOR (they find the new coordinator).
    fn drop_partition(&self, k: usize) -> usize {
        let mut st = self.state.lock();
        let before = st.groups.len();
        st.groups.retain(|_, g| {
            if g.partition != k {
                return true;
            }
            release_waiters(g);
            false
        });
        before - st.groups.len()
    }

    /// The node is shutting down: every group request is answered NOT_COORDINATOR from now
    /// on, and members waiting in a JoinGroup or SyncGroup are answered so at once (they find
    /// the next coordinator). Otherwise a join waiting for a member that died (up to its
    /// session timeout) held the node's shutdown, which answers every request it has read.
    pub fn stop_serving(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.release_all_waiters();
    }

    /// Answers every member waiting in a JoinGroup or SyncGroup NOT_COORDINATOR.
    fn release_all_waiters(&self) {
        let mut st = self.state.lock();
        for g in st.groups.values_mut() {
            release_waiters(g);
        }
    }

    /// Loads the groups of offsets partition `k`, led here in `term`: waits until the high
    /// watermark covers the log (a new leader knows everything committed once it commits
    /// in its own term), replays the partition, and serves its groups from then on.
    async fn load_partition(self: Arc<Self>, k: usize, p: raft::Partition, term: u64) {
        if let Err(why) = self.led.caught_up(k, &p, term).await {
            tracing::debug!(partition = k, term, why, "offsets partition not loaded");
            return;
        }
        let n = self.led.len();
        let part = p.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut st = State::default();
            let mut records = 0usize;
            // Transactional offset commits wait for their producer's marker.
            let mut staged: HashMap<i64, Vec<KeyValue>> = HashMap::new();
            let r = crate::committed::for_each_with_control(&part, 0, |r| {
                records += 1;
                if r.control {
                    let commit = is_commit_marker(&r);
                    for (key, value) in staged.remove(&r.producer_id).unwrap_or_default() {
                        if commit {
                            apply_record(&mut st, n, key, value);
                        }
                    }
                } else if r.transactional {
                    staged
                        .entry(r.producer_id)
                        .or_default()
                        .push((r.key, r.value));
                } else {
                    apply_record(&mut st, n, r.key, r.value);
                }
                Ok(())
            });
            for (pid, list) in staged {
                for (key, value) in list {
                    stage_txn_record(&mut st, n, pid, key, value);
                }
            }
            let end = match r {
                Ok(end) => end,
                Err(e) => {
                    // Records after an undecodable batch cannot be read; keep what could.
                    tracing::warn!(partition = k, error = %e, "{OFFSETS_TOPIC}: replay stopped early");
                    i64::MAX
                }
            };
            (st.groups, records, end)
        })
        .await;
        let Ok((groups, records, end)) = read else {
            let why = self.led.give_up(k, term, "the replay task failed");
            tracing::debug!(partition = k, term, why, "offsets partition not loaded");
            return;
        };
        let count = groups.len();
        let installed = self
            .led
            .loaded(k, &p, term, || self.install(k, &p, groups, end));
        if !installed {
            return;
        }
        if count > 0 {
            tracing::info!(
                partition = k,
                term,
                groups = count,
                records,
                "loaded consumer groups of an offsets partition led here"
            );
        } else {
            tracing::debug!(
                partition = k,
                term,
                records,
                "offsets partition led here (no groups)"
            );
        }
    }

    /// Puts the groups replayed from offsets partition `k` (up to offset `end`) in place of
    /// what memory held of it, with what committed after `end` applied. Called under the
    /// loads lock, so no request is served from the partition before this returns.
    fn install(&self, k: usize, p: &raft::Partition, groups: HashMap<String, Group>, end: i64) {
        let n = self.led.len();
        let mut st = self.state.lock();
        st.groups.retain(|_, g| g.partition != k);
        // Restored members get a full session to show up again.
        let now = Instant::now();
        let cg_session =
            Duration::from_millis(self.settings.consumer_session_timeout_ms.max(0) as u64);
        for (id, mut g) in groups {
            for m in g.members.values_mut() {
                m.deadline = now + m.session_timeout;
            }
            if let Some(cg) = g.cg.as_mut() {
                cg.touch_all(now, cg_session);
            }
            st.groups.insert(id, g);
        }
        // While the replay read, the partition only took transaction markers (other writes
        // wait for the load); those committed after the replay's end were completed
        // (`complete_txn`) against the state from before the load. Apply them now: later
        // ones find the loaded state, as the state lock is held until it is served.
        if p.high_watermark() > end {
            let tail = crate::committed::for_each_with_control(p, end, |r| {
                if r.control {
                    complete_txn_in(&mut st, k, r.producer_id, is_commit_marker(&r));
                } else if r.transactional {
                    stage_txn_record(&mut st, n, r.producer_id, r.key, r.value);
                } else {
                    apply_record(&mut st, n, r.key, r.value);
                }
                Ok(())
            });
            if let Err(e) = tail {
                tracing::warn!(partition = k, error = %e, "{OFFSETS_TOPIC}: catching up after the replay");
            }
        }
    }

    fn initial_delay(&self) -> Duration {
        Duration::from_millis(self.settings.initial_rebalance_delay_ms.max(0) as u64)
    }

    /// Proposes a group's pending writes to its partition (queued in call order).
    fn flush(&self, g: &mut Group) -> Option<impl Future<Output = raft::Result<()>>> {
        if g.writes.is_empty() {
            return None;
        }
        let batch = store::encode_batch(&g.writes, now_ms());
        g.writes.clear();
        let fut = match self.led.partition(g.partition) {
            Some(p) => futures_util::future::Either::Left(p.propose(vec![batch])),
            None => futures_util::future::Either::Right(std::future::ready(Err(
                raft::Error::NotLeader { leader: None },
            ))),
        };
        Some(async move {
            match fut.await?.first() {
                Some(raft::ProposeOutcome::Rejected(code)) => {
                    Err(raft::Error::Failed(format!("rejected with {code}")))
                }
                _ => Ok(()),
            }
        })
    }

    /// Flushes in the background (group metadata; losing it costs a rebalance, not data).
    fn flush_detached(&self, g: &mut Group) {
        if let Some(f) = self.flush(g) {
            let id = g.id.clone();
            tokio::spawn(async move {
                if let Err(e) = f.await {
                    tracing::warn!(group = %id, error = %e, "writing group metadata failed");
                }
            });
        }
    }

    /// Everything time-driven: session expiry, pending member expiry, rebalance deadlines.
    fn tick(&self, now: Instant) {
        let delay = self.initial_delay();
        let served = self.led.served();
        let mut st = self.state.lock();
        for g in st.groups.values_mut().filter(|g| served[g.partition]) {
            if let Some(cg) = g.cg.as_mut() {
                let gone = cg.expire(now);
                for id in &gone {
                    tracing::info!(group = %g.id, member = %id, "consumer-protocol member removed: session expired or partitions not revoked in time");
                }
                if !gone.is_empty() && cg.members.is_empty() {
                    // Offsets of an empty group expire from now on (offsets.retention.minutes).
                    g.state_since_ms = now_ms();
                }
                g.persist_consumer();
                self.flush_detached(g);
                continue;
            }
            let before = g.pending.len();
            g.pending.retain(|_, t| *t > now);
            let expired: Vec<String> = g
                .members
                .values()
                .filter(|m| m.deadline <= now && m.join_waiter.is_none() && m.sync_waiter.is_none())
                .map(|m| m.id.clone())
                .collect();
            for id in expired {
                tracing::info!(group = %g.id, member = %id, "session expired; member removed");
                g.remove_member(&id, now, delay);
            }
            if g.pending.len() != before {
                g.try_complete_join(now);
            }
            if g.state == GroupState::PreparingRebalance {
                g.try_complete_join(now);
            }
            self.flush_detached(g);
        }
    }

    pub fn join(&self, a: JoinArgs) -> JoinOutcome {
        let now = Instant::now();
        let delay = self.initial_delay();
        let err = |code| JoinOutcome::Now(join_error(code, &a.member_id));
        if a.group_id.is_empty() {
            return err(codes::INVALID_GROUP_ID);
        }
        if a.session_timeout_ms < self.settings.min_session_timeout_ms
            || a.session_timeout_ms > self.settings.max_session_timeout_ms
        {
            return err(codes::INVALID_SESSION_TIMEOUT);
        }
        if let Some(code) = self.not_serving(&a.group_id) {
            return err(code);
        }
        let mut st = self.state.lock();
        if !st.groups.contains_key(&a.group_id) {
            if !a.member_id.is_empty() {
                return err(codes::UNKNOWN_MEMBER_ID);
            }
            let g = Group::new(&a.group_id, self.led.len());
            st.groups.insert(a.group_id.clone(), g);
        }
        let g = st.groups.get_mut(&a.group_id).expect("inserted above");
        let out = self.join_locked(g, a, now, delay);
        self.flush_detached(g);
        out
    }

    fn join_locked(
        &self,
        g: &mut Group,
        a: JoinArgs,
        now: Instant,
        delay: Duration,
    ) -> JoinOutcome {
        let err = |code, id: &str| JoinOutcome::Now(join_error(code, id));
        if let Some(cg) = &g.cg {
            if !cg.members.is_empty() {
                return err(codes::INCONSISTENT_GROUP_PROTOCOL, &a.member_id);
            }
            g.cg = None;
            g.writes
                .push((store::encode_key(&Key::ConsumerGroup(g.id.clone())), None));
        }
        if !g.supports(&a.member_id, &a.protocol_type, &a.protocols) {
            return err(codes::INCONSISTENT_GROUP_PROTOCOL, &a.member_id);
        }
        let session = Duration::from_millis(a.session_timeout_ms as u64);
        let rebalance = Duration::from_millis(a.rebalance_timeout_ms.max(0) as u64);
        let (tx, rx) = oneshot::channel();

        if a.member_id.is_empty() {
            // A static member coming back under a new member id.
            if let Some(old) = a
                .instance_id
                .as_ref()
                .and_then(|i| g.instances.get(i))
                .filter(|m| g.members.contains_key(*m))
                .cloned()
            {
                let new_id = format!(
                    "{}-{}",
                    a.instance_id.as_deref().unwrap_or(""),
                    uuid::Uuid::new_v4()
                );
                let Some(mut m) = g.members.shift_remove(&old) else {
                    return err(codes::UNKNOWN_MEMBER_ID, &a.member_id);
                };
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(join_error(codes::FENCED_INSTANCE_ID, &old));
                }
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(sync_error(codes::FENCED_INSTANCE_ID));
                }
                m.id = new_id.clone();
                m.client_id = a.client_id;
                m.client_host = a.client_host;
                m.session_timeout = session;
                m.rebalance_timeout = rebalance;
                m.protocols = a.protocols;
                m.deadline = now + session;
                let was_leader = g.leader.as_deref() == Some(old.as_str());
                if was_leader {
                    g.leader = Some(new_id.clone());
                }
                g.instances
                    .insert(a.instance_id.clone().unwrap_or_default(), new_id.clone());
                g.members.insert(new_id.clone(), m);
                // Kafka's rule: no rebalance unless the protocol the group would select next
                // changes. The metadata bytes may differ (a cooperative assignor's restarted
                // member owns nothing yet; user data may carry a timestamp), and the leader
                // judges subscription changes itself.
                let unchanged = g.select_protocol() == g.protocol;
                if g.state == GroupState::Stable && unchanged {
                    // KIP-345: a quick restart keeps the assignment, no rebalance. A former
                    // leader is told the old leader id, so it syncs as a follower and gets
                    // its stored assignment instead of computing a new one.
                    g.persist_group();
                    let mut r = g.current_join_response(&new_id);
                    if was_leader {
                        r = r.with_leader(sb(&old));
                    }
                    tracing::info!(group = %g.id, member = %new_id, "static member rejoined; no rebalance");
                    return JoinOutcome::Now(r);
                }
                g.members.get_mut(&new_id).expect("inserted").join_waiter = Some(tx);
                if g.state != GroupState::PreparingRebalance {
                    g.prepare_rebalance(now, delay);
                }
                g.try_complete_join(now);
                return JoinOutcome::Wait(rx);
            }
            if g.members.len() + g.pending.len() >= self.settings.max_size {
                return err(codes::GROUP_MAX_SIZE_REACHED, "");
            }
            let prefix = a.instance_id.as_deref().unwrap_or(&a.client_id);
            let new_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
            if a.require_known_member_id && a.instance_id.is_none() {
                g.pending.insert(new_id.clone(), now + session);
                return JoinOutcome::Now(join_error(codes::MEMBER_ID_REQUIRED, &new_id));
            }
            self.add_member(g, new_id, a, session, rebalance, now, delay, tx);
            return JoinOutcome::Wait(rx);
        }

        if g.fenced(&a.member_id, a.instance_id.as_deref()) {
            return err(codes::FENCED_INSTANCE_ID, &a.member_id);
        }
        if g.pending.remove(&a.member_id).is_some() {
            let id = a.member_id.clone();
            self.add_member(g, id, a, session, rebalance, now, delay, tx);
            return JoinOutcome::Wait(rx);
        }
        let Some(m) = g.members.get_mut(&a.member_id) else {
            return err(codes::UNKNOWN_MEMBER_ID, &a.member_id);
        };
        let unchanged = m.protocols == a.protocols;
        m.protocols = a.protocols;
        m.session_timeout = session;
        m.rebalance_timeout = rebalance;
        m.client_id = a.client_id;
        m.client_host = a.client_host;
        m.deadline = now + session;
        let is_leader = g.leader.as_deref() == Some(a.member_id.as_str());
        match g.state {
            GroupState::PreparingRebalance => {
                m.join_waiter = Some(tx);
                g.try_complete_join(now);
                JoinOutcome::Wait(rx)
            }
            GroupState::CompletingRebalance | GroupState::Stable if unchanged && !is_leader => {
                // Same metadata: the member missed a join response; give it the current one.
                JoinOutcome::Now(g.current_join_response(&a.member_id))
            }
            _ => {
                m.join_waiter = Some(tx);
                g.prepare_rebalance(now, delay);
                g.try_complete_join(now);
                JoinOutcome::Wait(rx)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_member(
        &self,
        g: &mut Group,
        id: String,
        a: JoinArgs,
        session: Duration,
        rebalance: Duration,
        now: Instant,
        delay: Duration,
        tx: oneshot::Sender<JoinGroupResponse>,
    ) {
        if g.members.is_empty() {
            g.protocol_type = Some(a.protocol_type.clone());
        }
        if let Some(i) = &a.instance_id {
            g.instances.insert(i.clone(), id.clone());
        }
        g.members.insert(
            id.clone(),
            Member {
                id: id.clone(),
                instance_id: a.instance_id,
                client_id: a.client_id,
                client_host: a.client_host,
                session_timeout: session,
                rebalance_timeout: rebalance,
                protocols: a.protocols,
                assignment: Bytes::new(),
                deadline: now + session,
                join_waiter: Some(tx),
                sync_waiter: None,
            },
        );
        match g.state {
            GroupState::PreparingRebalance => {
                if let (Some(nb), Some(d)) = (g.join_not_before, g.join_deadline) {
                    // A new group keeps waiting a little for more members (Kafka's initial
                    // rebalance delay, extended per new member up to the rebalance timeout).
                    g.join_not_before = Some(nb.max((now + delay).min(d)));
                }
            }
            _ => g.prepare_rebalance(now, delay),
        }
        g.try_complete_join(now);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncOutcome {
        let now = Instant::now();
        let err = |c| SyncOutcome::Now(sync_error(c));
        if let Some(code) = self.not_serving(group_id) {
            return err(code);
        }
        let mut st = self.state.lock();
        let Some(g) = st.groups.get_mut(group_id) else {
            return err(codes::UNKNOWN_MEMBER_ID);
        };
        if g.fenced(member_id, instance_id) {
            return err(codes::FENCED_INSTANCE_ID);
        }
        if !g.members.contains_key(member_id) {
            return err(codes::UNKNOWN_MEMBER_ID);
        }
        if generation != g.generation {
            return err(codes::ILLEGAL_GENERATION);
        }
        if protocol_type.is_some_and(|p| g.protocol_type.as_deref() != Some(p))
            || protocol_name.is_some_and(|p| g.protocol.as_deref() != Some(p))
        {
            return err(codes::INCONSISTENT_GROUP_PROTOCOL);
        }
        let base = SyncGroupResponse::default()
            .with_protocol_type(g.protocol_type.as_deref().map(sb))
            .with_protocol_name(g.protocol.as_deref().map(sb));
        let out = match g.state {
            GroupState::Empty => err(codes::UNKNOWN_MEMBER_ID),
            GroupState::PreparingRebalance => err(codes::REBALANCE_IN_PROGRESS),
            GroupState::Stable => {
                let m = g.members.get_mut(member_id).expect("checked");
                m.deadline = now + m.session_timeout;
                SyncOutcome::Now(base.with_assignment(m.assignment.clone()))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let m = g.members.get_mut(member_id).expect("checked");
                m.deadline = now + m.session_timeout;
                m.sync_waiter = Some(tx);
                if g.leader.as_deref() == Some(member_id) {
                    let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for m in g.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    g.set_state(GroupState::Stable);
                    g.persist_group();
                    for m in g.members.values_mut() {
                        if let Some(w) = m.sync_waiter.take() {
                            let _ = w.send(base.clone().with_assignment(m.assignment.clone()));
                        }
                    }
                    tracing::info!(group = %g.id, generation = g.generation, "rebalance complete: group is stable");
                }
                SyncOutcome::Wait(rx)
            }
        };
        self.flush_detached(g);
        out
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        if let Some(code) = self.not_serving(group_id) {
            return code;
        }
        let now = Instant::now();
        let mut st = self.state.lock();
        let Some(g) = st.groups.get_mut(group_id) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        if g.fenced(member_id, instance_id) {
            return codes::FENCED_INSTANCE_ID;
        }
        let state = g.state;
        let current = g.generation;
        let Some(m) = g.members.get_mut(member_id) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        if state == GroupState::PreparingRebalance {
            m.deadline = now + m.session_timeout;
            return codes::REBALANCE_IN_PROGRESS;
        }
        if generation != current {
            return codes::ILLEGAL_GENERATION;
        }
        m.deadline = now + m.session_timeout;
        codes::NONE
    }

    /// LeaveGroup for each `(member id, instance id)`; answers a code per member.
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        let now = Instant::now();
        let delay = self.initial_delay();
        let mut st = self.state.lock();
        let Some(g) = st.groups.get_mut(group_id) else {
            return vec![codes::UNKNOWN_MEMBER_ID; members.len()];
        };
        let mut out = Vec::with_capacity(members.len());
        for (member_id, instance_id) in members {
            let id = match instance_id {
                Some(i) => match g.instances.get(i) {
                    Some(m) if member_id.is_empty() || m == member_id => m.clone(),
                    Some(_) => {
                        out.push(codes::FENCED_INSTANCE_ID);
                        continue;
                    }
                    None => {
                        out.push(codes::UNKNOWN_MEMBER_ID);
                        continue;
                    }
                },
                None => member_id.clone(),
            };
            if g.pending.remove(&id).is_some() {
                g.try_complete_join(now);
                out.push(codes::NONE);
            } else if g.members.contains_key(&id) {
                tracing::info!(group = %g.id, member = %id, "member left the group");
                g.remove_member(&id, now, delay);
                out.push(codes::NONE);
            } else {
                out.push(codes::UNKNOWN_MEMBER_ID);
            }
        }
        self.flush_detached(g);
        out
    }

    /// Checks an OffsetCommit against the group and queues its records. The future resolves
    /// once they are durable (and visible to OffsetFetch); `Err` is a Kafka error code for
    /// every partition.
    pub fn commit(
        self: &Arc<Self>,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        items: Vec<CommitItem>,
    ) -> Result<impl Future<Output = Result<(), i16>> + Send + 'static, i16> {
        if group_id.is_empty() {
            return Err(codes::INVALID_GROUP_ID);
        }
        if let Some(code) = self.not_serving(group_id) {
            return Err(code);
        }
        let now = Instant::now();
        let mut st = self.state.lock();
        st.seq += 1;
        let seq = st.seq;
        if !st.groups.contains_key(group_id) {
            if generation >= 0 {
                return Err(codes::ILLEGAL_GENERATION);
            }
            let g = Group::new(group_id, self.led.len());
            st.groups.insert(group_id.to_string(), g);
        }
        let g = st.groups.get_mut(group_id).expect("present");
        if g.fenced(member_id, instance_id) {
            return Err(codes::FENCED_INSTANCE_ID);
        }
        // Commits from outside group management (generation -1) are taken while the
        // group has no members.
        let standalone = generation < 0
            && match g.cg {
                Some(_) => g.is_empty(),
                None => g.state == GroupState::Empty,
            };
        if let Some(cg) = g.cg.as_ref().filter(|_| !standalone) {
            cg.check_commit(member_id, generation)?;
        } else if !standalone {
            if g.state == GroupState::CompletingRebalance {
                return Err(codes::REBALANCE_IN_PROGRESS);
            }
            g.check_member_commit(member_id, generation, now)?;
        }
        if items.is_empty() {
            return Ok(futures_util::future::Either::Left(std::future::ready(Ok(
                (),
            ))));
        }
        let values = CommitItem::values(items, now_ms());
        for (topic, partition, v) in &values {
            g.writes.push((
                store::encode_key(&Key::Offset {
                    group: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                }),
                Some(store::encode_offset(v)),
            ));
        }
        let written = self.flush(g).expect("writes queued");
        let this = self.clone();
        let group_id = group_id.to_string();
        Ok(futures_util::future::Either::Right(async move {
            if let Err(e) = written.await {
                tracing::warn!(group = %group_id, error = %e, "offset commit failed");
                return Err(codes::COORDINATOR_NOT_AVAILABLE);
            }
            let mut st = this.state.lock();
            if let Some(g) = st.groups.get_mut(&group_id) {
                for (topic, partition, value) in values {
                    let slot = g.offsets.entry((topic, partition)).or_insert(Committed {
                        value: value.clone(),
                        seq,
                    });
                    if slot.seq <= seq {
                        *slot = Committed { value, seq };
                    }
                }
            }
            Ok(())
        }))
    }

    /// TxnOffsetCommit: checks the request against the group like OffsetCommit and writes
    /// the offsets as part of `pid`'s transaction; they become visible when it commits
    /// ([`Coordinator::complete_txn`]). The future resolves once they are durable.
    #[allow(clippy::too_many_arguments)]
    pub fn txn_commit(
        self: &Arc<Self>,
        group_id: &str,
        pid: i64,
        epoch: i16,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        items: Vec<CommitItem>,
    ) -> Result<impl Future<Output = Result<(), i16>> + Send + 'static, i16> {
        if group_id.is_empty() {
            return Err(codes::INVALID_GROUP_ID);
        }
        if let Some(code) = self.not_serving(group_id) {
            return Err(code);
        }
        let now = Instant::now();
        let mut st = self.state.lock();
        let n = self.led.len();
        let g = st
            .groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id, n));
        if g.fenced(member_id, instance_id) {
            return Err(codes::FENCED_INSTANCE_ID);
        }
        // Producers that pass the consumer's group metadata (KIP-447) are checked against
        // the group's generation; older ones send generation -1.
        if let Some(cg) = g.cg.as_ref().filter(|_| generation >= 0) {
            cg.check_commit(member_id, generation)?;
        } else if generation >= 0 {
            g.check_member_commit(member_id, generation, now)?;
        }
        let ts = now_ms();
        let values = CommitItem::values(items, ts);
        let records: Vec<(Bytes, Option<Bytes>)> = values
            .iter()
            .map(|(topic, partition, v)| {
                (
                    store::encode_key(&Key::Offset {
                        group: group_id.to_string(),
                        topic: topic.clone(),
                        partition: *partition,
                    }),
                    Some(store::encode_offset(v)),
                )
            })
            .collect();
        let partition = g.partition;
        drop(st);
        let written = match (self.led.partition(partition), records.is_empty()) {
            (_, true) => None,
            (Some(p), false) => {
                Some(p.propose(vec![store::encode_txn_batch(&records, pid, epoch, ts)]))
            }
            (None, false) => return Err(codes::NOT_COORDINATOR),
        };
        let this = self.clone();
        let group_id = group_id.to_string();
        Ok(async move {
            if let Some(w) = written {
                match w.await {
                    Ok(o) if matches!(o.first(), Some(raft::ProposeOutcome::Appended { .. })) => {}
                    Ok(o) => {
                        tracing::warn!(group = %group_id, outcome = ?o, "transactional offset commit refused");
                        return Err(match o.first() {
                            Some(raft::ProposeOutcome::Rejected(code)) => *code,
                            _ => codes::UNKNOWN_SERVER_ERROR,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(group = %group_id, error = %e, "transactional offset commit failed");
                        return Err(codes::COORDINATOR_NOT_AVAILABLE);
                    }
                }
            }
            let mut st = this.state.lock();
            let g = st
                .groups
                .entry(group_id.clone())
                .or_insert_with(|| Group::new(&group_id, n));
            let pending = g.txn_offsets.entry(pid).or_default();
            for (topic, partition, value) in values {
                pending.insert((topic, partition), value);
            }
            Ok(())
        })
    }

    /// A transaction marker of producer `pid` reached offsets partition `k`: its offsets
    /// become committed (commit) or are dropped (abort).
    pub fn complete_txn(&self, k: usize, pid: i64, commit: bool) {
        complete_txn_in(&mut self.state.lock(), k, pid, commit);
    }

    /// Whether an open transaction has committed an offset for this group and partition
    /// (OffsetFetch with require_stable answers UNSTABLE_OFFSET_COMMIT then).
    pub fn unstable(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        let st = self.state.lock();
        st.groups.get(group_id).is_some_and(|g| {
            g.txn_offsets
                .values()
                .any(|m| m.contains_key(&(topic.to_string(), partition)))
        })
    }

    /// Committed offsets of a group: the named partitions (None where nothing is committed),
    /// or every committed partition when `topics` is None.
    #[allow(clippy::type_complexity)]
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<(String, Vec<(i32, Option<OffsetValue>)>)> {
        let st = self.state.lock();
        let g = st.groups.get(group_id);
        match topics {
            Some(topics) => topics
                .into_iter()
                .map(|(t, parts)| {
                    let found = parts
                        .into_iter()
                        .map(|p| {
                            let v = g
                                .and_then(|g| g.offsets.get(&(t.clone(), p)))
                                .map(|c| c.value.clone());
                            (p, v)
                        })
                        .collect();
                    (t, found)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<(i32, Option<OffsetValue>)>> =
                    BTreeMap::new();
                if let Some(g) = g {
                    for ((t, p), c) in &g.offsets {
                        by_topic
                            .entry(t.clone())
                            .or_default()
                            .push((*p, Some(c.value.clone())));
                    }
                }
                by_topic
                    .into_iter()
                    .map(|(t, mut v)| {
                        v.sort_by_key(|(p, _)| *p);
                        (t, v)
                    })
                    .collect()
            }
        }
    }

    /// ConsumerGroupHeartbeat: joins, heartbeats and leaves of consumer-protocol members.
    /// The answer is given once the group's new state is durable: a member is never told
    /// of an assignment a new coordinator would not know.
    pub fn consumer_heartbeat(
        &self,
        a: consumer::HeartbeatArgs,
        view: &dyn consumer::TopicView,
    ) -> impl Future<Output = consumer::HeartbeatAnswer> + Send + 'static {
        let (answer, written) = self.consumer_heartbeat_locked(a, view);
        async move {
            match written {
                Some(w) => match w.await {
                    Ok(()) => answer,
                    Err(e) => {
                        tracing::warn!(error = %e, "writing a consumer group's state failed");
                        consumer::HeartbeatAnswer::error(
                            codes::COORDINATOR_NOT_AVAILABLE,
                            "the group's state could not be written",
                            &answer.member_id,
                            answer.member_epoch,
                        )
                    }
                },
                None => answer,
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn consumer_heartbeat_locked(
        &self,
        a: consumer::HeartbeatArgs,
        view: &dyn consumer::TopicView,
    ) -> (
        consumer::HeartbeatAnswer,
        Option<impl Future<Output = raft::Result<()>> + Send + 'static>,
    ) {
        let fail = |code, msg: &str| {
            (
                consumer::HeartbeatAnswer::error(code, msg, &a.member_id, a.member_epoch),
                None,
            )
        };
        if a.group_id.is_empty() {
            return fail(codes::INVALID_GROUP_ID, "the group id is empty");
        }
        if let Some(code) = self.not_serving(&a.group_id) {
            return fail(code, "this node does not coordinate the group now");
        }
        let now = Instant::now();
        let mut st = self.state.lock();
        let n = self.led.len();
        if a.member_epoch < 0 && !st.groups.contains_key(&a.group_id) {
            return fail(codes::UNKNOWN_MEMBER_ID, "unknown member id");
        }
        let g = st
            .groups
            .entry(a.group_id.clone())
            .or_insert_with(|| Group::new(&a.group_id, n));
        if g.cg.is_none() {
            if !g.is_empty() {
                return fail(
                    codes::GROUP_ID_NOT_FOUND,
                    &format!("group {} is a classic group with members", g.id),
                );
            }
            g.become_consumer();
            g.state_since_ms = now_ms();
        }
        let cg = g.cg.as_mut().expect("consumer group");
        let was_empty = cg.members.is_empty();
        let answer = cg.heartbeat(a, &self.settings, view, now);
        if !was_empty && cg.members.is_empty() {
            // Offsets of an empty group expire from now on (offsets.retention.minutes).
            g.state_since_ms = now_ms();
        }
        g.persist_consumer();
        let written = self.flush(g);
        (answer, written)
    }

    /// A consumer-protocol group as ConsumerGroupDescribe shows it; `Err` is its error
    /// code (GROUP_ID_NOT_FOUND also for classic groups).
    pub fn describe_consumer(&self, group_id: &str) -> Result<ConsumerGroupSummary, i16> {
        if let Some(code) = self.not_serving(group_id) {
            return Err(code);
        }
        let st = self.state.lock();
        let Some(g) = st.groups.get(group_id) else {
            return Err(codes::GROUP_ID_NOT_FOUND);
        };
        let Some(cg) = &g.cg else {
            return Err(codes::GROUP_ID_NOT_FOUND);
        };
        Ok(ConsumerGroupSummary {
            state: cg.state_name(),
            epoch: cg.epoch,
            assignment_epoch: cg.assignment_epoch,
            assignor: cg.assignor.clone(),
            members: cg
                .members
                .values()
                .map(|m| ConsumerMemberSummary {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    topics: m.topics.clone(),
                    regex: m.regex.as_ref().map(|(s, _)| s.clone()),
                    assignment: m.assigned.clone(),
                    target: cg.target_of(&m.id),
                })
                .collect(),
        })
    }

    /// OffsetFetch v9 from a consumer-protocol member: its id and epoch must be current.
    pub fn check_fetch_member(&self, group_id: &str, member_id: &str, epoch: i32) -> Option<i16> {
        let st = self.state.lock();
        let cg = st.groups.get(group_id)?.cg.as_ref()?;
        cg.check_fetch(member_id, epoch).err()
    }

    pub fn list(&self) -> Vec<GroupSummary> {
        let st = self.state.lock();
        let mut v: Vec<GroupSummary> = st.groups.values().map(Group::summary).collect();
        v.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        v
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupSummary> {
        self.state.lock().groups.get(group_id).map(Group::summary)
    }

    /// DeleteGroups for one group: its metadata and offsets are tombstoned.
    pub fn delete_group(&self, group_id: &str) -> impl Future<Output = i16> + Send + 'static {
        let refused = self.not_serving(group_id);
        let code = {
            let mut st = self.state.lock();
            match st.groups.get(group_id) {
                _ if refused.is_some() => Err(refused.unwrap_or(codes::NOT_COORDINATOR)),
                None => Err(codes::GROUP_ID_NOT_FOUND),
                Some(g) if !g.is_empty() => Err(codes::NON_EMPTY_GROUP),
                Some(_) => {
                    let mut g = st.groups.remove(group_id).expect("present");
                    for (t, p) in g.offsets.keys() {
                        let key = Key::Offset {
                            group: g.id.clone(),
                            topic: t.clone(),
                            partition: *p,
                        };
                        g.writes.push((store::encode_key(&key), None));
                    }
                    g.writes
                        .push((store::encode_key(&Key::Group(g.id.clone())), None));
                    if g.cg.is_some() {
                        g.writes
                            .push((store::encode_key(&Key::ConsumerGroup(g.id.clone())), None));
                    }
                    Ok(self.flush(&mut g))
                }
            }
        };
        async move {
            match code {
                Err(c) => c,
                Ok(None) => codes::NONE,
                Ok(Some(f)) => match f.await {
                    Ok(()) => codes::NONE,
                    Err(_) => codes::COORDINATOR_NOT_AVAILABLE,
                },
            }
        }
    }

    /// OffsetDelete: `Err` is a group-level code; otherwise a code per (topic, partition).
    #[allow(clippy::type_complexity)]
    pub fn delete_offsets(
        &self,
        group_id: &str,
        topics: Vec<(String, Vec<i32>)>,
    ) -> Result<
        (
            Vec<(String, Vec<(i32, i16)>)>,
            impl Future<Output = bool> + Send + 'static,
        ),
        i16,
    > {
        if let Some(code) = self.not_serving(group_id) {
            return Err(code);
        }
        let mut st = self.state.lock();
        let Some(g) = st.groups.get_mut(group_id) else {
            return Err(codes::GROUP_ID_NOT_FOUND);
        };
        let subscribed = subscribed_topics(g);
        let mut out = Vec::new();
        for (t, parts) in topics {
            let mut codes_for = Vec::new();
            for p in parts {
                if subscribed.contains(&t) {
                    codes_for.push((p, codes::GROUP_SUBSCRIBED_TO_TOPIC));
                    continue;
                }
                if g.offsets.remove(&(t.clone(), p)).is_some() {
                    let key = Key::Offset {
                        group: g.id.clone(),
                        topic: t.clone(),
                        partition: p,
                    };
                    g.writes.push((store::encode_key(&key), None));
                }
                codes_for.push((p, codes::NONE));
            }
            out.push((t, codes_for));
        }
        let f = self.flush(g);
        Ok((out, async move {
            match f {
                None => true,
                Some(f) => f.await.is_ok(),
            }
        }))
    }
}

impl Coordinator {
    /// Offset retention (`offsets.retention.minutes`): an empty group that used group
    /// management loses all its offsets once it has been empty for the retention time; a
    /// group of standalone commits loses each offset that long after its commit. A group left
    /// with neither members nor offsets is removed. Returns how many offsets expired.
    pub fn expire_offsets(&self, now_ms: i64) -> usize {
        let retention = self.settings.offsets_retention_ms;
        let mut expired = 0;
        let served = self.led.served();
        let mut st = self.state.lock();
        let mut gone = Vec::new();
        for g in st.groups.values_mut().filter(|g| served[g.partition]) {
            if !g.is_empty() {
                continue;
            }
            let managed = g.protocol_type.is_some();
            let old: Vec<(String, i32)> = g
                .offsets
                .iter()
                .filter(|(_, c)| {
                    let since = if managed {
                        g.state_since_ms
                    } else {
                        c.value.commit_timestamp
                    };
                    now_ms.saturating_sub(since) >= retention
                })
                .map(|(k, _)| k.clone())
                .collect();
            for (t, p) in old {
                g.offsets.remove(&(t.clone(), p));
                let key = Key::Offset {
                    group: g.id.clone(),
                    topic: t,
                    partition: p,
                };
                g.writes.push((store::encode_key(&key), None));
                expired += 1;
            }
            if g.offsets.is_empty() {
                g.writes
                    .push((store::encode_key(&Key::Group(g.id.clone())), None));
                if g.cg.is_some() {
                    g.writes
                        .push((store::encode_key(&Key::ConsumerGroup(g.id.clone())), None));
                }
                gone.push(g.id.clone());
            }
            self.flush_detached(g);
        }
        for id in gone {
            st.groups.remove(&id);
        }
        if expired > 0 {
            tracing::info!(
                offsets = expired,
                "expired committed offsets of empty groups"
            );
        }
        expired
    }

    /// Removes (tombstones) every group's committed offsets of a deleted topic.
    pub fn forget_topic(&self, topic: &str) {
        let served = self.led.served();
        let mut st = self.state.lock();
        for g in st.groups.values_mut().filter(|g| served[g.partition]) {
            let gone: Vec<i32> = g
                .offsets
                .keys()
                .filter(|(t, _)| t == topic)
                .map(|(_, p)| *p)
                .collect();
            for p in gone {
                g.offsets.remove(&(topic.to_string(), p));
                let key = Key::Offset {
                    group: g.id.clone(),
                    topic: topic.to_string(),
                    partition: p,
                };
                g.writes.push((store::encode_key(&key), None));
            }
            self.flush_detached(g);
        }
    }

    /// Every committed offset: (group, topic, partition, offset), for lag metrics.
    pub fn committed_offsets(&self) -> Vec<(String, String, i32, i64)> {
        let st = self.state.lock();
        let mut out = Vec::new();
        for g in st.groups.values() {
            for ((t, p), c) in &g.offsets {
                out.push((g.id.clone(), t.clone(), *p, c.value.offset));
            }
        }
        out
    }
}

/// Topics the members of a consumer group subscribe to (their "consumer" protocol metadata).
fn subscribed_topics(g: &Group) -> Vec<String> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    if let Some(cg) = &g.cg {
        return cg.named_topics().into_iter().collect();
    }
    if g.members.is_empty() || g.protocol_type.as_deref() != Some("consumer") {
        return Vec::new();
    }
    let mut out = Vec::new();
    for m in g.members.values() {
        for (_, meta) in &m.protocols {
            let mut buf = meta.clone();
            if buf.len() < 2 {
                continue;
            }
            let version = i16::from_be_bytes([buf[0], buf[1]]).clamp(0, 3);
            bytes::Buf::advance(&mut buf, 2);
            let decoded = std::panic::catch_unwind(move || {
                ConsumerProtocolSubscription::decode(&mut buf, version).ok()
            });
            if let Ok(Some(s)) = decoded {
                out.extend(s.topics.into_iter().map(|t| t.to_string()));
            }
        }
    }
    out
}

/// A record's key and value.
type KeyValue = (Option<Bytes>, Option<Bytes>);

/// Whether a control record is a commit marker (else an abort).
fn is_commit_marker(r: &kafka_protocol::records::Record) -> bool {
    r.key.as_ref().is_some_and(|k| {
        k.len() >= 4 && i16::from_be_bytes([k[2], k[3]]) == storage::batch::CONTROL_COMMIT
    })
}

/// The marker of `pid`'s transaction reached offsets partition `k`: its offsets become
/// committed (commit) or are dropped (abort).
fn complete_txn_in(st: &mut State, k: usize, pid: i64, commit: bool) {
    st.seq += 1;
    let seq = st.seq;
    for g in st.groups.values_mut().filter(|g| g.partition == k) {
        let Some(offsets) = g.txn_offsets.remove(&pid) else {
            continue;
        };
        if commit {
            for (tp, value) in offsets {
                g.offsets.insert(tp, Committed { value, seq });
            }
        }
    }
}

/// Keeps an offset committed by the still-open transaction of `pid` while loading.
fn stage_txn_record(
    st: &mut State,
    partitions: usize,
    pid: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
) {
    let Some(key @ Key::Offset { .. }) = key.and_then(store::decode_key) else {
        return;
    };
    let Some(Value::Offset(v)) = value.and_then(|v| store::decode_value(&key, v)) else {
        return;
    };
    let Key::Offset {
        group,
        topic,
        partition,
    } = key
    else {
        return;
    };
    st.groups
        .entry(group.clone())
        .or_insert_with(|| Group::new(&group, partitions))
        .txn_offsets
        .entry(pid)
        .or_default()
        .insert((topic, partition), v);
}

/// Applies one record of the offsets topic while loading.
fn apply_record(st: &mut State, partitions: usize, key: Option<Bytes>, value: Option<Bytes>) {
    let Some(key) = key.and_then(store::decode_key) else {
        return;
    };
    let group_id = match &key {
        Key::Offset { group, .. }
        | Key::Group(group)
        | Key::ConsumerGroup(group)
        | Key::ConsumerGroupMember { group, .. } => group.clone(),
    };
    let value = match value {
        None => None,
        Some(v) => match store::decode_value(&key, v) {
            Some(v) => Some(v),
            None => {
                tracing::warn!(group = %group_id, "undecodable value in {OFFSETS_TOPIC}; skipped");
                return;
            }
        },
    };
    match (key, value) {
        (
            Key::Offset {
                topic, partition, ..
            },
            None,
        ) => {
            if let Some(g) = st.groups.get_mut(&group_id) {
                g.offsets.remove(&(topic, partition));
            }
        }
        (
            Key::Offset {
                topic, partition, ..
            },
            Some(Value::Offset(v)),
        ) => {
            let g = st
                .groups
                .entry(group_id.clone())
                .or_insert_with(|| Group::new(&group_id, partitions));
            g.offsets
                .insert((topic, partition), Committed { value: v, seq: 0 });
        }
        (Key::Group(_), None) => {
            st.groups.remove(&group_id);
        }
        (Key::Group(_), Some(Value::Group(v))) => {
            let g = st
                .groups
                .entry(group_id.clone())
                .or_insert_with(|| Group::new(&group_id, partitions));
            g.protocol_type = (!v.protocol_type.is_empty()).then_some(v.protocol_type);
            g.generation = v.generation;
            g.protocol = v.protocol;
            g.leader = v.leader;
            g.state_since_ms = v.state_timestamp;
            g.members.clear();
            g.instances.clear();
            let now = Instant::now();
            for m in v.members {
                let protocol = g.protocol.clone().unwrap_or_default();
                if let Some(i) = &m.group_instance_id {
                    g.instances.insert(i.clone(), m.member_id.clone());
                }
                g.members.insert(
                    m.member_id.clone(),
                    Member {
                        id: m.member_id,
                        instance_id: m.group_instance_id,
                        client_id: m.client_id,
                        client_host: m.client_host,
                        session_timeout: Duration::from_millis(m.session_timeout_ms.max(0) as u64),
                        rebalance_timeout: Duration::from_millis(
                            m.rebalance_timeout_ms.max(0) as u64
                        ),
                        protocols: vec![(protocol, m.subscription)],
                        assignment: m.assignment,
                        deadline: now,
                        join_waiter: None,
                        sync_waiter: None,
                    },
                );
            }
            g.state = if g.members.is_empty() {
                GroupState::Empty
            } else {
                GroupState::Stable
            };
        }
        (Key::ConsumerGroup(_), None) => {
            if let Some(g) = st.groups.get_mut(&group_id) {
                g.cg = None;
            }
        }
        (Key::ConsumerGroup(_), Some(Value::Json(json))) => {
            let meta: consumer::GroupMeta = match serde_json::from_slice(&json) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(group = %group_id, error = %e, "undecodable consumer group record; skipped");
                    return;
                }
            };
            consumer_group_for_replay(st, partitions, &group_id).apply_meta(meta);
        }
        (Key::ConsumerGroupMember { member, .. }, value) => {
            let m: Option<consumer::MemberSnapshot> = match value {
                None => None,
                Some(Value::Json(json)) => match serde_json::from_slice(&json) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(group = %group_id, error = %e, "undecodable consumer group member record; skipped");
                        return;
                    }
                },
                Some(_) => return,
            };
            if m.is_none() && st.groups.get(&group_id).is_none_or(|g| g.cg.is_none()) {
                return;
            }
            consumer_group_for_replay(st, partitions, &group_id).apply_member(&member, m);
        }
        _ => {}
    }
}

/// The consumer-protocol state of a group being replayed (made one if it is not yet).
fn consumer_group_for_replay<'a>(
    st: &'a mut State,
    partitions: usize,
    group_id: &str,
) -> &'a mut consumer::ConsumerGroup {
    let g = st
        .groups
        .entry(group_id.to_string())
        .or_insert_with(|| Group::new(group_id, partitions));
    if g.cg.is_none() {
        g.become_consumer();
    }
    g.cg.as_mut().expect("consumer group")
}

/// Answers the members of `g` waiting in a JoinGroup or SyncGroup NOT_COORDINATOR.
fn release_waiters(g: &mut Group) {
    for m in g.members.values_mut() {
        if let Some(w) = m.join_waiter.take() {
            let _ = w.send(join_error(codes::NOT_COORDINATOR, &m.id));
        }
        if let Some(w) = m.sync_waiter.take() {
            let _ = w.send(sync_error(codes::NOT_COORDINATOR));
        }
    }
}

async fn tick_loop(c: Weak<Coordinator>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_expiry = Instant::now();
    loop {
        tick.tick().await;
        let Some(c) = c.upgrade() else { return };
        if c.stopping.load(std::sync::atomic::Ordering::Acquire) {
            // A join that passed its check just before shutdown began and waits now.
            c.release_all_waiters();
            continue;
        }
        let now = Instant::now();
        c.check_leadership();
        c.tick(now);
        let every = Duration::from_millis(c.settings.offsets_retention_check_interval_ms);
        if now.duration_since(last_expiry) >= every {
            last_expiry = now;
            c.expire_offsets(now_ms());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GroupSettings {
        GroupSettings {
            min_session_timeout_ms: 10,
            max_session_timeout_ms: 600_000,
            initial_rebalance_delay_ms: 0,
            consumer_heartbeat_interval_ms: 5000,
            consumer_session_timeout_ms: 45_000,
            offset_metadata_max_bytes: 4096,
            max_size: 1000,
            offsets_retention_ms: 60_000,
            offsets_retention_check_interval_ms: 600_000,
        }
    }

    fn open_partitions(dir: &std::path::Path, n: usize) -> Vec<raft::Partition> {
        let meta = storage::MetaStore::open(&dir.join("meta")).expect("meta");
        let node = raft::RaftNode::single(1, meta);
        (0..n)
            .map(|i| {
                raft::Partition::open(
                    &dir.join(format!("__consumer_offsets-{i}")),
                    raft::PartitionOptions::single(
                        raft::LogConfig::default(),
                        node.clone(),
                        format!("__consumer_offsets-{i}"),
                    ),
                    Box::new(raft::AdmitAll),
                )
                .expect("open partition")
            })
            .collect()
    }

    async fn started(parts: Vec<raft::Partition>) -> Arc<Coordinator> {
        let c = Coordinator::start(settings(), 1, parts.into_iter().map(Some).collect());
        assert!(
            c.settle(Duration::from_secs(10)).await,
            "offsets partitions load"
        );
        c
    }

    fn args(group: &str, member: &str, v4: bool) -> JoinArgs {
        JoinArgs {
            group_id: group.into(),
            member_id: member.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 1000,
            rebalance_timeout_ms: 2000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"sub"))],
            require_known_member_id: v4,
        }
    }

    async fn joined(o: JoinOutcome) -> JoinGroupResponse {
        match o {
            JoinOutcome::Now(r) => r,
            JoinOutcome::Wait(rx) => rx.await.expect("join answered"),
        }
    }

    async fn synced(o: SyncOutcome) -> SyncGroupResponse {
        match o {
            SyncOutcome::Now(r) => r,
            SyncOutcome::Wait(rx) => rx.await.expect("sync answered"),
        }
    }

    fn item(topic: &str, partition: i32, offset: i64) -> CommitItem {
        CommitItem {
            topic: topic.into(),
            partition,
            offset,
            leader_epoch: 1,
            metadata: format!("m{offset}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consumer_protocol_groups_are_rebuilt_from_the_log() {
        struct View;
        impl consumer::TopicView for View {
            fn partitions(&self, topic: &str) -> Option<i32> {
                (topic == "t").then_some(4)
            }
            fn names(&self) -> Vec<String> {
                vec!["t".into()]
            }
        }
        let join = |member: &str| consumer::HeartbeatArgs {
            group_id: "cg".into(),
            member_id: member.into(),
            member_epoch: 0,
            rebalance_timeout_ms: 30_000,
            topics: Some(vec!["t".into()]),
            owned: Some(consumer::Assignment::new()),
            ..Default::default()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let parts = open_partitions(dir.path(), 3);
        let c = started(parts.clone()).await;
        let a = c.consumer_heartbeat(join("a"), &View).await;
        let b = c.consumer_heartbeat(join("b"), &View).await;
        assert_eq!((a.error, b.error), (codes::NONE, codes::NONE));
        // a is asked to give up two partitions: that is what a new coordinator must know.
        let a_owned = a.assignment.clone().expect("a's");
        let a2 = c
            .consumer_heartbeat(
                consumer::HeartbeatArgs {
                    member_epoch: a.member_epoch,
                    rebalance_timeout_ms: -1,
                    topics: None,
                    owned: Some(a_owned),
                    ..join("a")
                },
                &View,
            )
            .await;
        let kept = a2.assignment.expect("shrunk");
        assert_eq!(kept.values().map(|p| p.len()).sum::<usize>(), 2);
        let before = c
            .describe_consumer("cg")
            .map_err(|e| e.to_string())
            .expect("group");

        let again = started(parts.clone()).await;
        let after = again
            .describe_consumer("cg")
            .map_err(|e| e.to_string())
            .expect("restored");
        assert_eq!(
            (after.epoch, after.assignment_epoch),
            (before.epoch, before.assignment_epoch)
        );
        let view = |s: &ConsumerGroupSummary| -> Vec<(String, i32, consumer::Assignment)> {
            s.members
                .iter()
                .map(|m| (m.member_id.clone(), m.member_epoch, m.assignment.clone()))
                .collect()
        };
        assert_eq!(view(&after), view(&before));
        // The members carry on with the epochs they had: a lets go, b gets the rest.
        let r = again
            .consumer_heartbeat(
                consumer::HeartbeatArgs {
                    member_epoch: a.member_epoch,
                    rebalance_timeout_ms: -1,
                    topics: None,
                    owned: Some(kept),
                    ..join("a")
                },
                &View,
            )
            .await;
        assert_eq!(r.error, codes::NONE, "{r:?}");
        let r = again
            .consumer_heartbeat(
                consumer::HeartbeatArgs {
                    member_epoch: b.member_epoch,
                    rebalance_timeout_ms: -1,
                    topics: None,
                    owned: Some(consumer::Assignment::new()),
                    ..join("b")
                },
                &View,
            )
            .await;
        assert_eq!(r.error, codes::NONE, "{r:?}");
        assert_eq!(
            r.assignment
                .expect("b's")
                .values()
                .map(|p| p.len())
                .sum::<usize>(),
            2
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_and_offsets_are_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let parts = open_partitions(dir.path(), 3);
        let c = started(parts.clone()).await;
        let r = joined(c.join(args("g", "", true))).await;
        assert_eq!(r.error_code, codes::MEMBER_ID_REQUIRED);
        let m = r.member_id.to_string();
        let r = joined(c.join(args("g", &m, true))).await;
        assert_eq!((r.error_code, r.generation_id), (0, 1));
        let s = synced(c.sync(
            "g",
            1,
            &m,
            None,
            Some("consumer"),
            Some("range"),
            vec![(m.clone(), Bytes::from_static(b"asg"))],
        ))
        .await;
        assert_eq!(s.assignment.as_ref(), b"asg");
        c.commit("g", 1, &m, None, vec![item("t", 0, 5), item("t", 1, 7)])
            .map_err(|c| format!("code {c}"))
            .expect("accepted")
            .await
            .expect("durable");
        c.commit("solo", -1, "", None, vec![item("u", 0, 3)])
            .map_err(|c| format!("code {c}"))
            .expect("accepted")
            .await
            .expect("durable");
        // An offset deleted by OffsetDelete stays deleted after a reload.
        let (_, done) = c
            .delete_offsets("solo", vec![("u".into(), vec![0])])
            .map_err(|c| format!("code {c}"))
            .expect("group exists");
        assert!(done.await);
        c.commit("solo", -1, "", None, vec![item("u", 1, 4)])
            .map_err(|c| format!("code {c}"))
            .expect("accepted")
            .await
            .expect("durable");
        // Give the detached group-metadata write its group commit.
        tokio::time::sleep(Duration::from_millis(200)).await;

        let again = started(parts.clone()).await;
        let g = again.describe("g").expect("group restored");
        assert_eq!(g.state, GroupState::Stable);
        assert_eq!(g.members.len(), 1);
        assert_eq!(g.members[0].member_id, m);
        assert_eq!(g.members[0].assignment.as_ref(), b"asg");
        assert_eq!(
            again.heartbeat("g", 1, &m, None),
            codes::NONE,
            "generation kept"
        );
        let got = again.fetch_offsets("g", None);
        assert_eq!(got.len(), 1);
        let offs: Vec<(i32, i64, String)> = got[0]
            .1
            .iter()
            .map(|(p, v)| {
                let v = v.as_ref().expect("committed");
                (*p, v.offset, v.metadata.clone())
            })
            .collect();
        assert_eq!(offs, vec![(0, 5, "m5".into()), (1, 7, "m7".into())]);
        let solo = again.fetch_offsets("solo", Some(vec![("u".into(), vec![0, 1])]));
        assert!(solo[0].1[0].1.is_none(), "deleted offset stays deleted");
        assert_eq!(solo[0].1[1].1.as_ref().map(|v| v.offset), Some(4));

        // The restored member never heartbeats again: its session expires, the group
        // rebalances to empty and keeps its offsets.
        again.tick(Instant::now() + Duration::from_secs(5));
        let g = again.describe("g").expect("group");
        assert_eq!(g.state, GroupState::Empty);
        assert_eq!(again.heartbeat("g", 1, &m, None), codes::UNKNOWN_MEMBER_ID);
        assert_eq!(again.fetch_offsets("g", None)[0].1.len(), 2);

        // Retention: nothing expires early; everything expires once the empty group and the
        // standalone commit are older than the retention.
        assert_eq!(again.expire_offsets(now_ms()), 0);
        assert_eq!(again.expire_offsets(now_ms() + 61_000), 3);
        assert!(again.describe("g").is_none() && again.describe("solo").is_none());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let third = started(parts).await;
        assert!(third.list().is_empty(), "expired groups stay gone");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = started(open_partitions(dir.path(), 1)).await;
        let a = joined(c.join(args("g", "", false))).await;
        let a_id = a.member_id.to_string();
        assert_eq!(a.generation_id, 1);
        // b joins: a rebalance that waits for a (rebalance timeout 2 s).
        let b = c.join(args("g", "", false));
        assert!(matches!(b, JoinOutcome::Wait(_)));
        assert_eq!(
            c.heartbeat("g", 1, &a_id, None),
            codes::REBALANCE_IN_PROGRESS
        );
        // Mismatched protocol type while members exist.
        let mut bad = args("g", "", false);
        bad.protocol_type = "connect".into();
        let r = joined(c.join(bad)).await;
        assert_eq!(r.error_code, codes::INCONSISTENT_GROUP_PROTOCOL);
        // a never rejoins; past the deadline b completes alone as generation 2 and leads.
        c.tick(Instant::now() + Duration::from_secs(3));
        let b = joined(b).await;
        assert_eq!((b.error_code, b.generation_id), (0, 2));
        assert_eq!(b.leader, b.member_id);
        assert_eq!(b.members.len(), 1);
        assert_eq!(c.heartbeat("g", 2, &a_id, None), codes::UNKNOWN_MEMBER_ID);
        // Stale generation, then a leave that empties the group.
        let b_id = b.member_id.to_string();
        assert_eq!(c.heartbeat("g", 1, &b_id, None), codes::ILLEGAL_GENERATION);
        assert_eq!(
            c.leave("g", &[(b_id.clone(), None), ("x".into(), None)]),
            vec![codes::NONE, codes::UNKNOWN_MEMBER_ID]
        );
        assert_eq!(c.describe("g").expect("group").state, GroupState::Empty);
    }

    /// KIP-345: a static member coming back under a new member id keeps the generation and
    /// its assignment even when its subscription metadata bytes differ (a cooperative
    /// assignor's restarted member owns no partitions yet), as long as the group's protocol
    /// stays the one selected.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_static_member_rejoining_with_new_metadata_keeps_the_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = started(open_partitions(dir.path(), 1)).await;
        let static_args = |instance: &str, metadata: &'static [u8]| JoinArgs {
            instance_id: Some(instance.into()),
            protocols: vec![
                ("cooperative-sticky".into(), Bytes::from_static(metadata)),
                ("range".into(), Bytes::from_static(b"sub")),
            ],
            ..args("g", "", false)
        };
        let a = joined(c.join(static_args("ia", b"owned:0,1,2"))).await;
        assert_eq!((a.error_code, a.generation_id), (0, 1));
        // b joins: a rebalance, which a rejoins under its member id.
        let b = c.join(static_args("ib", b"owned:3,4,5"));
        let a = joined(c.join(JoinArgs {
            member_id: a.member_id.to_string(),
            ..static_args("ia", b"owned:0,1,2")
        }))
        .await;
        let b = joined(b).await;
        assert_eq!((a.error_code, b.error_code), (0, 0));
        let generation = a.generation_id;
        assert_eq!((generation, b.generation_id), (2, 2));
        assert_eq!(a.protocol_name.as_deref(), Some("cooperative-sticky"));
        let (a_id, b_id) = (a.member_id.to_string(), b.member_id.to_string());
        let (leader, follower) = if a.leader == a.member_id {
            (&a_id, &b_id)
        } else {
            (&b_id, &a_id)
        };
        let plan = vec![
            (a_id.clone(), Bytes::from_static(b"asg-a")),
            (b_id.clone(), Bytes::from_static(b"asg-b")),
        ];
        let l = c.sync(
            "g",
            generation,
            leader,
            None,
            Some("consumer"),
            Some("cooperative-sticky"),
            plan,
        );
        let f = c.sync(
            "g",
            generation,
            follower,
            None,
            Some("consumer"),
            Some("cooperative-sticky"),
            vec![],
        );
        let (l, f) = (synced(l).await, synced(f).await);
        assert_eq!((l.error_code, f.error_code), (0, 0));
        assert_eq!(c.describe("g").expect("group").state, GroupState::Stable);

        // a restarts: no member id, its instance id, and metadata that owns nothing yet.
        let a2 = joined(c.join(static_args("ia", b"owned:"))).await;
        assert_eq!(
            (a2.error_code, a2.generation_id),
            (0, generation),
            "no new generation"
        );
        assert_ne!(a2.member_id.to_string(), a_id, "a new member id");
        assert_eq!(c.describe("g").expect("group").state, GroupState::Stable);
        assert_eq!(
            c.heartbeat("g", generation, &b_id, Some("ib")),
            codes::NONE,
            "b sees no rebalance"
        );
        let a2_id = a2.member_id.to_string();
        let s = synced(c.sync(
            "g",
            generation,
            &a2_id,
            Some("ia"),
            Some("consumer"),
            Some("cooperative-sticky"),
            vec![],
        ))
        .await;
        assert_eq!((s.error_code, s.assignment.as_ref()), (0, &b"asg-a"[..]));
        // The old member id is fenced.
        assert_eq!(
            c.heartbeat("g", generation, &a_id, Some("ia")),
            codes::FENCED_INSTANCE_ID
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offsets_of_a_deleted_topic_are_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let parts = open_partitions(dir.path(), 2);
        let c = started(parts.clone()).await;
        c.commit(
            "g",
            -1,
            "",
            None,
            vec![item("gone", 0, 3), item("kept", 0, 4)],
        )
        .map_err(|c| format!("code {c}"))
        .expect("accepted")
        .await
        .expect("durable");
        c.forget_topic("gone");
        let all = c.fetch_offsets("g", None);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "kept");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let again = started(parts).await;
        let all = again.fetch_offsets("g", None);
        assert_eq!(
            all.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
            vec!["kept"]
        );
    }
}
