//! CreateTopics, DeleteTopics, CreatePartitions.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{codes, Reply};
use crate::topic_config::{self, TOPIC_CONFIGS};
use crate::topics::ApiError;
use crate::Broker;

const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const DEFAULT_CONFIG: i8 = 5;

fn msg(s: String) -> Option<StrBytes> {
    Some(StrBytes::from_string(s))
}

/// The config list CreateTopics v5+ returns for a topic.
fn created_configs(
    broker: &Broker,
    overrides: &BTreeMap<String, String>,
) -> Vec<CreatableTopicConfigs> {
    TOPIC_CONFIGS
        .iter()
        .map(|d| {
            let (value, source) = match overrides.get(d.name) {
                Some(v) => (v.clone(), DYNAMIC_TOPIC_CONFIG),
                None => (
                    topic_config::default_value(d.name, &broker.config),
                    DEFAULT_CONFIG,
                ),
            };
            CreatableTopicConfigs::default()
                .with_name(StrBytes::from_static_str(d.name))
                .with_value(Some(StrBytes::from_string(value)))
                .with_read_only(d.read_only)
                .with_config_source(source)
        })
        .collect()
}

/// Names that occur more than once (Kafka answers every copy with INVALID_REQUEST).
fn repeated<'a>(names: impl Iterator<Item = &'a str>) -> HashSet<String> {
    let mut seen = HashSet::new();
    names
        .filter(|n| !seen.insert(*n))
        .map(str::to_string)
        .collect()
}

pub fn create_topics(broker: Arc<Broker>, req: CreateTopicsRequest, version: i16) -> Reply {
    Box::pin(async move {
        let duplicates = repeated(req.topics.iter().map(|t| t.name.0.as_str()));
        let mut results = Vec::with_capacity(req.topics.len());
        for t in req.topics {
            let name = t.name.0.as_str().to_string();
            let result = CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_num_partitions(-1)
                .with_replication_factor(-1);
            let outcome: Result<(i32, i16, uuid::Uuid, BTreeMap<String, String>), ApiError> = async {
                if duplicates.contains(&name) {
                    return Err(ApiError::new(codes::INVALID_REQUEST, format!("topic '{name}' appears more than once in the request")));
                }
                let mut configs = BTreeMap::new();
                for c in &t.configs {
                    if let Some(v) = &c.value {
                        configs.insert(c.name.as_str().to_string(), v.as_str().to_string());
                    }
                }
                let (mut partitions, mut rf) = (t.num_partitions, t.replication_factor);
                if !t.assignments.is_empty() {
                    if partitions != -1 || rf != -1 {
                        return Err(ApiError::new(codes::INVALID_REQUEST, "both replica assignments and partition count / replication factor were given"));
                    }
                    let me = broker.config.node_id;
                    let mut indexes: Vec<i32> = t.assignments.iter().map(|a| a.partition_index).collect();
                    indexes.sort_unstable();
                    if indexes.iter().enumerate().any(|(i, p)| *p != i as i32) {
                        return Err(ApiError::new(crate::topics::codes::INVALID_REPLICA_ASSIGNMENT, "partition indexes in the assignment must be 0..n"));
                    }
                    if t.assignments.iter().any(|a| a.broker_ids.len() != 1 || a.broker_ids[0].0 != me) {
                        return Err(ApiError::new(crate::topics::codes::INVALID_REPLICA_ASSIGNMENT, format!("every replica must be on broker {me}, the only broker")));
                    }
                    partitions = t.assignments.len() as i32;
                    rf = 1;
                }
                let id;
                if req.validate_only {
                    let (p, r) = broker.topics.check_create(&name, partitions, rf, &configs)?;
                    partitions = p;
                    rf = r;
                    id = uuid::Uuid::nil();
                } else {
                    let topic = broker.topics.create(&name, partitions, rf, configs.clone()).await?;
                    partitions = topic.partitions.len() as i32;
                    rf = 1;
                    id = topic.id;
                }
                Ok((partitions, rf, id, configs))
            }
            .await;
            results.push(match outcome {
                Ok((partitions, rf, id, configs)) => {
                    let r = result
                        .with_num_partitions(partitions)
                        .with_replication_factor(rf)
                        .with_topic_id(id);
                    if version >= 5 {
                        r.with_configs(Some(created_configs(&broker, &configs)))
                    } else {
                        r
                    }
                }
                Err(e) => {
                    broker.count_error(ApiKey::CreateTopics, e.code);
                    result
                        .with_error_code(e.code)
                        .with_error_message(msg(e.message))
                }
            });
        }
        Some(ResponseKind::CreateTopics(
            CreateTopicsResponse::default().with_topics(results),
        ))
    })
}

pub fn delete_topics(broker: Arc<Broker>, req: DeleteTopicsRequest, version: i16) -> Reply {
    Box::pin(async move {
        // v6 names topics by name or id; older versions by name only.
        let wanted: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
            req.topics
                .iter()
                .map(|t| {
                    (
                        t.name.as_ref().map(|n| n.0.as_str().to_string()),
                        t.topic_id,
                    )
                })
                .collect()
        } else {
            req.topic_names
                .iter()
                .map(|n| (Some(n.0.as_str().to_string()), uuid::Uuid::nil()))
                .collect()
        };
        let mut results = Vec::with_capacity(wanted.len());
        for (name, id) in wanted {
            let topic = match &name {
                Some(n) => broker.topics.get(n),
                None => broker.topics.get_by_id(id),
            };
            let base = DeletableTopicResult::default()
                .with_name(name.clone().map(|n| TopicName(StrBytes::from_string(n))))
                .with_topic_id(id);
            let Some(topic) = topic else {
                let code = if name.is_some() {
                    codes::UNKNOWN_TOPIC_OR_PARTITION
                } else {
                    codes::UNKNOWN_TOPIC_ID
                };
                broker.count_error(ApiKey::DeleteTopics, code);
                results.push(
                    base.with_error_code(code)
                        .with_error_message(msg("topic does not exist".into())),
                );
                continue;
            };
            let base = base
                .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
                .with_topic_id(topic.id);
            results.push(match broker.topics.delete(&topic.name).await {
                Ok(()) => {
                    // As Kafka does: committed offsets of a deleted topic go with it, so a
                    // topic created again under the name starts without them.
                    broker.groups().forget_topic(&topic.name);
                    base
                }
                Err(e) => {
                    broker.count_error(ApiKey::DeleteTopics, e.code);
                    base.with_error_code(e.code)
                        .with_error_message(msg(e.message))
                }
            });
        }
        Some(ResponseKind::DeleteTopics(
            DeleteTopicsResponse::default().with_responses(results),
        ))
    })
}

pub fn create_partitions(broker: Arc<Broker>, req: CreatePartitionsRequest) -> Reply {
    Box::pin(async move {
        let duplicates = repeated(req.topics.iter().map(|t| t.name.0.as_str()));
        let mut results = Vec::with_capacity(req.topics.len());
        for t in req.topics {
            let name = t.name.0.as_str().to_string();
            let outcome: Result<(), ApiError> = async {
                if duplicates.contains(&name) {
                    return Err(ApiError::new(
                        codes::INVALID_REQUEST,
                        format!("topic '{name}' appears more than once in the request"),
                    ));
                }
                broker.topics.latest(&name).await;
                let topic = broker.topics.check_partitions(&name, t.count)?;
                if let Some(assignments) = &t.assignments {
                    let added = (t.count as usize).saturating_sub(topic.partitions.len());
                    let me = broker.config.node_id;
                    if assignments.len() != added
                        || assignments
                            .iter()
                            .any(|a| a.broker_ids.len() != 1 || a.broker_ids[0].0 != me)
                    {
                        return Err(ApiError::new(
                            crate::topics::codes::INVALID_REPLICA_ASSIGNMENT,
                            format!("one assignment per new partition, each on broker {me}"),
                        ));
                    }
                }
                if !req.validate_only {
                    broker.topics.add_partitions(&name, t.count).await?;
                }
                Ok(())
            }
            .await;
            let base = CreatePartitionsTopicResult::default().with_name(t.name);
            results.push(match outcome {
                Ok(()) => base,
                Err(e) => {
                    broker.count_error(ApiKey::CreatePartitions, e.code);
                    base.with_error_code(e.code)
                        .with_error_message(msg(e.message))
                }
            });
        }
        Some(ResponseKind::CreatePartitions(
            CreatePartitionsResponse::default().with_results(results),
        ))
    })
}
