//! The topic manager: topics, their partitions and configs, persisted in the metadata store.
//!
//! A [`Topic`] is immutable; a change (new partitions, new configs) replaces it in the map, so
//! request handlers work on a consistent snapshot without holding locks. Create, delete and
//! alter are serialised by one async mutex. The replication issue moves these records into the
//! controller's Raft group; the partition handles stay the same.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use raft::{LogConfig, Partition, PartitionOptions, RaftNode};
use serde::{Deserialize, Serialize};
use storage::MetaStore;
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::metrics::{Metrics, TopicMetrics};
use crate::producer_state::ProducerTable;
use crate::topic_config::{self, ConfigError, ResolvedConfig};
use crate::Error;

const CF_TOPICS: &str = "topics";

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
    pub replica: Partition,
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

/// Every topic of the node.
pub struct TopicManager {
    broker: BrokerConfig,
    meta: MetaStore,
    log_dir: PathBuf,
    metrics: Metrics,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    admin: tokio::sync::Mutex<()>,
    raft: RaftNode,
}

impl TopicManager {
    /// Loads every topic from the metadata store and opens its partitions.
    pub fn open(
        broker: &BrokerConfig,
        meta: MetaStore,
        raft: RaftNode,
        metrics: &Metrics,
    ) -> Result<Self, Error> {
        let log_dir = broker.data_dir.join("log");
        std::fs::create_dir_all(&log_dir)?;
        remove_deleted_dirs(&log_dir);
        let mut topics = HashMap::new();
        for (key, value) in meta.scan_prefix(CF_TOPICS, b"")? {
            let name = String::from_utf8(key)
                .map_err(|_| Error::Metadata("topic name is not UTF-8".into()))?;
            let rec: TopicRecord = serde_json::from_slice(&value)
                .map_err(|e| Error::Metadata(format!("topic {name}: {e}")))?;
            let config = ResolvedConfig::resolve(&rec.configs, broker);
            let mut partitions = Vec::with_capacity(rec.partitions as usize);
            for p in 0..rec.partitions {
                partitions.push(open_partition(&log_dir, &name, p, &config, broker, &raft)?);
            }
            let topic = Topic {
                metrics: TopicMetrics::new(metrics, &name),
                internal: name.starts_with("__"),
                name: name.clone(),
                id: rec.id,
                partitions,
                overrides: rec.configs,
                config,
            };
            topics.insert(name, Arc::new(topic));
        }
        tracing::info!(topics = topics.len(), "loaded topics");
        Ok(TopicManager {
            broker: broker.clone(),
            meta,
            log_dir,
            metrics: metrics.clone(),
            topics: RwLock::new(topics),
            admin: tokio::sync::Mutex::new(()),
            raft,
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    pub fn get_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics.read().values().find(|t| t.id == id).cloned()
    }

    /// Every topic, sorted by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self.topics.read().values().cloned().collect();
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
        if self.topics.read().contains_key(name) {
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
        if rf > 1 {
            return Err(ApiError::new(
                codes::INVALID_REPLICATION_FACTOR,
                format!("replication factor {rf} is larger than the number of brokers (1)"),
            ));
        }
        for (k, v) in configs {
            topic_config::validate(k, v)?;
        }
        Ok((partitions, rf))
    }

    /// Creates a topic (after [`check_create`](Self::check_create)'s checks).
    pub async fn create(
        &self,
        name: &str,
        num_partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, ApiError> {
        let _guard = self.admin.lock().await;
        self.create_locked(name, num_partitions, replication_factor, configs)
    }

    /// Creates an internal topic at start-up if it does not exist yet (before any request is
    /// served, so nothing races with it). Returns the topic.
    pub fn ensure_internal(
        &self,
        name: &str,
        num_partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, ApiError> {
        if let Some(t) = self.get(name) {
            return Ok(t);
        }
        let _guard = self
            .admin
            .try_lock()
            .map_err(|_| ApiError::new(codes::INVALID_REQUEST, "topic admin busy at start-up"))?;
        self.create_locked(name, num_partitions, 1, configs)
    }

    fn create_locked(
        &self,
        name: &str,
        num_partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, ApiError> {
        let (partitions, _rf) =
            self.check_create(name, num_partitions, replication_factor, &configs)?;
        let id = Uuid::new_v4();
        let config = ResolvedConfig::resolve(&configs, &self.broker);
        let mut opened = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let dir = partition_dir(&self.log_dir, name, p);
            if dir.exists() {
                // Left over from a crash between directory creation and the metadata write.
                std::fs::remove_dir_all(&dir).map_err(storage_error)?;
            }
            raft::forget_group(&self.meta, &group_key(name, p)).map_err(storage_error)?;
            opened.push(
                open_partition(&self.log_dir, name, p, &config, &self.broker, &self.raft)
                    .map_err(storage_error)?,
            );
        }
        let rec = TopicRecord {
            id,
            partitions,
            configs: configs.clone(),
        };
        self.persist(name, &rec)?;
        let topic = Arc::new(Topic {
            metrics: TopicMetrics::new(&self.metrics, name),
            internal: name.starts_with("__"),
            name: name.to_string(),
            id,
            partitions: opened,
            overrides: configs,
            config,
        });
        self.topics.write().insert(name.to_string(), topic.clone());
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    /// Deletes a topic and its data.
    pub async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let _guard = self.admin.lock().await;
        if self.get(name).is_some_and(|t| t.internal) {
            return Err(ApiError::new(
                codes::INVALID_TOPIC_EXCEPTION,
                format!("'{name}' is an internal topic and cannot be deleted"),
            ));
        }
        let Some(topic) = self.topics.write().remove(name) else {
            return Err(ApiError::new(
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic '{name}' does not exist"),
            ));
        };
        self.meta
            .delete(CF_TOPICS, name.as_bytes())
            .map_err(storage_error)?;
        for p in &topic.partitions {
            p.replica.close().await;
            if let Err(e) = p.replica.forget() {
                tracing::warn!(error = %e, topic = name, partition = p.index, "forgetting raft state");
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
        tracing::info!(topic = name, "deleted topic");
        Ok(())
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

    /// CreatePartitions: grows a topic to `count` partitions.
    pub async fn add_partitions(&self, name: &str, count: i32) -> Result<(), ApiError> {
        let _guard = self.admin.lock().await;
        let topic = self.check_partitions(name, count)?;
        let mut partitions = topic.partitions.clone();
        for p in topic.partitions.len() as i32..count {
            let dir = partition_dir(&self.log_dir, name, p);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(storage_error)?;
            }
            raft::forget_group(&self.meta, &group_key(name, p)).map_err(storage_error)?;
            partitions.push(
                open_partition(
                    &self.log_dir,
                    name,
                    p,
                    &topic.config,
                    &self.broker,
                    &self.raft,
                )
                .map_err(storage_error)?,
            );
        }
        let rec = TopicRecord {
            id: topic.id,
            partitions: count,
            configs: topic.overrides.clone(),
        };
        self.persist(name, &rec)?;
        self.replace(&topic, |t| t.partitions = partitions);
        tracing::info!(topic = name, partitions = count, "added partitions");
        Ok(())
    }

    /// Replaces the explicitly set configs of a topic (callers validate first).
    pub async fn set_configs(
        &self,
        name: &str,
        update: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError>,
    ) -> Result<(), ApiError> {
        let _guard = self.admin.lock().await;
        let Some(topic) = self.get(name) else {
            return Err(ApiError::new(
                codes::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic '{name}' does not exist"),
            ));
        };
        let overrides = update(&topic.overrides)?;
        for (k, v) in &overrides {
            topic_config::validate(k, v)?;
        }
        let rec = TopicRecord {
            id: topic.id,
            partitions: topic.partitions.len() as i32,
            configs: overrides.clone(),
        };
        self.persist(name, &rec)?;
        let config = ResolvedConfig::resolve(&overrides, &self.broker);
        let log = log_config(&config, &self.broker);
        for p in &topic.partitions {
            p.replica.set_log_config(log.clone());
        }
        self.replace(&topic, |t| {
            t.overrides = overrides;
            t.config = config;
        });
        Ok(())
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
        self.topics.write().insert(old.name.clone(), Arc::new(new));
    }

    fn persist(&self, name: &str, rec: &TopicRecord) -> Result<(), ApiError> {
        let value = serde_json::to_vec(rec).map_err(storage_error)?;
        self.meta
            .put(CF_TOPICS, name.as_bytes(), &value)
            .map_err(storage_error)
    }

    /// Applies retention to every partition and refreshes the per-partition gauges.
    pub async fn enforce_retention(&self, now_ms: i64) {
        for topic in self.all() {
            for p in &topic.partitions {
                match p
                    .replica
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
                let labels = [topic.name.as_str(), &p.index.to_string()];
                self.metrics
                    .partition_high_watermark
                    .with_label_values(&labels)
                    .set(p.replica.high_watermark());
                self.metrics
                    .partition_log_size
                    .with_label_values(&labels)
                    .set(p.replica.size_bytes() as i64);
                self.metrics
                    .partition_log_start
                    .with_label_values(&labels)
                    .set(p.replica.log_start_offset());
            }
        }
    }

    /// Closes every partition (commits what is queued, syncs, marks a clean shutdown).
    pub async fn close_all(&self) {
        for topic in self.all() {
            for p in &topic.partitions {
                p.replica.close().await;
            }
        }
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
    config: &ResolvedConfig,
    broker: &BrokerConfig,
    raft: &RaftNode,
) -> Result<Arc<PartitionState>, Error> {
    let replica = Partition::open(
        &partition_dir(log_dir, topic, partition),
        PartitionOptions::single(
            log_config(config, broker),
            raft.clone(),
            group_key(topic, partition),
        ),
        Box::new(ProducerTable::default()),
    )?;
    Ok(Arc::new(PartitionState {
        index: partition,
        replica,
    }))
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
