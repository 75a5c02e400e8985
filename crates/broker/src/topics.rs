//! The topic manager: topics, their partitions and configs, as the cluster metadata log
//! (`metadata_log`, the controller's Raft group) says.
//!
//! A change is proposed to the metadata log and applied to the view when committed, on every
//! node alike; the request that asked for it is answered once the local view has it. A
//! [`Topic`] is immutable; a change (new partitions, new configs) replaces it in the map, so
//! request handlers work on a consistent snapshot without holding locks. Create, delete and
//! alter requests of one node are serialised by one async mutex.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use raft::{LogConfig, Partition, PartitionOptions, RaftNode};
use serde::{Deserialize, Serialize};
use storage::MetaStore;
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::metadata_log::{self, BrokerInfo, MetaRecord, METADATA_GROUP, METADATA_TOPIC};
use crate::metrics::{Metrics, TopicMetrics};
use crate::producer_state::ProducerTable;
use crate::topic_config::{self, ConfigError, ResolvedConfig};
use crate::Error;

const CF_TOPICS: &str = "topics";

/// How long a metadata change waits for the metadata log to have a reachable leader.
const METADATA_WAIT: Duration = Duration::from_secs(30);

pub use protocol::codes;

/// An error answered to a Kafka client: code and message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: i16,
    pub message: String,
}

impl ApiError {
    pub fn new(code: i16, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        ApiError::new(e.code, e.message)
    }
}

fn storage_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(codes::KAFKA_STORAGE_ERROR, e.to_string())
}

/// One partition replica of a topic.
pub struct PartitionState {
    pub index: i32,
    /// The nodes holding a replica (the first is the preferred leader).
    pub replicas: Vec<i32>,
    /// This node's replica, when it holds one.
    pub replica: Option<Partition>,
}

impl PartitionState {
    /// This node's replica if it leads the partition; otherwise the error to answer
    /// (NOT_LEADER_OR_FOLLOWER: the client refreshes its metadata and goes to the leader).
    pub fn leader(&self) -> Result<&Partition, i16> {
        match &self.replica {
            Some(r) if r.is_leader() => Ok(r),
            _ => Err(codes::NOT_LEADER_OR_FOLLOWER),
        }
    }

    /// The in-sync replicas as this node knows them (see `raft::Partition::in_sync_replicas`);
    /// every replica when this node hosts none.
    pub fn in_sync_replicas(&self) -> Vec<i32> {
        match &self.replica {
            Some(r) => r.in_sync_replicas().into_iter().map(|n| n as i32).collect(),
            None => self.replicas.clone(),
        }
    }

    /// The leader as this node knows it: its replica's view (-1 while none, or while the
    /// leader's node fails its liveness pings: clients then keep asking until the new
    /// leader is elected instead of retrying a dead node), else the preferred replica.
    pub fn leader_id(&self) -> i32 {
        match &self.replica {
            Some(r) => r.live_leader().map(|l| l as i32).unwrap_or(-1),
            None => self.replicas.first().copied().unwrap_or(-1),
        }
    }
}

/// A topic snapshot.
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    pub partitions: Vec<Arc<PartitionState>>,
    /// Explicitly set topic configs.
    pub overrides: BTreeMap<String, String>,
    pub config: ResolvedConfig,
    pub metrics: TopicMetrics,
    pub internal: bool,
}

impl Topic {
    pub fn partition(&self, index: i32) -> Option<&Arc<PartitionState>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

#[derive(Serialize, Deserialize)]
struct TopicRecord {
    id: Uuid,
    partitions: i32,
    configs: BTreeMap<String, String>,
}

/// Kafka's topic name rules.
pub fn validate_topic_name(name: &str) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::new(codes::INVALID_TOPIC_EXCEPTION, m));
    if name.is_empty() {
        return bad("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return bad(format!("topic name cannot be '{name}'"));
    }
    if name.len() > 249 {
        return bad(format!(
            "topic name is {} characters long, the limit is 249",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(format!(
            "topic name '{name}' contains '{c}': only ASCII alphanumerics, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// What the metadata log says about one topic (folded from its records).
struct TopicSpec {
    id: Uuid,
    replicas: Vec<Vec<i32>>,
    configs: BTreeMap<String, String>,
}

/// The topics by name and by id (Fetch v13+, Metadata and DeleteTopics name topics by id).
#[derive(Default)]
struct TopicMap {
    by_name: HashMap<String, Arc<Topic>>,
    by_id: HashMap<Uuid, Arc<Topic>>,
}

impl TopicMap {
    /// Adds or replaces the topic of that name.
    fn insert(&mut self, topic: Arc<Topic>) {
        if let Some(old) = self.by_name.insert(topic.name.clone(), topic.clone()) {
            self.by_id.remove(&old.id);
        }
        self.by_id.insert(topic.id, topic);
    }

    fn remove(&mut self, name: &str) -> Option<Arc<Topic>> {
        let t = self.by_name.remove(name)?;
        self.by_id.remove(&t.id);
        Some(t)
    }
}

/// Every topic of the node: the local view of the cluster metadata log.
pub struct TopicManager {
    broker: BrokerConfig,
    meta: MetaStore,
    log_dir: PathBuf,
    metrics: Metrics,
    topics: RwLock<TopicMap>,
    admin: tokio::sync::Mutex<()>,
    /// Metadata catch-up rounds ([`TopicManager::latest`]): how many were started, and
    /// (under the lock, which runs one round at a time) the number of the last that completed.
    catchups_started: std::sync::atomic::AtomicU64,
    catchup: tokio::sync::Mutex<u64>,
    raft: RaftNode,
    /// The cluster's nodes (broker ids), from the peer list (or this node alone).
    nodes: Vec<i32>,
    /// Registered Kafka listeners of the nodes.
    brokers: RwLock<BTreeMap<i32, BrokerInfo>>,
    /// The cluster id, once the metadata log has one.
    cluster_id: RwLock<Option<String>>,
    /// The metadata partition (`__cluster_metadata-0`).
    controller: Partition,
    /// The metadata offset up to which the view is applied; held while applying.
    applied: tokio::sync::Mutex<i64>,
    /// Topics found in the pre-metadata-log store, to be written into the log at start-up.
    legacy: parking_lot::Mutex<Vec<MetaRecord>>,
    /// Producer id blocks of the cluster.
    producer_ids: parking_lot::Mutex<metadata_log::ProducerIdBlocks>,
    /// In-sync replicas as the partitions' leaders last recorded them.
    isr: RwLock<metadata_log::IsrView>,
}

impl TopicManager {
    /// Opens the metadata partition, replays its committed records into the view and opens
    /// every partition of every topic. Blocking I/O; needs a tokio runtime.
    pub fn open(
        broker: &BrokerConfig,
        meta: MetaStore,
        raft: RaftNode,
        metrics: &Metrics,
    ) -> Result<Self, Error> {
        let log_dir = broker.data_dir.join("log");
        std::fs::create_dir_all(&log_dir)?;
        remove_deleted_dirs(&log_dir);
        let nodes: Vec<i32> = if broker.peers.is_empty() {
            vec![broker.node_id]
        } else {
            broker.peers.keys().copied().collect()
        };
        let voters = nodes
            .iter()
            .map(|n| {
                let addr = broker.peers.get(n).cloned().unwrap_or_default();
                (*n as u64, addr)
            })
            .collect();
        let controller = Partition::open(
            &log_dir.join(METADATA_GROUP),
            PartitionOptions {
                log: LogConfig {
                    fsync: broker.fsync.clone(),
                    ..LogConfig::default()
                },
                node: raft.clone(),
                group: METADATA_GROUP.into(),
                voters,
                preferred: None,
            },
            Box::new(raft::AdmitAll),
        )?;
        let (records, applied) = metadata_log::read_committed(&controller, 0)?;
        let mut specs: BTreeMap<String, TopicSpec> = BTreeMap::new();
        let mut brokers = BTreeMap::new();
        let mut cluster_id = None;
        let mut producer_ids = metadata_log::ProducerIdBlocks::default();
        let mut isr = metadata_log::IsrView::default();
        for (_, rec) in &records {
            match rec {
                MetaRecord::SetIsr { changes } => isr.apply(changes),
                MetaRecord::DeleteTopic { id, .. } => isr.remove_topic(*id),
                MetaRecord::InitCluster { cluster_id: id } => {
                    cluster_id.get_or_insert_with(|| id.clone());
                }
                MetaRecord::AllocateProducerIds { node, first, count } => {
                    producer_ids.apply(*node, *first, *count);
                }
                _ => {}
            }
            fold(&mut specs, &mut brokers, rec);
        }
        // Proposals forwarded by other nodes while this one leads the metadata log.
        let c = controller.clone();
        raft.registry.set_forwarder(
            METADATA_GROUP,
            Arc::new(move |body: bytes::Bytes| {
                let c = c.clone();
                Box::pin(async move {
                    let out = c
                        .propose(vec![bytes::BytesMut::from(&body[..])])
                        .await
                        .map_err(|e| e.to_string())?;
                    // Every node applies metadata: tell the followers it committed.
                    c.flush_commit().await;
                    match out.first() {
                        Some(raft::ProposeOutcome::Appended { base_offset }) => {
                            Ok(bytes::Bytes::copy_from_slice(&base_offset.to_be_bytes()))
                        }
                        other => Err(format!("metadata record not appended: {other:?}")),
                    }
                })
            }),
        );
        let mut legacy = Vec::new();
        if records.is_empty() {
            // A data directory from before the metadata log: its topics are taken as they are
            // and written into the log at start-up.
            for (key, value) in meta.scan_prefix(CF_TOPICS, b"")? {
                let name = String::from_utf8(key)
                    .map_err(|_| Error::Metadata("topic name is not UTF-8".into()))?;
                let rec: TopicRecord = serde_json::from_slice(&value)
                    .map_err(|e| Error::Metadata(format!("topic {name}: {e}")))?;
                let replicas = vec![vec![broker.node_id]; rec.partitions.max(0) as usize];
                legacy.push(MetaRecord::CreateTopic {
                    name: name.clone(),
                    id: rec.id,
                    replicas: replicas.clone(),
                    configs: rec.configs.clone(),
                });
                specs.insert(
                    name,
                    TopicSpec {
                        id: rec.id,
                        replicas,
                        configs: rec.configs,
                    },
                );
            }
        }
        let mut topics = TopicMap::default();
        for (name, spec) in specs {
            let config = ResolvedConfig::resolve(&spec.configs, broker);
            let mut partitions = Vec::with_capacity(spec.replicas.len());
            for (p, replicas) in spec.replicas.iter().enumerate() {
                let p = p as i32;
                claim_dir(&log_dir, &meta, &name, p, spec.id, false)?;
                partitions.push(open_partition(
                    &log_dir, &name, p, replicas, &config, broker, &raft,
                )?);
            }
            let topic = Topic {
                metrics: TopicMetrics::new(metrics, &name),
                internal: name.starts_with("__"),
                name: name.clone(),
                id: spec.id,
                partitions,
                overrides: spec.configs,
                config,
            };
            topics.insert(Arc::new(topic));
        }
        tracing::info!(
            topics = topics.by_name.len(),
            metadata_records = records.len(),
            "loaded topics from {METADATA_TOPIC}"
        );
        Ok(TopicManager {
            broker: broker.clone(),
            meta,
            log_dir,
            metrics: metrics.clone(),
            topics: RwLock::new(topics),
            admin: tokio::sync::Mutex::new(()),
            catchups_started: std::sync::atomic::AtomicU64::new(0),
            catchup: tokio::sync::Mutex::new(0),
            raft,
            nodes,
            brokers: RwLock::new(brokers),
            cluster_id: RwLock::new(cluster_id),
            controller,
            applied: tokio::sync::Mutex::new(applied),
            legacy: parking_lot::Mutex::new(legacy),
            producer_ids: parking_lot::Mutex::new(producer_ids),
            isr: RwLock::new(isr),
        })
    }

    /// The in-sync replicas to tell clients for a partition: the live view where this node
    /// leads it; elsewhere what its leader last recorded in the metadata log, so that every
    /// node answers alike (this replica's own guess only until a leader has recorded one).
    pub fn in_sync_replicas(&self, topic: &Topic, p: &PartitionState) -> Vec<i32> {
        if p.replica.as_ref().is_some_and(|r| r.is_leader()) {
            return p.in_sync_replicas();
        }
        match self.isr.read().get(topic.id, p.index) {
            Some((_, isr)) => isr.clone(),
            None => p.in_sync_replicas(),
        }
    }

    /// Records in the metadata log the in-sync replicas of every replicated partition this
    /// node leads whose live view differs from what is recorded (or was recorded in an
    /// earlier leader epoch): one record for all of them. Returns how many changed.
    pub async fn publish_isr(&self) -> Result<usize, ApiError> {
        let mut changes = Vec::new();
        {
            let recorded = self.isr.read();
            for topic in self.all() {
                for p in &topic.partitions {
                    let Some(r) = p.replica.as_ref().filter(|r| r.is_leader()) else {
                        continue;
                    };
                    if p.replicas.len() < 2 {
                        continue; // a lone replica is always its own ISR
                    }
                    let epoch = r.leader_epoch();
                    let isr = p.in_sync_replicas();
                    let same = recorded.get(topic.id, p.index).is_some_and(|(e, old)| {
                        *e == epoch && {
                            let (mut a, mut b) = (old.clone(), isr.clone());
                            a.sort_unstable();
                            b.sort_unstable();
                            a == b
                        }
                    });
                    if !same {
                        changes.push(metadata_log::IsrChange {
                            topic: topic.name.clone(),
                            id: topic.id,
                            partition: p.index,
                            epoch,
                            isr,
                        });
                    }
                }
            }
        }
        let n = changes.len();
        if n > 0 {
            self.propose(MetaRecord::SetIsr { changes }).await?;
        }
        Ok(n)
    }

    /// Reserves a block of `count` producer ids for this node through the metadata log,
    /// starting at or after `floor` (ids a data directory handed out before blocks were
    /// cluster-wide). Returns (first, end).
    pub async fn allocate_producer_ids(
        &self,
        floor: i64,
        count: i64,
    ) -> Result<(i64, i64), ApiError> {
        let node = self.broker.node_id;
        for _ in 0..10 {
            let first = self.producer_ids.lock().next.max(floor);
            self.propose(MetaRecord::AllocateProducerIds { node, first, count })
                .await?;
            if self.producer_ids.lock().latest.get(&node) == Some(&(first, first + count)) {
                return Ok((first, first + count));
            }
            // Another node's block was committed first: try again after it.
        }
        Err(ApiError::new(
            codes::COORDINATOR_NOT_AVAILABLE,
            "could not reserve producer ids (contended)",
        ))
    }

    /// Writes topics of a pre-metadata-log data directory into the metadata log (once).
    pub async fn migrate_legacy(&self) -> Result<(), ApiError> {
        let records = std::mem::take(&mut *self.legacy.lock());
        if records.is_empty() {
            return Ok(());
        }
        let n = records.len();
        for rec in records {
            self.propose(rec).await?;
        }
        for (key, _) in self
            .meta
            .scan_prefix(CF_TOPICS, b"")
            .map_err(storage_error)?
        {
            self.meta.delete(CF_TOPICS, &key).map_err(storage_error)?;
        }
        tracing::info!(topics = n, "moved topics into {METADATA_TOPIC}");
        Ok(())
    }

    /// The metadata partition (the tailer waits on its high watermark).
    /// The Raft side of this node (router, registry).
    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    pub fn controller(&self) -> &Partition {
        &self.controller
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().by_name.get(name).cloned()
    }

    pub fn get_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics.read().by_id.get(&id).cloned()
    }

    /// Every topic, sorted by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self.topics.read().by_name.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Checks a creation request without changing anything. Returns the partition count and
    /// replication factor that would be used.
    pub fn check_create(
        &self,
        name: &str,
        num_partitions: i32,
        replication_factor: i16,
        configs: &BTreeMap<String, String>,
    ) -> Result<(i32, i16), ApiError> {
        validate_topic_name(name)?;
        if name == METADATA_TOPIC {
            return Err(ApiError::new(
                codes::INVALID_TOPIC_EXCEPTION,
                format!("'{name}' is reserved for the cluster metadata log"),
            ));
        }
        if self.topics.read().by_name.contains_key(name) {
            return Err(ApiError::new(
                codes::TOPIC_ALREADY_EXISTS,
                format!("topic '{name}' already exists"),
            ));
        }
        let partitions = if num_partitions == -1 {
            self.broker.num_partitions
        } else {
            num_partitions
        };
        if partitions <= 0 {
            return Err(ApiError::new(
                codes::INVALID_PARTITIONS,
                format!("number of partitions must be positive, got {num_partitions}"),
            ));
        }
        if partitions > 100_000 {
            return Err(ApiError::new(
                codes::INVALID_PARTITIONS,
                format!("{partitions} partitions is more than this node allows (100000)"),
            ));
        }
        let rf = if replication_factor == -1 {
            self.broker.default_replication_factor
        } else {
            replication_factor
        };
        if rf <= 0 {
            return Err(ApiError::new(
                codes::INVALID_REPLICATION_FACTOR,
                format!("replication factor must be positive, got {replication_factor}"),
            ));
        }
        if rf as usize > self.nodes.len() {
            return Err(ApiError::new(
                codes::INVALID_REPLICATION_FACTOR,
                format!(
                    "replication factor {rf} is larger than the number of brokers ({})",
                    self.nodes.len()
                ),
            ));
        }
        for (k, v) in configs {
            topic_config::validate(k, v)?;
        }
        Ok((partitions, rf))
    }

    /// Replica lists for `count` partitions starting at index `first`: replication factor
    /// `rf`, spread round-robin over the nodes (the first replica is the preferred leader),
    /// rack-aware when nodes registered racks (`broker.rack`).
    fn assign(&self, first: i32, count: i32, rf: i16) -> Vec<Vec<i32>> {
        let racks: BTreeMap<i32, Option<String>> = self
            .brokers
            .read()
            .values()
            .map(|b| (b.node, b.rack.clone()))
            .collect();
        assign_replicas(&self.nodes, &racks, first, count, rf)
    }

    /// Creates a topic (after [`check_create`](Self::check_create)'s checks): proposes it to
    /// the metadata log and answers once the local view has applied it.
    pub async fn create(
        &self,
        name: &str,
        num_partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, ApiError> {
        let _guard = self.admin.lock().await;
        let (partitions, rf) =
            self.check_create(name, num_partitions, replication_factor, &configs)?;
        let id = Uuid::new_v4();
        self.propose(MetaRecord::CreateTopic {
            name: name.to_string(),
            id,
            replicas: self.assign(0, partitions, rf),
            configs,
        })
        .await?;
        match self.get(name) {
            Some(t) if t.id == id => Ok(t),
            _ => Err(ApiError::new(
                codes::TOPIC_ALREADY_EXISTS,
                format!("topic '{name}' was created concurrently"),
            )),
        }
    }

    /// Creates an internal topic at start-up if it does not exist yet (replication factor:
    /// every node, up to 3). Returns the topic.
    pub async fn ensure_internal(
        &self,
        name: &str,
        num_partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, ApiError> {
        if let Some(t) = self.get(name) {
            return Ok(t);
        }
        let rf = self.nodes.len().min(3) as i16;
        match self.create(name, num_partitions, rf, configs).await {
            Ok(t) => Ok(t),
            Err(_) if self.get(name).is_some() => Ok(self.get(name).expect("checked")),
            Err(e) => Err(e),
        }
    }

    /// The topic as the metadata log has it now. A node that does not know `name` may just
    /// not have applied its creation yet (a client that created it through another node a
    /// moment ago): it writes a no-op record and applies up to it, which takes in everything
    /// committed before. Kafka forwards admin writes to its controller for the same reason.
    /// Concurrent callers share rounds: one no-op started after a caller arrived serves it,
    /// so a flood of requests for unknown topics adds at most one record per commit.
    pub async fn latest(&self, name: &str) -> Option<Arc<Topic>> {
        use std::sync::atomic::Ordering;
        if let Some(t) = self.get(name) {
            return Some(t);
        }
        let arrived_after = self.catchups_started.load(Ordering::Acquire);
        let mut completed = self.catchup.lock().await;
        // A round numbered above `arrived_after` started after this call did.
        if *completed <= arrived_after {
            let round = self.catchups_started.fetch_add(1, Ordering::AcqRel) + 1;
            match self
                .propose(MetaRecord::SetIsr {
                    changes: Vec::new(),
                })
                .await
            {
                Ok(()) => *completed = round,
                Err(e) => {
                    tracing::debug!(topic = name, error = %e.message, "metadata catch-up failed")
                }
            }
        }
        drop(completed);
        self.get(name)
    }

    /// Deletes a topic and its data.
    pub async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let _guard = self.admin.lock().await;
        let Some(topic) = self.latest(name).await else {
            return Err(ApiError::new(
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic '{name}' does not exist"),
            ));
        };
        if topic.internal {
            return Err(ApiError::new(
                codes::INVALID_TOPIC_EXCEPTION,
                format!("'{name}' is an internal topic and cannot be deleted"),
            ));
        }
        self.propose(MetaRecord::DeleteTopic {
            name: name.to_string(),
            id: topic.id,
        })
        .await
    }

    /// Checks that a topic can grow to `count` partitions.
    pub fn check_partitions(&self, name: &str, count: i32) -> Result<Arc<Topic>, ApiError> {
        let Some(topic) = self.get(name) else {
            return Err(ApiError::new(
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic '{name}' does not exist"),
            ));
        };
        if topic.internal {
            // Groups are placed by hash over the partition count: more partitions would move
            // them away from their records.
            return Err(ApiError::new(
                codes::INVALID_PARTITIONS,
                format!("'{name}' is an internal topic; its partition count cannot change"),
            ));
        }
        let have = topic.partitions.len() as i32;
        if count <= have {
            return Err(ApiError::new(
                codes::INVALID_PARTITIONS,
                format!(
                    "topic '{name}' has {have} partitions; the new count {count} must be larger"
                ),
            ));
        }
        if count > 100_000 {
            return Err(ApiError::new(
                codes::INVALID_PARTITIONS,
                format!("{count} partitions is more than this node allows (100000)"),
            ));
        }
        Ok(topic)
    }

    /// CreatePartitions: grows a topic to `count` partitions (same replication factor).
    pub async fn add_partitions(&self, name: &str, count: i32) -> Result<(), ApiError> {
        let _guard = self.admin.lock().await;
        let topic = self.check_partitions(name, count)?;
        let have = topic.partitions.len() as i32;
        let rf = topic
            .partitions
            .first()
            .map(|p| p.replicas.len() as i16)
            .unwrap_or(1)
            .max(1);
        self.propose(MetaRecord::AddPartitions {
            name: name.to_string(),
            id: topic.id,
            from: have,
            replicas: self.assign(have, count - have, rf),
        })
        .await?;
        match self.get(name) {
            Some(t) if t.partitions.len() as i32 == count => Ok(()),
            _ => Err(ApiError::new(
                codes::INVALID_PARTITIONS,
                format!("topic '{name}' changed concurrently"),
            )),
        }
    }

    /// Replaces the explicitly set configs of a topic (callers validate first).
    pub async fn set_configs(
        &self,
        name: &str,
        update: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError>,
    ) -> Result<(), ApiError> {
        let _guard = self.admin.lock().await;
        let Some(topic) = self.latest(name).await else {
            return Err(ApiError::new(
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic '{name}' does not exist"),
            ));
        };
        let overrides = update(&topic.overrides)?;
        for (k, v) in &overrides {
            topic_config::validate(k, v)?;
        }
        self.propose(MetaRecord::SetConfigs {
            name: name.to_string(),
            id: topic.id,
            configs: overrides,
        })
        .await
    }

    /// The registered Kafka listeners of the cluster's nodes.
    pub fn brokers(&self) -> Vec<BrokerInfo> {
        self.brokers.read().values().cloned().collect()
    }

    /// The cluster's node ids.
    pub fn nodes(&self) -> &[i32] {
        &self.nodes
    }

    /// The node leading the metadata log, as this node sees it.
    pub fn controller_id(&self) -> Option<i32> {
        self.controller.role().leader.map(|l| l as i32)
    }

    /// The cluster id the metadata log holds; `proposal` becomes it if there is none yet (the
    /// first proposal committed wins).
    pub async fn init_cluster_id(&self, proposal: &str) -> Result<String, ApiError> {
        if let Some(id) = self.cluster_id.read().clone() {
            return Ok(id);
        }
        self.propose(MetaRecord::InitCluster {
            cluster_id: proposal.to_string(),
        })
        .await?;
        self.cluster_id.read().clone().ok_or_else(|| {
            ApiError::new(
                codes::UNKNOWN_SERVER_ERROR,
                "the cluster id was not applied",
            )
        })
    }

    /// Registers (or updates) this node's Kafka listener in the metadata log.
    pub async fn register_broker(&self) -> Result<(), ApiError> {
        let default = self.broker.endpoint(0);
        let me = BrokerInfo {
            node: self.broker.node_id,
            host: default.host.clone(),
            port: default.port,
            rack: self.broker.rack.clone(),
            listeners: self.broker.listeners.clone(),
        };
        if self.brokers.read().get(&me.node) == Some(&me) {
            return Ok(());
        }
        self.propose(MetaRecord::RegisterBroker {
            node: me.node,
            host: me.host,
            port: me.port,
            rack: me.rack,
            listeners: me.listeners,
        })
        .await
    }

    /// Proposes a record to the metadata log (through its leader, wherever it is) and waits
    /// until the local view has applied it. Retried while there is no reachable leader, for
    /// up to [`METADATA_WAIT`]; a retry after an unknown outcome may append the record twice,
    /// which applying tolerates.
    async fn propose(&self, rec: MetaRecord) -> Result<(), ApiError> {
        let batch = metadata_log::encode(&rec, crate::now_ms());
        let deadline = tokio::time::Instant::now() + METADATA_WAIT;
        let base = loop {
            let err = match self.controller.propose(vec![batch.clone()]).await {
                Ok(out) => match out.first() {
                    Some(raft::ProposeOutcome::Appended { base_offset }) => {
                        // Every node applies metadata: tell the followers it committed.
                        self.controller.flush_commit().await;
                        break *base_offset;
                    }
                    other => {
                        return Err(ApiError::new(
                            codes::UNKNOWN_SERVER_ERROR,
                            format!("metadata record not appended: {other:?}"),
                        ))
                    }
                },
                Err(raft::Error::NotLeader {
                    leader: Some(leader),
                }) => {
                    let body = batch.clone().freeze();
                    let answer = self
                        .raft
                        .router
                        .call(
                            leader,
                            bytes::Bytes::from_static(METADATA_GROUP.as_bytes()),
                            raft::FORWARD,
                            body,
                            Duration::from_secs(10),
                        )
                        .await;
                    match answer {
                        Ok(b) if b.len() == 8 => {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(&b);
                            break i64::from_be_bytes(a);
                        }
                        Ok(_) => "a malformed answer from the leader".to_string(),
                        Err(e) => format!("forwarding to node {leader}: {e}"),
                    }
                }
                Err(e @ raft::Error::NotLeader { leader: None }) => e.to_string(),
                Err(raft::Error::Closed) => {
                    return Err(ApiError::new(
                        codes::NOT_CONTROLLER,
                        "the metadata log is closed (shutting down)",
                    ))
                }
                Err(e) => return Err(storage_error(e)),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    codes::NOT_CONTROLLER,
                    format!("the metadata log has no reachable leader: {err}"),
                ));
            }
            tracing::debug!(error = %err, "metadata proposal: retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        self.catch_up(base + 1).await
    }

    /// Applies committed metadata records until the view has reached offset `target`.
    pub async fn catch_up(&self, target: i64) -> Result<(), ApiError> {
        let mut hw = self.controller.subscribe();
        let reached = tokio::time::timeout(Duration::from_secs(30), hw.wait_for(|h| *h >= target))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reached {
            return Err(ApiError::new(
                codes::REQUEST_TIMED_OUT,
                "the metadata log did not commit in time",
            ));
        }
        self.apply_committed().await
    }

    /// Applies every metadata record committed since the last call.
    pub async fn apply_committed(&self) -> Result<(), ApiError> {
        let mut applied = self.applied.lock().await;
        let (records, end) =
            metadata_log::read_committed(&self.controller, *applied).map_err(storage_error)?;
        for (after, rec) in records {
            self.apply(rec).await;
            *applied = after;
        }
        *applied = (*applied).max(end);
        Ok(())
    }

    /// Applies one committed record to the view (idempotent: stale records are skipped).
    async fn apply(&self, rec: MetaRecord) {
        match rec {
            MetaRecord::CreateTopic {
                name,
                id,
                replicas,
                configs,
            } => {
                if self.get(&name).is_some() {
                    return;
                }
                let config = ResolvedConfig::resolve(&configs, &self.broker);
                let mut opened = Vec::with_capacity(replicas.len());
                for (p, r) in replicas.iter().enumerate() {
                    let p = p as i32;
                    let res = self.open_new_partition(&name, p, r, id, &config);
                    match res {
                        Ok(part) => opened.push(part),
                        Err(e) => {
                            tracing::error!(topic = %name, partition = p, error = %e, "opening a partition of a new topic");
                            return;
                        }
                    }
                }
                let partitions = opened.len();
                let topic = Arc::new(Topic {
                    metrics: TopicMetrics::new(&self.metrics, &name),
                    internal: name.starts_with("__"),
                    name: name.clone(),
                    id,
                    partitions: opened,
                    overrides: configs,
                    config,
                });
                self.topics.write().insert(topic);
                tracing::info!(topic = %name, partitions, "created topic");
            }
            MetaRecord::DeleteTopic { name, id } => {
                let topic = {
                    let mut topics = self.topics.write();
                    match topics.by_name.get(&name) {
                        Some(t) if t.id == id => topics.remove(&name),
                        _ => None,
                    }
                };
                if let Some(topic) = topic {
                    self.isr.write().remove_topic(topic.id);
                    self.remove_data(&topic).await;
                    tracing::info!(topic = %name, "deleted topic");
                }
            }
            MetaRecord::AddPartitions {
                name,
                id,
                from,
                replicas,
            } => {
                let Some(topic) = self.get(&name) else { return };
                if topic.id != id || topic.partitions.len() as i32 != from {
                    return;
                }
                let mut partitions = topic.partitions.clone();
                for (i, r) in replicas.iter().enumerate() {
                    let p = from + i as i32;
                    let res = self.open_new_partition(&name, p, r, id, &topic.config);
                    match res {
                        Ok(part) => partitions.push(part),
                        Err(e) => {
                            tracing::error!(topic = %name, partition = p, error = %e, "opening a new partition");
                            break;
                        }
                    }
                }
                let count = partitions.len();
                self.replace(&topic, |t| t.partitions = partitions);
                tracing::info!(topic = %name, partitions = count, "added partitions");
            }
            MetaRecord::InitCluster { cluster_id } => {
                self.cluster_id.write().get_or_insert(cluster_id);
            }
            MetaRecord::AllocateProducerIds { node, first, count } => {
                self.producer_ids.lock().apply(node, first, count);
            }
            MetaRecord::SetIsr { changes } => self.isr.write().apply(&changes),
            MetaRecord::RegisterBroker {
                node,
                host,
                port,
                rack,
                listeners,
            } => {
                self.brokers.write().insert(
                    node,
                    BrokerInfo {
                        node,
                        host,
                        port,
                        rack,
                        listeners,
                    },
                );
            }
            MetaRecord::SetConfigs { name, id, configs } => {
                let Some(topic) = self.get(&name) else { return };
                if topic.id != id {
                    return;
                }
                let config = ResolvedConfig::resolve(&configs, &self.broker);
                let log = log_config(&config, &self.broker);
                for r in topic.partitions.iter().filter_map(|p| p.replica.as_ref()) {
                    r.set_log_config(log.clone());
                }
                self.replace(&topic, |t| {
                    t.overrides = configs;
                    t.config = config;
                });
            }
        }
    }

    /// Opens partition `p` of a topic being created or grown now (clearing whatever a crash
    /// left in its directory).
    fn open_new_partition(
        &self,
        name: &str,
        p: i32,
        replicas: &[i32],
        id: Uuid,
        config: &ResolvedConfig,
    ) -> Result<Arc<PartitionState>, Error> {
        claim_dir(&self.log_dir, &self.meta, name, p, id, true)?;
        open_partition(
            &self.log_dir,
            name,
            p,
            replicas,
            config,
            &self.broker,
            &self.raft,
        )
    }

    /// Closes a deleted topic's replicas and removes their data and Raft state.
    async fn remove_data(&self, topic: &Topic) {
        let name = &topic.name;
        for p in &topic.partitions {
            let Some(replica) = &p.replica else { continue };
            replica.close().await;
            if let Err(e) = replica.forget() {
                tracing::warn!(error = %e, topic = %name, partition = p.index, "forgetting raft state");
            }
            let dir = partition_dir(&self.log_dir, name, p.index);
            let gone = self.log_dir.join(format!(
                "{}-{}.{}.deleted",
                name,
                p.index,
                Uuid::new_v4().simple()
            ));
            if let Err(e) = std::fs::rename(&dir, &gone) {
                tracing::warn!(error = %e, dir = %dir.display(), "renaming deleted partition");
                continue;
            }
            tokio::task::spawn_blocking(move || {
                if let Err(e) = std::fs::remove_dir_all(&gone) {
                    tracing::warn!(error = %e, dir = %gone.display(), "removing deleted partition");
                }
            });
        }
        self.metrics
            .remove_topic(name, topic.partitions.len() as i32);
    }

    fn replace(&self, old: &Topic, change: impl FnOnce(&mut Topic)) {
        let mut new = Topic {
            name: old.name.clone(),
            id: old.id,
            partitions: old.partitions.clone(),
            overrides: old.overrides.clone(),
            config: old.config.clone(),
            metrics: old.metrics.clone(),
            internal: old.internal,
        };
        change(&mut new);
        self.topics.write().insert(Arc::new(new));
    }

    /// Applies retention to every partition and refreshes the per-partition gauges.
    pub async fn enforce_retention(&self, now_ms: i64) {
        for topic in self.all() {
            for p in &topic.partitions {
                let Some(replica) = &p.replica else { continue };
                match replica
                    .enforce_retention(
                        now_ms,
                        topic.config.retention_ms,
                        topic.config.retention_bytes,
                    )
                    .await
                {
                    Ok(false) => {}
                    Ok(true) => {
                        tracing::info!(topic = %topic.name, partition = p.index, "retention: segments past retention handed to raft for purging")
                    }
                    Err(e) => {
                        tracing::warn!(topic = %topic.name, partition = p.index, error = %e, "retention failed")
                    }
                }
            }
        }
    }

    /// Closes every partition and the metadata partition (commits what is queued, syncs,
    /// marks a clean shutdown).
    pub async fn close_all(&self) {
        for topic in self.all() {
            for r in topic.partitions.iter().filter_map(|p| p.replica.as_ref()) {
                r.close().await;
            }
        }
        self.controller.close().await;
    }
}

fn partition_dir(log_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    log_dir.join(format!("{topic}-{partition}"))
}

/// The storage settings of a topic's partitions.
pub fn log_config(config: &ResolvedConfig, broker: &BrokerConfig) -> LogConfig {
    LogConfig {
        segment_bytes: config.segment_bytes,
        segment_ms: Some(config.segment_ms),
        index_interval_bytes: config.index_interval_bytes,
        fsync: broker.fsync.clone(),
    }
}

/// The name of a partition's Raft group (on the wire and in the metadata store).
fn group_key(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

fn open_partition(
    log_dir: &Path,
    topic: &str,
    partition: i32,
    replicas: &[i32],
    config: &ResolvedConfig,
    broker: &BrokerConfig,
    raft: &RaftNode,
) -> Result<Arc<PartitionState>, Error> {
    if !replicas.contains(&broker.node_id) {
        return Ok(Arc::new(PartitionState {
            index: partition,
            replicas: replicas.to_vec(),
            replica: None,
        }));
    }
    let voters = replicas
        .iter()
        .map(|r| (*r as u64, String::new()))
        .collect();
    let replica = Partition::open(
        &partition_dir(log_dir, topic, partition),
        PartitionOptions {
            log: log_config(config, broker),
            node: raft.clone(),
            group: group_key(topic, partition),
            voters,
            preferred: replicas.first().map(|r| *r as u64),
        },
        Box::new(ProducerTable::new(broker.producer_id_expiration_ms)),
    )?;
    Ok(Arc::new(PartitionState {
        index: partition,
        replicas: replicas.to_vec(),
        replica: Some(replica),
    }))
}

/// Replica lists for partitions `first..first + count`, `rf` replicas each, over `nodes`.
/// Without racks: round-robin from the partition index (replica r of partition p is node
/// `(p + r) % n`), so leaders and replicas spread evenly. With racks (any node has one; nodes
/// without one share an unnamed rack): the nodes are ordered alternating between racks, the
/// leader is taken round-robin from that order, and each further replica is the next node
/// in the order whose rack holds no replica of the partition yet (any unused node once every
/// rack has one), as Kafka's rack-aware assignment spreads them.
fn assign_replicas(
    nodes: &[i32],
    racks: &BTreeMap<i32, Option<String>>,
    first: i32,
    count: i32,
    rf: i16,
) -> Vec<Vec<i32>> {
    let n = nodes.len();
    let rack_of = |node: i32| racks.get(&node).cloned().flatten().unwrap_or_default();
    if nodes.iter().all(|node| rack_of(*node).is_empty()) {
        return (first..first + count)
            .map(|p| {
                (0..rf as usize)
                    .map(|r| nodes[(p as usize + r) % n])
                    .collect()
            })
            .collect();
    }
    let mut by_rack: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for node in nodes {
        by_rack.entry(rack_of(*node)).or_default().push(*node);
    }
    let mut order = Vec::with_capacity(n);
    for round in 0..n {
        for members in by_rack.values() {
            if let Some(node) = members.get(round) {
                order.push(*node);
            }
        }
    }
    let rack_count = by_rack.len();
    (first..first + count)
        .map(|p| {
            let start = p as usize % n;
            let mut replicas = vec![order[start]];
            let mut used_racks = vec![rack_of(order[start])];
            for step in 1..n {
                if replicas.len() == rf as usize {
                    break;
                }
                let node = order[(start + step) % n];
                let rack = rack_of(node);
                if used_racks.len() < rack_count && used_racks.contains(&rack) {
                    continue;
                }
                used_racks.push(rack);
                replicas.push(node);
            }
            // Every rack used and still short: fill with the nodes skipped above.
            for step in 1..n {
                if replicas.len() == rf as usize {
                    break;
                }
                let node = order[(start + step) % n];
                if !replicas.contains(&node) {
                    replicas.push(node);
                }
            }
            replicas
        })
        .collect()
}

/// Folds one metadata record into the topic specs and brokers (start-up replay).
fn fold(
    specs: &mut BTreeMap<String, TopicSpec>,
    brokers: &mut BTreeMap<i32, BrokerInfo>,
    rec: &MetaRecord,
) {
    match rec {
        MetaRecord::InitCluster { .. }
        | MetaRecord::AllocateProducerIds { .. }
        | MetaRecord::SetIsr { .. } => {}
        MetaRecord::RegisterBroker {
            node,
            host,
            port,
            rack,
            listeners,
        } => {
            brokers.insert(
                *node,
                BrokerInfo {
                    node: *node,
                    host: host.clone(),
                    port: *port,
                    rack: rack.clone(),
                    listeners: listeners.clone(),
                },
            );
        }
        MetaRecord::CreateTopic {
            name,
            id,
            replicas,
            configs,
        } => {
            specs.entry(name.clone()).or_insert_with(|| TopicSpec {
                id: *id,
                replicas: replicas.clone(),
                configs: configs.clone(),
            });
        }
        MetaRecord::DeleteTopic { name, id } => {
            if specs.get(name).is_some_and(|s| s.id == *id) {
                specs.remove(name);
            }
        }
        MetaRecord::AddPartitions {
            name,
            id,
            from,
            replicas,
        } => {
            if let Some(s) = specs.get_mut(name) {
                if s.id == *id && s.replicas.len() as i32 == *from {
                    s.replicas.extend(replicas.iter().cloned());
                }
            }
        }
        MetaRecord::SetConfigs { name, id, configs } => {
            if let Some(s) = specs.get_mut(name) {
                if s.id == *id {
                    s.configs = configs.clone();
                }
            }
        }
    }
}

/// The file in a partition directory naming the topic id it belongs to.
const TOPIC_ID_FILE: &str = "topic.id";

/// Makes sure the directory of partition `p` of topic `id` holds nothing of another topic of
/// the same name (a deleted one whose removal a crash interrupted): such a directory and its
/// Raft state are removed. A directory without a marker is taken as this topic's unless
/// `fresh` (the topic is being created now), then it is left over from a crash and removed.
fn claim_dir(
    log_dir: &Path,
    meta: &MetaStore,
    topic: &str,
    p: i32,
    id: Uuid,
    fresh: bool,
) -> Result<(), Error> {
    let dir = partition_dir(log_dir, topic, p);
    let marker = dir.join(TOPIC_ID_FILE);
    let mine = match std::fs::read_to_string(&marker) {
        Ok(s) => s.trim() == id.to_string(),
        Err(_) => !fresh,
    };
    if dir.exists() && !mine {
        std::fs::remove_dir_all(&dir)?;
    }
    if !dir.exists() {
        raft::forget_group(meta, &group_key(topic, p)).map_err(Error::Io)?;
    }
    std::fs::create_dir_all(&dir)?;
    if !marker.exists() {
        let tmp = dir.join(format!("{TOPIC_ID_FILE}.tmp"));
        std::fs::write(&tmp, id.to_string())?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &marker)?;
        std::fs::File::open(&dir)?.sync_all()?;
    }
    Ok(())
}

fn remove_deleted_dirs(log_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(log_dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().ends_with(".deleted") {
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!(error = %err, dir = %e.path().display(), "removing deleted partition");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replicas_spread_round_robin_and_across_racks() {
        let nodes = [1, 2, 3];
        let none = BTreeMap::new();
        assert_eq!(
            super::assign_replicas(&nodes, &none, 0, 3, 2),
            vec![vec![1, 2], vec![2, 3], vec![3, 1]]
        );
        // Racks a, a, b: every partition with two replicas has one in each rack, and the
        // leaders still rotate over all three nodes.
        let racks: BTreeMap<i32, Option<String>> = [
            (1, Some("a".to_string())),
            (2, Some("a".to_string())),
            (3, Some("b".to_string())),
        ]
        .into_iter()
        .collect();
        let got = super::assign_replicas(&nodes, &racks, 0, 6, 2);
        for r in &got {
            let mut rs: Vec<_> = r.iter().map(|n| racks[n].clone()).collect();
            rs.sort();
            assert_eq!(rs, [Some("a".into()), Some("b".into())], "{got:?}");
        }
        let mut leaders: Vec<_> = got.iter().map(|r| r[0]).collect();
        leaders.sort();
        assert_eq!(leaders, [1, 1, 2, 2, 3, 3]);
        // Three replicas over two racks: all nodes, no repeats.
        for r in super::assign_replicas(&nodes, &racks, 0, 3, 3) {
            let mut r = r.clone();
            r.sort();
            assert_eq!(r, [1, 2, 3]);
        }
    }

    use super::*;
    use bytes::BytesMut;

    fn config(dir: &Path) -> BrokerConfig {
        BrokerConfig {
            node_id: 1,
            data_dir: dir.to_path_buf(),
            ..BrokerConfig::default()
        }
    }

    fn open(cfg: &BrokerConfig, meta: &MetaStore) -> TopicManager {
        TopicManager::open(
            cfg,
            meta.clone(),
            RaftNode::single(1, meta.clone()),
            &Metrics::new(),
        )
        .expect("open")
    }

    fn batch() -> BytesMut {
        crate::groups::store::encode_batch(
            &[(
                bytes::Bytes::from_static(b"k"),
                Some(bytes::Bytes::from_static(b"v")),
            )],
            0,
        )
    }

    /// Topics live in the metadata log: created, altered, grown and deleted topics come back
    /// as they were after a restart, with their data.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn topics_survive_restart_through_the_metadata_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path());
        let meta = MetaStore::open(&dir.path().join("meta")).expect("meta");
        let tm = open(&cfg, &meta);
        let a = tm
            .create("a", 2, 1, BTreeMap::new())
            .await
            .expect("create a");
        tm.create("b", 1, 1, BTreeMap::new())
            .await
            .expect("create b");
        a.partitions[1]
            .replica
            .as_ref()
            .expect("local")
            .propose(vec![batch()])
            .await
            .expect("produce");
        tm.add_partitions("a", 3).await.expect("grow");
        tm.set_configs("a", |_| {
            Ok([("retention.ms".to_string(), "1000".to_string())].into())
        })
        .await
        .expect("alter");
        tm.delete("b").await.expect("delete");
        assert!(matches!(
            tm.check_create(METADATA_TOPIC, 1, 1, &BTreeMap::new()),
            Err(e) if e.code == codes::INVALID_TOPIC_EXCEPTION
        ));
        assert!(matches!(
            tm.check_create("c", 1, 2, &BTreeMap::new()),
            Err(e) if e.code == codes::INVALID_REPLICATION_FACTOR
        ));
        tm.close_all().await;

        let tm = open(&cfg, &meta);
        let a = tm.get("a").expect("a is back");
        assert_eq!(a.partitions.len(), 3);
        assert_eq!(
            a.overrides.get("retention.ms").map(String::as_str),
            Some("1000")
        );
        assert_eq!(
            a.partitions[1]
                .replica
                .as_ref()
                .expect("local")
                .high_watermark(),
            1
        );
        assert!(tm.get("b").is_none());
        // b can be created again, empty.
        let b = tm
            .create("b", 1, 1, BTreeMap::new())
            .await
            .expect("create b again");
        assert_eq!(
            b.partitions[0]
                .replica
                .as_ref()
                .expect("local")
                .high_watermark(),
            0
        );
        tm.close_all().await;
    }

    /// Admin requests for a topic the node does not know catch up with the metadata log by a
    /// no-op record; concurrent ones share records instead of writing one each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_catch_ups_share_their_no_op_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path());
        let meta = MetaStore::open(&dir.path().join("meta")).expect("meta");
        let tm = Arc::new(open(&cfg, &meta));
        tm.create("a", 1, 1, BTreeMap::new())
            .await
            .expect("create a");
        let before = tm.controller().log_end_offset();
        // Known topics need no round.
        assert!(tm.latest("a").await.is_some());
        assert_eq!(tm.controller().log_end_offset(), before);
        assert!(tm.latest("nope").await.is_none());
        assert_eq!(tm.controller().log_end_offset(), before + 1);
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let tm = tm.clone();
                tokio::spawn(async move { tm.latest(&format!("nope-{i}")).await.is_none() })
            })
            .collect();
        for c in calls {
            assert!(c.await.expect("task"));
        }
        let written = tm.controller().log_end_offset() - before - 1;
        // At least one round ran for the 50 (each must see a record started after it
        // arrived); while one round is being committed the rest queue for the next.
        assert!(
            (1..50).contains(&written),
            "50 concurrent catch-ups wrote {written} records"
        );
        tm.close_all().await;
    }

    /// A data directory from before the metadata log keeps its topics and their data.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn legacy_topics_move_into_the_metadata_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path());
        let meta = MetaStore::open(&dir.path().join("meta")).expect("meta");
        // What an older node left: a topic record in the store and its partition log.
        let id = Uuid::new_v4();
        let rec = TopicRecord {
            id,
            partitions: 1,
            configs: BTreeMap::new(),
        };
        meta.put(CF_TOPICS, b"old", &serde_json::to_vec(&rec).expect("json"))
            .expect("put");
        {
            let log_dir = dir.path().join("log");
            let p = Partition::open(
                &partition_dir(&log_dir, "old", 0),
                PartitionOptions::single(
                    LogConfig::default(),
                    RaftNode::single(1, meta.clone()),
                    group_key("old", 0),
                ),
                Box::new(raft::AdmitAll),
            )
            .expect("old partition");
            p.propose(vec![batch(), batch()]).await.expect("produce");
            p.close().await;
        }
        let tm = open(&cfg, &meta);
        tm.migrate_legacy().await.expect("migrate");
        assert_eq!(
            tm.get("old").expect("old").partitions[0]
                .replica
                .as_ref()
                .expect("local")
                .high_watermark(),
            2
        );
        tm.close_all().await;
        assert!(meta.scan_prefix(CF_TOPICS, b"").expect("scan").is_empty());

        let tm = open(&cfg, &meta);
        let old = tm.get("old").expect("old from the metadata log");
        assert_eq!(old.id, id);
        assert_eq!(
            old.partitions[0]
                .replica
                .as_ref()
                .expect("local")
                .high_watermark(),
            2
        );
        tm.close_all().await;
    }
}
