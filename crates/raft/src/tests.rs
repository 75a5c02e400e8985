//! In-process replication tests: several replicas of one partition, each with its own log
//! directory and metadata store, talking through a [`MemRouter`] that can cut nodes off.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use storage::batch::testutil::build_batch;
use storage::batch::{split_batches, BatchHeader};
use storage::MetaStore;
use tempfile::TempDir;

use crate::{
    Admit, AdmitAll, BatchFilter, Error, LogConfig, MemRouter, NodeId, Partition, PartitionOptions,
    ProposeOutcome, RaftNode, Registry,
};

fn fast_config() -> openraft::Config {
    openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..crate::default_config()
    }
}

struct Replica {
    id: NodeId,
    dir: TempDir,
    meta: MetaStore,
    part: Option<Partition>,
}

struct Cluster {
    router: MemRouter,
    voters: BTreeMap<NodeId, String>,
    nodes: Vec<Replica>,
    log: LogConfig,
    filter: fn() -> Box<dyn BatchFilter>,
}

impl Cluster {
    fn new(n: u64) -> Cluster {
        Cluster::with_log(n, LogConfig::default())
    }

    fn with_log(n: u64, log: LogConfig) -> Cluster {
        Cluster::build(n, log, || Box::new(AdmitAll))
    }

    fn build(n: u64, log: LogConfig, filter: fn() -> Box<dyn BatchFilter>) -> Cluster {
        let voters: BTreeMap<NodeId, String> = (1..=n).map(|i| (i, format!("node-{i}"))).collect();
        let nodes = (1..=n)
            .map(|id| {
                let dir = tempfile::tempdir().expect("tempdir");
                let meta = MetaStore::open(&dir.path().join("meta")).expect("meta");
                Replica {
                    id,
                    dir,
                    meta,
                    part: None,
                }
            })
            .collect();
        let mut c = Cluster {
            router: MemRouter::default(),
            voters,
            nodes,
            log,
            filter,
        };
        for id in 1..=n {
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: NodeId) {
        let registry = Registry::default();
        self.router.add(id, registry.clone());
        let r = &mut self.nodes[(id - 1) as usize];
        let node = RaftNode::new(
            id,
            r.meta.clone(),
            self.router.from_node(id),
            registry,
            fast_config(),
        )
        .expect("node");
        let part = Partition::open(
            &r.dir.path().join("log"),
            PartitionOptions {
                log: self.log.clone(),
                node,
                group: "t-0".into(),
                voters: self.voters.clone(),
                preferred: None,
            },
            (self.filter)(),
        )
        .expect("open");
        r.part = Some(part);
    }

    /// Stops a replica the hard way: it drops off the network, then its group shuts down.
    async fn stop(&mut self, id: NodeId) {
        self.router.remove(id);
        let r = &mut self.nodes[(id - 1) as usize];
        if let Some(p) = r.part.take() {
            p.close().await;
        }
    }

    fn part(&self, id: NodeId) -> &Partition {
        self.nodes[(id - 1) as usize]
            .part
            .as_ref()
            .expect("replica running")
    }

    /// Waits until the running replicas agree on one leader among them; returns it.
    async fn leader(&self, not: Option<NodeId>) -> NodeId {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let running: Vec<&Replica> = self.nodes.iter().filter(|r| r.part.is_some()).collect();
            let leaders: Vec<Option<NodeId>> = running
                .iter()
                .map(|r| r.part.as_ref().expect("running").role().leader)
                .collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l))
                    && Some(*l) != not
                    && running
                        .iter()
                        .any(|r| r.id == *l && self.part(*l).is_leader())
                {
                    return *l;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn batch(records: i32, seed: u64) -> BytesMut {
    BytesMut::from(&build_batch(0, records, 1_000, 16, seed)[..])
}

/// Commits one batch of `records` records on `p` (the leader): its (base offset, records).
async fn commit(p: &Partition, records: i32, seed: u64) -> (i64, i32) {
    let out = p.propose(vec![batch(records, seed)]).await.expect("commit");
    (offsets(&out)[0], records)
}

fn offsets(out: &[ProposeOutcome]) -> Vec<i64> {
    out.iter()
        .map(|o| match o {
            ProposeOutcome::Appended { base_offset } => *base_offset,
            other => panic!("not appended: {other:?}"),
        })
        .collect()
}

/// All committed batches of a replica as (base offset, record count).
fn contents(p: &Partition) -> Vec<(i64, i32)> {
    let r = p.read(p.log_start_offset(), usize::MAX).expect("read");
    split_batches(&r.data)
        .map(|b| {
            let (start, end) = b.expect("batch");
            let h = BatchHeader::parse(&r.data[start..end]).expect("header");
            (h.base_offset, h.records_count)
        })
        .collect()
}

async fn wait_hw(p: &Partition, hw: i64) {
    let mut rx = p.subscribe();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|h| *h >= hw))
        .await
        .expect("high watermark in time")
        .expect("replica open");
}

/// A lone-voter replica of group `s-0` with its log in `dir`.
fn open_single(dir: &TempDir, meta: &MetaStore, filter: Box<dyn BatchFilter>) -> Partition {
    Partition::open(
        &dir.path().join("log"),
        PartitionOptions::single(
            LogConfig::default(),
            RaftNode::single(1, meta.clone()),
            "s-0",
        ),
        filter,
    )
    .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_voter_commits_and_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = MetaStore::open(&dir.path().join("meta")).expect("meta");
    let open = || open_single(&dir, &meta, Box::new(AdmitAll));
    let p = open();
    let out = p
        .propose(vec![batch(3, 1), batch(2, 2)])
        .await
        .expect("commit");
    assert_eq!(offsets(&out), vec![0, 3]);
    let out = p.propose(vec![batch(1, 3)]).await.expect("commit");
    assert_eq!(offsets(&out), vec![5]);
    assert_eq!(p.high_watermark(), 6);
    assert_eq!(contents(&p), vec![(0, 3), (3, 2), (5, 1)]);
    p.close().await;
    assert!(matches!(
        p.propose(vec![batch(1, 4)]).await,
        Err(Error::Closed)
    ));

    let p = open();
    p.ready(Duration::from_secs(10)).await.expect("ready");
    assert_eq!(p.high_watermark(), 6);
    assert_eq!(contents(&p), vec![(0, 3), (3, 2), (5, 1)]);
    let out = p.propose(vec![batch(4, 5)]).await.expect("commit");
    assert_eq!(offsets(&out), vec![6]);
    assert!(p.is_leader());
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_replicate_and_followers_refuse_writes() {
    let c = Cluster::new(3);
    let leader = c.leader(None).await;
    let out = c
        .part(leader)
        .propose(vec![batch(5, 1), batch(5, 2)])
        .await
        .expect("commit");
    assert_eq!(offsets(&out), vec![0, 5]);
    for id in 1..=3 {
        wait_hw(c.part(id), 10).await;
        assert_eq!(contents(c.part(id)), vec![(0, 5), (5, 5)], "replica {id}");
    }
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    match c.part(follower).propose(vec![batch(1, 3)]).await {
        Err(Error::NotLeader { leader: Some(l) }) => assert_eq!(l, leader),
        other => panic!("follower accepted a write: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_elects_new_leader_and_keeps_acknowledged_data() {
    let mut c = Cluster::new(3);
    let first = c.leader(None).await;
    let mut acked = Vec::new();
    for i in 0..10u64 {
        acked.push(commit(c.part(first), 2, i).await);
    }
    c.stop(first).await;
    let t0 = std::time::Instant::now();
    let second = c.leader(Some(first)).await;
    let out = c
        .part(second)
        .propose(vec![batch(3, 99)])
        .await
        .expect("commit on new leader");
    let failover = t0.elapsed();
    acked.push((offsets(&out)[0], 3));
    assert_eq!(
        offsets(&out),
        vec![20],
        "offsets continue after the old leader's"
    );
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );

    // The old leader comes back on its data and catches up.
    c.start(first);
    for id in 1..=3 {
        wait_hw(c.part(id), 23).await;
        assert_eq!(contents(c.part(id)), acked, "replica {id}");
    }
}

/// A follower killed: the leader goes on committing with the other follower (a majority)
/// and keeps its leadership; the follower, started again on its data, catches up to the
/// same log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_kill_keeps_commits_going_and_the_follower_catches_up() {
    let mut c = Cluster::new(3);
    let leader = c.leader(None).await;
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    let mut acked = Vec::new();
    for i in 0..5u64 {
        acked.push(commit(c.part(leader), 2, i).await);
    }
    c.stop(follower).await;
    for i in 5..10u64 {
        let done = tokio::time::timeout(Duration::from_secs(10), commit(c.part(leader), 2, i));
        acked.push(done.await.expect("commits go on without the follower"));
    }
    assert_eq!(
        c.leader(None).await,
        leader,
        "losing a follower moved leadership"
    );
    c.start(follower);
    for id in 1..=3 {
        wait_hw(c.part(id), 20).await;
        assert_eq!(contents(c.part(id)), acked, "replica {id}");
    }
}

/// A pre-vote asks the peers: a follower cut off from the others campaigns (with pre-vote,
/// as the liveness task does) again and again, and raises no term; once it is back the leader
/// still leads. openraft's default network granted every pre-vote without asking, so each
/// such campaign raised the term, and the returning node deposed a leader a quorum followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_that_cannot_win_raise_no_term() {
    use openraft::async_runtime::watch::WatchReceiver;

    let c = Cluster::new(3);
    let leader = c.leader(None).await;
    c.part(leader)
        .propose(vec![batch(1, 1)])
        .await
        .expect("commit");
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    let raft = c.part(follower).raft_for_test();
    // Only the campaigns below: openraft's own election timer campaigns without pre-vote.
    raft.runtime_config().elect(false);
    let term = raft.metrics().borrow_watched().current_term;
    c.router.isolate(follower);
    // Past the leader lease (election_timeout_max), so the pre-vote is not refused locally.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..5 {
        raft.trigger().elect(true).await.expect("trigger");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(raft.metrics().borrow_watched().current_term, term);
    c.router.heal();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.leader(None).await, leader, "the leader was deposed");
    let out = c
        .part(leader)
        .propose(vec![batch(1, 2)])
        .await
        .expect("the leader still commits");
    assert_eq!(offsets(&out), vec![1]);
    assert_eq!(raft.metrics().borrow_watched().current_term, term);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_acknowledges_nothing_and_rejoins() {
    let c = Cluster::new(3);
    let old = c.leader(None).await;
    let out = c
        .part(old)
        .propose(vec![batch(1, 1)])
        .await
        .expect("commit");
    assert_eq!(offsets(&out), vec![0]);

    c.router.isolate(old);
    // The minority side must not acknowledge: the proposal either fails or never completes
    // while the partition lasts.
    let stale = c.part(old).propose(vec![batch(7, 2)]);
    let stale = tokio::spawn(stale);
    let new = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let others: Vec<Option<NodeId>> = (1..=3)
                .filter(|i| *i != old)
                .map(|i| c.part(i).role().leader)
                .collect();
            if let Some(Some(l)) = others.first() {
                if *l != old && others.iter().all(|x| *x == Some(*l)) {
                    break *l;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "majority elected nobody"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let out = c
        .part(new)
        .propose(vec![batch(2, 3)])
        .await
        .expect("majority commits");
    assert_eq!(offsets(&out), vec![1]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    if stale.is_finished() {
        let res = stale.await.expect("task");
        assert!(
            res.is_err(),
            "the isolated leader acknowledged a write: {res:?}"
        );
        c.router.heal();
    } else {
        c.router.heal();
        // Once healed, the old leader's uncommitted batch is discarded: its proposal fails.
        let res = tokio::time::timeout(Duration::from_secs(10), stale)
            .await
            .expect("stale proposal resolves after healing")
            .expect("task");
        assert!(
            res.is_err(),
            "the isolated leader acknowledged a write: {res:?}"
        );
    }
    for id in 1..=3 {
        wait_hw(c.part(id), 3).await;
        assert_eq!(contents(c.part(id)), vec![(0, 1), (1, 2)], "replica {id}");
    }
}

/// A node on real loopback sockets: its cluster transport, the groups it hosts.
struct TcpNode {
    transport: crate::Transport,
    node: RaftNode,
    parts: Vec<Partition>,
    _liveness: Option<crate::LivenessGuard>,
}

/// Opens `groups` on `node` as the broker opens a new topic's partitions, `preferred`
/// named from the start.
fn open_groups(
    node: &RaftNode,
    dir: &std::path::Path,
    addrs: &BTreeMap<NodeId, String>,
    groups: &[&str],
    preferred: Option<NodeId>,
) -> Vec<Partition> {
    groups
        .iter()
        .map(|g| {
            Partition::open(
                &dir.join(g),
                PartitionOptions {
                    log: LogConfig::default(),
                    node: node.clone(),
                    group: (*g).into(),
                    voters: addrs.clone(),
                    preferred,
                },
                Box::new(AdmitAll),
            )
            .expect("open")
        })
        .collect()
}

/// A cluster node hosting `groups`. With `preferred`, the groups are opened as the broker
/// opens a new topic's (that voter named from the start); without, node 1 is named their
/// preferred leader after they were opened. `restarted`: it comes back on earlier data.
async fn tcp_node(
    places: &Places,
    id: NodeId,
    groups: &[&str],
    preferred: Option<NodeId>,
    restarted: bool,
) -> TcpNode {
    tcp_node_with(places, id, groups, preferred, Some(restarted)).await
}

/// [`tcp_node`], with `liveness` None: no liveness task (nothing campaigns or marks peers
/// down unless the test does it), Some(restarted) as there.
async fn tcp_node_with(
    places: &Places,
    id: NodeId,
    groups: &[&str],
    preferred: Option<NodeId>,
    liveness: Option<bool>,
) -> TcpNode {
    let (addrs, dirs, metas) = places;
    let (dir, meta) = (dirs[&id].path(), &metas[&id]);
    let transport = crate::Transport::new(crate::TransportConfig::new(id));
    let registry = Registry::default();
    transport
        .serve(&addrs[&id], registry.handler())
        .await
        .expect("cluster listener");
    for (peer, addr) in addrs {
        if *peer != id {
            transport.set_peer(*peer, addr.clone());
        }
    }
    // As a cluster node runs: no openraft heartbeats or election timers, the node-level
    // liveness task decides when to campaign.
    let node = RaftNode::new(
        id,
        meta.clone(),
        std::sync::Arc::new(transport.clone()),
        registry,
        crate::cluster_config(),
    )
    .expect("node");
    let peers = addrs.keys().copied().filter(|p| *p != id).collect();
    let liveness = liveness.map(|restarted| crate::spawn_liveness(node.clone(), peers, restarted));
    let parts = open_groups(&node, dir, addrs, groups, preferred);
    if preferred.is_none() {
        // Node 1 should lead every group whenever it can (leader balancing).
        for p in &parts {
            p.set_preferred_leader(Some(1));
        }
    }
    TcpNode {
        transport,
        node,
        parts,
        _liveness: liveness,
    }
}

/// Three TCP nodes on `places`, each hosting `groups` (see [`tcp_node_with`]).
async fn three_tcp_nodes(
    places: &Places,
    groups: &[&str],
    preferred: Option<NodeId>,
    liveness: Option<bool>,
) -> BTreeMap<NodeId, TcpNode> {
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(
            id,
            tcp_node_with(places, id, groups, preferred, liveness).await,
        );
    }
    nodes
}

/// Stops a node as a killed process would look to its peers: its listener and groups gone.
async fn stop_node(n: TcpNode) {
    n.transport.shutdown().await;
    for p in &n.parts {
        p.close().await;
    }
}

async fn tcp_leader(nodes: &BTreeMap<NodeId, TcpNode>, g: usize) -> NodeId {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The replica claiming leadership in the highest term (a deposed leader may still
        // claim an older one until it hears of the newer term).
        let claim = nodes
            .iter()
            .filter(|(_, n)| n.parts[g].is_leader())
            .max_by_key(|(_, n)| n.parts[g].role().term);
        if let Some((id, _)) = claim {
            return *id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader for group {g}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cluster addresses, data directories and metadata stores of three TCP nodes.
type Places = (
    BTreeMap<NodeId, String>,
    BTreeMap<NodeId, TempDir>,
    BTreeMap<NodeId, MetaStore>,
);

fn three_tcp_places() -> Places {
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        // Reserve a free port; the listener binds it again right after.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        addrs.insert(id, l.local_addr().expect("addr").to_string());
    }
    let dirs: BTreeMap<NodeId, TempDir> = (1..=3)
        .map(|id| (id, tempfile::tempdir().expect("tempdir")))
        .collect();
    let metas = dirs
        .iter()
        .map(|(id, d)| (*id, MetaStore::open(&d.path().join("meta")).expect("meta")))
        .collect();
    (addrs, dirs, metas)
}

/// A new group is led by its preferred voter even when that node creates it last: each node
/// creates a new topic's groups as it applies the metadata record, and a voter that
/// initialised the group first (openraft's initialisation starts an election at once) used
/// to win it, for leader balancing to move it 5 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_is_led_by_its_preferred_voter_that_created_it_last() {
    let groups = ["n-0", "n-1", "n-2"];
    let places = three_tcp_places();
    let (addrs, dirs, _) = &places;
    let mut nodes = three_tcp_nodes(&places, &[], Some(3), Some(false)).await;
    // A running cluster: every node has heard from the others (the first started pinged the
    // others before they listened, and a node it saw down would not wait for it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while nodes
        .iter()
        .any(|(id, n)| (1..=3).any(|p| p != *id && n.node.registry.is_unreachable(p)))
    {
        assert!(tokio::time::Instant::now() < deadline, "peers not all up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nodes 1 and 2 create the groups; node 3, the preferred voter, 0.4 s later.
    for id in [1, 2] {
        let n = nodes.get_mut(&id).expect("node");
        n.parts = open_groups(&n.node, dirs[&id].path(), addrs, &groups, Some(3));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let n3 = nodes.get_mut(&3).expect("node 3");
    n3.parts = open_groups(&n3.node, dirs[&3].path(), addrs, &groups, Some(3));
    for (g, name) in groups.iter().enumerate() {
        assert_eq!(tcp_leader(&nodes, g).await, 3, "leader of {name}");
        // It won the first election: nobody else campaigned.
        assert_eq!(nodes[&3].parts[g].role().term, 1, "term of {name}");
    }
}

/// Three nodes over the TCP cluster transport as a cluster runs them (node-level liveness
/// instead of per-group heartbeats), several groups multiplexed on one connection per peer
/// pair; the node leading a group is stopped and started again on its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_cluster_replicates_groups_over_one_connection_per_peer() {
    let groups = ["a-0", "a-1", "b-0", "b-1"];
    let places = three_tcp_places();
    let mut nodes = three_tcp_nodes(&places, &groups, None, Some(false)).await;

    let mut acked: Vec<Vec<(i64, i32)>> = vec![Vec::new(); groups.len()];
    for (g, _) in groups.iter().enumerate() {
        let l = tcp_leader(&nodes, g).await;
        let out = nodes[&l].parts[g]
            .propose(vec![batch(4, g as u64), batch(1, 10 + g as u64)])
            .await
            .expect("commit");
        assert_eq!(offsets(&out), vec![0, 4]);
        acked[g].extend([(0, 4), (4, 1)]);
    }
    // Every group's traffic between two nodes shares one connection: each node accepted at
    // most one connection from each of its two peers.
    for n in nodes.values() {
        assert!(
            n.transport.accepted_connections() <= 2,
            "accepted {} connections",
            n.transport.accepted_connections()
        );
    }

    // Stop the leader of group 0 (transport and groups), write on the new leader.
    let old = tcp_leader(&nodes, 0).await;
    stop_node(nodes.remove(&old).expect("leader node")).await;
    for (g, _) in groups.iter().enumerate() {
        let l = tcp_leader(&nodes, g).await;
        assert_ne!(l, old);
        let out = nodes[&l].parts[g]
            .propose(vec![batch(2, 20 + g as u64)])
            .await
            .expect("commit with one node down");
        assert_eq!(offsets(&out), vec![5]);
        acked[g].push((5, 2));
    }

    // The stopped node returns on its data and catches up on every group.
    nodes.insert(old, tcp_node(&places, old, &groups, None, true).await);
    for n in nodes.values() {
        for (g, p) in n.parts.iter().enumerate() {
            wait_hw(p, 7).await;
            assert_eq!(contents(p), acked[g]);
        }
    }
    // Leadership goes back to the preferred node (1) in every group, and writes go on there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !nodes[&1].parts.iter().all(|p| p.is_leader()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 did not get its groups back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in &nodes[&1].parts {
        let out = p
            .propose(vec![batch(1, 99)])
            .await
            .expect("commit on the preferred leader");
        assert_eq!(offsets(&out), vec![7]);
    }
    for n in nodes.into_values() {
        stop_node(n).await;
    }
}

/// A preferred replica that came back moments ago does not win the next election: clients
/// that saw it die may still be backing off their reconnects to it (a restarted node's own
/// campaign delay falls below the head start the others used to give a live preferred
/// replica 2.5 s after its start, so it won).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preferred_replica_back_moments_ago_leaves_the_next_election_to_another() {
    let groups = ["r-0"];
    let places = three_tcp_places();
    let mut nodes = three_tcp_nodes(&places, &groups, Some(1), Some(false)).await;
    assert_eq!(
        tcp_leader(&nodes, 0).await,
        1,
        "a new group's preferred leader"
    );
    nodes[&1].parts[0]
        .propose(vec![batch(1, 1)])
        .await
        .expect("commit");

    // The preferred replica's node stops; another leads.
    stop_node(nodes.remove(&1).expect("node 1")).await;
    let second = tcp_leader(&nodes, 0).await;
    nodes[&second].parts[0]
        .propose(vec![batch(1, 2)])
        .await
        .expect("commit with node 1 down");

    // Node 1 comes back on its data and catches up.
    let started = tokio::time::Instant::now();
    let n = tcp_node(&places, 1, &groups, Some(1), true);
    nodes.insert(1, n.await);
    wait_hw(&nodes[&1].parts[0], 2).await;
    // 2 s after its start: its own delay (0.64 s) is longer than the jitter, and shorter
    // than the preferred replica's head start plus the jitter.
    tokio::time::sleep_until(started + Duration::from_secs(2)).await;
    assert_eq!(tcp_leader(&nodes, 0).await, second, "no hand-over yet");

    // The leader stops: the replica that ran throughout wins, not node 1.
    stop_node(nodes.remove(&second).expect("second leader")).await;
    let third = tcp_leader(&nodes, 0).await;
    assert_ne!(
        third, 1,
        "the preferred replica back 2 s ago won the election"
    );
    nodes[&third].parts[0]
        .propose(vec![batch(1, 3)])
        .await
        .expect("commit on the third leader");
    for n in nodes.into_values() {
        stop_node(n).await;
    }
}

/// A replica asked for a vote probes the leader it follows, and drops its lease on one whose
/// port refuses connections (its process is not running). Its liveness task would tell it
/// 0.3-0.45 s after the kill; a candidate whose own pings told it first used to be refused
/// until then and to retry 0.3-0.6 s later, by when a replica restarted moments before could
/// win instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_request_finds_a_killed_leader_gone_at_once() {
    let groups = ["v-0"];
    let places = three_tcp_places();
    // No liveness tasks: nothing campaigns or marks a peer down but this test.
    let mut nodes = three_tcp_nodes(&places, &groups, Some(1), None).await;
    assert_eq!(tcp_leader(&nodes, 0).await, 1);
    // A commit just now: both followers hold a fresh lease on node 1.
    nodes[&1].parts[0]
        .propose(vec![batch(1, 1)])
        .await
        .expect("commit");
    stop_node(nodes.remove(&1).expect("node 1")).await;

    // Node 2 campaigns at once, as its liveness task does once it finds node 1 gone.
    let raft = nodes[&2].parts[0].raft_for_test();
    crate::liveness::drop_lease(&raft, 1).await;
    raft.trigger().elect(true).await.expect("elect");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
    while !nodes[&2].parts[0].is_leader() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 3 kept its lease on the killed leader: node 2 not elected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes[&2].parts[0]
        .propose(vec![batch(1, 2)])
        .await
        .expect("commit on node 2");
    for n in nodes.into_values() {
        stop_node(n).await;
    }
}

fn txn_batch(records: i32, pid: i64, seq: i32) -> BytesMut {
    BytesMut::from(&storage::batch::testutil::build_txn_batch(0, records, pid, 0, seq)[..])
}

fn marker(pid: i64, commit: bool) -> BytesMut {
    BytesMut::from(&storage::batch::testutil::build_control_batch(0, pid, 0, i16::from(commit))[..])
}

/// Open transactions hold the last stable offset at their first offset; aborted ones are
/// listed for read_committed reads; both survive a restart and are the same on a new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_stable_offset_and_aborted_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = MetaStore::open(&dir.path().join("meta")).expect("meta");
    let open = || {
        Partition::open(
            &dir.path().join("log"),
            PartitionOptions::single(
                LogConfig::default(),
                RaftNode::single(1, meta.clone()),
                "t-0",
            ),
            Box::new(AdmitAll),
        )
        .expect("open")
    };
    let p = open();
    // 0..2 plain, 2..5 producer 7 (open), 5 plain, 6..8 producer 8, 8 abort marker of 8.
    let out = p
        .propose(vec![
            batch(2, 1),
            txn_batch(3, 7, 0),
            batch(1, 2),
            txn_batch(2, 8, 0),
            marker(8, false),
        ])
        .await
        .expect("commit");
    assert_eq!(offsets(&out), vec![0, 2, 5, 6, 8]);
    assert_eq!(p.high_watermark(), 9);
    assert_eq!(p.last_stable_offset(), 2);
    let r = p.read_isolated(0, usize::MAX, true).expect("read");
    assert_eq!(r.last_stable_offset, 2);
    assert_eq!(
        count(&r.data),
        2,
        "read_committed stops at the open transaction"
    );
    assert_eq!(r.aborted, Some(vec![]));
    let r = p.read_isolated(0, usize::MAX, false).expect("read");
    assert_eq!(count(&r.data), 9);
    assert_eq!(r.aborted, None);

    // Producer 7 commits: everything is stable; producer 8's transaction is listed aborted.
    let out = p.propose(vec![marker(7, true)]).await.expect("commit");
    assert_eq!(offsets(&out), vec![9]);
    assert_eq!(p.last_stable_offset(), 10);
    let r = p.read_isolated(0, usize::MAX, true).expect("read");
    assert_eq!(count(&r.data), 10);
    let aborted = vec![crate::AbortedTxn {
        producer_id: 8,
        first_offset: 6,
        last_offset: 8,
    }];
    assert_eq!(r.aborted.as_ref(), Some(&aborted));
    // A read past the aborted transaction does not list it.
    let r = p.read_isolated(9, usize::MAX, true).expect("read");
    assert_eq!(r.aborted, Some(vec![]));

    // A new open transaction, then a restart: both the open one and the aborted one are
    // still known.
    p.propose(vec![txn_batch(1, 9, 0)]).await.expect("commit");
    assert_eq!(p.last_stable_offset(), 10);
    p.close().await;
    let p = open();
    p.ready(Duration::from_secs(10)).await.expect("ready");
    assert_eq!(p.high_watermark(), 11);
    assert_eq!(p.last_stable_offset(), 10);
    let r = p.read_isolated(0, usize::MAX, true).expect("read");
    assert_eq!(r.aborted.as_ref(), Some(&aborted));
    p.close().await;
}

/// Records in concatenated batches.
fn count(data: &[u8]) -> i64 {
    split_batches(data)
        .map(|b| {
            let (s, e) = b.expect("batch");
            i64::from(
                BatchHeader::parse(&data[s..e])
                    .expect("header")
                    .records_count,
            )
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_knows_the_open_and_aborted_transactions() {
    let mut c = Cluster::new(3);
    let first = c.leader(None).await;
    c.part(first)
        .propose(vec![
            txn_batch(2, 5, 0),
            txn_batch(1, 6, 0),
            marker(6, false),
        ])
        .await
        .expect("commit");
    for id in 1..=3 {
        wait_hw(c.part(id), 4).await;
    }
    c.stop(first).await;
    let second = c.leader(Some(first)).await;
    let p = c.part(second);
    assert_eq!(
        p.last_stable_offset(),
        0,
        "producer 5's transaction is open"
    );
    p.propose(vec![marker(5, true)]).await.expect("commit");
    assert_eq!(p.last_stable_offset(), 5);
    let r = p.read_isolated(0, usize::MAX, true).expect("read");
    assert_eq!(
        r.aborted,
        Some(vec![crate::AbortedTxn {
            producer_id: 6,
            first_offset: 2,
            last_offset: 3
        }])
    );
}

/// A follower that was down while the leader's retention removed the entries it needs gets
/// the leader's position (a snapshot), starts its log over there and replicates from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_leaders_retention_starts_over_at_its_position() {
    let mut c = Cluster::with_log(
        3,
        LogConfig {
            segment_bytes: 2048,
            ..LogConfig::default()
        },
    );
    let leader = c.leader(None).await;
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    c.part(leader)
        .propose(vec![batch(2, 0)])
        .await
        .expect("commit");
    wait_hw(c.part(follower), 2).await;
    c.stop(follower).await;
    for i in 1..80u64 {
        c.part(leader)
            .propose(vec![batch(2, i)])
            .await
            .expect("commit");
    }
    // Retention keeps about the last 2 KiB: the first segments go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.part(leader).log_start_offset() == 0 {
        c.part(leader)
            .enforce_retention(0, None, Some(2048))
            .await
            .expect("retention");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leader never purged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let start = c.part(leader).log_start_offset();
    assert!(
        start > 2,
        "purged past what the follower has: start {start}"
    );
    c.start(follower);
    c.part(leader)
        .propose(vec![batch(3, 99)])
        .await
        .expect("commit");
    wait_hw(c.part(follower), 163).await;
    let f = c.part(follower);
    assert!(
        f.log_start_offset() > 2 && f.log_start_offset() <= 160,
        "follower log start {}",
        f.log_start_offset()
    );
    // What the follower has is exactly the leader's log from the follower's start on.
    let leader_tail: Vec<(i64, i32)> = contents(c.part(leader))
        .into_iter()
        .filter(|(o, _)| *o >= f.log_start_offset())
        .collect();
    assert_eq!(contents(f), leader_tail);
    assert_eq!(leader_tail.last(), Some(&(160, 3)));
    // And it keeps replicating after a restart.
    c.stop(follower).await;
    c.start(follower);
    c.part(leader)
        .propose(vec![batch(1, 100)])
        .await
        .expect("commit");
    wait_hw(c.part(follower), 164).await;
    assert_eq!(contents(c.part(follower)).last(), Some(&(163, 1)));
}

/// A small idempotence filter: a batch whose (producer id, base sequence) was appended before
/// is a duplicate of it.
#[derive(Default)]
struct SeqFilter {
    seen: BTreeMap<(i64, i32), i64>,
}

impl BatchFilter for SeqFilter {
    fn admit(&mut self, batch: &[u8]) -> Admit {
        let h = BatchHeader::parse(batch).expect("batch");
        match self.seen.get(&(h.producer_id, h.base_sequence)) {
            Some(base) if h.producer_id >= 0 => Admit::Duplicate { base_offset: *base },
            _ => Admit::Append,
        }
    }
    fn appended(&mut self, batch: &[u8], base_offset: i64, _last_offset: i64) {
        let h = BatchHeader::parse(batch).expect("batch");
        if h.producer_id >= 0 {
            self.seen
                .insert((h.producer_id, h.base_sequence), base_offset);
        }
    }
    fn clear(&mut self) {
        self.seen.clear();
    }
    fn save(&self) -> Vec<u8> {
        serde_json::to_vec(&self.seen.iter().collect::<Vec<_>>()).expect("json")
    }
    fn load(&mut self, state: &[u8]) -> bool {
        match serde_json::from_slice::<Vec<((i64, i32), i64)>>(state) {
            Ok(v) => {
                self.seen = v.into_iter().collect();
                true
            }
            Err(_) => {
                self.seen.clear();
                false
            }
        }
    }
    fn fresh(&self) -> Box<dyn BatchFilter> {
        Box::new(SeqFilter::default())
    }
}

fn producer_batch(pid: i64, seq: i32) -> BytesMut {
    BytesMut::from(&storage::batch::testutil::build_producer_batch(0, 1, pid, 0, seq)[..])
}

/// Plain batches in proposals of 500 until `n` are committed.
async fn fill(p: &Partition, n: usize) {
    for chunk in 0..n.div_ceil(500) {
        let k = 500.min(n - chunk * 500);
        let out = p
            .propose((0..k).map(|i| batch(1, i as u64)).collect())
            .await
            .expect("commit");
        assert_eq!(out.len(), k);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_knows_producers_from_far_back_in_the_log() {
    let mut c = Cluster::build(3, LogConfig::default(), || Box::new(SeqFilter::default()));
    let l = c.leader(None).await;
    let out = c
        .part(l)
        .propose(vec![producer_batch(7, 0)])
        .await
        .expect("commit");
    let first = offsets(&out)[0];
    // Further back than any bounded tail replay would read.
    fill(c.part(l), 12_000).await;
    c.stop(l).await;
    let l2 = c.leader(Some(l)).await;
    let out = c
        .part(l2)
        .propose(vec![producer_batch(7, 0), producer_batch(7, 1)])
        .await
        .expect("commit");
    assert_eq!(out[0], ProposeOutcome::Duplicate { base_offset: first });
    assert!(matches!(out[1], ProposeOutcome::Appended { .. }));
    let replayed = c.part(l2).filter_replayed();
    assert!(
        replayed < 2_000,
        "the new leader read {replayed} log entries to rebuild its filter"
    );

    // The old leader restarts from its saved filter state plus the entries after it.
    c.start(l);
    let p = c.part(l);
    wait_hw(p, c.part(l2).high_watermark()).await;
    assert!(
        p.filter_replayed() < 2_000,
        "the restarted replica read {} log entries to rebuild its filter",
        p.filter_replayed()
    );
}

/// A write handed to openraft whose commit is not known when its group stops, and a retry of
/// it waiting for that commit, are answered "outcome unknown", not "not leader": clients take
/// the latter as "not written" and may resend the records as new ones (a producer that bumps
/// its epoch does), which would write them twice if another leader commits the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_an_unknown_outcome_is_not_answered_as_refused() {
    let mut c = Cluster::build(3, LogConfig::default(), || Box::new(SeqFilter::default()));
    let l = c.leader(None).await;
    c.part(l)
        .propose(vec![producer_batch(7, 0)])
        .await
        .expect("commit");
    // Cut off right after a commit: its lease still lets it take the write, no quorum
    // commits it.
    c.router.isolate(l);
    let first = tokio::spawn(c.part(l).propose(vec![producer_batch(7, 1)]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let retry = tokio::spawn(c.part(l).propose(vec![producer_batch(7, 1)]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !first.is_finished() && !retry.is_finished(),
        "answered without a quorum"
    );
    c.stop(l).await;
    for (what, task) in [("the write", first), ("its retry", retry)] {
        let res = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("answered once the group stopped")
            .expect("task");
        assert!(
            matches!(res, Err(Error::OutcomeUnknown)),
            "{what} was answered {res:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_single_replica_resumes_its_producer_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = MetaStore::open(&dir.path().join("meta")).expect("meta");
    let open = || open_single(&dir, &meta, Box::new(SeqFilter::default()));
    let p = open();
    let out = p.propose(vec![producer_batch(9, 0)]).await.expect("commit");
    let first = offsets(&out)[0];
    fill(&p, 3_000).await;
    p.close().await;
    drop(p);

    let p = open();
    assert!(
        p.filter_replayed() < 100,
        "a clean restart read {} log entries to rebuild the filter",
        p.filter_replayed()
    );
    let out = p.propose(vec![producer_batch(9, 0)]).await.expect("commit");
    assert_eq!(out[0], ProposeOutcome::Duplicate { base_offset: first });
    // Becoming leader copied the applied state: only the entries after it were read.
    assert!(p.filter_replayed() < 100, "{}", p.filter_replayed());
    p.close().await;
}

/// Waits until replica `p` has log start `start`.
async fn wait_log_start(p: &Partition, start: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.log_start_offset() != start {
        assert!(
            tokio::time::Instant::now() < deadline,
            "log start {} never became {start}",
            p.log_start_offset()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// DeleteRecords goes through the group: every replica moves its log start, a new leader
/// and a restarted replica keep it, and retention purges the whole segments below it through
/// Raft on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_is_replicated_and_purged_through_raft() {
    let mut c = Cluster::with_log(
        3,
        LogConfig {
            segment_bytes: 2048,
            ..LogConfig::default()
        },
    );
    let l = c.leader(None).await;
    fill(c.part(l), 200).await;
    let hw = c.part(l).high_watermark();
    assert_eq!(hw, 200);
    for id in 1..=3 {
        wait_hw(c.part(id), hw).await;
    }
    assert!(matches!(
        c.part(l).delete_records(hw + 1).await,
        Err(Error::OffsetOutOfRange { .. })
    ));
    let follower = (1..=3).find(|i| *i != l).expect("a follower");
    assert!(matches!(
        c.part(follower).delete_records(10).await,
        Err(Error::NotLeader { .. })
    ));
    assert_eq!(c.part(l).delete_records(150).await.expect("delete"), 150);
    // Going back is a no-op that answers the current start.
    assert_eq!(c.part(l).delete_records(20).await.expect("delete"), 150);
    for id in 1..=3 {
        wait_log_start(c.part(id), 150).await;
        assert!(
            c.part(id).read(100, usize::MAX).is_err(),
            "replica {id} still serves offsets below the log start"
        );
    }
    // Retention (no time or size limit) purges the segments wholly below offset 150.
    for id in 1..=3 {
        let p = c.part(id);
        let before = p.size_bytes();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while p.size_bytes() >= before {
            p.enforce_retention(0, None, None).await.expect("retention");
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {id} never purged below the log start ({before} bytes)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(p.log_start_offset(), 150);
        assert_eq!(contents(p).first().map(|b| b.0), Some(150));
    }
    // A new leader keeps the log start; so does a restarted replica.
    c.stop(l).await;
    let l2 = c.leader(Some(l)).await;
    assert_eq!(c.part(l2).log_start_offset(), 150);
    assert_eq!(c.part(l2).delete_records(-1).await.expect("delete"), 200);
    c.start(l);
    wait_log_start(c.part(l), 200).await;
    c.stop(l).await;
    c.start(l);
    assert_eq!(c.part(l).log_start_offset(), 200);
}

/// Retention deletes the oldest segments down to `retention.bytes`, not everything a
/// snapshot covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_keeps_the_newest_bytes() {
    let c = Cluster::with_log(
        3,
        LogConfig {
            segment_bytes: 2048,
            ..LogConfig::default()
        },
    );
    let l = c.leader(None).await;
    fill(c.part(l), 300).await;
    let p = c.part(l);
    let total = p.size_bytes();
    let keep = total / 2;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.log_start_offset() == 0 {
        p.enforce_retention(0, None, Some(keep))
            .await
            .expect("retention");
        assert!(tokio::time::Instant::now() < deadline, "never purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = p.size_bytes();
    assert!(
        left >= keep && left < total,
        "{left} bytes left of {total} with retention.bytes {keep}"
    );
    let start = p.log_start_offset();
    assert!(start > 0 && start < 300 / 2 + 20, "log start {start}");
    assert_eq!(contents(p).last(), Some(&(299, 1)));
}

/// A follower that knows its leader's process is gone drops its lease on it
/// (`liveness::drop_lease`) and grants the pre-vote it refused a moment before. The liveness
/// task does this when the leader's port refuses connections, instead of waiting out the
/// lease (election_timeout_max since the leader's last append).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_lease_on_a_gone_leader_lets_a_follower_vote() {
    use openraft::async_runtime::watch::WatchReceiver;
    use openraft::vote::{RaftLeaderId, RaftVote};

    let c = Cluster::new(3);
    let leader = c.leader(None).await;
    c.part(leader)
        .propose(vec![batch(1, 1)])
        .await
        .expect("commit");
    let mut followers = (1..=3).filter(|i| *i != leader);
    let (voter, candidate) = (followers.next().unwrap(), followers.next().unwrap());
    for id in [voter, candidate] {
        wait_hw(c.part(id), 1).await;
        // No campaigns of openraft's own timers during the test.
        c.part(id).raft_for_test().runtime_config().elect(false);
    }
    let raft = c.part(voter).raft_for_test();
    // The candidate has applied the leader's whole log (its metrics then name that log id).
    let last = c
        .part(leader)
        .raft_for_test()
        .metrics()
        .borrow_watched()
        .last_log_index;
    c.part(candidate)
        .raft_for_test()
        .wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(last, "candidate caught up")
        .await
        .expect("caught up");
    let cand = c
        .part(candidate)
        .raft_for_test()
        .metrics()
        .borrow_watched()
        .clone();
    // No more heartbeats renew the voter's lease from here on (once those in flight landed;
    // the lease, election_timeout_max, is 600 ms here).
    c.router.isolate(leader);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let req = openraft::raft::VoteRequest::new(
        crate::types::Vote::from_leader_id(
            openraft::type_config::alias::LeaderIdOf::<crate::types::TypeConfig>::new(
                cand.current_term + 1,
                candidate,
            ),
            false,
        ),
        cand.last_applied,
    );
    let before = raft.pre_vote(req.clone()).await.expect("pre-vote");
    assert!(
        !before.vote_granted,
        "granted under a fresh lease: {before:?}"
    );
    crate::liveness::drop_lease(&raft, leader).await;
    let after = raft.pre_vote(req).await.expect("pre-vote");
    assert!(after.vote_granted, "{after:?}");
    // A pre-vote changes nothing: the voter still follows the old term.
    assert_eq!(
        raft.metrics().borrow_watched().current_term,
        cand.current_term
    );
}
