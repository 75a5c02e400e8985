//! Node configuration: built-in defaults < TOML file < `SLUICE_*` environment < flags.
//!
//! Settings Kafka has keep Kafka's names: `log.retention.ms` in the TOML file (dotted keys or
//! tables), `SLUICE_LOG_RETENTION_MS` in the environment, `--log-retention-ms` as a flag.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use broker::BrokerConfig;
use clap::Parser;
use storage::FsyncPolicy;

/// Sluice: a Kafka-compatible event streaming node.
///
/// With no arguments it starts a single node on 127.0.0.1:9092 with data in ./sluice-data.
/// Every flag can also be set by the environment variable shown, or in the TOML file given
/// by --config, under the Kafka name in brackets (flags win over the environment, the
/// environment over the file).
#[derive(Parser, Debug, Default)]
#[command(name = "sluice", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML configuration file.
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id [node.id] (default 1).
    #[arg(long, env = "SLUICE_NODE_ID", value_name = "N")]
    pub node_id: Option<i32>,
    /// Address the Kafka listener binds [kafka.addr] (default 127.0.0.1:9092); shorthand for
    /// `--listeners PLAINTEXT://HOST:PORT`.
    #[arg(long, env = "SLUICE_KAFKA_ADDR", value_name = "HOST:PORT")]
    pub kafka_addr: Option<String>,
    /// Named Kafka listeners, `NAME://HOST:PORT,...` [listeners], e.g.
    /// `INTERNAL://0.0.0.0:9092,EXTERNAL://0.0.0.0:19092`; instead of --kafka-addr.
    #[arg(long, env = "SLUICE_LISTENERS", value_name = "NAME://HOST:PORT,...")]
    pub listeners: Option<String>,
    /// Address clients are given per listener, `NAME://HOST:PORT,...`
    /// [advertised.listeners]; a client is told every node's address for the listener it
    /// connected on. A listener left out advertises its bind address (127.0.0.1 for 0.0.0.0).
    #[arg(
        long,
        env = "SLUICE_ADVERTISED_LISTENERS",
        value_name = "NAME://HOST:PORT,..."
    )]
    pub advertised_listeners: Option<String>,
    /// Address given to clients in metadata [advertised.kafka.addr] (default: the Kafka
    /// listener's address; 127.0.0.1 when it binds 0.0.0.0).
    #[arg(long, env = "SLUICE_ADVERTISED_KAFKA_ADDR", value_name = "HOST:PORT")]
    pub advertised_kafka_addr: Option<String>,
    /// Address of the admin HTTP listener: /metrics, /health/live, /health/ready
    /// [admin.addr] (default 127.0.0.1:9644).
    #[arg(long, env = "SLUICE_ADMIN_ADDR", value_name = "HOST:PORT")]
    pub admin_addr: Option<String>,
    /// Data directory [data.dir] (default ./sluice-data).
    #[arg(long, env = "SLUICE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Fsync policy: `always` (group commit before acknowledging) or `interval` [log.fsync]
    /// (default always).
    #[arg(long, env = "SLUICE_LOG_FSYNC", value_name = "POLICY")]
    pub fsync: Option<String>,
    /// Fsync interval under the `interval` policy [log.flush.interval.ms] (default 1000).
    #[arg(long, env = "SLUICE_LOG_FLUSH_INTERVAL_MS", value_name = "MS")]
    pub log_flush_interval_ms: Option<u64>,
    /// Rack of this node [broker.rack].
    #[arg(long, env = "SLUICE_BROKER_RACK", value_name = "RACK")]
    pub broker_rack: Option<String>,
    /// Create topics on first use in Metadata [auto.create.topics.enable] (default true).
    #[arg(long, env = "SLUICE_AUTO_CREATE_TOPICS_ENABLE", value_name = "BOOL")]
    pub auto_create_topics_enable: Option<bool>,
    /// Partitions of auto-created topics and of topics created with -1 [num.partitions]
    /// (default 1).
    #[arg(long, env = "SLUICE_NUM_PARTITIONS", value_name = "N")]
    pub num_partitions: Option<i32>,
    /// Replication factor used when a request gives -1 [default.replication.factor]
    /// (default 1).
    #[arg(long, env = "SLUICE_DEFAULT_REPLICATION_FACTOR", value_name = "N")]
    pub default_replication_factor: Option<i16>,
    /// Largest record batch accepted [message.max.bytes] (default 1048588).
    #[arg(long, env = "SLUICE_MESSAGE_MAX_BYTES", value_name = "BYTES")]
    pub message_max_bytes: Option<i32>,
    /// Largest request frame accepted [socket.request.max.bytes] (default 104857600).
    #[arg(long, env = "SLUICE_SOCKET_REQUEST_MAX_BYTES", value_name = "BYTES")]
    pub socket_request_max_bytes: Option<usize>,
    /// Default topic retention by time, -1 forever [log.retention.ms] (default 7 days).
    #[arg(long, env = "SLUICE_LOG_RETENTION_MS", value_name = "MS")]
    pub log_retention_ms: Option<i64>,
    /// Default topic retention by partition size, -1 unlimited [log.retention.bytes].
    #[arg(long, env = "SLUICE_LOG_RETENTION_BYTES", value_name = "BYTES")]
    pub log_retention_bytes: Option<i64>,
    /// Segment size at which a log rolls [log.segment.bytes] (default 1 GiB).
    #[arg(long, env = "SLUICE_LOG_SEGMENT_BYTES", value_name = "BYTES")]
    pub log_segment_bytes: Option<i64>,
    /// Segment age at which a log rolls [log.roll.ms] (default 7 days).
    #[arg(long, env = "SLUICE_LOG_ROLL_MS", value_name = "MS")]
    pub log_roll_ms: Option<i64>,
    /// Bytes between sparse index entries [log.index.interval.bytes] (default 4096).
    #[arg(long, env = "SLUICE_LOG_INDEX_INTERVAL_BYTES", value_name = "BYTES")]
    pub log_index_interval_bytes: Option<i32>,
    /// How often retention runs [log.retention.check.interval.ms] (default 300000).
    #[arg(
        long,
        env = "SLUICE_LOG_RETENTION_CHECK_INTERVAL_MS",
        value_name = "MS"
    )]
    pub log_retention_check_interval_ms: Option<u64>,
    /// Partitions of the internal `__consumer_offsets` topic, used when it is first
    /// created [offsets.topic.num.partitions] (default 50).
    #[arg(long, env = "SLUICE_OFFSETS_TOPIC_NUM_PARTITIONS", value_name = "N")]
    pub offsets_topic_num_partitions: Option<i32>,
    /// Partitions of the internal `__transaction_state` topic, used when it is first
    /// created [transaction.state.log.num.partitions] (default 50).
    #[arg(
        long,
        env = "SLUICE_TRANSACTION_STATE_LOG_NUM_PARTITIONS",
        value_name = "N"
    )]
    pub transaction_state_log_num_partitions: Option<i32>,
    /// Forget a transactional id after this long with no transaction
    /// [transactional.id.expiration.ms] (default 604800000, 7 days).
    #[arg(long, env = "SLUICE_TRANSACTIONAL_ID_EXPIRATION_MS", value_name = "MS")]
    pub transactional_id_expiration_ms: Option<i64>,
    /// Forget an idempotent producer's sequence state on a partition after this long
    /// without a write from it [producer.id.expiration.ms] (default 86400000, 1 day).
    #[arg(long, env = "SLUICE_PRODUCER_ID_EXPIRATION_MS", value_name = "MS")]
    pub producer_id_expiration_ms: Option<i64>,
    /// How long a new consumer group waits for more members before its first rebalance
    /// [group.initial.rebalance.delay.ms] (default 3000).
    #[arg(
        long,
        env = "SLUICE_GROUP_INITIAL_REBALANCE_DELAY_MS",
        value_name = "MS"
    )]
    pub group_initial_rebalance_delay_ms: Option<i32>,
    /// How often members of consumer-protocol (KIP-848, `group.protocol=consumer`) groups
    /// heartbeat [group.consumer.heartbeat.interval.ms] (default 1000; Kafka's is 5000).
    #[arg(
        long,
        env = "SLUICE_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS",
        value_name = "MS"
    )]
    pub group_consumer_heartbeat_interval_ms: Option<i32>,
    /// How long a consumer-protocol member may go without a heartbeat before it is removed
    /// [group.consumer.session.timeout.ms] (default 45000).
    #[arg(
        long,
        env = "SLUICE_GROUP_CONSUMER_SESSION_TIMEOUT_MS",
        value_name = "MS"
    )]
    pub group_consumer_session_timeout_ms: Option<i32>,
    /// Smallest session timeout a group member may ask for [group.min.session.timeout.ms]
    /// (default 6000).
    #[arg(long, env = "SLUICE_GROUP_MIN_SESSION_TIMEOUT_MS", value_name = "MS")]
    pub group_min_session_timeout_ms: Option<i32>,
    /// Largest session timeout a group member may ask for [group.max.session.timeout.ms]
    /// (default 1800000).
    #[arg(long, env = "SLUICE_GROUP_MAX_SESSION_TIMEOUT_MS", value_name = "MS")]
    pub group_max_session_timeout_ms: Option<i32>,
    /// How long committed offsets of an empty group are kept [offsets.retention.minutes]
    /// (default 10080, 7 days).
    #[arg(long, env = "SLUICE_OFFSETS_RETENTION_MINUTES", value_name = "MIN")]
    pub offsets_retention_minutes: Option<i64>,
    /// How often expired offsets are removed [offsets.retention.check.interval.ms]
    /// (default 600000).
    #[arg(
        long,
        env = "SLUICE_OFFSETS_RETENTION_CHECK_INTERVAL_MS",
        value_name = "MS"
    )]
    pub offsets_retention_check_interval_ms: Option<u64>,
    /// Address the cluster listener binds, for Raft traffic between nodes [cluster.addr]
    /// (default 127.0.0.1:9093; used only with --peers).
    #[arg(long, env = "SLUICE_CLUSTER_ADDR", value_name = "HOST:PORT")]
    pub cluster_addr: Option<String>,
    /// Every node of the cluster with its cluster address, this node included, as
    /// `ID@HOST:PORT,...` [cluster.peers]. Without it the node runs alone.
    #[arg(long, env = "SLUICE_PEERS", value_name = "ID@HOST:PORT,...")]
    pub peers: Option<String>,
    /// Per-partition metric series: high watermark, log size, in-sync replicas, follower lag
    /// [metrics.per.partition] (default true; turn off with very many partitions).
    #[arg(long, env = "SLUICE_METRICS_PER_PARTITION", value_name = "BOOL")]
    pub metrics_per_partition: Option<bool>,
    /// Log filter, as RUST_LOG [log.level] (default `info,openraft=error`: openraft logs every
    /// election step and unreachable peer for every group at info/warn).
    #[arg(long, env = "SLUICE_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// What to do instead of running a node.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Asks the node's admin listener whether it is ready (`/health/ready`) and exits 0 if
    /// it is, 1 if not: a container healthcheck that needs no shell or curl.
    Healthcheck {
        /// The URL to ask (default: /health/ready on this configuration's admin address,
        /// 127.0.0.1 when it binds every interface).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

/// Everything the node needs to start.
#[derive(Debug)]
pub struct NodeConfig {
    /// The address each Kafka listener binds, in the order of `broker.listeners`.
    pub kafka_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub log_level: String,
    pub broker: BrokerConfig,
}

/// A TOML file flattened to Kafka-style dotted names.
struct FileConfig(BTreeMap<String, toml::Value>);

impl FileConfig {
    fn load(path: Option<&PathBuf>) -> anyhow::Result<Self> {
        let mut out = BTreeMap::new();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let table: toml::Table = text
                .parse()
                .with_context(|| format!("parsing config file {}", path.display()))?;
            flatten("", &toml::Value::Table(table), &mut out);
        }
        for key in out.keys() {
            if !KNOWN_KEYS.contains(&key.as_str()) {
                bail!("unknown setting '{key}' in the config file (see docs/configuration.md)");
            }
        }
        Ok(FileConfig(out))
    }

    fn string(&self, key: &str) -> anyhow::Result<Option<String>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(anyhow!("'{key}' must be a string, got {v}")),
        }
    }

    fn int<T: TryFrom<i64>>(&self, key: &str) -> anyhow::Result<Option<T>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) => T::try_from(*i)
                .map(Some)
                .map_err(|_| anyhow!("'{key}' = {i} is out of range")),
            Some(v) => Err(anyhow!("'{key}' must be an integer, got {v}")),
        }
    }

    fn bool(&self, key: &str) -> anyhow::Result<Option<bool>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(anyhow!("'{key}' must be true or false, got {v}")),
        }
    }
}

const KNOWN_KEYS: &[&str] = &[
    "node.id",
    "kafka.addr",
    "advertised.kafka.addr",
    "listeners",
    "advertised.listeners",
    "admin.addr",
    "data.dir",
    "log.fsync",
    "log.flush.interval.ms",
    "broker.rack",
    "auto.create.topics.enable",
    "num.partitions",
    "default.replication.factor",
    "message.max.bytes",
    "socket.request.max.bytes",
    "log.retention.ms",
    "log.retention.bytes",
    "log.segment.bytes",
    "log.roll.ms",
    "log.index.interval.bytes",
    "log.retention.check.interval.ms",
    "log.level",
    "metrics.per.partition",
    "cluster.addr",
    "cluster.peers",
    "offsets.topic.num.partitions",
    "transaction.state.log.num.partitions",
    "transactional.id.expiration.ms",
    "producer.id.expiration.ms",
    "group.initial.rebalance.delay.ms",
    "group.consumer.heartbeat.interval.ms",
    "group.consumer.session.timeout.ms",
    "group.min.session.timeout.ms",
    "group.max.session.timeout.ms",
    "offsets.retention.minutes",
    "offsets.retention.check.interval.ms",
];

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn parse_addr(what: &str, s: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .with_context(|| format!("{what} '{s}' is not HOST:PORT"))?
        .next()
        .ok_or_else(|| anyhow!("{what} '{s}' resolves to no address"))
}

/// `INTERNAL://0.0.0.0:9092,EXTERNAL://:19092`: listener names with HOST:PORT (an empty
/// host means every interface, as in Kafka).
fn parse_listeners(what: &str, list: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, addr) = item
            .split_once("://")
            .ok_or_else(|| anyhow!("{what}: '{item}' is not NAME://HOST:PORT"))?;
        let name = name.trim().to_ascii_uppercase();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("{what}: '{item}' has no valid listener name");
        }
        if out.iter().any(|(n, _)| *n == name) {
            bail!("{what}: listener '{name}' appears twice");
        }
        let addr = if addr.starts_with(':') {
            format!("0.0.0.0{addr}")
        } else {
            addr.to_string()
        };
        split_host_port(what, &addr)?;
        out.push((name, addr));
    }
    if out.is_empty() {
        bail!("{what} is empty");
    }
    Ok(out)
}

/// `1@host:9093,2@host:9093`: node ids with their cluster addresses.
fn parse_peers(list: &str) -> anyhow::Result<BTreeMap<i32, String>> {
    let mut peers = BTreeMap::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('@')
            .ok_or_else(|| anyhow!("peer '{item}' is not ID@HOST:PORT"))?;
        let id: i32 = id
            .parse()
            .ok()
            .filter(|i| *i >= 0)
            .ok_or_else(|| anyhow!("peer '{item}' has no valid node id"))?;
        split_host_port("peer", addr)?;
        if peers.insert(id, addr.to_string()).is_some() {
            bail!("node id {id} appears twice in the peer list");
        }
    }
    if peers.is_empty() {
        bail!("the peer list is empty");
    }
    Ok(peers)
}

fn split_host_port(what: &str, s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{what} '{s}' is not HOST:PORT"))?;
    let port = port
        .parse()
        .with_context(|| format!("{what} '{s}' has no valid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{what} '{s}' has no host");
    }
    Ok((host.to_string(), port))
}

impl Cli {
    /// Merges flags, environment and the TOML file into a node configuration.
    pub fn resolve(self) -> anyhow::Result<NodeConfig> {
        let file = FileConfig::load(self.config.as_ref())?;
        let d = BrokerConfig::default();
        let kafka = self.kafka_addr.or(file.string("kafka.addr")?);
        let advertised_kafka = self
            .advertised_kafka_addr
            .or(file.string("advertised.kafka.addr")?);
        let listeners = self.listeners.or(file.string("listeners")?);
        let advertised_listeners = self
            .advertised_listeners
            .or(file.string("advertised.listeners")?);
        // `listeners` is the general form: where both are set (an image's default kafka.addr
        // under a deployment's listeners, say), it wins and kafka.addr is not used.
        let binds: Vec<(String, String)> = match (listeners, kafka) {
            (Some(list), _) => parse_listeners("--listeners", &list)?,
            (None, kafka) => vec![(
                "PLAINTEXT".into(),
                kafka.unwrap_or_else(|| "127.0.0.1:9092".into()),
            )],
        };
        let mut advertised: BTreeMap<String, String> = match advertised_listeners {
            Some(list) => parse_listeners("--advertised-listeners", &list)?
                .into_iter()
                .collect(),
            None => advertised_kafka
                .map(|a| (binds[0].0.clone(), a))
                .into_iter()
                .collect(),
        };
        if let Some(name) = advertised
            .keys()
            .find(|n| !binds.iter().any(|b| &b.0 == *n))
        {
            bail!("advertised listener '{name}' is not one of the listeners");
        }
        let mut kafka_addrs = Vec::new();
        let mut endpoints = Vec::new();
        for (name, bind) in binds {
            let addr = parse_addr(&format!("listener {name}"), &bind)?;
            let advertised = match advertised.remove(&name) {
                Some(a) => a,
                None if addr.ip().is_unspecified() => format!("127.0.0.1:{}", addr.port()),
                None => addr.to_string(),
            };
            let (host, port) =
                split_host_port(&format!("advertised listener {name}"), &advertised)?;
            if host == "0.0.0.0" || host == "::" {
                bail!(
                    "advertised listener {name} must be an address clients can reach, not {host}"
                );
            }
            kafka_addrs.push(addr);
            endpoints.push(broker::config::Endpoint { name, host, port });
        }
        let admin = match self.admin_addr {
            Some(a) => a,
            None => file
                .string("admin.addr")?
                .unwrap_or_else(|| "127.0.0.1:9644".into()),
        };
        let admin_addr = parse_addr("--admin-addr", &admin)?;
        let data_dir = match self.data_dir {
            Some(d) => d,
            None => file
                .string("data.dir")?
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("sluice-data")),
        };
        let fsync = match self.fsync.or(file.string("log.fsync")?).as_deref() {
            None | Some("always") => FsyncPolicy::Always,
            Some("interval") => {
                let ms = match self.log_flush_interval_ms {
                    Some(ms) => ms,
                    None => file.int("log.flush.interval.ms")?.unwrap_or(1000),
                };
                if ms == 0 {
                    bail!("log.flush.interval.ms must be positive");
                }
                FsyncPolicy::Interval(Duration::from_millis(ms))
            }
            Some(other) => bail!("fsync policy '{other}' is neither 'always' nor 'interval'"),
        };
        macro_rules! pick {
            ($flag:expr, $key:literal, $default:expr) => {
                match $flag {
                    Some(v) => v,
                    None => file.int($key)?.unwrap_or($default),
                }
            };
        }
        let node_id: i32 = pick!(self.node_id, "node.id", 1);
        if node_id < 0 {
            bail!("node.id must not be negative");
        }
        let peers = match self.peers.or(file.string("cluster.peers")?) {
            None => BTreeMap::new(),
            Some(list) => parse_peers(&list)?,
        };
        let cluster_addr = match self.cluster_addr.or(file.string("cluster.addr")?) {
            Some(a) => Some(a),
            None if peers.is_empty() => None,
            None => Some("127.0.0.1:9093".to_string()),
        };
        if let Some(a) = &cluster_addr {
            parse_addr("--cluster-addr", a)?;
        }
        if !peers.is_empty() && !peers.contains_key(&node_id) {
            bail!("--peers must list this node (node id {node_id}) too");
        }
        let broker = BrokerConfig {
            node_id,
            cluster_addr,
            peers,
            listeners: endpoints,
            rack: match self.broker_rack {
                Some(r) => Some(r),
                None => file.string("broker.rack")?,
            },
            data_dir,
            socket_request_max_bytes: pick!(
                self.socket_request_max_bytes,
                "socket.request.max.bytes",
                d.socket_request_max_bytes
            ),
            auto_create_topics: match self.auto_create_topics_enable {
                Some(b) => b,
                None => file
                    .bool("auto.create.topics.enable")?
                    .unwrap_or(d.auto_create_topics),
            },
            num_partitions: pick!(self.num_partitions, "num.partitions", d.num_partitions),
            default_replication_factor: pick!(
                self.default_replication_factor,
                "default.replication.factor",
                d.default_replication_factor
            ),
            message_max_bytes: pick!(
                self.message_max_bytes,
                "message.max.bytes",
                d.message_max_bytes
            ),
            log_retention_ms: pick!(
                self.log_retention_ms,
                "log.retention.ms",
                d.log_retention_ms
            ),
            log_retention_bytes: pick!(
                self.log_retention_bytes,
                "log.retention.bytes",
                d.log_retention_bytes
            ),
            log_segment_bytes: pick!(
                self.log_segment_bytes,
                "log.segment.bytes",
                d.log_segment_bytes
            ),
            log_roll_ms: pick!(self.log_roll_ms, "log.roll.ms", d.log_roll_ms),
            log_index_interval_bytes: pick!(
                self.log_index_interval_bytes,
                "log.index.interval.bytes",
                d.log_index_interval_bytes
            ),
            log_retention_check_interval: Duration::from_millis(pick!(
                self.log_retention_check_interval_ms,
                "log.retention.check.interval.ms",
                d.log_retention_check_interval.as_millis() as u64
            )),
            fsync,
            offsets_topic_num_partitions: pick!(
                self.offsets_topic_num_partitions,
                "offsets.topic.num.partitions",
                d.offsets_topic_num_partitions
            ),
            transaction_state_log_num_partitions: pick!(
                self.transaction_state_log_num_partitions,
                "transaction.state.log.num.partitions",
                d.transaction_state_log_num_partitions
            ),
            transactional_id_expiration_ms: pick!(
                self.transactional_id_expiration_ms,
                "transactional.id.expiration.ms",
                d.transactional_id_expiration_ms
            ),
            producer_id_expiration_ms: pick!(
                self.producer_id_expiration_ms,
                "producer.id.expiration.ms",
                d.producer_id_expiration_ms
            ),
            group_initial_rebalance_delay_ms: pick!(
                self.group_initial_rebalance_delay_ms,
                "group.initial.rebalance.delay.ms",
                d.group_initial_rebalance_delay_ms
            ),
            group_consumer_heartbeat_interval_ms: pick!(
                self.group_consumer_heartbeat_interval_ms,
                "group.consumer.heartbeat.interval.ms",
                d.group_consumer_heartbeat_interval_ms
            ),
            group_consumer_session_timeout_ms: pick!(
                self.group_consumer_session_timeout_ms,
                "group.consumer.session.timeout.ms",
                d.group_consumer_session_timeout_ms
            ),
            group_min_session_timeout_ms: pick!(
                self.group_min_session_timeout_ms,
                "group.min.session.timeout.ms",
                d.group_min_session_timeout_ms
            ),
            group_max_session_timeout_ms: pick!(
                self.group_max_session_timeout_ms,
                "group.max.session.timeout.ms",
                d.group_max_session_timeout_ms
            ),
            offset_metadata_max_bytes: d.offset_metadata_max_bytes,
            group_max_size: d.group_max_size,
            offsets_retention_minutes: pick!(
                self.offsets_retention_minutes,
                "offsets.retention.minutes",
                d.offsets_retention_minutes
            ),
            offsets_retention_check_interval_ms: pick!(
                self.offsets_retention_check_interval_ms,
                "offsets.retention.check.interval.ms",
                d.offsets_retention_check_interval_ms
            ),
            metrics_per_partition: match self.metrics_per_partition {
                Some(b) => b,
                None => file
                    .bool("metrics.per.partition")?
                    .unwrap_or(d.metrics_per_partition),
            },
        };
        if broker.offsets_retention_minutes < 1 {
            bail!("offsets.retention.minutes must be at least 1");
        }
        if broker.offsets_retention_check_interval_ms == 0 {
            bail!("offsets.retention.check.interval.ms must be positive");
        }
        if !(1..=1000).contains(&broker.offsets_topic_num_partitions) {
            bail!("offsets.topic.num.partitions must be between 1 and 1000");
        }
        if !(1..=1000).contains(&broker.transaction_state_log_num_partitions) {
            bail!("transaction.state.log.num.partitions must be between 1 and 1000");
        }
        if broker.transactional_id_expiration_ms < 1 {
            bail!("transactional.id.expiration.ms must be positive");
        }
        if broker.producer_id_expiration_ms < 1 {
            bail!("producer.id.expiration.ms must be positive");
        }
        if broker.group_initial_rebalance_delay_ms < 0 {
            bail!("group.initial.rebalance.delay.ms must not be negative");
        }
        if broker.group_consumer_heartbeat_interval_ms < 1 {
            bail!("group.consumer.heartbeat.interval.ms must be positive");
        }
        if broker.group_consumer_session_timeout_ms <= broker.group_consumer_heartbeat_interval_ms {
            bail!(
                "group.consumer.session.timeout.ms must be larger than group.consumer.heartbeat.interval.ms"
            );
        }
        if broker.group_min_session_timeout_ms > broker.group_max_session_timeout_ms {
            bail!("group.min.session.timeout.ms is larger than group.max.session.timeout.ms");
        }
        if broker.num_partitions < 1 {
            bail!("num.partitions must be at least 1");
        }
        if broker.default_replication_factor < 1 {
            bail!("default.replication.factor must be at least 1");
        }
        if broker.message_max_bytes < 1 {
            bail!("message.max.bytes must be positive");
        }
        if broker.socket_request_max_bytes < 1024 {
            bail!("socket.request.max.bytes must be at least 1024");
        }
        if broker.log_segment_bytes < 14 || broker.log_segment_bytes > i64::from(i32::MAX) {
            bail!("log.segment.bytes must be between 14 and 2147483647");
        }
        if broker.log_retention_check_interval.is_zero() {
            bail!("log.retention.check.interval.ms must be positive");
        }
        let log_level = match self.log_level {
            Some(l) => l,
            None => file
                .string("log.level")?
                .unwrap_or_else(|| "info,openraft=error".into()),
        };
        Ok(NodeConfig {
            kafka_addrs,
            admin_addr,
            log_level,
            broker,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_flag_over_file_over_default() {
        let dir = std::env::temp_dir().join(format!("sluice-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice.toml");
        std::fs::write(&path, "num.partitions = 6\n[log]\nretention.ms = 1000\n").unwrap();
        let cli = Cli {
            config: Some(path.clone()),
            num_partitions: Some(3),
            ..Cli::default()
        };
        let cfg = cli.resolve().unwrap();
        assert_eq!(cfg.broker.num_partitions, 3, "flag wins");
        assert_eq!(cfg.broker.log_retention_ms, 1000, "file value used");
        assert_eq!(cfg.broker.message_max_bytes, 1_048_588, "default used");
        assert_eq!(cfg.kafka_addrs[0].port(), 9092);
        std::fs::write(&path, "no.such.setting = 1\n").unwrap();
        let err = Cli {
            config: Some(path),
            ..Cli::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("unknown setting"), "{err}");
    }

    #[test]
    fn unspecified_bind_advertises_loopback() {
        let cfg = Cli {
            kafka_addr: Some("0.0.0.0:19092".into()),
            ..Cli::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(cfg.broker.listeners[0].host, "127.0.0.1");
        assert_eq!(cfg.broker.listeners[0].port, 19092);
    }

    #[test]
    fn named_listeners_with_advertised_addresses() {
        let cfg = Cli {
            listeners: Some("internal://0.0.0.0:9092, EXTERNAL://:19092".into()),
            advertised_listeners: Some("INTERNAL://sluice-1:9092".into()),
            ..Cli::default()
        }
        .resolve()
        .unwrap();
        let names: Vec<_> = cfg
            .broker
            .listeners
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["INTERNAL", "EXTERNAL"]);
        assert_eq!(cfg.broker.listeners[0].host, "sluice-1");
        assert_eq!(
            cfg.broker.listeners[1].host, "127.0.0.1",
            "bind address advertised"
        );
        assert_eq!(cfg.broker.listeners[1].port, 19092);
        assert_eq!(cfg.kafka_addrs.len(), 2);
        assert_eq!(
            cfg.broker.advertised_listeners(),
            "INTERNAL://sluice-1:9092,EXTERNAL://127.0.0.1:19092"
        );
        for (listeners, advertised, why) in [
            ("A://0.0.0.0:1,A://0.0.0.0:2", None, "twice"),
            ("A://0.0.0.0:1", Some("B://h:1"), "not one of the listeners"),
            ("A:0.0.0.0:1", None, "NAME://HOST:PORT"),
            ("A://0.0.0.0:1", Some("A://0.0.0.0:1"), "clients can reach"),
        ] {
            let err = Cli {
                listeners: Some(listeners.into()),
                advertised_listeners: advertised.map(Into::into),
                ..Cli::default()
            }
            .resolve()
            .unwrap_err();
            assert!(err.to_string().contains(why), "{listeners}: {err}");
        }
        // listeners is the general form and wins over the kafka.addr shorthand.
        let cfg = Cli {
            listeners: Some("A://0.0.0.0:1".into()),
            kafka_addr: Some("0.0.0.0:2".into()),
            ..Cli::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(cfg.kafka_addrs.len(), 1);
        assert_eq!(cfg.kafka_addrs[0].port(), 1);
    }
}
