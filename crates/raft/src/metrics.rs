//! Process-wide Raft metrics. The node registers them in its Prometheus registry.

use std::sync::LazyLock;

use prometheus::IntCounter;

/// Leader changes seen by the replicas hosted here (a replica learning of a new leader).
pub static LEADER_CHANGES: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "sluice_raft_leader_changes_total",
        "Leader changes seen by the partition replicas hosted on this node.",
    )
    .expect("valid metric")
});

/// Elections this node's liveness task started (a group whose leader went quiet).
pub static ELECTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "sluice_raft_elections_started_total",
        "Elections started by this node for groups whose leader stopped answering.",
    )
    .expect("valid metric")
});
