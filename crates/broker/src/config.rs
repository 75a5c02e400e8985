//! Broker settings (Kafka's names in comments). The binary fills them from its TOML file,
//! environment and flags; topic-level defaults come from the `log.*` settings here.

use std::path::PathBuf;
use std::time::Duration;

use storage::FsyncPolicy;

pub use crate::metadata_log::Endpoint;

/// Settings of one broker node.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `node.id`
    pub node_id: i32,
    /// Address the cluster listener binds (Raft traffic); `None` for a lone node.
    pub cluster_addr: Option<String>,
    /// Every node of the cluster (this one included) with its cluster address; empty for a
    /// lone node.
    pub peers: std::collections::BTreeMap<i32, String>,
    /// The Kafka listeners with the address clients are told for each
    /// (`advertised.listeners`); the first is the default. A client is answered with every
    /// node's address for the listener it connected on.
    pub listeners: Vec<Endpoint>,
    /// `broker.rack`
    pub rack: Option<String>,
    /// Data directory: partition logs under `log/`, metadata under `meta/`.
    pub data_dir: PathBuf,
    /// `socket.request.max.bytes`: larger frames are refused before any allocation.
    pub socket_request_max_bytes: usize,
    /// `auto.create.topics.enable`
    pub auto_create_topics: bool,
    /// `num.partitions`
    pub num_partitions: i32,
    /// `default.replication.factor`
    pub default_replication_factor: i16,
    /// `message.max.bytes` (default for the topic config `max.message.bytes`)
    pub message_max_bytes: i32,
    /// `log.retention.ms` (-1 = forever)
    pub log_retention_ms: i64,
    /// `log.retention.bytes` (-1 = unlimited)
    pub log_retention_bytes: i64,
    /// `log.segment.bytes`
    pub log_segment_bytes: i64,
    /// `log.roll.ms`
    pub log_roll_ms: i64,
    /// `log.index.interval.bytes`
    pub log_index_interval_bytes: i32,
    /// `log.retention.check.interval.ms`
    pub log_retention_check_interval: Duration,
    /// Fsync policy: `always` (group commit before acknowledging) or every interval.
    pub fsync: FsyncPolicy,
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets` (used when the
    /// topic is first created; an existing topic keeps its count).
    pub offsets_topic_num_partitions: i32,
    /// `transaction.state.log.num.partitions`: partitions of `__transaction_state` (used
    /// when the topic is first created).
    pub transaction_state_log_num_partitions: i32,
    /// `transactional.id.expiration.ms`: a transactional id with no transaction open or
    /// being completed for this long is forgotten.
    pub transactional_id_expiration_ms: i64,
    /// `producer.id.expiration.ms`: an idempotent producer's sequence state on a partition
    /// is forgotten after this long without a write from it (and no open transaction).
    pub producer_id_expiration_ms: i64,
    /// `group.initial.rebalance.delay.ms`: how long a new group waits for more members.
    pub group_initial_rebalance_delay_ms: i32,
    /// `group.consumer.heartbeat.interval.ms`: how often members of consumer-protocol
    /// (KIP-848) groups heartbeat. 1000 (Kafka: 5000): members learn of a rebalance within a
    /// second, for one small request per member and second.
    pub group_consumer_heartbeat_interval_ms: i32,
    /// `group.consumer.session.timeout.ms`: how long a consumer-protocol member may go
    /// without a heartbeat before it is removed.
    pub group_consumer_session_timeout_ms: i32,
    /// `group.min.session.timeout.ms`
    pub group_min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`
    pub group_max_session_timeout_ms: i32,
    /// `offset.metadata.max.bytes`
    pub offset_metadata_max_bytes: usize,
    /// `group.max.size`
    pub group_max_size: usize,
    /// `offsets.retention.minutes`
    pub offsets_retention_minutes: i64,
    /// `offsets.retention.check.interval.ms`
    pub offsets_retention_check_interval_ms: u64,
    /// Per-partition metric series (high watermark, log size, in-sync replicas, follower
    /// lag); off for clusters with very many partitions.
    pub metrics_per_partition: bool,
}

impl BrokerConfig {
    /// The advertised address of listener `index` (the default listener when out of range).
    pub fn endpoint(&self, index: usize) -> &Endpoint {
        &self.listeners[index.min(self.listeners.len() - 1)]
    }

    /// `advertised.listeners` as Kafka writes it.
    pub fn advertised_listeners(&self) -> String {
        self.listeners
            .iter()
            .map(|e| format!("{}://{}:{}", e.name, e.host, e.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 0,
            cluster_addr: None,
            peers: Default::default(),
            listeners: vec![Endpoint {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9092,
            }],
            rack: None,
            data_dir: PathBuf::from("sluice-data"),
            socket_request_max_bytes: 100 * 1024 * 1024,
            auto_create_topics: true,
            num_partitions: 1,
            default_replication_factor: 1,
            message_max_bytes: 1_048_588,
            log_retention_ms: 7 * 24 * 3600 * 1000,
            log_retention_bytes: -1,
            log_segment_bytes: 1 << 30,
            log_roll_ms: 7 * 24 * 3600 * 1000,
            log_index_interval_bytes: 4096,
            log_retention_check_interval: Duration::from_secs(300),
            fsync: FsyncPolicy::Always,
            offsets_topic_num_partitions: 50,
            transaction_state_log_num_partitions: 50,
            transactional_id_expiration_ms: 604_800_000,
            producer_id_expiration_ms: crate::producer_state::DEFAULT_PRODUCER_ID_EXPIRATION_MS,
            group_initial_rebalance_delay_ms: 3000,
            group_consumer_heartbeat_interval_ms: 1000,
            group_consumer_session_timeout_ms: 45_000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            offset_metadata_max_bytes: 4096,
            group_max_size: 1000,
            offsets_retention_minutes: 7 * 24 * 60,
            offsets_retention_check_interval_ms: 600_000,
            metrics_per_partition: true,
        }
    }
}
