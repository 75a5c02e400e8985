//! Raft RPCs between nodes: the client side (openraft's `RaftNetworkFactory` / `RaftNetworkV2`
//! over a [`Router`]) and the server side ([`Registry`], which hands an incoming call to the
//! group it names). Messages are openraft's own types, encoded with postcard (compact, serde,
//! batch bytes copied as one slice).
//!
//! The [`Router`] is what carries a call to another node: the TCP cluster transport in a real
//! cluster, an in-memory router (which can cut links) in tests.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetworkFactory, RaftNetworkV2};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::SnapshotBody;
use crate::types::{NodeId, SnapshotMeta, TypeConfig, Vote};

pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a call to another node failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// Nothing listens on the node's cluster port: its process is not running.
    #[error("connection refused")]
    Refused,
    #[error("timed out")]
    Timeout,
    #[error("remote: {0}")]
    Remote(String),
}

/// Carries one request to a node and brings its answer back.
pub trait Router: Send + Sync + 'static {
    fn call(
        &self,
        target: NodeId,
        group: Bytes,
        method: u8,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFut<Result<Bytes, CallError>>;
}

/// How long a vote request waits for the leader to answer a probe (a process that is not
/// running refuses at once; a running one answers within this on a sane network).
const PROBE: Duration = Duration::from_millis(100);

pub(crate) const APPEND: u8 = 1;
pub(crate) const VOTE: u8 = 2;
pub(crate) const SNAPSHOT: u8 = 3;
/// An application request for a group's leader (see [`Registry::set_forwarder`]).
pub const FORWARD: u8 = 4;

/// A node-level liveness probe (see `liveness`); answered with an empty body.
pub(crate) const PING: u8 = 5;
/// openraft's leadership hand-over message.
pub(crate) const TRANSFER: u8 = 6;
/// A pre-vote: would the peer grant a vote (it persists nothing and keeps its term).
pub(crate) const PRE_VOTE: u8 = 7;

/// Serves [`FORWARD`] calls for one group: request body in, answer out.
pub type Forwarder = Arc<dyn Fn(Bytes) -> BoxFut<Result<Bytes, String>> + Send + Sync>;

fn encode<T: Serialize>(v: &T) -> Result<Bytes, String> {
    postcard::to_stdvec(v)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("undecodable message: {e}"))
}

/// The raft handle type of a partition group.
pub type GroupRaft = openraft::Raft<TypeConfig, crate::store::StateMachine>;

/// The groups this node hosts, by key; serves incoming Raft calls.
#[derive(Clone, Default)]
pub struct Registry {
    groups: Arc<RwLock<HashMap<Bytes, GroupRaft>>>,
    forwarders: Arc<RwLock<HashMap<Bytes, Forwarder>>>,
    /// Preferred leaders (a partition's first replica), for leader balancing.
    preferred: Arc<RwLock<HashMap<Bytes, NodeId>>>,
    /// In-sync replicas of the groups led here, kept by the liveness task.
    isr: Arc<RwLock<HashMap<Bytes, Vec<NodeId>>>>,
    /// Peers the liveness task has seen stop answering.
    down: Arc<RwLock<std::collections::HashSet<NodeId>>>,
    /// Peers whose last ping failed.
    unreachable: Arc<RwLock<std::collections::HashSet<NodeId>>>,
    /// Down peers whose cluster port refuses connections: their process is not running.
    gone: Arc<RwLock<std::collections::HashSet<NodeId>>>,
    /// The node's way to its peers, to probe a leader a vote request says is gone.
    router: Arc<std::sync::OnceLock<Arc<dyn Router>>>,
    /// Until when this node counts as recently restarted (it rejoined with data), as its
    /// answers to [`PING`] tell its peers; set by the liveness task.
    recent_until: Arc<parking_lot::Mutex<Option<tokio::time::Instant>>>,
}

impl Registry {
    /// This node counts as recently restarted until `until` (see [`PING`]).
    pub(crate) fn set_recent_until(&self, until: tokio::time::Instant) {
        *self.recent_until.lock() = Some(until);
    }

    /// Serves [`FORWARD`] calls naming `group` with `f` (e.g. proposals sent to the leader
    /// by other nodes).
    pub fn set_forwarder(&self, group: impl Into<Bytes>, f: Forwarder) {
        self.forwarders.write().insert(group.into(), f);
    }

    pub(crate) fn insert(&self, key: Bytes, raft: GroupRaft) {
        self.groups.write().insert(key, raft);
    }

    pub(crate) fn remove(&self, key: &[u8]) {
        self.groups.write().remove(key);
        self.isr.write().remove(key);
    }

    /// Every hosted group with its preferred leader.
    pub(crate) fn all(&self) -> Vec<(Bytes, GroupRaft, Option<NodeId>)> {
        let preferred = self.preferred.read();
        self.groups
            .read()
            .iter()
            .map(|(k, r)| (k.clone(), r.clone(), preferred.get(k).copied()))
            .collect()
    }

    /// The in-sync replicas of `group` as its leader here last computed them.
    pub(crate) fn isr(&self, group: &[u8]) -> Option<Vec<NodeId>> {
        self.isr.read().get(group).cloned()
    }

    pub(crate) fn set_isr(&self, group: Bytes, isr: Option<Vec<NodeId>>) {
        match isr {
            Some(isr) => self.isr.write().insert(group, isr),
            None => self.isr.write().remove(&group),
        };
    }

    /// Whether the liveness task has seen `node` stop answering (never true without one).
    pub fn is_down(&self, node: NodeId) -> bool {
        self.down.read().contains(&node)
    }

    /// Whether `node`'s last liveness ping failed or it counts as down: clients should not
    /// be sent to it. Never true without a liveness task.
    pub fn is_unreachable(&self, node: NodeId) -> bool {
        self.unreachable.read().contains(&node) || self.is_down(node)
    }

    pub(crate) fn set_unreachable(&self, node: NodeId, unreachable: bool) {
        if unreachable {
            self.unreachable.write().insert(node);
        } else {
            self.unreachable.write().remove(&node);
        }
    }

    pub(crate) fn set_gone(&self, node: NodeId, gone: bool) {
        if gone {
            self.gone.write().insert(node);
        } else {
            self.gone.write().remove(&node);
        }
    }

    pub(crate) fn set_down(&self, node: NodeId, down: bool) {
        if down {
            self.down.write().insert(node);
        } else {
            self.down.write().remove(&node);
        }
    }

    /// The router of the node this registry serves (set once, by `RaftNode::new`).
    pub(crate) fn set_router(&self, router: Arc<dyn Router>) {
        let _ = self.router.set(router);
    }

    /// The node that should lead `group` whenever it can.
    pub(crate) fn preferred(&self, group: &[u8]) -> Option<NodeId> {
        self.preferred.read().get(group).copied()
    }

    /// Records the node that should lead `group` whenever it can.
    pub(crate) fn set_preferred(&self, group: Bytes, node: Option<NodeId>) {
        match node {
            Some(n) => self.preferred.write().insert(group, n),
            None => self.preferred.write().remove(&group),
        };
    }

    /// Handles one incoming call. The answer is `Ok(encoded response)` or `Err(reason)`.
    pub fn handle(&self, group: Bytes, method: u8, body: Bytes) -> BoxFut<Result<Bytes, String>> {
        if method == PING {
            // One byte: 1 while this node is recently restarted (clients that saw it die may
            // still be backing off their reconnects to it), else 0. An empty answer (a node
            // of an earlier version) counts as 0.
            let recent = self
                .recent_until
                .lock()
                .is_some_and(|t| tokio::time::Instant::now() < t);
            return Box::pin(
                async move { Ok(Bytes::from_static(if recent { &[1] } else { &[0] })) },
            );
        }
        if method == FORWARD {
            let f = self.forwarders.read().get(&group).cloned();
            return match f {
                Some(f) => f(body),
                None => Box::pin(async move {
                    Err(format!(
                        "no forwarding for group {}",
                        String::from_utf8_lossy(&group)
                    ))
                }),
            };
        }
        let raft = self.groups.read().get(&group).cloned();
        let gone = self.gone.clone();
        let router = self.router.get().cloned();
        Box::pin(async move {
            let Some(raft) = raft else {
                return Err(format!(
                    "group {} is not hosted here (yet)",
                    String::from_utf8_lossy(&group)
                ));
            };
            match method {
                APPEND => {
                    let req: AppendEntriesRequest<TypeConfig> = decode(&body)?;
                    let resp = raft.append_entries(req).await.map_err(|e| e.to_string())?;
                    encode(&resp)
                }
                VOTE | PRE_VOTE => {
                    let req: VoteRequest<TypeConfig> = decode(&body)?;
                    // A leader whose port refuses connections is not running: its lease here
                    // protects nothing (liveness::REFUSED_DEAD_AFTER). Silence alone is no
                    // reason: this node may still hear the leader over its other connection.
                    // The liveness task's pings tell within 0.3-0.45 s; a candidate whose
                    // pings told it first would be refused here until then, and retry only
                    // after 0.3-0.6 s, so the leader is probed now.
                    let leader = {
                        let m = raft.metrics();
                        let m = m.borrow_watched();
                        m.current_leader.filter(|l| *l != m.id)
                    };
                    let dead = match (leader, router) {
                        (Some(l), _) if gone.read().contains(&l) => Some(l),
                        (Some(l), Some(router)) => {
                            let probe = router.call(l, Bytes::new(), PING, Bytes::new(), PROBE);
                            matches!(probe.await, Err(CallError::Refused)).then_some(l)
                        }
                        _ => None,
                    };
                    if let Some(l) = dead {
                        crate::liveness::drop_lease(&raft, l).await;
                    }
                    let resp = if method == VOTE {
                        raft.vote(req).await
                    } else {
                        raft.pre_vote(req).await
                    };
                    encode(&resp.map_err(|e| e.to_string())?)
                }
                TRANSFER => {
                    let req: TransferLeaderRequest<TypeConfig> = decode(&body)?;
                    let resp = raft
                        .handle_transfer_leader(req)
                        .await
                        .map_err(|e| e.to_string())?;
                    encode(&resp)
                }
                SNAPSHOT => {
                    let (vote, meta, body): (Vote, SnapshotMeta, SnapshotBody) = decode(&body)?;
                    let snapshot = openraft::storage::Snapshot {
                        meta,
                        snapshot: body,
                    };
                    let resp = raft
                        .install_full_snapshot(vote, snapshot)
                        .await
                        .map_err(|e| e.to_string())?;
                    encode(&resp)
                }
                m => Err(format!("unknown raft method {m}")),
            }
        })
    }
}

/// Creates the per-peer network clients of one group.
pub(crate) struct Network {
    pub router: Arc<dyn Router>,
    pub group: Bytes,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> PeerClient {
        PeerClient {
            router: self.router.clone(),
            group: self.group.clone(),
            target,
        }
    }
}

/// Calls to one peer for one group.
pub(crate) struct PeerClient {
    router: Arc<dyn Router>,
    group: Bytes,
    target: NodeId,
}

impl PeerClient {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: u8,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let body = encode(req).map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        match self
            .router
            .call(self.target, self.group.clone(), method, body, timeout)
            .await
        {
            Ok(b) => decode(&b).map_err(|e| RPCError::Network(NetworkError::from_string(e))),
            // A peer that is down, slow or does not host the group yet: openraft backs off.
            Err(e) => Err(RPCError::Unreachable(Unreachable::from_string(e))),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotBody;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(APPEND, &rpc, option.soft_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(VOTE, &rpc, option.soft_ttl()).await
    }

    /// A real round trip: openraft's default grants every pre-vote without asking, which let a
    /// node whose log is behind (or that cannot reach a leader others still follow) raise the
    /// term on every campaign, deposing leaders and outbidding the replica that could win.
    /// An unreachable peer's pre-vote is an error, which openraft does not count as a grant.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(PRE_VOTE, &rpc, option.soft_ttl()).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(TRANSFER, &req, option.soft_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: crate::types::Snapshot<SnapshotBody>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = (vote, snapshot.meta, snapshot.snapshot);
        self.rpc(SNAPSHOT, &req, option.hard_ttl())
            .await
            .map_err(|e| match e {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                other => StreamingError::Network(NetworkError::from_string(other)),
            })
    }
}

/// An in-memory router for tests: calls go straight to each node's [`Registry`] (through the
/// same encoding as the wire), and links can be cut.
#[derive(Clone, Default)]
pub struct MemRouter {
    inner: Arc<RwLock<MemInner>>,
}

#[derive(Default)]
struct MemInner {
    nodes: HashMap<NodeId, Registry>,
    /// Cut links (both directions are listed separately).
    cut: std::collections::HashSet<(NodeId, NodeId)>,
}

impl MemRouter {
    pub fn add(&self, id: NodeId, registry: Registry) {
        self.inner.write().nodes.insert(id, registry);
    }

    pub fn remove(&self, id: NodeId) {
        self.inner.write().nodes.remove(&id);
    }

    /// A router for node `from`: what that node's groups use to call others.
    pub fn from_node(&self, from: NodeId) -> Arc<dyn Router> {
        Arc::new(MemLink {
            router: self.clone(),
            from,
        })
    }

    /// Cuts node `a` off from every other node (both directions).
    pub fn isolate(&self, a: NodeId) {
        let mut inner = self.inner.write();
        let ids: Vec<NodeId> = inner.nodes.keys().copied().collect();
        for b in ids {
            if b != a {
                inner.cut.insert((a, b));
                inner.cut.insert((b, a));
            }
        }
    }

    pub fn heal(&self) {
        self.inner.write().cut.clear();
    }
}

struct MemLink {
    router: MemRouter,
    from: NodeId,
}

impl Router for MemLink {
    fn call(
        &self,
        target: NodeId,
        group: Bytes,
        method: u8,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFut<Result<Bytes, CallError>> {
        let reg = {
            let inner = self.router.inner.read();
            if inner.cut.contains(&(self.from, target)) {
                None
            } else {
                inner.nodes.get(&target).cloned()
            }
        };
        Box::pin(async move {
            let Some(reg) = reg else {
                return Err(CallError::Unreachable(format!("node {target} is cut off")));
            };
            match tokio::time::timeout(timeout, reg.handle(group, method, body)).await {
                Err(_) => Err(CallError::Timeout),
                Ok(r) => r.map_err(CallError::Remote),
            }
        })
    }
}

/// The cluster transport carries Raft calls between nodes.
impl Router for crate::transport::Transport {
    fn call(
        &self,
        target: NodeId,
        group: Bytes,
        method: u8,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFut<Result<Bytes, CallError>> {
        let t = self.clone();
        Box::pin(async move {
            use crate::transport::TransportError as E;
            match crate::transport::Transport::call(&t, target, group, method, body, timeout).await
            {
                Ok(b) => Ok(b),
                Err(E::Timeout(_)) => Err(CallError::Timeout),
                Err(E::Remote(m)) => Err(CallError::Remote(m)),
                Err(E::Refused(_)) => Err(CallError::Refused),
                Err(e) => Err(CallError::Unreachable(e.to_string())),
            }
        })
    }
}

impl Registry {
    /// The handler to serve on the cluster listener: every incoming call goes to its group.
    pub fn handler(&self) -> Arc<dyn crate::transport::Handler> {
        let reg = self.clone();
        Arc::new(
            move |_from: NodeId, group: Bytes, method: u8, body: Bytes| {
                reg.handle(group, method, body)
            },
        )
    }
}
