//! Node-level failure detection instead of per-group heartbeats.
//!
//! openraft sends a heartbeat per group and follower every heartbeat interval, so 1,000
//! partitions cost thousands of RPCs a second on an idle cluster. In a cluster Sluice turns
//! openraft's own heartbeats and election timers off ([`cluster_config`]) and runs one task per
//! node instead: it pings every peer (one tiny call per peer per [`PING_EVERY`]) and, for every
//! local group whose leader is a peer that has not answered for [`DEAD_AFTER`], or that has had
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
/// How soon a group that is still without a live leader campaigns again.
const RETRY_AFTER: Duration = Duration::from_millis(300);
/// A group without a known leader for this long campaigns.
pub const LEADERLESS_AFTER: Duration = Duration::from_millis(600);
/// Random extra delay before campaigning, so that replicas rarely campaign at once.
const JITTER_MS: u64 = 300;

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

/// Starts the liveness task of `node` for these peers (this node excluded). It ends when the
/// returned guard is dropped.
pub fn spawn_liveness(node: RaftNode, peers: Vec<NodeId>) -> LivenessGuard {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run(node, peers, rx));
    LivenessGuard { _stop: tx }
}

/// Stops the liveness task when dropped.
pub struct LivenessGuard {
    _stop: tokio::sync::oneshot::Sender<()>,
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

async fn run(node: RaftNode, peers: Vec<NodeId>, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let start = Instant::now();
    // Peers count as alive at start: groups learn their leaders first.
    let seen: Arc<Mutex<HashMap<NodeId, Instant>>> =
        Arc::new(Mutex::new(peers.iter().map(|p| (*p, start)).collect()));
    // Per group: when it became unhealthy, and when it may campaign next.
    let mut due: HashMap<Bytes, Instant> = HashMap::new();
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
            let p = *p;
            tokio::spawn(async move {
                if call.await.is_ok() {
                    seen.lock().insert(p, Instant::now());
                }
            });
        }
        let now = Instant::now();
        let alive = |p: NodeId| {
            seen.lock()
                .get(&p)
                .is_some_and(|t| now.saturating_duration_since(*t) < DEAD_AFTER)
        };
        let groups = node.registry.all();
        due.retain(|k, _| groups.iter().any(|(g, _)| g == k));
        for (key, raft) in groups {
            let leader = raft.metrics().borrow_watched().current_leader;
            let healthy = match leader {
                Some(l) if l == node.id => true,
                Some(l) => alive(l),
                None => false,
            };
            if healthy {
                due.remove(&key);
                continue;
            }
            let wait = match leader {
                // The leader's node stopped answering: its death is already DEAD_AFTER old.
                Some(_) => Duration::ZERO,
                None => LEADERLESS_AFTER,
            };
            let at = *due
                .entry(key.clone())
                .or_insert_with(|| now + wait + jitter());
            if now >= at {
                due.insert(key, now + RETRY_AFTER + jitter());
                tokio::spawn(async move {
                    let _ = raft.trigger().elect(true).await;
                });
            }
        }
    }
}
