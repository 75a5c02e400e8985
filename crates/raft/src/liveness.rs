//! Node-level failure detection instead of per-group heartbeats.
//!
//! openraft sends a heartbeat per group and follower every heartbeat interval, so 1,000
//! partitions cost thousands of RPCs a second on an idle cluster. In a cluster Sluice turns
//! openraft's own heartbeats and election timers off ([`cluster_config`]) and runs one task per
//! node instead: it pings every peer (one tiny call per peer per [`PING_EVERY`]) and, for every
//! local group whose leader is a peer that has not answered for [`DEAD_AFTER`] (for
//! [`REFUSED_DEAD_AFTER`] if its port refuses connections), or that has had
//! no leader for [`LEADERLESS_AFTER`], triggers an election with pre-vote after a random delay
//! (pre-vote never disturbs a leader a quorum still follows). Raft's safety does not depend on
//! timers; this only decides when to campaign.
//!
//! Leaders without heartbeats: a write needs a fresh leader lease, so the proposer triggers
//! one heartbeat round when the lease is stale; commits reach followers with the next append
//! (or an explicit [`crate::Partition::flush_commit`]).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::watch::WatchReceiver;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::network::PING;
use crate::partition::RaftNode;
use crate::types::NodeId;

/// How often every peer is pinged and every group checked.
pub const PING_EVERY: Duration = Duration::from_millis(150);
/// A peer that has not answered a ping for this long is taken as down. Not shorter than the
/// leader lease (`election_timeout_max`, 1 s): until it runs out, followers that heard from
/// the leader refuse to campaign.
pub const DEAD_AFTER: Duration = Duration::from_millis(1000);
/// A peer whose host refuses connections to its cluster port (its process is not running: a
/// killed process's port refuses at once, a definite answer where silence may be a stall) is
/// down once it has not answered a ping for this long (two ping intervals). A follower then
/// drops its lease on that leader ([`drop_lease`]) instead of waiting out
/// [`DEAD_AFTER`]: the lease only protects a leader that is still running.
pub const REFUSED_DEAD_AFTER: Duration = Duration::from_millis(300);
/// How soon a group that is still without a live leader campaigns again.
const RETRY_AFTER: Duration = Duration::from_millis(300);
/// A group without a known leader for this long campaigns.
pub const LEADERLESS_AFTER: Duration = Duration::from_millis(600);
/// A new group (nothing in its log but the initial membership) campaigns this soon on its
/// preferred replica: the other replicas leave a new group to it (see
/// `partition::start_group`), so nothing competes, and clients that just created the topic
/// wait for its leaders.
const NEW_GROUP_CAMPAIGN_AFTER: Duration = Duration::from_millis(100);
/// A leader that is not the preferred one hands leadership over once it has led this long
/// and the preferred replica has every entry and has been up for [`RECENT_START`] (or since
/// this node started).
const BALANCE_AFTER: Duration = Duration::from_secs(5);
/// At most one hand-over attempt per group in this period.
const BALANCE_EVERY: Duration = Duration::from_secs(10);
/// A leader still leading in the same term this long after it handed leadership over takes
/// it back with a new election: openraft stops a transferring leader's writes and
/// heartbeats until the target takes over, and a target that never does (it died, or
/// refused) would otherwise leave the group unwritable with a live leader nobody replaces.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(2);

/// A follower that has not caught up with the leader for this long leaves the in-sync
/// replicas (Kafka's `replica.lag.time.max.ms` default); one whose node stopped answering
/// pings leaves at once.
pub const REPLICA_LAG_MAX: Duration = Duration::from_secs(30);

/// For this long after it restarts, a node campaigns later than others, on every attempt
/// (and the others give it no head start as the preferred replica, nor hand leadership back
/// to it). Clients that saw it die back their reconnects to it off: librdkafka doubles its
/// reconnect backoff on every lost or refused connection up to 10 s and resets it only
/// after 10 s without one, so a client whose connection to a node was cut by its kill
/// waits up to 10 s before it connects again, whether the node is back or not, and a
/// leader there stalls it that long.
const RECENT_START: Duration = Duration::from_secs(10);
/// How much later a recently restarted node campaigns, at least: a long-running replica's
/// first campaign and its retry both come first (each up to [`RETRY_AFTER`] and the
/// jitter apart), so a first round that found a voter still holding its lease on the dead
/// leader does not hand the election to the restarted node.
const RECENT_START_MIN_DELAY: Duration =
    Duration::from_millis(RETRY_AFTER.as_millis() as u64 + 2 * JITTER_MS);
/// On top of [`RECENT_START_MIN_DELAY`]: up to this much right after the start, less as it
/// has run longer, so of two replicas restarted recently the one up for longer campaigns
/// first.
const RECENT_START_DELAY: Duration = Duration::from_millis(800);

/// How much later than a long-running replica a node up for `uptime` after a restart
/// campaigns. `settled_rival`: another live replica of the group has run for a while and
/// could win instead; without one, only the graded part applies (the replicas left are all
/// recent, and the one up for longer still goes first).
fn restart_delay(uptime: Duration, settled_rival: bool) -> Duration {
    if uptime >= RECENT_START {
        return Duration::ZERO;
    }
    let graded = RECENT_START_DELAY.mul_f64(1.0 - uptime.div_duration_f64(RECENT_START));
    if settled_rival {
        RECENT_START_MIN_DELAY + graded
    } else {
        graded
    }
}

/// Random extra delay before campaigning, so that replicas rarely campaign at once.
const JITTER_MS: u64 = 300;
/// How much later than a live preferred replica the others campaign: its first campaign
/// goes first whatever the jitter, and so does its retry if that first one found a replica
/// that did not host the group yet (a topic is created on each node as it applies the
/// metadata record).
const PREFERRED_HEAD_START: Duration =
    Duration::from_millis(RETRY_AFTER.as_millis() as u64 + JITTER_MS);

/// openraft settings for groups of a cluster: [`crate::default_config`] without openraft's own
/// heartbeats and election timer (the liveness task decides when to campaign).
pub fn cluster_config() -> openraft::Config {
    openraft::Config {
        enable_heartbeat: false,
        enable_elect: false,
        enable_tick: false,
        ..crate::default_config()
    }
}

/// Starts the liveness task of `node` for these peers (this node excluded). `restarted`: the
/// node rejoins with data from an earlier run (it then campaigns later than the others for
/// a while after start, see [`RECENT_START`]). It ends when the returned guard is dropped.
pub fn spawn_liveness(node: RaftNode, peers: Vec<NodeId>, restarted: bool) -> LivenessGuard {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run(node, peers, restarted, rx));
    LivenessGuard { _stop: tx }
}

/// Stops the liveness task when dropped.
pub struct LivenessGuard {
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Drops this replica's lease on `dead`, the leader it follows, so that it votes (and
/// campaigns) at once. Uses openraft's leadership-transfer message addressed to another node,
/// which resets the lease of every replica it reaches and does nothing more on them.
pub(crate) async fn drop_lease(raft: &crate::network::GroupRaft, dead: NodeId) {
    let vote = raft.metrics().borrow_watched().vote;
    let req = openraft::raft::TransferLeaderRequest::new(vote, dead, None);
    if let Err(e) = raft.handle_transfer_leader(req).await {
        tracing::debug!(error = %e, "dropping the lease on a dead leader");
    }
}

fn jitter() -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    Duration::from_millis(h.finish() % JITTER_MS)
}

async fn run(
    node: RaftNode,
    peers: Vec<NodeId>,
    restarted: bool,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let start = Instant::now();
    if restarted {
        node.registry.set_recent_until(start + RECENT_START);
    }
    // Peers whose last answered ping said they restarted recently: a peer this node never
    // saw go down (it restarted before this node did) tells it so itself.
    let says_recent: Arc<Mutex<std::collections::HashSet<NodeId>>> = Arc::default();
    // Per peer: its last answered ping, and whether its last ping was refused. Peers count as
    // alive at start: groups learn their leaders first.
    let seen: Arc<Mutex<HashMap<NodeId, (Instant, bool)>>> = Arc::new(Mutex::new(
        peers.iter().map(|p| (*p, (start, false))).collect(),
    ));
    // Per peer: when it answered again after being down (it restarted, or its network came
    // back), for RECENT_START after that. Only peers that had answered before they went
    // down: one that was not up yet when this node started is not coming back.
    let mut back: HashMap<NodeId, Instant> = HashMap::new();
    let mut answered: std::collections::HashSet<NodeId> = std::collections::HashSet::new();
    // Per group: when it became unhealthy, and when it may campaign next.
    let mut due: HashMap<Bytes, Instant> = HashMap::new();
    // Per group led here: since when, and the last hand-over attempt.
    let mut led_since: HashMap<Bytes, Instant> = HashMap::new();
    // Per group: the term in which this node dropped its lease on a leader refusing connections.
    let mut lease_dropped: HashMap<Bytes, u64> = HashMap::new();
    // Group -> when leadership was handed to the preferred replica, and in which term.
    let mut handed: HashMap<Bytes, (Instant, u64)> = HashMap::new();
    // Per group led here: the leader's last log index at the previous tick and when each
    // follower last had everything up to it.
    let mut caught_up: HashMap<Bytes, (u64, HashMap<NodeId, Instant>)> = HashMap::new();
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        for p in &peers {
            let call = node
                .router
                .call(*p, Bytes::new(), PING, Bytes::new(), PING_EVERY * 3);
            let seen = seen.clone();
            let says_recent = says_recent.clone();
            let registry = node.registry.clone();
            let p = *p;
            tokio::spawn(async move {
                let r = call.await;
                let ok = r.is_ok();
                if let Ok(body) = &r {
                    if body.first() == Some(&1) {
                        says_recent.lock().insert(p);
                    } else {
                        says_recent.lock().remove(&p);
                    }
                }
                {
                    let mut seen = seen.lock();
                    let entry = seen.entry(p).or_insert((Instant::now(), false));
                    if ok {
                        *entry = (Instant::now(), false);
                    } else {
                        entry.1 = matches!(r, Err(crate::network::CallError::Refused));
                    }
                }
                // A failed ping (a killed process refuses the connection at once) makes the
                // peer unreachable for what clients are told, long before it counts as down.
                registry.set_unreachable(p, !ok);
            });
        }
        let now = Instant::now();
        let alive = |p: NodeId| {
            seen.lock().get(&p).is_some_and(|(t, refused)| {
                let limit = if *refused {
                    REFUSED_DEAD_AFTER
                } else {
                    DEAD_AFTER
                };
                now.saturating_duration_since(*t) < limit
            })
        };
        // Down with a definite answer: its port refuses connections.
        let refused_dead = |p: NodeId| {
            seen.lock().get(&p).is_some_and(|(t, refused)| {
                *refused && now.saturating_duration_since(*t) >= REFUSED_DEAD_AFTER
            })
        };
        for p in &peers {
            let up = alive(*p);
            if up && node.registry.is_down(*p) && answered.contains(p) {
                back.insert(*p, now);
            }
            // Entries start at `start`; an answer moves them later.
            if seen.lock().get(p).is_some_and(|(t, _)| *t > start) {
                answered.insert(*p);
            }
            node.registry.set_down(*p, !up);
            node.registry.set_gone(*p, refused_dead(*p));
        }
        back.retain(|_, t| now.saturating_duration_since(*t) < RECENT_START);
        // Up for a while: clients that saw it go down have had time to reconnect to it
        // (librdkafka backs its reconnects off towards 10 s), so leading there stalls nobody.
        let settled =
            |p: NodeId| alive(p) && !back.contains_key(&p) && !says_recent.lock().contains(&p);
        let uptime = now.saturating_duration_since(start);
        let recent = restarted && uptime < RECENT_START;
        let groups = node.registry.all();
        due.retain(|k, _| groups.iter().any(|(g, _, _)| g == k));
        caught_up.retain(|k, _| groups.iter().any(|(g, _, _)| g == k));
        led_since.retain(|k, _| groups.iter().any(|(g, _, _)| g == k));
        handed.retain(|k, _| groups.iter().any(|(g, _, _)| g == k));
        lease_dropped.retain(|k, _| groups.iter().any(|(g, _, _)| g == k));
        for (key, raft, preferred) in groups {
            let (leader, caught_up_followers, term, new_group, voters) = {
                let m = raft.metrics();
                let m = m.borrow_watched();
                // Followers that have every entry of the leader's log.
                let caught_up_followers: Vec<NodeId> = match &m.replication {
                    Some(r) => r
                        .iter()
                        .filter(|(f, l)| {
                            **f != node.id
                                && l.as_ref().map(|l| l.index).is_some()
                                && l.as_ref().map(|l| l.index) == m.last_log_index
                        })
                        .map(|(f, _)| *f)
                        .collect(),
                    None => Vec::new(),
                };
                // In-sync replicas: this leader, and each follower that had, within
                // REPLICA_LAG_MAX, every entry the leader had one tick earlier (or has now),
                // and whose node answers pings.
                match (&m.replication, m.current_leader == Some(node.id)) {
                    (Some(r), true) => {
                        let last = m.last_log_index.unwrap_or(0);
                        let (prev_last, seen_at) = caught_up
                            .entry(key.clone())
                            // A new leader starts with every follower in sync (as Kafka's
                            // new leader keeps the ISR it was elected with).
                            .or_insert_with(|| (last, r.keys().map(|f| (*f, now)).collect()));
                        let mut isr = vec![node.id];
                        for (f, matched) in r.iter().filter(|(f, _)| **f != node.id) {
                            let at = matched.as_ref().map_or(0, |l| l.index);
                            if at >= (*prev_last).min(last) {
                                seen_at.insert(*f, now);
                            }
                            let recent = seen_at.get(f).is_some_and(|t| {
                                now.saturating_duration_since(*t) < REPLICA_LAG_MAX
                            });
                            if recent && alive(*f) {
                                isr.push(*f);
                            }
                        }
                        *prev_last = last;
                        node.registry.set_isr(key.clone(), Some(isr));
                    }
                    _ => {
                        if caught_up.remove(&key).is_some() {
                            node.registry.set_isr(key.clone(), None);
                        }
                    }
                }
                // openraft's initialisation writes the membership at index 0 and a new
                // leader's first entry comes after it.
                let new_group = m.last_log_index.is_none_or(|i| i == 0);
                // Only a recently restarted node weighs its rivals (see `restart_delay`).
                let voters: Vec<NodeId> = if recent {
                    m.membership_config.membership().voter_ids().collect()
                } else {
                    Vec::new()
                };
                (
                    m.current_leader,
                    caught_up_followers,
                    m.current_term,
                    new_group,
                    voters,
                )
            };
            let preferred_caught_up = preferred.is_some_and(|p| caught_up_followers.contains(&p));
            // Leader balancing: hand leadership back to the preferred replica.
            if leader == Some(node.id) {
                let since = *led_since.entry(key.clone()).or_insert(now);
                if let Some((at, t)) = handed.get(&key).copied() {
                    if t == term && now.saturating_duration_since(at) >= TRANSFER_TIMEOUT {
                        // The target did not take over (a transferring leader neither writes
                        // nor heartbeats, and cannot campaign itself): hand leadership to a
                        // caught-up live follower, another one than before if there is one.
                        let target = caught_up_followers
                            .iter()
                            .copied()
                            .filter(|f| alive(*f))
                            .max_by_key(|f| Some(*f) != preferred);
                        tracing::warn!(
                            group = %String::from_utf8_lossy(&key),
                            term,
                            ?target,
                            "leadership transfer did not complete in time; handing over again"
                        );
                        handed.insert(key.clone(), (now, term));
                        if let Some(target) = target {
                            let r = raft.clone();
                            tokio::spawn(async move {
                                let _ = r.trigger().transfer_leader(target).await;
                            });
                        }
                    }
                }
                if let Some(p) = preferred {
                    let recently = handed
                        .get(&key)
                        .is_some_and(|(t, _)| now.saturating_duration_since(*t) < BALANCE_EVERY);
                    if p != node.id
                        && preferred_caught_up
                        && settled(p)
                        && !recently
                        && now.saturating_duration_since(since) >= BALANCE_AFTER
                    {
                        handed.insert(key.clone(), (now, term));
                        let r = raft.clone();
                        tokio::spawn(async move {
                            // A heartbeat first, so the target has this leader's vote (a
                            // transfer request is ignored by a node that has not seen it).
                            let _ = r.trigger().heartbeat().await;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            let _ = r.trigger().transfer_leader(p).await;
                        });
                    }
                }
            } else {
                led_since.remove(&key);
            }
            let healthy = match leader {
                Some(l) if l == node.id => true,
                Some(l) => alive(l),
                None => false,
            };
            // The leader's process is gone: a lease on it protects nothing, and waiting it out
            // (1 s since its last append) would only delay the election.
            let gone = leader.filter(|l| *l != node.id && refused_dead(*l));
            if let Some(l) = gone.filter(|_| lease_dropped.get(&key) != Some(&term)) {
                lease_dropped.insert(key.clone(), term);
                let raft = raft.clone();
                tokio::spawn(async move { drop_lease(&raft, l).await });
            }
            if healthy {
                due.remove(&key);
                continue;
            }
            let first_of_new = leader.is_none() && new_group && preferred == Some(node.id);
            let mut wait = match leader {
                // The leader's node stopped answering: its death is already DEAD_AFTER old.
                Some(_) => Duration::ZERO,
                None if first_of_new => NEW_GROUP_CAMPAIGN_AFTER,
                None => LEADERLESS_AFTER,
            };
            // A node that restarted moments ago lets a longer-running replica campaign first:
            // clients that saw it die are still backing off their reconnects to it
            // (librdkafka grows that backoff towards 10 s), so a leader there would stall
            // them. It still campaigns, a little later, if no other replica wins. Of two
            // replicas restarted recently, the one up for longer goes first: clients are more
            // likely to have reconnected to it.
            // A live replica of the group that has run for a while (this node has not seen
            // it come back in the last RECENT_START) could win instead of this one.
            let settled_rival = voters
                .iter()
                .any(|v| *v != node.id && Some(*v) != leader && settled(*v));
            let restart_wait = if recent {
                restart_delay(uptime, settled_rival)
            } else {
                Duration::ZERO
            };
            wait += restart_wait;
            // The preferred replica, when it is up, campaigns first: a new topic's partitions
            // (and a group whose leader died while the preferred one was up) get their
            // preferred leader at once, not a leader that balancing moves 5 s later, with a
            // leader change for every client in the middle of its first writes. Not one that
            // came back moments ago: clients may still be backing off their reconnects to it,
            // and its own restart delay is shorter than this head start once it has run a few
            // seconds, so it would win the election and stall them.
            if preferred.is_some_and(|p| p != node.id && Some(p) != leader && settled(p)) {
                wait += PREFERRED_HEAD_START;
            }
            let at = *due
                .entry(key.clone())
                // No jitter where nothing competes.
                .or_insert_with(|| {
                    now + wait
                        + if first_of_new {
                            Duration::ZERO
                        } else {
                            jitter()
                        }
                });
            if at < now + PING_EVERY {
                // Due before the next tick: campaign at the drawn instant, not on the tick
                // grid. Nodes started together tick in step, and a jitter rounded up to the
                // next tick made two replicas campaign within a millisecond of each other,
                // splitting the vote round after round.
                let retry = if first_of_new {
                    PING_EVERY
                } else {
                    // Behind the long-running replicas' retries too.
                    RETRY_AFTER + jitter() + restart_wait
                };
                due.insert(key.clone(), at + retry);
                let delay = at.saturating_duration_since(now);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let (term_now, leader_now) = {
                        let m = raft.metrics();
                        let m = m.borrow_watched();
                        (m.current_term, m.current_leader)
                    };
                    // Another replica campaigned meanwhile: let its round finish first.
                    if term_now != term || leader_now != leader {
                        return;
                    }
                    tracing::debug!(
                        group = %String::from_utf8_lossy(&key),
                        term,
                        ?leader,
                        "campaigning: no live leader"
                    );
                    crate::metrics::ELECTIONS.inc();
                    let _ = raft.trigger().elect(true).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pings_tell_whether_the_node_restarted_recently() {
        let registry = crate::network::Registry::default();
        let ping = |r: &crate::network::Registry| r.handle(Bytes::new(), PING, Bytes::new());
        assert_eq!(ping(&registry).await.unwrap(), Bytes::from_static(&[0]));
        registry.set_recent_until(Instant::now() + RECENT_START);
        assert_eq!(ping(&registry).await.unwrap(), Bytes::from_static(&[1]));
        registry.set_recent_until(Instant::now());
        assert_eq!(ping(&registry).await.unwrap(), Bytes::from_static(&[0]));
    }

    #[test]
    fn a_restarted_node_campaigns_later_the_fresher_its_restart() {
        for rival in [true, false] {
            let base = if rival {
                RECENT_START_MIN_DELAY
            } else {
                Duration::ZERO
            };
            assert_eq!(
                restart_delay(Duration::ZERO, rival),
                base + RECENT_START_DELAY
            );
            assert_eq!(restart_delay(RECENT_START, rival), Duration::ZERO);
            assert_eq!(restart_delay(RECENT_START * 3, rival), Duration::ZERO);
            let (fresh, older) = (
                restart_delay(Duration::from_secs(3), rival),
                restart_delay(Duration::from_secs(7), rival),
            );
            // Further apart than the random jitter, so the replica up for longer goes first.
            assert!(
                fresh > older + Duration::from_millis(JITTER_MS),
                "{fresh:?} {older:?}"
            );
        }
        // With a long-running rival: behind its first campaign and its retry until the
        // window ends.
        assert!(
            restart_delay(RECENT_START - Duration::from_millis(1), true)
                >= RETRY_AFTER + Duration::from_millis(2 * JITTER_MS)
        );
    }
}
