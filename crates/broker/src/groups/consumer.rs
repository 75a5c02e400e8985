//! The consumer group protocol of KIP-848 (`group.protocol=consumer`): the coordinator, not
//! a member, assigns partitions, and members converge on that target through heartbeats.
//!
//! Epochs: the group epoch is bumped whenever membership, a subscription or the partition
//! count of a subscribed topic changes; the target assignment is computed by a server-side
//! assignor (`uniform` or `range`) for the group epoch (the assignment epoch). Each member
//! moves towards its target one heartbeat at a time:
//!
//! - partitions it holds that its target no longer has are taken out of its assignment and
//!   wait as *revoking* (its epoch stays) until a heartbeat reports it no longer owns them;
//!   a member that does not let go within its rebalance timeout is removed;
//! - then it moves to the assignment epoch and gets its target minus the partitions other
//!   members still hold or are revoking (*unreleased*); those come on a later heartbeat,
//!   and until then its heartbeat interval is a fifth of the usual one.
//!
//! So a partition is never assigned to two members at once. A heartbeat carries the member
//! epoch it knows: a newer one than the coordinator's, or an older one that is not the
//! member's previous epoch with its owned partitions inside its assignment (a lost
//! answer), is FENCED_MEMBER_EPOCH and the member rejoins from epoch 0.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use protocol::codes;
use serde::{Deserialize, Serialize};

use super::GroupSettings;

/// Partitions by topic name.
pub type Assignment = BTreeMap<String, BTreeSet<i32>>;

/// The shortest heartbeat interval given to a member waiting for unreleased partitions
/// (it gets a fifth of `group.consumer.heartbeat.interval.ms`).
const WAITING_HEARTBEAT_MIN_MS: i32 = 50;

/// The server-side assignors, the first being the default.
pub const ASSIGNORS: &[&str] = &["uniform", "range"];

/// The topics as the coordinator's caller sees them now.
pub trait TopicView {
    /// The partition count of a topic; None if it does not exist.
    fn partitions(&self, topic: &str) -> Option<i32>;
    /// Every topic a regular expression subscription may match (internal ones excluded).
    fn names(&self) -> Vec<String>;
}

/// One ConsumerGroupHeartbeat, version-normalised. `None` fields did not change since the
/// member's last heartbeat.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatArgs {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    /// -1: unchanged.
    pub rebalance_timeout_ms: i32,
    pub topics: Option<Vec<String>>,
    pub regex: Option<String>,
    pub assignor: Option<String>,
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    pub error: i16,
    pub message: Option<String>,
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// Sent when it changed or the request was a full one (a join or a rejoin).
    pub assignment: Option<Assignment>,
}

impl HeartbeatAnswer {
    pub fn error(code: i16, message: &str, member_id: &str, epoch: i32) -> HeartbeatAnswer {
        HeartbeatAnswer {
            error: code,
            message: Some(message.to_string()),
            member_id: member_id.to_string(),
            member_epoch: epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        }
    }
}

pub struct CgMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout: Duration,
    pub topics: Vec<String>,
    pub regex: Option<(String, regex::Regex)>,
    pub assignor: Option<String>,
    pub epoch: i32,
    pub previous_epoch: i32,
    /// What the member is told it has.
    pub assigned: Assignment,
    /// Taken out of `assigned`, still owned by the member until it says otherwise.
    pub revoking: Assignment,
    /// What the member last said it owns.
    pub owned: Assignment,
    /// The assignment last sent to it.
    sent: Option<Assignment>,
    pub deadline: Instant,
    pub revoke_deadline: Option<Instant>,
    /// A static member that left with epoch -2: its partitions wait for its instance id
    /// until its session runs out.
    pub left: bool,
}

impl CgMember {
    fn subscribed(
        &self,
        view: &dyn TopicView,
        names: &mut Option<Vec<String>>,
    ) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .topics
            .iter()
            .filter(|t| view.partitions(t).is_some())
            .cloned()
            .collect();
        if let Some((_, re)) = &self.regex {
            let all = names.get_or_insert_with(|| view.names());
            out.extend(all.iter().filter(|t| re.is_match(t)).cloned());
        }
        out
    }
}

/// The state of a consumer-protocol group.
#[derive(Default)]
pub struct ConsumerGroup {
    /// The group id (for logs).
    pub id: String,
    pub epoch: i32,
    pub assignment_epoch: i32,
    /// The assignor the target was last computed with.
    pub assignor: String,
    pub members: IndexMap<String, CgMember>,
    pub target: HashMap<String, Assignment>,
    /// Partition counts of the subscribed topics when the group epoch was last bumped.
    pub metadata: BTreeMap<String, i32>,
    /// group.instance.id -> member id of static members.
    pub instances: HashMap<String, String>,
    /// The group-level record changed since the last [`ConsumerGroup::take_writes`].
    dirty_group: bool,
    /// Members whose record changed since then.
    dirty_members: BTreeSet<String>,
    /// Members removed since then (their records get tombstones).
    removed: Vec<String>,
}

/// The group-level record of a consumer-protocol group in `__consumer_offsets` (JSON):
/// restored by a new coordinator together with one [`MemberSnapshot`] per member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMeta {
    pub epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub metadata: BTreeMap<String, i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberSnapshot {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: u64,
    pub topics: Vec<String>,
    pub regex: Option<String>,
    pub assignor: Option<String>,
    pub epoch: i32,
    pub previous_epoch: i32,
    pub assigned: Assignment,
    pub revoking: Assignment,
    pub left: bool,
    /// Its target assignment.
    pub target: Assignment,
}

/// What to write for a group: its group-level record if it changed, and per changed member
/// its record (None: a tombstone).
pub type Writes = (Option<GroupMeta>, Vec<(String, Option<MemberSnapshot>)>);

fn contains_any(a: &Assignment, b: &Assignment) -> bool {
    a.iter()
        .any(|(t, ps)| b.get(t).is_some_and(|q| ps.iter().any(|p| q.contains(p))))
}

fn subset(a: &Assignment, b: &Assignment) -> bool {
    a.iter()
        .all(|(t, ps)| ps.is_empty() || b.get(t).is_some_and(|q| ps.is_subset(q)))
}

fn minus(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in a {
        let left: BTreeSet<i32> = match b.get(t) {
            Some(q) => ps.difference(q).copied().collect(),
            None => ps.clone(),
        };
        if !left.is_empty() {
            out.insert(t.clone(), left);
        }
    }
    out
}

fn union_into(into: &mut Assignment, a: &Assignment) {
    for (t, ps) in a {
        into.entry(t.clone())
            .or_default()
            .extend(ps.iter().copied());
    }
}

/// A full-match regular expression as Kafka uses them for subscriptions.
pub fn compile_regex(re: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| e.to_string())
}

impl ConsumerGroup {
    /// An empty group.
    pub fn new(id: &str) -> ConsumerGroup {
        ConsumerGroup {
            id: id.to_string(),
            ..Default::default()
        }
    }

    /// Whether anything durable changed since the last [`ConsumerGroup::take_writes`].
    pub fn dirty(&self) -> bool {
        self.dirty_group || !self.dirty_members.is_empty() || !self.removed.is_empty()
    }

    /// The records to write for what changed: a member's own change costs one member
    /// record, whatever the size of the group.
    pub fn take_writes(&mut self) -> Writes {
        let meta = std::mem::take(&mut self.dirty_group).then(|| GroupMeta {
            epoch: self.epoch,
            assignment_epoch: self.assignment_epoch,
            assignor: self.assignor.clone(),
            metadata: self.metadata.clone(),
        });
        let mut out: Vec<(String, Option<MemberSnapshot>)> = std::mem::take(&mut self.removed)
            .into_iter()
            .filter(|id| !self.members.contains_key(id))
            .map(|id| (id, None))
            .collect();
        for id in std::mem::take(&mut self.dirty_members) {
            if let Some(m) = self.members.get(&id) {
                out.push((id.clone(), Some(self.member_snapshot(m))));
            }
        }
        (meta, out)
    }

    fn member_snapshot(&self, m: &CgMember) -> MemberSnapshot {
        MemberSnapshot {
            id: m.id.clone(),
            instance_id: m.instance_id.clone(),
            rack_id: m.rack_id.clone(),
            client_id: m.client_id.clone(),
            client_host: m.client_host.clone(),
            rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
            topics: m.topics.clone(),
            regex: m.regex.as_ref().map(|(s, _)| s.clone()),
            assignor: m.assignor.clone(),
            epoch: m.epoch,
            previous_epoch: m.previous_epoch,
            assigned: m.assigned.clone(),
            revoking: m.revoking.clone(),
            left: m.left,
            target: self.target_of(&m.id),
        }
    }

    /// Replay: the group-level record.
    pub fn apply_meta(&mut self, meta: GroupMeta) {
        self.epoch = meta.epoch;
        self.assignment_epoch = meta.assignment_epoch;
        self.assignor = meta.assignor;
        self.metadata = meta.metadata;
    }

    /// Replay: a member's record (None: it was removed). Deadlines are set by
    /// [`ConsumerGroup::touch_all`] once the load is done. A member still revoking counts
    /// as owning those partitions until a heartbeat says otherwise.
    pub fn apply_member(&mut self, id: &str, m: Option<MemberSnapshot>) {
        let Some(m) = m else {
            self.forget(id);
            return;
        };
        if let Some(i) = &m.instance_id {
            self.instances.insert(i.clone(), m.id.clone());
        }
        if m.target.is_empty() {
            self.target.remove(&m.id);
        } else {
            self.target.insert(m.id.clone(), m.target);
        }
        let now = Instant::now();
        let rebalance_timeout = Duration::from_millis(m.rebalance_timeout_ms);
        self.members.insert(
            m.id.clone(),
            CgMember {
                regex: m.regex.and_then(|r| compile_regex(&r).ok().map(|c| (r, c))),
                owned: {
                    let mut o = m.assigned.clone();
                    union_into(&mut o, &m.revoking);
                    o
                },
                sent: None,
                deadline: now,
                revoke_deadline: (!m.revoking.is_empty()).then(|| now + rebalance_timeout),
                id: m.id,
                instance_id: m.instance_id,
                rack_id: m.rack_id,
                client_id: m.client_id,
                client_host: m.client_host,
                rebalance_timeout,
                topics: m.topics,
                assignor: m.assignor,
                epoch: m.epoch,
                previous_epoch: m.previous_epoch,
                assigned: m.assigned,
                revoking: m.revoking,
                left: m.left,
            },
        );
    }

    /// A new group epoch: membership or subscriptions changed.
    fn bump(&mut self) {
        self.epoch += 1;
        self.dirty_group = true;
    }

    /// Kafka's consumer group states.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.epoch > self.assignment_epoch {
            "Assigning"
        } else if self.members.values().any(|m| !self.member_stable(m)) {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    fn member_stable(&self, m: &CgMember) -> bool {
        m.epoch == self.assignment_epoch
            && m.revoking.is_empty()
            && self
                .target
                .get(&m.id)
                .map_or(m.assigned.is_empty(), |t| *t == m.assigned)
    }

    /// The target assignment of a member (empty when it has none).
    pub fn target_of(&self, id: &str) -> Assignment {
        self.target.get(id).cloned().unwrap_or_default()
    }

    /// Every topic any member subscribes to (by name or by a matching expression).
    pub fn subscribed_topics(&self, view: &dyn TopicView) -> BTreeSet<String> {
        let mut names = None;
        self.members
            .values()
            .flat_map(|m| m.subscribed(view, &mut names))
            .collect()
    }

    /// Names subscribed by name, whether they exist or not (OffsetDelete refuses them).
    pub fn named_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.topics.iter().cloned())
            .collect()
    }

    /// Takes a member out with its instance mapping and target; no epoch change.
    fn forget(&mut self, id: &str) -> bool {
        self.target.remove(id);
        let Some(m) = self.members.shift_remove(id) else {
            return false;
        };
        if let Some(i) = &m.instance_id {
            if self.instances.get(i).map(String::as_str) == Some(id) {
                self.instances.remove(i);
            }
        }
        true
    }

    /// A member leaves or is removed: the group rebalances.
    fn remove(&mut self, id: &str) {
        if self.forget(id) {
            self.dirty_members.remove(id);
            self.removed.push(id.to_string());
            self.bump();
        }
    }

    /// Bumps the group epoch when a subscribed topic appeared, vanished or grew.
    fn refresh_metadata(&mut self, view: &dyn TopicView) {
        let now: BTreeMap<String, i32> = self
            .subscribed_topics(view)
            .into_iter()
            .filter_map(|t| view.partitions(&t).map(|n| (t, n)))
            .collect();
        if now != self.metadata {
            self.metadata = now;
            self.bump();
        }
    }

    fn compute_target(&mut self, view: &dyn TopicView) {
        // The assignor most members ask for; the default when none does.
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = m.assignor.as_deref() {
                *votes.entry(a).or_default() += 1;
            }
        }
        let assignor = votes
            .iter()
            .max_by_key(|(_, v)| **v)
            .map(|(a, _)| a.to_string())
            .unwrap_or_else(|| ASSIGNORS[0].to_string());
        let mut names = None;
        let subs: Vec<(String, BTreeSet<String>)> = self
            .members
            .values()
            .map(|m| (m.id.clone(), m.subscribed(view, &mut names)))
            .collect();
        let target = match assignor.as_str() {
            "range" => range(&subs, &self.metadata),
            _ => uniform(&subs, &self.metadata, &self.target),
        };
        for id in self.members.keys() {
            let empty = Assignment::new();
            if target.get(id).unwrap_or(&empty) != self.target.get(id).unwrap_or(&empty) {
                self.dirty_members.insert(id.clone());
            }
        }
        self.target = target;
        self.assignor = assignor;
        self.assignment_epoch = self.epoch;
        self.dirty_group = true;
    }

    /// Moves member `id` one step towards its target (see the module's notes).
    fn reconcile(&mut self, id: &str, now: Instant) {
        let target = self.target_of(id);
        let mut held = Assignment::new();
        for m in self.members.values().filter(|m| m.id != id) {
            union_into(&mut held, &m.assigned);
            union_into(&mut held, &m.revoking);
        }
        let epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        let before = (m.epoch, m.assigned.clone(), m.revoking.clone());
        Self::step(m, &target, &held, epoch, now);
        if before != (m.epoch, m.assigned.clone(), m.revoking.clone()) {
            self.dirty_members.insert(id.to_string());
        }
    }

    fn step(m: &mut CgMember, target: &Assignment, held: &Assignment, epoch: i32, now: Instant) {
        if !m.revoking.is_empty() {
            if contains_any(&m.owned, &m.revoking) {
                return;
            }
            m.revoking.clear();
            m.revoke_deadline = None;
        }
        let revoke = minus(&m.assigned, target);
        if !revoke.is_empty() {
            m.assigned = minus(&m.assigned, &revoke);
            m.revoking = revoke;
            m.revoke_deadline = Some(now + m.rebalance_timeout);
            return;
        }
        m.assigned = minus(target, held);
        if m.epoch != epoch {
            m.previous_epoch = m.epoch;
            m.epoch = epoch;
        }
    }

    /// One ConsumerGroupHeartbeat (arguments already checked for shape).
    pub fn heartbeat(
        &mut self,
        a: HeartbeatArgs,
        s: &GroupSettings,
        view: &dyn TopicView,
        now: Instant,
    ) -> HeartbeatAnswer {
        let session = Duration::from_millis(s.consumer_session_timeout_ms.max(0) as u64);
        let fail =
            |code, msg: &str| HeartbeatAnswer::error(code, msg, &a.member_id, a.member_epoch);
        if a.member_epoch < 0 {
            return self.leave(&a, session, now);
        }
        let regex = match a.regex.as_deref() {
            Some(re) if !re.is_empty() => match compile_regex(re) {
                Ok(r) => Some(Some((re.to_string(), r))),
                Err(e) => {
                    return fail(
                        codes::INVALID_REGULAR_EXPRESSION,
                        &format!("invalid subscription regex: {e}"),
                    )
                }
            },
            Some(_) => Some(None),
            None => None,
        };
        let full = a.member_epoch == 0
            || (a.rebalance_timeout_ms != -1 && a.topics.is_some() && a.owned.is_some());
        let mut id = a.member_id.clone();
        if a.member_epoch == 0 {
            if id.is_empty() {
                id = uuid::Uuid::new_v4().to_string();
            }
            // A static member coming back under a new member id takes over its partitions.
            if let Some(inst) = &a.instance_id {
                if let Some(old) = self.instances.get(inst).cloned().filter(|o| *o != id) {
                    if !self.members.get(&old).is_some_and(|m| m.left) {
                        return fail(
                            codes::UNRELEASED_INSTANCE_ID,
                            "the instance id is in use by another member",
                        );
                    }
                    let mut m = self.members.shift_remove(&old).expect("mapped member");
                    m.id = id.clone();
                    m.left = false;
                    m.sent = None;
                    if let Some(t) = self.target.remove(&old) {
                        self.target.insert(id.clone(), t);
                    }
                    self.instances.insert(inst.clone(), id.clone());
                    self.members.insert(id.clone(), m);
                    self.removed.push(old.clone());
                    self.dirty_members.remove(&old);
                    self.dirty_members.insert(id.clone());
                }
            }
            match self.members.get_mut(&id) {
                Some(m) if !m.left => {
                    // A rejoin (after a fence or a restart): it starts over owning nothing.
                    m.assigned.clear();
                    m.revoking.clear();
                    m.revoke_deadline = None;
                    m.epoch = 0;
                    m.previous_epoch = 0;
                    m.sent = None;
                    self.dirty_members.insert(id.clone());
                }
                Some(m) => {
                    // A static member back under its own member id.
                    m.left = false;
                    m.sent = None;
                    self.dirty_members.insert(id.clone());
                }
                None => {
                    if self.members.len() >= s.max_size {
                        return fail(codes::GROUP_MAX_SIZE_REACHED, "the group is full");
                    }
                    if let Some(inst) = &a.instance_id {
                        self.instances.insert(inst.clone(), id.clone());
                    }
                    self.members.insert(
                        id.clone(),
                        CgMember {
                            id: id.clone(),
                            instance_id: a.instance_id.clone(),
                            rack_id: None,
                            client_id: String::new(),
                            client_host: String::new(),
                            rebalance_timeout: Duration::ZERO,
                            topics: Vec::new(),
                            regex: None,
                            assignor: None,
                            epoch: 0,
                            previous_epoch: 0,
                            assigned: Assignment::new(),
                            revoking: Assignment::new(),
                            owned: Assignment::new(),
                            sent: None,
                            deadline: now + session,
                            revoke_deadline: None,
                            left: false,
                        },
                    );
                    self.dirty_members.insert(id.clone());
                    self.bump();
                }
            }
        }
        let Some(m) = self.members.get_mut(&id) else {
            return fail(codes::UNKNOWN_MEMBER_ID, "unknown member id");
        };
        if m.left {
            return fail(codes::UNKNOWN_MEMBER_ID, "the member left the group");
        }
        if a.member_epoch > 0 && a.member_epoch != m.epoch {
            let lost_answer = a.member_epoch == m.previous_epoch
                && a.member_epoch < m.epoch
                && a.owned.as_ref().is_some_and(|o| subset(o, &m.assigned));
            if !lost_answer {
                return fail(
                    codes::FENCED_MEMBER_EPOCH,
                    &format!(
                        "member epoch {} is not the member's epoch {}",
                        a.member_epoch, m.epoch
                    ),
                );
            }
        }
        m.deadline = now + session;
        if a.rebalance_timeout_ms >= 0 {
            m.rebalance_timeout = Duration::from_millis(a.rebalance_timeout_ms as u64);
        }
        if a.rack_id.is_some() {
            m.rack_id = a.rack_id.clone();
        }
        if !a.client_id.is_empty() || m.client_id.is_empty() {
            m.client_id = a.client_id.clone();
            m.client_host = a.client_host.clone();
        }
        let mut changed = false;
        if let Some(mut t) = a.topics.clone() {
            t.sort();
            t.dedup();
            if t != m.topics {
                m.topics = t;
                changed = true;
            }
        }
        if let Some(re) = regex {
            if m.regex.as_ref().map(|(s, _)| s) != re.as_ref().map(|(s, _)| s) {
                m.regex = re;
                changed = true;
            }
        }
        if let Some(asg) = &a.assignor {
            if m.assignor.as_deref() != Some(asg.as_str()) {
                m.assignor = Some(asg.clone());
                changed = true;
            }
        }
        if let Some(o) = a.owned {
            m.owned = o;
        }
        if changed {
            self.bump();
        }
        self.refresh_metadata(view);
        if self.epoch > self.assignment_epoch {
            self.compute_target(view);
        }
        self.reconcile(&id, now);
        // A member waiting for partitions others still hold is asked back sooner: they are
        // released as soon as the owners' next heartbeats report them revoked.
        let waiting = {
            let m = &self.members[&id];
            m.revoking.is_empty() && m.assigned != self.target_of(&id)
        };
        let interval = s.consumer_heartbeat_interval_ms;
        let interval = if waiting {
            (interval / 5).max(WAITING_HEARTBEAT_MIN_MS).min(interval)
        } else {
            interval
        };
        let m = self.members.get_mut(&id).expect("member");
        let assignment = if full || m.sent.as_ref() != Some(&m.assigned) {
            m.sent = Some(m.assigned.clone());
            Some(m.assigned.clone())
        } else {
            None
        };
        HeartbeatAnswer {
            error: codes::NONE,
            message: None,
            member_id: id,
            member_epoch: m.epoch,
            heartbeat_interval_ms: interval,
            assignment,
        }
    }

    /// Epoch -1 (leave) or -2 (a static member leaving for a restart).
    fn leave(&mut self, a: &HeartbeatArgs, session: Duration, now: Instant) -> HeartbeatAnswer {
        let by_instance = a
            .instance_id
            .as_ref()
            .and_then(|i| self.instances.get(i))
            .cloned();
        let id = match (self.members.contains_key(&a.member_id), by_instance) {
            (true, _) => a.member_id.clone(),
            (false, Some(m)) if a.member_id.is_empty() => m,
            _ => {
                return HeartbeatAnswer::error(
                    codes::UNKNOWN_MEMBER_ID,
                    "unknown member id",
                    &a.member_id,
                    a.member_epoch,
                )
            }
        };
        let static_leave = a.member_epoch == -2
            && self
                .members
                .get(&id)
                .is_some_and(|m| m.instance_id.is_some());
        if static_leave {
            let m = self.members.get_mut(&id).expect("member");
            m.left = true;
            m.deadline = now + session;
            self.dirty_members.insert(id.clone());
            tracing::info!(group = %self.id, member = %id, "static member left; its partitions wait for it");
        } else {
            tracing::info!(group = %self.id, member = %id, "member left the group");
            self.remove(&id);
        }
        HeartbeatAnswer {
            error: codes::NONE,
            message: None,
            member_id: id,
            member_epoch: a.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        }
    }

    /// Gives every member a full session from `now` (a new coordinator took the group over).
    pub fn touch_all(&mut self, now: Instant, session: Duration) {
        for m in self.members.values_mut() {
            m.deadline = now + session;
            if !m.revoking.is_empty() {
                m.revoke_deadline = Some(now + m.rebalance_timeout);
            }
        }
    }

    /// Removes members whose session ran out or that did not revoke in time. Returns the
    /// ids removed.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.deadline <= now || m.revoke_deadline.is_some_and(|d| d <= now))
            .map(|m| m.id.clone())
            .collect();
        for id in &gone {
            self.remove(id);
        }
        gone
    }

    /// Checks an OffsetCommit's (or TxnOffsetCommit's) member and epoch.
    pub fn check_commit(&self, member_id: &str, epoch: i32) -> Result<(), i16> {
        let Some(m) = self.members.get(member_id).filter(|m| !m.left) else {
            return Err(codes::UNKNOWN_MEMBER_ID);
        };
        if epoch > m.epoch {
            return Err(codes::FENCED_MEMBER_EPOCH);
        }
        if epoch < m.epoch {
            return Err(codes::STALE_MEMBER_EPOCH);
        }
        Ok(())
    }

    /// Checks an OffsetFetch's member and epoch.
    pub fn check_fetch(&self, member_id: &str, epoch: i32) -> Result<(), i16> {
        let Some(m) = self.members.get(member_id).filter(|m| !m.left) else {
            return Err(codes::UNKNOWN_MEMBER_ID);
        };
        if epoch != m.epoch {
            return Err(codes::STALE_MEMBER_EPOCH);
        }
        Ok(())
    }
}

/// The uniform assignor: every partition of a subscribed topic to one member subscribed to
/// it, as evenly as the subscriptions allow, moving as few partitions as it can from the
/// previous target.
pub fn uniform(
    members: &[(String, BTreeSet<String>)],
    topics: &BTreeMap<String, i32>,
    previous: &HashMap<String, Assignment>,
) -> HashMap<String, Assignment> {
    let mut owned: Vec<Vec<(String, i32)>> = vec![Vec::new(); members.len()];
    let mut owner: HashMap<(String, i32), usize> = HashMap::new();
    // Keep what each member had, where it still subscribes and the partition exists.
    for (i, (id, subs)) in members.iter().enumerate() {
        for (t, ps) in previous.get(id).into_iter().flatten() {
            let Some(n) = topics.get(t).filter(|_| subs.contains(t)) else {
                continue;
            };
            for &p in ps.iter().filter(|p| **p < *n) {
                if owner.insert((t.clone(), p), i).is_none() {
                    owned[i].push((t.clone(), p));
                }
            }
        }
    }
    // The rest to the least loaded member subscribed to the topic.
    for (t, n) in topics {
        let eligible: Vec<usize> = (0..members.len())
            .filter(|i| members[*i].1.contains(t))
            .collect();
        for p in 0..*n {
            if owner.contains_key(&(t.clone(), p)) {
                continue;
            }
            if let Some(&best) = eligible.iter().min_by_key(|i| (owned[**i].len(), **i)) {
                owner.insert((t.clone(), p), best);
                owned[best].push((t.clone(), p));
            }
        }
    }
    // Even out: move partitions from the most to the least loaded members while that
    // narrows the gap by two.
    let mut stuck = vec![false; members.len()];
    let limit = owner.len() + 1;
    for _ in 0..limit {
        let Some(from) = (0..members.len())
            .filter(|i| !stuck[*i])
            .max_by_key(|i| (owned[*i].len(), std::cmp::Reverse(*i)))
        else {
            break;
        };
        let load = owned[from].len();
        let mut moved = false;
        for k in (0..owned[from].len()).rev() {
            let t = &owned[from][k].0;
            let to = (0..members.len())
                .filter(|i| *i != from && members[*i].1.contains(t) && owned[*i].len() + 1 < load)
                .min_by_key(|i| (owned[*i].len(), *i));
            if let Some(to) = to {
                let tp = owned[from].remove(k);
                owner.insert(tp.clone(), to);
                owned[to].push(tp);
                moved = true;
                break;
            }
        }
        if !moved {
            stuck[from] = true;
        }
    }
    members
        .iter()
        .enumerate()
        .map(|(i, (id, _))| {
            let mut a = Assignment::new();
            for (t, p) in &owned[i] {
                a.entry(t.clone()).or_default().insert(*p);
            }
            (id.clone(), a)
        })
        .collect()
}

/// The range assignor: per topic, contiguous ranges of partitions to the members subscribed
/// to it in member id order, the first ones getting one more when it does not divide.
pub fn range(
    members: &[(String, BTreeSet<String>)],
    topics: &BTreeMap<String, i32>,
) -> HashMap<String, Assignment> {
    let mut out: HashMap<String, Assignment> = members
        .iter()
        .map(|(id, _)| (id.clone(), Assignment::new()))
        .collect();
    for (t, n) in topics {
        let mut subs: Vec<&String> = members
            .iter()
            .filter(|(_, s)| s.contains(t))
            .map(|(id, _)| id)
            .collect();
        if subs.is_empty() {
            continue;
        }
        subs.sort();
        let m = subs.len() as i32;
        let (per, extra) = (n / m, n % m);
        let mut start = 0;
        for (i, id) in subs.into_iter().enumerate() {
            let len = per + i32::from((i as i32) < extra);
            if len > 0 {
                out.get_mut(id)
                    .expect("member")
                    .insert(t.clone(), (start..start + len).collect());
            }
            start += len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Topics(BTreeMap<String, i32>);

    impl TopicView for Topics {
        fn partitions(&self, topic: &str) -> Option<i32> {
            self.0.get(topic).copied()
        }
        fn names(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
    }

    fn settings() -> GroupSettings {
        GroupSettings {
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 300_000,
            initial_rebalance_delay_ms: 0,
            consumer_heartbeat_interval_ms: 5000,
            consumer_session_timeout_ms: 45_000,
            offset_metadata_max_bytes: 4096,
            max_size: 1000,
            offsets_retention_ms: 7 * 24 * 3_600_000,
            offsets_retention_check_interval_ms: 600_000,
        }
    }

    fn join(member: &str, topics: &[&str]) -> HeartbeatArgs {
        HeartbeatArgs {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: 0,
            rebalance_timeout_ms: 60_000,
            topics: Some(topics.iter().map(|t| t.to_string()).collect()),
            owned: Some(Assignment::new()),
            ..Default::default()
        }
    }

    fn beat(member: &str, epoch: i32, owned: &Assignment) -> HeartbeatArgs {
        HeartbeatArgs {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: -1,
            owned: Some(owned.clone()),
            ..Default::default()
        }
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    /// Drives members until nobody's assignment changes; returns each member's owned set.
    fn settle(
        g: &mut ConsumerGroup,
        view: &Topics,
        owned: &mut BTreeMap<String, (i32, Assignment)>,
    ) {
        let s = settings();
        let now = Instant::now();
        for _ in 0..10 {
            let ids: Vec<String> = owned.keys().cloned().collect();
            for id in ids {
                let (epoch, have) = owned[&id].clone();
                let ans = g.heartbeat(beat(&id, epoch, &have), &s, view, now);
                assert_eq!(ans.error, codes::NONE, "{ans:?}");
                let a = ans.assignment.unwrap_or(have);
                owned.insert(id, (ans.member_epoch, a));
                // No partition is ever owned twice.
                let mut seen = BTreeSet::new();
                for (_, a) in owned.values() {
                    for (t, ps) in a {
                        for p in ps {
                            assert!(seen.insert((t.clone(), *p)), "{t}-{p} owned twice");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn members_converge_on_a_balanced_assignment_without_double_ownership() {
        let view = Topics(BTreeMap::from([("t".to_string(), 6)]));
        let s = settings();
        let now = Instant::now();
        let mut g = ConsumerGroup::default();
        let mut owned = BTreeMap::new();
        let a = g.heartbeat(join("a", &["t"]), &s, &view, now);
        assert_eq!(a.error, codes::NONE);
        assert!(a.member_epoch > 0);
        assert_eq!(count(a.assignment.as_ref().expect("assignment")), 6);
        owned.insert("a".to_string(), (a.member_epoch, a.assignment.expect("a")));
        let b = g.heartbeat(join("b", &["t"]), &s, &view, now);
        // b waits for the partitions a still holds, and is asked back sooner than usual.
        assert_eq!(count(b.assignment.as_ref().expect("assignment")), 0);
        assert_eq!(b.heartbeat_interval_ms, 1000);
        assert_eq!(a.heartbeat_interval_ms, 5000);
        owned.insert("b".to_string(), (b.member_epoch, Assignment::new()));
        settle(&mut g, &view, &mut owned);
        assert_eq!(count(&owned["a"].1), 3);
        assert_eq!(count(&owned["b"].1), 3);
        assert_eq!(g.state_name(), "Stable");
        assert_eq!(owned["a"].0, owned["b"].0);
        let c = g.heartbeat(join("c", &["t"]), &s, &view, now);
        owned.insert(
            "c".to_string(),
            (c.member_epoch, c.assignment.unwrap_or_default()),
        );
        settle(&mut g, &view, &mut owned);
        for id in ["a", "b", "c"] {
            assert_eq!(count(&owned[id].1), 2, "{id}: {owned:?}");
        }
        // b leaves: a and c take its partitions.
        let left = g.heartbeat(
            HeartbeatArgs {
                member_epoch: -1,
                ..beat("b", owned["b"].0, &owned["b"].1)
            },
            &s,
            &view,
            now,
        );
        assert_eq!((left.error, left.member_epoch), (codes::NONE, -1));
        owned.remove("b");
        settle(&mut g, &view, &mut owned);
        assert_eq!(count(&owned["a"].1) + count(&owned["c"].1), 6);
        assert_eq!(count(&owned["a"].1), 3);
    }

    #[test]
    fn stale_and_future_epochs_are_fenced() {
        let view = Topics(BTreeMap::from([("t".to_string(), 2)]));
        let s = settings();
        let now = Instant::now();
        let mut g = ConsumerGroup::default();
        let a = g.heartbeat(join("a", &["t"]), &s, &view, now);
        let e = a.member_epoch;
        let ans = g.heartbeat(beat("a", e + 1, &Assignment::new()), &s, &view, now);
        assert_eq!(ans.error, codes::FENCED_MEMBER_EPOCH);
        let ans = g.heartbeat(beat("nobody", 3, &Assignment::new()), &s, &view, now);
        assert_eq!(ans.error, codes::UNKNOWN_MEMBER_ID);
        assert_eq!(g.check_commit("a", e), Ok(()));
        assert_eq!(g.check_commit("a", e - 1), Err(codes::STALE_MEMBER_EPOCH));
        assert_eq!(g.check_fetch("x", e), Err(codes::UNKNOWN_MEMBER_ID));
    }

    #[test]
    fn a_member_that_does_not_revoke_in_time_is_removed() {
        let view = Topics(BTreeMap::from([("t".to_string(), 4)]));
        let mut s = settings();
        s.consumer_session_timeout_ms = 120_000;
        let now = Instant::now();
        let mut g = ConsumerGroup::default();
        let a = g.heartbeat(join("a", &["t"]), &s, &view, now);
        assert_eq!(count(a.assignment.as_ref().expect("a")), 4);
        g.heartbeat(join("b", &["t"]), &s, &view, now);
        // a is asked to give up two partitions and never does.
        let ans = g.heartbeat(
            beat("a", a.member_epoch, &a.assignment.clone().expect("a")),
            &s,
            &view,
            now,
        );
        assert_eq!(count(ans.assignment.as_ref().expect("shrunk")), 2);
        assert!(g.expire(now + Duration::from_secs(30)).is_empty());
        assert_eq!(
            g.expire(now + Duration::from_secs(61)),
            vec!["a".to_string()]
        );
    }

    /// Replays records as a new coordinator would (through JSON, as stored).
    fn replay(into: &mut ConsumerGroup, w: Writes) {
        let (meta, members) = w;
        if let Some(meta) = meta {
            let json = serde_json::to_vec(&meta).expect("json");
            into.apply_meta(serde_json::from_slice(&json).expect("parse"));
        }
        for (id, m) in members {
            let json = serde_json::to_vec(&m).expect("json");
            into.apply_member(&id, serde_json::from_slice(&json).expect("parse"));
        }
    }

    #[test]
    fn a_restored_group_continues_where_the_records_left_it() {
        let view = Topics(BTreeMap::from([("t".to_string(), 4)]));
        let s = settings();
        let now = Instant::now();
        let mut g = ConsumerGroup::default();
        let mut r = ConsumerGroup::default();
        let a = g.heartbeat(join("a", &["t"]), &s, &view, now);
        replay(&mut r, g.take_writes());
        let b = g.heartbeat(join("b", &["t"]), &s, &view, now);
        replay(&mut r, g.take_writes());
        let a2 = g.heartbeat(
            beat("a", a.member_epoch, &a.assignment.clone().expect("a")),
            &s,
            &view,
            now,
        );
        let w = g.take_writes();
        assert!(w.0.is_none(), "a's revocation changes only a's record");
        assert_eq!(w.1.len(), 1);
        replay(&mut r, w);
        assert!(!g.dirty());
        // A member that joins and leaves again leaves a tombstone.
        g.heartbeat(join("c", &["t"]), &s, &view, now);
        g.heartbeat(
            HeartbeatArgs {
                member_epoch: -1,
                ..beat("c", 1, &Assignment::new())
            },
            &s,
            &view,
            now,
        );
        replay(&mut r, g.take_writes());
        assert!(!r.members.contains_key("c"));
        assert_eq!((r.epoch, r.assignment_epoch), (g.epoch, g.assignment_epoch));
        r.touch_all(now, Duration::from_secs(45));
        // a is still revoking two partitions; once it lets go, b gets them.
        let kept = a2.assignment.expect("shrunk");
        let ans = r.heartbeat(beat("a", a.member_epoch, &kept), &s, &view, now);
        assert_eq!(ans.error, codes::NONE, "{ans:?}");
        let ans = r.heartbeat(
            beat("b", b.member_epoch, &Assignment::new()),
            &s,
            &view,
            now,
        );
        assert_eq!(ans.error, codes::NONE, "{ans:?}");
        assert_eq!(count(&ans.assignment.expect("b's")), 2);
    }

    #[test]
    fn three_hundred_members_converge_evenly() {
        let view = Topics(BTreeMap::from([("t".to_string(), 600)]));
        let s = settings();
        let now = Instant::now();
        let mut g = ConsumerGroup::default();
        let mut owned = BTreeMap::new();
        for i in 0..300 {
            let id = format!("m{i:03}");
            let a = g.heartbeat(join(&id, &["t"]), &s, &view, now);
            assert_eq!(a.error, codes::NONE);
            owned.insert(id, (a.member_epoch, a.assignment.unwrap_or_default()));
        }
        settle(&mut g, &view, &mut owned);
        assert_eq!(g.state_name(), "Stable");
        assert!(owned.values().all(|(_, a)| count(a) == 2), "uneven");
        // A steady heartbeat writes nothing.
        g.take_writes();
        let (e, have) = owned["m007"].clone();
        g.heartbeat(beat("m007", e, &have), &s, &view, now);
        assert!(!g.dirty());
    }

    #[test]
    fn range_gives_contiguous_ranges_in_member_order() {
        let members = vec![
            ("b".to_string(), BTreeSet::from(["t".to_string()])),
            ("a".to_string(), BTreeSet::from(["t".to_string()])),
        ];
        let out = range(&members, &BTreeMap::from([("t".to_string(), 5)]));
        assert_eq!(out["a"]["t"], BTreeSet::from([0, 1, 2]));
        assert_eq!(out["b"]["t"], BTreeSet::from([3, 4]));
    }

    #[test]
    fn uniform_respects_subscriptions_and_keeps_previous_owners() {
        let members = vec![
            (
                "a".to_string(),
                BTreeSet::from(["x".to_string(), "y".to_string()]),
            ),
            ("b".to_string(), BTreeSet::from(["y".to_string()])),
        ];
        let topics = BTreeMap::from([("x".to_string(), 2), ("y".to_string(), 2)]);
        let out = uniform(&members, &topics, &HashMap::new());
        assert_eq!(out["a"].get("x").map(BTreeSet::len), Some(2));
        assert_eq!(count(&out["a"]) + count(&out["b"]), 4);
        assert!(!out["b"].contains_key("x"));
        let again = uniform(&members, &topics, &out);
        assert_eq!(again, out);
    }

    #[test]
    fn regex_subscriptions_follow_new_topics() {
        let mut view = Topics(BTreeMap::from([("orders-1".to_string(), 2)]));
        let s = settings();
        let now = Instant::now();
        let mut g = ConsumerGroup::default();
        let mut args = join("a", &[]);
        args.regex = Some("orders-.*".into());
        let a = g.heartbeat(args, &s, &view, now);
        assert_eq!(count(a.assignment.as_ref().expect("a")), 2);
        view.0.insert("orders-2".into(), 3);
        view.0.insert("other".into(), 3);
        let ans = g.heartbeat(
            beat("a", a.member_epoch, &a.assignment.expect("a")),
            &s,
            &view,
            now,
        );
        assert_eq!(count(ans.assignment.as_ref().expect("grown")), 5);
        let mut bad = join("b", &[]);
        bad.regex = Some("(".into());
        assert_eq!(
            g.heartbeat(bad, &s, &view, now).error,
            codes::INVALID_REGULAR_EXPRESSION
        );
    }
}
