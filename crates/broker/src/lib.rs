//! The Kafka front end of Sluice.
//!
//! Owns the Kafka listener and connections (framing, ordered responses), one handler module
//! per API family (`api/`), the topic manager (topics, partitions, topic configs), the
//! idempotent-producer state, the mapping of errors to Kafka error codes, and the broker's
//! metrics. It never touches files directly: partition data goes through [`raft::Partition`],
//! metadata through [`storage::MetaStore`].

pub mod api;
mod committed;
pub mod config;
mod conn;
pub mod groups;
mod led;
pub mod metadata_log;
pub mod metrics;
mod producer_state;
pub mod topic_config;
pub mod topics;
pub mod txn;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use config::BrokerConfig;
pub use conn::serve;

use crate::groups::{Coordinator, GroupSettings, OFFSETS_TOPIC};
use crate::metrics::Metrics;
use crate::producer_state::ProducerIds;
use crate::topics::TopicManager;
use crate::txn::{TxnCoordinator, TXN_TOPIC};

/// Shared state of one broker node.
pub struct Broker {
    pub config: BrokerConfig,
    pub topics: TopicManager,
    pub metrics: Metrics,
    producer_ids: ProducerIds,
    groups: Arc<Coordinator>,
    txn: Arc<TxnCoordinator>,
    cluster_id: String,
    ready: AtomicBool,
    /// The cluster transport and the liveness task (absent on a lone node).
    transport: Option<(raft::Transport, raft::LivenessGuard)>,
}

impl Broker {
    /// Opens the metadata store, replays the metadata log and opens every partition under
    /// `config.data_dir`. Blocks the calling thread for the I/O (a start-up step: call it
    /// before serving); needs a multi-threaded tokio runtime.
    pub async fn open(config: BrokerConfig, metrics: Metrics) -> Result<Arc<Broker>, Error> {
        std::fs::create_dir_all(&config.data_dir)?;
        // Rejoining with data from an earlier run (not a first start).
        let restarted = config
            .data_dir
            .join("log")
            .join(metadata_log::METADATA_GROUP)
            .exists();
        let meta = storage::MetaStore::open(&config.data_dir.join("meta"))?;
        let cluster_id = match meta.get("default", b"cluster_id")? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let id = new_cluster_id();
                meta.put("default", b"cluster_id", id.as_bytes())?;
                id
            }
        };
        let producer_ids = ProducerIds::open(&meta)?;
        let (raft, transport) = if config.peers.is_empty() {
            (
                raft::RaftNode::single(config.node_id as u64, meta.clone()),
                None,
            )
        } else {
            let registry = raft::Registry::default();
            let transport = raft::Transport::new(raft::TransportConfig::new(config.node_id as u64));
            for (peer, addr) in &config.peers {
                if *peer != config.node_id {
                    transport.set_peer(*peer as u64, addr.clone());
                }
            }
            let addr = config
                .cluster_addr
                .clone()
                .unwrap_or_else(|| "127.0.0.1:9093".into());
            transport
                .serve(&addr, registry.handler())
                .await
                .map_err(|e| {
                    Error::Io(std::io::Error::new(
                        e.kind(),
                        format!("binding the cluster listener on {addr}: {e}"),
                    ))
                })?;
            let node = raft::RaftNode::new(
                config.node_id as u64,
                meta.clone(),
                Arc::new(transport.clone()),
                registry,
                raft::cluster_config(),
            )?;
            let peers = config
                .peers
                .keys()
                .filter(|p| **p != config.node_id)
                .map(|p| *p as u64)
                .collect();
            let liveness = raft::spawn_liveness(node.clone(), peers, restarted);
            (node, Some((transport, liveness)))
        };
        let topics = TopicManager::open(&config, meta, raft, &metrics)?;
        topics.migrate_legacy().await.map_err(|e| {
            Error::Metadata(format!(
                "moving topics into the metadata log: {}",
                e.message
            ))
        })?;
        // In a cluster these wait for a quorum of nodes to be up. The cluster id is the
        // metadata log's (a lone node's own id from before the log keeps being it).
        let cluster_id = retry_startup("agreeing on the cluster id", || {
            topics.init_cluster_id(&cluster_id)
        })
        .await?;
        retry_startup("registering this node", || topics.register_broker()).await?;
        let groups = open_groups(&config, &topics).await?;
        let txn_partitions = open_txn_topic(&config, &topics).await?;
        let broker = Arc::new_cyclic(|me| Broker {
            txn: TxnCoordinator::start(
                config.node_id as u64,
                txn_partitions,
                config.transactional_id_expiration_ms,
                me.clone(),
            ),
            config,
            topics,
            metrics,
            producer_ids,
            groups,
            cluster_id,
            ready: AtomicBool::new(false),
            transport,
        });
        broker.topics.raft().registry.set_forwarder(
            txn::MARKERS_GROUP,
            txn::markers_forwarder(Arc::downgrade(&broker)),
        );
        if !broker.txn.settle(std::time::Duration::from_secs(10)).await {
            tracing::warn!("some {TXN_TOPIC} partitions led here are still loading");
        }
        tokio::spawn(tail_metadata(Arc::downgrade(&broker)));
        if !broker.config.peers.is_empty() {
            tokio::spawn(publish_isr(Arc::downgrade(&broker)));
        }
        Ok(broker)
    }

    /// The transaction coordinator.
    pub fn txn(&self) -> &Arc<TxnCoordinator> {
        &self.txn
    }

    /// Sends an application request to another node's handler for `group` (see
    /// `raft::Registry::set_forwarder`) over the cluster transport.
    pub(crate) async fn forward(
        &self,
        node: i32,
        group: &'static str,
        body: bytes::Bytes,
        timeout: std::time::Duration,
    ) -> Result<bytes::Bytes, String> {
        self.topics
            .raft()
            .router
            .call(
                node as u64,
                bytes::Bytes::from_static(group.as_bytes()),
                raft::FORWARD,
                body,
                timeout,
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// The group coordinator.
    pub fn groups(&self) -> &Arc<Coordinator> {
        &self.groups
    }

    /// A fresh producer id, unique in the cluster.
    pub async fn next_producer_id(&self) -> Result<i64, topics::ApiError> {
        self.producer_ids.next(&self.topics).await
    }

    /// Refreshes the partition gauges: per node (partitions led, under-replicated, without a
    /// leader, largest follower lag) and, when `metrics_per_partition` is on, per partition.
    pub fn refresh_partition_metrics(&self) {
        let m = &self.metrics;
        let per_partition = self.config.metrics_per_partition;
        for v in [
            &m.partition_high_watermark,
            &m.partition_log_size,
            &m.partition_log_start,
            &m.partition_isr,
            &m.partition_follower_lag,
        ] {
            v.reset();
        }
        let (mut led, mut under, mut leaderless, mut max_lag) = (0, 0, 0, 0u64);
        for topic in self.topics.all() {
            for p in &topic.partitions {
                let Some(replica) = &p.replica else { continue };
                let labels = [topic.name.as_str(), &p.index.to_string()];
                if replica.role().leader.is_none() {
                    leaderless += 1;
                }
                if per_partition {
                    m.partition_high_watermark
                        .with_label_values(&labels)
                        .set(replica.high_watermark());
                    m.partition_log_size
                        .with_label_values(&labels)
                        .set(replica.size_bytes() as i64);
                    m.partition_log_start
                        .with_label_values(&labels)
                        .set(replica.log_start_offset());
                }
                if !replica.is_leader() {
                    continue;
                }
                led += 1;
                let isr = replica.in_sync_replicas().len();
                if isr < p.replicas.len() {
                    under += 1;
                }
                let lag = replica
                    .follower_lag()
                    .into_iter()
                    .map(|(_, l)| l)
                    .max()
                    .unwrap_or(0);
                max_lag = max_lag.max(lag);
                if per_partition {
                    m.partition_isr.with_label_values(&labels).set(isr as i64);
                    m.partition_follower_lag
                        .with_label_values(&labels)
                        .set(lag as i64);
                }
            }
        }
        m.partitions_led.set(led);
        m.partitions_under_replicated.set(under);
        m.partitions_without_leader.set(leaderless);
        m.follower_lag_max.set(max_lag as i64);
    }

    /// Refreshes the consumer group gauges (committed offset and lag per group and
    /// partition) from the coordinator and the partitions' high watermarks.
    pub fn refresh_group_metrics(&self) {
        let m = &self.metrics;
        m.group_committed_offset.reset();
        m.group_lag.reset();
        for (group, topic, partition, offset) in self.groups.committed_offsets() {
            let labels = [group.as_str(), topic.as_str(), &partition.to_string()];
            m.group_committed_offset
                .with_label_values(&labels)
                .set(offset);
            let hw = self.topics.get(&topic).and_then(|t| {
                t.partition(partition)
                    .and_then(|p| p.replica.as_ref().map(|r| r.high_watermark()))
            });
            if let Some(hw) = hw {
                m.group_lag
                    .with_label_values(&labels)
                    .set((hw - offset).max(0));
            }
        }
    }

    /// A node's Kafka address as clients on `listener` (an index into this node's
    /// listeners) reach it: (node id, host, port).
    pub fn broker_address(&self, node: i32, listener: usize) -> Option<(i32, String, i32)> {
        self.broker_list(listener)
            .into_iter()
            .find(|b| b.node == node)
            .map(|b| (b.node, b.host, i32::from(b.port)))
    }

    /// Every node with the address of its listener named like this node's listener
    /// `listener` (the one a client connected on, as Kafka answers); this node's from its
    /// own settings. `host`/`port` of each entry are that address.
    pub fn broker_list(&self, listener: usize) -> Vec<metadata_log::BrokerInfo> {
        let name = &self.config.endpoint(listener).name;
        let mut list: Vec<_> = self
            .topics
            .brokers()
            .into_iter()
            .filter(|b| b.node != self.config.node_id)
            .collect();
        let me = self.config.endpoint(0);
        list.push(metadata_log::BrokerInfo {
            node: self.config.node_id,
            host: me.host.clone(),
            port: me.port,
            rack: self.config.rack.clone(),
            listeners: self.config.listeners.clone(),
        });
        for b in &mut list {
            let (host, port) = b.address(name);
            (b.host, b.port) = (host.to_string(), port);
        }
        list.sort_by_key(|b| b.node);
        list
    }

    /// The controller clients are told about (Metadata, DescribeCluster): this node, as a
    /// KRaft broker answers a live broker rather than the quorum's controller. Any node takes
    /// CreateTopics and the other controller requests and forwards them to the metadata
    /// log's leader, so a client never waits on a dead controller (librdkafka does not
    /// look for a new one while the old one's connection fails). `/v1/cluster` shows the
    /// metadata log's actual leader.
    pub fn controller_id(&self) -> i32 {
        self.config.node_id
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Ready once the Kafka listeners accept connections, this node is registered in the
    /// cluster metadata and the controller (metadata log) has a leader.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self.topics.controller_id().is_some()
            && self
                .topics
                .brokers()
                .iter()
                .any(|b| b.node == self.config.node_id)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release)
    }

    /// Shutdown has begun (the listeners stop reading requests): requests that wait for
    /// other clients, group joins and syncs, are answered now, so that every connection
    /// can answer what it has read and close.
    pub fn begin_shutdown(&self) {
        self.set_ready(false);
        self.groups.stop_serving();
    }

    /// Commits what is queued and closes every partition log (clean shutdown).
    pub async fn shutdown(&self) {
        self.set_ready(false);
        self.topics.close_all().await;
        if let Some((t, _)) = &self.transport {
            t.shutdown().await;
        }
    }
}

/// Creates `__consumer_offsets` on first start (no time or size retention: it holds the
/// only copy of committed offsets, and compaction does not exist yet) and rebuilds the
/// groups from it.
async fn open_groups(
    config: &BrokerConfig,
    topics: &TopicManager,
) -> Result<Arc<Coordinator>, Error> {
    let configs: std::collections::BTreeMap<String, String> =
        [("retention.ms", "-1"), ("retention.bytes", "-1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let topic = retry_startup("creating the offsets topic", || {
        topics.ensure_internal(
            OFFSETS_TOPIC,
            config.offsets_topic_num_partitions,
            configs.clone(),
        )
    })
    .await?;
    let settings = GroupSettings {
        min_session_timeout_ms: config.group_min_session_timeout_ms,
        max_session_timeout_ms: config.group_max_session_timeout_ms,
        initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
        consumer_heartbeat_interval_ms: config.group_consumer_heartbeat_interval_ms,
        consumer_session_timeout_ms: config.group_consumer_session_timeout_ms,
        offset_metadata_max_bytes: config.offset_metadata_max_bytes,
        max_size: config.group_max_size,
        offsets_retention_ms: config.offsets_retention_minutes.saturating_mul(60_000),
        offsets_retention_check_interval_ms: config.offsets_retention_check_interval_ms.max(1),
    };
    // The coordinator of a group is the leader of its offsets partition; a node holding no
    // replica of a partition never coordinates its groups.
    let partitions = topic.partitions.iter().map(|p| p.replica.clone()).collect();
    let coordinator = Coordinator::start(settings, config.node_id as u64, partitions);
    // Start serving with the groups of the partitions led here already loaded (a lone
    // node: all of them); the others load when this node becomes their leader.
    if !coordinator.settle(std::time::Duration::from_secs(10)).await {
        tracing::warn!("some offsets partitions led here are still loading");
    }
    Ok(coordinator)
}

/// Creates `__transaction_state` on first start (no retention, like the offsets topic) and
/// returns its replicas on this node by partition.
async fn open_txn_topic(
    config: &BrokerConfig,
    topics: &TopicManager,
) -> Result<Vec<Option<raft::Partition>>, Error> {
    let configs: std::collections::BTreeMap<String, String> =
        [("retention.ms", "-1"), ("retention.bytes", "-1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let topic = retry_startup("creating the transaction state topic", || {
        topics.ensure_internal(
            TXN_TOPIC,
            config.transaction_state_log_num_partitions,
            configs.clone(),
        )
    })
    .await?;
    Ok(topic.partitions.iter().map(|p| p.replica.clone()).collect())
}

/// Retries a start-up step that needs the metadata log (in a cluster, a quorum of nodes)
/// until it succeeds; gives up after ten minutes.
async fn retry_startup<T, F, Fut>(what: &str, mut step: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, topics::ApiError>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e)
                if e.code == protocol::codes::NOT_CONTROLLER
                    && tokio::time::Instant::now() < deadline =>
            {
                tracing::warn!(error = %e.message, "{what}: waiting for the metadata log");
            }
            Err(e) => return Err(Error::Metadata(format!("{what}: {}", e.message))),
        }
    }
}

/// Applies metadata records committed by other nodes' proposals as they commit.
async fn tail_metadata(broker: std::sync::Weak<Broker>) {
    let mut hw = match broker.upgrade() {
        Some(b) => b.topics.controller().subscribe(),
        None => return,
    };
    // Apply first, then wait: a record committed between the start-up replay and the
    // subscription above would otherwise wait for the next commit to be seen.
    loop {
        let Some(b) = broker.upgrade() else { return };
        if let Err(e) = b.topics.apply_committed().await {
            tracing::error!(error = %e.message, "applying the metadata log");
        }
        drop(b);
        if hw.changed().await.is_err() {
            return;
        }
    }
}

/// How often the in-sync replicas of the partitions led here are compared with what the
/// metadata log has recorded (the ISR itself moves on the liveness task's 30 s lag bound and
/// failed pings, so a second more is within what clients see from Kafka).
const ISR_PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Records ISR changes of the partitions this node leads in the metadata log, so that every
/// node answers Metadata with the leaders' view (see `TopicManager::publish_isr`).
async fn publish_isr(broker: std::sync::Weak<Broker>) {
    let mut tick = tokio::time::interval(ISR_PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(b) = broker.upgrade() else { return };
        match b.topics.publish_isr().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(partitions = n, "recorded in-sync replicas"),
            // No controller leader for the moment: the next tick tries again.
            Err(e) => tracing::debug!(error = %e.message, "recording in-sync replicas"),
        }
    }
}

/// A Kafka-style cluster id: 16 random bytes, URL-safe base64 without padding (22 chars).
fn new_cluster_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let id = uuid::Uuid::new_v4();
    let bytes = id.as_bytes();
    let mut out = String::with_capacity(22);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(ALPHABET[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

/// Errors of the broker crate (start-up and metadata; request errors are Kafka error codes).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage: {0}")]
    Storage(#[from] storage::Error),
    #[error("partition: {0}")]
    Partition(#[from] raft::Error),
    #[error("corrupt metadata: {0}")]
    Metadata(String),
}

/// A Kafka string field from a `&str`.
pub(crate) fn sb(s: &str) -> kafka_protocol::protocol::StrBytes {
    kafka_protocol::protocol::StrBytes::from_string(s.to_string())
}

/// Wall-clock milliseconds since the Unix epoch (Kafka timestamps).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
