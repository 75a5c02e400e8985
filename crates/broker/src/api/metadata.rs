//! Metadata and DescribeCluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest,
    MetadataResponse, ResponseKind, TopicName,
};

use super::{codes, Reply};
use crate::topics::{validate_topic_name, Topic};
use crate::Broker;

/// "Authorized operations not requested" marker.
const OPS_OMITTED: i32 = i32::MIN;
/// Without ACLs every operation is allowed: READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE,
/// DESCRIBE_CONFIGS, ALTER_CONFIGS (Kafka's AclOperation codes as bits).
const TOPIC_OPS_ALL: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
const CLUSTER_OPS_ALL: i32 =
    (1 << 4) | (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

use crate::sb as str;

pub fn metadata(broker: Arc<Broker>, req: MetadataRequest, version: i16, listener: usize) -> Reply {
    Box::pin(async move {
        Some(ResponseKind::Metadata(
            metadata_inner(&broker, req, version, listener).await,
        ))
    })
}

async fn metadata_inner(
    broker: &Broker,
    req: MetadataRequest,
    version: i16,
    listener: usize,
) -> MetadataResponse {
    // v0: an empty list means every topic; v1+: null means every topic.
    let all = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    let auto_create =
        broker.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    let topic_ops = if req.include_topic_authorized_operations {
        TOPIC_OPS_ALL
    } else {
        OPS_OMITTED
    };
    let mut topics = Vec::new();
    if all {
        // Internal topics (__consumer_offsets) are listed only when asked for by name.
        for t in broker.topics.all().into_iter().filter(|t| !t.internal) {
            topics.push(topic_metadata(broker, &t, topic_ops));
        }
    } else {
        for wanted in req.topics.unwrap_or_default() {
            let by_name = wanted.name.as_ref().map(|n| n.0.as_str().to_string());
            let found = match &by_name {
                Some(name) => broker.topics.get(name),
                None => broker.topics.get_by_id(wanted.topic_id),
            };
            if let Some(t) = found {
                topics.push(topic_metadata(broker, &t, topic_ops));
                continue;
            }
            let Some(name) = by_name else {
                topics.push(
                    MetadataResponseTopic::default()
                        .with_error_code(codes::UNKNOWN_TOPIC_ID)
                        .with_topic_id(wanted.topic_id)
                        .with_topic_authorized_operations(topic_ops),
                );
                broker.count_error(ApiKey::Metadata, codes::UNKNOWN_TOPIC_ID);
                continue;
            };
            let error = if let Err(e) = validate_topic_name(&name) {
                e.code
            } else if auto_create {
                match broker.topics.create(&name, -1, -1, BTreeMap::new()).await {
                    Ok(t) => {
                        topics.push(topic_metadata(broker, &t, topic_ops));
                        continue;
                    }
                    // Created concurrently by another request.
                    Err(_) if broker.topics.get(&name).is_some() => {
                        let t = broker.topics.get(&name).expect("checked above");
                        topics.push(topic_metadata(broker, &t, topic_ops));
                        continue;
                    }
                    Err(e) => e.code,
                }
            } else {
                codes::UNKNOWN_TOPIC_OR_PARTITION
            };
            broker.count_error(ApiKey::Metadata, error);
            topics.push(
                MetadataResponseTopic::default()
                    .with_error_code(error)
                    .with_name(Some(TopicName(str(&name))))
                    .with_topic_authorized_operations(topic_ops),
            );
        }
    }
    let brokers = broker
        .broker_list(listener)
        .into_iter()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.node))
                .with_host(str(&b.host))
                .with_port(i32::from(b.port))
                .with_rack(b.rack.as_deref().map(str))
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str(broker.cluster_id())))
        .with_controller_id(BrokerId(broker.controller_id()))
        .with_topics(topics)
        .with_cluster_authorized_operations(if req.include_cluster_authorized_operations {
            CLUSTER_OPS_ALL
        } else {
            OPS_OMITTED
        })
}

fn topic_metadata(broker: &Broker, t: &Topic, ops: i32) -> MetadataResponseTopic {
    let partitions = t
        .partitions
        .iter()
        .map(|p| {
            let replicas: Vec<BrokerId> = p.replicas.iter().map(|r| BrokerId(*r)).collect();
            let leader = p.leader_id();
            let epoch = p.replica.as_ref().map(|r| r.leader_epoch()).unwrap_or(-1);
            // Without a leader the partition is answered with LEADER_NOT_AVAILABLE, which
            // clients retry.
            let error = if leader < 0 {
                codes::LEADER_NOT_AVAILABLE
            } else {
                codes::NONE
            };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(p.index)
                .with_leader_id(BrokerId(leader))
                .with_leader_epoch(epoch)
                .with_isr_nodes(
                    broker
                        .topics
                        .in_sync_replicas(t, p)
                        .into_iter()
                        .map(BrokerId)
                        .collect(),
                )
                .with_replica_nodes(replicas)
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str(&t.name))))
        .with_topic_id(t.id)
        .with_is_internal(t.internal)
        .with_partitions(partitions)
        .with_topic_authorized_operations(ops)
}

pub fn describe_cluster(
    broker: &Broker,
    req: DescribeClusterRequest,
    listener: usize,
) -> DescribeClusterResponse {
    // endpoint_type 1 = brokers; 2 = controllers (KIP-919). One node is both.
    if req.endpoint_type != 1 && req.endpoint_type != 2 {
        return DescribeClusterResponse::default()
            .with_error_code(codes::UNSUPPORTED_VERSION)
            .with_error_message(Some(str("unknown endpoint type")))
            .with_endpoint_type(req.endpoint_type);
    }
    DescribeClusterResponse::default()
        .with_endpoint_type(req.endpoint_type)
        .with_cluster_id(str(broker.cluster_id()))
        .with_controller_id(BrokerId(broker.controller_id()))
        .with_brokers(
            broker
                .broker_list(listener)
                .into_iter()
                .map(|b| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(b.node))
                        .with_host(str(&b.host))
                        .with_port(i32::from(b.port))
                        .with_rack(b.rack.as_deref().map(str))
                })
                .collect(),
        )
        .with_cluster_authorized_operations(if req.include_cluster_authorized_operations {
            CLUSTER_OPS_ALL
        } else {
            OPS_OMITTED
        })
}
