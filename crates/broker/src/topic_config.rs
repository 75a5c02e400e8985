//! Topic-level configs: the catalogue (names, types, defaults from broker settings),
//! validation, and the resolved values the partitions use.

use std::collections::BTreeMap;

use crate::config::BrokerConfig;

/// Kafka's `ConfigType` codes (DescribeConfigs v3+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    List = 7,
}

/// One supported topic config.
pub struct ConfigDef {
    pub name: &'static str,
    /// The broker setting that provides the default.
    pub broker_name: &'static str,
    pub kind: ConfigType,
    pub doc: &'static str,
    pub read_only: bool,
}

/// Every topic config Sluice implements. DescribeConfigs returns all of them.
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    ConfigDef {
        name: "cleanup.policy",
        broker_name: "log.cleanup.policy",
        kind: ConfigType::List,
        doc: "Retention policy for old log segments: delete (compaction is not implemented yet).",
        read_only: false,
    },
    ConfigDef {
        name: "compression.type",
        broker_name: "compression.type",
        kind: ConfigType::String,
        doc: "Batches are stored as the producer compressed them (only 'producer' is supported).",
        read_only: false,
    },
    ConfigDef {
        name: "max.message.bytes",
        broker_name: "message.max.bytes",
        kind: ConfigType::Int,
        doc: "The largest record batch size allowed.",
        read_only: false,
    },
    ConfigDef {
        name: "message.timestamp.type",
        broker_name: "log.message.timestamp.type",
        kind: ConfigType::String,
        doc: "CreateTime or LogAppendTime.",
        read_only: false,
    },
    ConfigDef {
        name: "min.insync.replicas",
        broker_name: "min.insync.replicas",
        kind: ConfigType::Int,
        doc: "Minimum replicas that must acknowledge an acks=all write.",
        read_only: false,
    },
    ConfigDef {
        name: "retention.bytes",
        broker_name: "log.retention.bytes",
        kind: ConfigType::Long,
        doc: "Maximum partition size before old segments are deleted (-1: no limit).",
        read_only: false,
    },
    ConfigDef {
        name: "retention.ms",
        broker_name: "log.retention.ms",
        kind: ConfigType::Long,
        doc: "Maximum age of a segment's newest record before it is deleted (-1: forever).",
        read_only: false,
    },
    ConfigDef {
        name: "segment.bytes",
        broker_name: "log.segment.bytes",
        kind: ConfigType::Int,
        doc: "Segment file size at which the log rolls.",
        read_only: false,
    },
    ConfigDef {
        name: "segment.ms",
        broker_name: "log.roll.ms",
        kind: ConfigType::Long,
        doc: "Segment age at which the log rolls.",
        read_only: false,
    },
    ConfigDef {
        name: "index.interval.bytes",
        broker_name: "log.index.interval.bytes",
        kind: ConfigType::Int,
        doc: "Bytes between offset index entries.",
        read_only: false,
    },
    ConfigDef {
        name: "unclean.leader.election.enable",
        broker_name: "unclean.leader.election.enable",
        kind: ConfigType::Boolean,
        doc: "Always false: Raft never elects a replica missing committed data.",
        read_only: true,
    },
];

pub fn find(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// The broker-level default of a topic config.
pub fn default_value(name: &str, broker: &BrokerConfig) -> String {
    match name {
        "cleanup.policy" => "delete".into(),
        "compression.type" => "producer".into(),
        "max.message.bytes" => broker.message_max_bytes.to_string(),
        "message.timestamp.type" => "CreateTime".into(),
        "min.insync.replicas" => "1".into(),
        "retention.bytes" => broker.log_retention_bytes.to_string(),
        "retention.ms" => broker.log_retention_ms.to_string(),
        "segment.bytes" => broker.log_segment_bytes.to_string(),
        "segment.ms" => broker.log_roll_ms.to_string(),
        "index.interval.bytes" => broker.log_index_interval_bytes.to_string(),
        "unclean.leader.election.enable" => "false".into(),
        _ => String::new(),
    }
}

/// Why a config value was refused: Kafka error code and message.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub code: i16,
    pub message: String,
}

use protocol::codes::INVALID_CONFIG;

fn invalid(msg: String) -> ConfigError {
    ConfigError {
        code: INVALID_CONFIG,
        message: msg,
    }
}

/// Checks one topic config value.
pub fn validate(name: &str, value: &str) -> Result<(), ConfigError> {
    let Some(def) = find(name) else {
        return Err(invalid(format!("unknown topic config '{name}'")));
    };
    if def.read_only && value != "false" {
        return Err(invalid(format!("'{name}' cannot be changed")));
    }
    let long = |min: i64| -> Result<(), ConfigError> {
        match value.trim().parse::<i64>() {
            Ok(v) if v >= min => Ok(()),
            _ => Err(invalid(format!(
                "'{name}' must be an integer >= {min}, got '{value}'"
            ))),
        }
    };
    match name {
        "cleanup.policy" => {
            if value.split(',').all(|p| p.trim() == "delete") {
                Ok(())
            } else {
                Err(invalid(format!(
                    "cleanup.policy '{value}' is not supported: Sluice implements 'delete' only (no compaction yet)"
                )))
            }
        }
        "compression.type" => match value {
            "producer" => Ok(()),
            _ => Err(invalid(format!(
                "compression.type '{value}' is not supported: batches are stored as the producer compressed them ('producer')"
            ))),
        },
        "message.timestamp.type" => match value {
            "CreateTime" | "LogAppendTime" => Ok(()),
            _ => Err(invalid(format!("message.timestamp.type must be CreateTime or LogAppendTime, got '{value}'"))),
        },
        "max.message.bytes" => long(0).and_then(|()| int32(name, value)),
        "segment.bytes" => long(14).and_then(|()| int32(name, value)),
        "index.interval.bytes" => long(0).and_then(|()| int32(name, value)),
        "min.insync.replicas" => long(1).and_then(|()| int32(name, value)),
        "retention.bytes" | "retention.ms" => long(-1),
        "segment.ms" => long(1),
        "unclean.leader.election.enable" => Ok(()),
        _ => Ok(()),
    }
}

fn int32(name: &str, value: &str) -> Result<(), ConfigError> {
    match value.trim().parse::<i32>() {
        Ok(_) => Ok(()),
        Err(_) => Err(invalid(format!(
            "'{name}' must fit in a 32-bit integer, got '{value}'"
        ))),
    }
}

/// The values a topic's partitions run with: overrides over broker defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedConfig {
    pub max_message_bytes: i32,
    pub log_append_time: bool,
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: u64,
    pub segment_ms: u64,
    pub index_interval_bytes: u32,
    pub min_insync_replicas: i32,
}

impl ResolvedConfig {
    pub fn resolve(overrides: &BTreeMap<String, String>, broker: &BrokerConfig) -> Self {
        let get = |name: &str| -> String {
            overrides
                .get(name)
                .cloned()
                .unwrap_or_else(|| default_value(name, broker))
        };
        let long = |name: &str| get(name).trim().parse::<i64>().unwrap_or(-1);
        ResolvedConfig {
            max_message_bytes: long("max.message.bytes").clamp(0, i64::from(i32::MAX)) as i32,
            log_append_time: get("message.timestamp.type") == "LogAppendTime",
            retention_ms: Some(long("retention.ms")).filter(|v| *v >= 0),
            retention_bytes: u64::try_from(long("retention.bytes")).ok(),
            segment_bytes: u64::try_from(long("segment.bytes"))
                .unwrap_or(1 << 30)
                .max(14),
            segment_ms: u64::try_from(long("segment.ms")).unwrap_or(u64::MAX).max(1),
            index_interval_bytes: u32::try_from(long("index.interval.bytes")).unwrap_or(4096),
            min_insync_replicas: long("min.insync.replicas").clamp(1, i64::from(i32::MAX)) as i32,
        }
    }
}
