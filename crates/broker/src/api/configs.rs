//! DescribeConfigs, AlterConfigs, IncrementalAlterConfigs.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, DescribeConfigsRequest,
    DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    ResponseKind,
};
use kafka_protocol::protocol::StrBytes;

use super::{codes, Reply};
use crate::topic_config::{self, ConfigType, TOPIC_CONFIGS};
use crate::topics::ApiError;
use crate::Broker;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const RESOURCE_BROKER_LOGGER: i8 = 8;

const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// The broker's settings as (name, value, type) for DescribeConfigs on a broker resource.
fn broker_configs(broker: &Broker) -> Vec<(&'static str, String, ConfigType)> {
    let c = &broker.config;
    vec![
        ("node.id", c.node_id.to_string(), ConfigType::Int),
        ("broker.id", c.node_id.to_string(), ConfigType::Int),
        (
            "advertised.listeners",
            c.advertised_listeners(),
            ConfigType::String,
        ),
        (
            "broker.rack",
            c.rack.clone().unwrap_or_default(),
            ConfigType::String,
        ),
        (
            "log.dirs",
            c.data_dir.join("log").display().to_string(),
            ConfigType::String,
        ),
        (
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
            ConfigType::Boolean,
        ),
        (
            "num.partitions",
            c.num_partitions.to_string(),
            ConfigType::Int,
        ),
        (
            "default.replication.factor",
            c.default_replication_factor.to_string(),
            ConfigType::Int,
        ),
        (
            "message.max.bytes",
            c.message_max_bytes.to_string(),
            ConfigType::Int,
        ),
        (
            "socket.request.max.bytes",
            c.socket_request_max_bytes.to_string(),
            ConfigType::Int,
        ),
        (
            "log.retention.ms",
            c.log_retention_ms.to_string(),
            ConfigType::Long,
        ),
        (
            "log.retention.bytes",
            c.log_retention_bytes.to_string(),
            ConfigType::Long,
        ),
        (
            "log.segment.bytes",
            c.log_segment_bytes.to_string(),
            ConfigType::Int,
        ),
        ("log.roll.ms", c.log_roll_ms.to_string(), ConfigType::Long),
        (
            "log.index.interval.bytes",
            c.log_index_interval_bytes.to_string(),
            ConfigType::Int,
        ),
        (
            "log.retention.check.interval.ms",
            c.log_retention_check_interval.as_millis().to_string(),
            ConfigType::Long,
        ),
        ("log.cleanup.policy", "delete".into(), ConfigType::List),
        (
            "log.message.timestamp.type",
            "CreateTime".into(),
            ConfigType::String,
        ),
        ("compression.type", "producer".into(), ConfigType::String),
        ("min.insync.replicas", "1".into(), ConfigType::Int),
        (
            "unclean.leader.election.enable",
            "false".into(),
            ConfigType::Boolean,
        ),
    ]
}

fn wanted(keys: &Option<Vec<StrBytes>>, name: &str) -> bool {
    keys.as_ref()
        .is_none_or(|k| k.iter().any(|k| k.as_str() == name))
}

pub fn describe_configs(
    broker: &Broker,
    req: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let base = DescribeConfigsResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        let name = r.resource_name.as_str();
        let fail = |code: i16, m: String| {
            broker.count_error(ApiKey::DescribeConfigs, code);
            base.clone()
                .with_error_code(code)
                .with_error_message(Some(s(m)))
        };
        match r.resource_type {
            RESOURCE_TOPIC => {
                let Some(topic) = broker.topics.get(name) else {
                    results.push(fail(
                        codes::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic '{name}' does not exist"),
                    ));
                    continue;
                };
                let configs = TOPIC_CONFIGS
                    .iter()
                    .filter(|d| wanted(&r.configuration_keys, d.name))
                    .map(|d| {
                        let default = topic_config::default_value(d.name, &broker.config);
                        let set = topic.overrides.get(d.name);
                        let mut synonyms = Vec::new();
                        if req.include_synonyms {
                            if let Some(v) = set {
                                synonyms.push(
                                    DescribeConfigsSynonym::default()
                                        .with_name(s(d.name))
                                        .with_value(Some(s(v.clone())))
                                        .with_source(SOURCE_DYNAMIC_TOPIC),
                                );
                            }
                            synonyms.push(
                                DescribeConfigsSynonym::default()
                                    .with_name(s(d.broker_name))
                                    .with_value(Some(s(default.clone())))
                                    .with_source(SOURCE_DEFAULT),
                            );
                        }
                        let mut e = DescribeConfigsResourceResult::default()
                            .with_name(s(d.name))
                            .with_value(Some(s(set.cloned().unwrap_or(default))))
                            .with_read_only(d.read_only)
                            .with_config_source(if set.is_some() {
                                SOURCE_DYNAMIC_TOPIC
                            } else {
                                SOURCE_DEFAULT
                            })
                            .with_synonyms(synonyms)
                            .with_config_type(d.kind as i8);
                        if version >= 3 && req.include_documentation {
                            e = e.with_documentation(Some(s(d.doc)));
                        }
                        e
                    })
                    .collect();
                results.push(base.with_configs(configs));
            }
            RESOURCE_BROKER => {
                if !name.is_empty() && name != broker.config.node_id.to_string() {
                    results.push(fail(
                        codes::INVALID_REQUEST,
                        format!(
                            "broker '{name}' is not this node ({})",
                            broker.config.node_id
                        ),
                    ));
                    continue;
                }
                let configs = broker_configs(broker)
                    .into_iter()
                    .filter(|(n, _, _)| wanted(&r.configuration_keys, n))
                    .map(|(n, v, kind)| {
                        let synonyms = if req.include_synonyms {
                            vec![DescribeConfigsSynonym::default()
                                .with_name(s(n))
                                .with_value(Some(s(v.clone())))
                                .with_source(SOURCE_STATIC_BROKER)]
                        } else {
                            Vec::new()
                        };
                        DescribeConfigsResourceResult::default()
                            .with_name(s(n))
                            .with_value(Some(s(v)))
                            .with_read_only(true)
                            .with_config_source(SOURCE_STATIC_BROKER)
                            .with_synonyms(synonyms)
                            .with_config_type(kind as i8)
                    })
                    .collect();
                results.push(base.with_configs(configs));
            }
            RESOURCE_BROKER_LOGGER => {
                results.push(base.with_configs(Vec::new()));
            }
            other => results.push(fail(
                codes::INVALID_REQUEST,
                format!("resource type {other} is not supported"),
            )),
        }
    }
    DescribeConfigsResponse::default().with_results(results)
}

fn broker_static(name: &str) -> ApiError {
    ApiError::new(
        codes::INVALID_REQUEST,
        format!("broker '{name}' configs are static in Sluice: set them with flags, SLUICE_* environment variables or the TOML file"),
    )
}

pub fn alter_configs(broker: Arc<Broker>, req: AlterConfigsRequest) -> Reply {
    Box::pin(async move {
        let mut out = Vec::with_capacity(req.resources.len());
        for r in req.resources {
            let name = r.resource_name.as_str().to_string();
            let result: Result<(), ApiError> = async {
                if r.resource_type == RESOURCE_BROKER {
                    return Err(broker_static(&name));
                }
                if r.resource_type != RESOURCE_TOPIC {
                    return Err(ApiError::new(
                        codes::INVALID_REQUEST,
                        format!("resource type {} is not supported", r.resource_type),
                    ));
                }
                // AlterConfigs replaces the whole set: unspecified configs return to defaults.
                let mut next = BTreeMap::new();
                for c in &r.configs {
                    if let Some(v) = &c.value {
                        topic_config::validate(c.name.as_str(), v.as_str())?;
                        next.insert(c.name.as_str().to_string(), v.as_str().to_string());
                    }
                }
                if req.validate_only {
                    broker
                        .topics
                        .latest(&name)
                        .await
                        .ok_or_else(|| unknown_topic(&name))?;
                    return Ok(());
                }
                broker.topics.set_configs(&name, |_| Ok(next)).await
            }
            .await;
            let base = AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name);
            out.push(match result {
                Ok(()) => base,
                Err(e) => {
                    broker.count_error(ApiKey::AlterConfigs, e.code);
                    base.with_error_code(e.code)
                        .with_error_message(Some(s(e.message)))
                }
            });
        }
        Some(ResponseKind::AlterConfigs(
            AlterConfigsResponse::default().with_responses(out),
        ))
    })
}

fn unknown_topic(name: &str) -> ApiError {
    ApiError::new(
        codes::UNKNOWN_TOPIC_OR_PARTITION,
        format!("topic '{name}' does not exist"),
    )
}

/// Applies incremental operations to a topic's explicit configs.
fn apply_ops(
    current: &BTreeMap<String, String>,
    ops: &[(String, i8, Option<String>)],
    defaults: impl Fn(&str) -> String,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut next = current.clone();
    for (name, op, value) in ops {
        let def = topic_config::find(name).ok_or_else(|| {
            ApiError::new(
                crate::topics::codes::INVALID_CONFIG,
                format!("unknown topic config '{name}'"),
            )
        })?;
        match *op {
            OP_SET => {
                let v = value.clone().ok_or_else(|| {
                    ApiError::new(
                        codes::INVALID_REQUEST,
                        format!("SET of '{name}' without a value"),
                    )
                })?;
                topic_config::validate(name, &v)?;
                next.insert(name.clone(), v);
            }
            OP_DELETE => {
                next.remove(name);
            }
            OP_APPEND | OP_SUBTRACT => {
                if def.kind != ConfigType::List {
                    return Err(ApiError::new(
                        crate::topics::codes::INVALID_CONFIG,
                        format!("'{name}' is not a list: APPEND and SUBTRACT do not apply"),
                    ));
                }
                let cur = next.get(name).cloned().unwrap_or_else(|| defaults(name));
                let mut items: Vec<String> = cur
                    .split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect();
                for v in value
                    .as_deref()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                {
                    if *op == OP_APPEND {
                        if !items.iter().any(|i| i == v) {
                            items.push(v.to_string());
                        }
                    } else {
                        items.retain(|i| i != v);
                    }
                }
                let joined = items.join(",");
                topic_config::validate(name, &joined)?;
                next.insert(name.clone(), joined);
            }
            other => {
                return Err(ApiError::new(
                    codes::INVALID_REQUEST,
                    format!("unknown config operation {other}"),
                ))
            }
        }
    }
    Ok(next)
}

pub fn incremental_alter_configs(
    broker: Arc<Broker>,
    req: IncrementalAlterConfigsRequest,
) -> Reply {
    Box::pin(async move {
        let mut out = Vec::with_capacity(req.resources.len());
        for r in req.resources {
            let name = r.resource_name.as_str().to_string();
            let ops: Vec<(String, i8, Option<String>)> = r
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.as_str().to_string(),
                        c.config_operation,
                        c.value.as_ref().map(|v| v.as_str().to_string()),
                    )
                })
                .collect();
            let result: Result<(), ApiError> = async {
                if r.resource_type == RESOURCE_BROKER {
                    return Err(broker_static(&name));
                }
                if r.resource_type != RESOURCE_TOPIC {
                    return Err(ApiError::new(
                        codes::INVALID_REQUEST,
                        format!("resource type {} is not supported", r.resource_type),
                    ));
                }
                let defaults = |n: &str| topic_config::default_value(n, &broker.config);
                if req.validate_only {
                    let topic = broker
                        .topics
                        .latest(&name)
                        .await
                        .ok_or_else(|| unknown_topic(&name))?;
                    apply_ops(&topic.overrides, &ops, defaults)?;
                    return Ok(());
                }
                broker
                    .topics
                    .set_configs(&name, |cur| apply_ops(cur, &ops, defaults))
                    .await
            }
            .await;
            let base = IncrementalResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name);
            out.push(match result {
                Ok(()) => base,
                Err(e) => {
                    broker.count_error(ApiKey::IncrementalAlterConfigs, e.code);
                    base.with_error_code(e.code)
                        .with_error_message(Some(s(e.message)))
                }
            });
        }
        Some(ResponseKind::IncrementalAlterConfigs(
            IncrementalAlterConfigsResponse::default().with_responses(out),
        ))
    })
}
