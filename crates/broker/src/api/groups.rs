//! Consumer group APIs (classic protocol): FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups,
//! OffsetDelete. The state machine is in `crate::groups`; this module translates versions.

use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;

use super::{codes, Reply};
use crate::groups::{CommitItem, JoinArgs, JoinOutcome, SyncOutcome};
use crate::Broker;

use crate::sb;

/// OffsetFetch's (offset, leader epoch, metadata) for a partition; -1s when nothing is
/// committed.
fn committed_fields(v: Option<crate::groups::store::OffsetValue>) -> (i64, i32, String) {
    match v {
        Some(v) => (v.offset, v.leader_epoch, v.metadata),
        None => (-1, -1, String::new()),
    }
}

/// Group operations allowed without ACLs: READ, DELETE, DESCRIBE (Kafka's AclOperation bits).
const GROUP_OPS_ALL: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// A describe answer's authorized operations: all of them when asked for, else Kafka's
/// "not requested" value.
pub(super) fn group_ops(requested: bool) -> i32 {
    if requested {
        GROUP_OPS_ALL
    } else {
        i32::MIN
    }
}

pub fn find_coordinator(
    broker: &Broker,
    req: FindCoordinatorRequest,
    version: i16,
    listener: usize,
) -> FindCoordinatorResponse {
    // The coordinator of a group is the leader of its __consumer_offsets partition.
    let answer = |key_type: i8, key: &str| -> Result<(i32, String, i32), (i16, &'static str)> {
        match key_type {
            0 => {}
            1 => {}
            _ => return Err((codes::INVALID_REQUEST, "unknown coordinator key type")),
        }
        // The coordinator of a transactional id is the leader of its __transaction_state
        // partition.
        let internal = if key_type == 1 {
            crate::txn::TXN_TOPIC
        } else {
            crate::groups::OFFSETS_TOPIC
        };
        let topic = broker.topics.get(internal).ok_or((
            codes::COORDINATOR_NOT_AVAILABLE,
            "the coordinator's internal topic does not exist yet",
        ))?;
        let p = crate::groups::partition_for(key, topic.partitions.len());
        let leader = topic.partitions[p].leader_id();
        broker.broker_address(leader, listener).ok_or((
            codes::COORDINATOR_NOT_AVAILABLE,
            "the group's offsets partition has no leader",
        ))
    };
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| match answer(req.key_type, key.as_str()) {
                Ok((node, host, port)) => CoordinatorEntry::default()
                    .with_key(key)
                    .with_node_id(BrokerId(node))
                    .with_host(sb(&host))
                    .with_port(port),
                Err((code, msg)) => {
                    broker.count_error(ApiKey::FindCoordinator, code);
                    CoordinatorEntry::default()
                        .with_key(key)
                        .with_node_id(BrokerId(-1))
                        .with_host(sb(""))
                        .with_port(-1)
                        .with_error_code(code)
                        .with_error_message(Some(sb(msg)))
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match answer(req.key_type, req.key.as_str()) {
        Ok((node, host, port)) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(node))
            .with_host(sb(&host))
            .with_port(port),
        Err((code, msg)) => {
            broker.count_error(ApiKey::FindCoordinator, code);
            FindCoordinatorResponse::default()
                .with_error_code(code)
                .with_error_message(Some(sb(msg)))
                .with_node_id(BrokerId(-1))
                .with_port(-1)
        }
    }
}

pub fn join_group(
    broker: &Broker,
    header: &RequestHeader,
    peer: SocketAddr,
    req: JoinGroupRequest,
    version: i16,
) -> Reply {
    let args = JoinArgs {
        group_id: req.group_id.to_string(),
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id: super::client_id(header),
        client_host: format!("/{}", peer.ip()),
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: the session timeout serves as both.
        rebalance_timeout_ms: if version == 0 {
            req.session_timeout_ms
        } else {
            req.rebalance_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let member_id = args.member_id.clone();
    let outcome = broker.groups().join(args);
    let metrics_broker = broker.metrics.clone();
    Box::pin(async move {
        let r = match outcome {
            JoinOutcome::Now(r) => r,
            JoinOutcome::Wait(rx) => rx.await.unwrap_or_else(|_| {
                JoinGroupResponse::default()
                    .with_error_code(codes::REBALANCE_IN_PROGRESS)
                    .with_generation_id(-1)
                    .with_member_id(sb(&member_id))
            }),
        };
        if r.error_code != codes::NONE {
            metrics_broker
                .request_errors
                .with_label_values(&["JoinGroup", &r.error_code.to_string()])
                .inc();
        }
        Some(ResponseKind::JoinGroup(r))
    })
}

pub fn sync_group(broker: &Broker, req: SyncGroupRequest) -> Reply {
    let outcome = broker.groups().sync(
        &req.group_id,
        req.generation_id,
        &req.member_id,
        req.group_instance_id.as_deref(),
        req.protocol_type.as_deref(),
        req.protocol_name.as_deref(),
        req.assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    );
    Box::pin(async move {
        let r = match outcome {
            SyncOutcome::Now(r) => r,
            SyncOutcome::Wait(rx) => rx.await.unwrap_or_else(|_| {
                SyncGroupResponse::default().with_error_code(codes::REBALANCE_IN_PROGRESS)
            }),
        };
        Some(ResponseKind::SyncGroup(r))
    })
}

pub fn heartbeat(broker: &Broker, req: HeartbeatRequest) -> HeartbeatResponse {
    let code = broker.groups().heartbeat(
        &req.group_id,
        req.generation_id,
        &req.member_id,
        req.group_instance_id.as_deref(),
    );
    if code != codes::REBALANCE_IN_PROGRESS {
        broker.count_error(ApiKey::Heartbeat, code);
    }
    HeartbeatResponse::default().with_error_code(code)
}

pub fn leave_group(broker: &Broker, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    if let Some(code) = broker.groups().not_serving(&req.group_id) {
        broker.count_error(ApiKey::LeaveGroup, code);
        return LeaveGroupResponse::default().with_error_code(code);
    }
    let results = broker.groups().leave(&req.group_id, &members);
    for c in &results {
        broker.count_error(ApiKey::LeaveGroup, *c);
    }
    if version < 3 {
        return LeaveGroupResponse::default()
            .with_error_code(results.first().copied().unwrap_or(codes::NONE));
    }
    LeaveGroupResponse::default().with_members(
        req.members
            .into_iter()
            .zip(results)
            .map(|(m, code)| {
                MemberResponse::default()
                    .with_member_id(m.member_id)
                    .with_group_instance_id(m.group_instance_id)
                    .with_error_code(code)
            })
            .collect(),
    )
}

/// Per partition: its index and, if it failed a check, the error code.
type PartitionCodes = Vec<(i32, Option<i16>)>;

pub fn offset_commit(broker: &Arc<Broker>, req: OffsetCommitRequest) -> Reply {
    let max_meta = broker.config.offset_metadata_max_bytes;
    // Per-partition checks first; the rest goes to the coordinator as one write.
    let mut answers: Vec<(TopicName, PartitionCodes)> = Vec::new();
    let mut items = Vec::new();
    for t in &req.topics {
        let topic = broker.topics.get(&t.name);
        let mut parts = Vec::new();
        for p in &t.partitions {
            let meta = p.committed_metadata.as_deref().unwrap_or("");
            let code = match &topic {
                None => Some(codes::UNKNOWN_TOPIC_OR_PARTITION),
                Some(tp) if tp.partition(p.partition_index).is_none() => {
                    Some(codes::UNKNOWN_TOPIC_OR_PARTITION)
                }
                _ if meta.len() > max_meta => Some(codes::OFFSET_METADATA_TOO_LARGE),
                _ => None,
            };
            if code.is_none() {
                items.push(CommitItem {
                    topic: t.name.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: meta.to_string(),
                });
            }
            parts.push((p.partition_index, code));
        }
        answers.push((t.name.clone(), parts));
    }
    let written = broker.groups().commit(
        &req.group_id,
        req.generation_id_or_member_epoch,
        &req.member_id,
        req.group_instance_id.as_deref(),
        items,
    );
    let broker = broker.clone();
    Box::pin(async move {
        let group_code = match written {
            Err(code) => code,
            Ok(f) => match f.await {
                Ok(()) => codes::NONE,
                Err(code) => code,
            },
        };
        let topics = answers
            .into_iter()
            .map(|(name, parts)| {
                OffsetCommitResponseTopic::default()
                    .with_name(name)
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|(p, code)| {
                                let code = code.unwrap_or(group_code);
                                broker.count_error(ApiKey::OffsetCommit, code);
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
        Some(ResponseKind::OffsetCommit(
            OffsetCommitResponse::default().with_topics(topics),
        ))
    })
}

pub fn offset_fetch(broker: &Broker, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    let groups = broker.groups();
    // require_stable (v7+): an offset an open transaction has committed is not answered
    // until the transaction ends (the client retries on UNSTABLE_OFFSET_COMMIT).
    let stable = req.require_stable && version >= 7;
    let unstable = |group: &str, t: &str, p: i32| stable && groups.unstable(group, t, p);
    if version >= 8 {
        let out = req
            .groups
            .into_iter()
            .map(|g| {
                let topics = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes))
                        .collect()
                });
                // v9: a consumer-protocol member fetches with its id and epoch.
                let member = g
                    .member_id
                    .as_deref()
                    .filter(|m| version >= 9 && g.member_epoch >= 0 && !m.is_empty());
                let refused = groups.not_serving(&g.group_id).or_else(|| {
                    member.and_then(|m| groups.check_fetch_member(&g.group_id, m, g.member_epoch))
                });
                if let Some(code) = refused {
                    broker.count_error(ApiKey::OffsetFetch, code);
                    return OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id)
                        .with_error_code(code);
                }
                let found = groups.fetch_offsets(&g.group_id, topics);
                let group_id = g.group_id.to_string();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_topics(
                        found
                            .into_iter()
                            .map(|(t, parts)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(sb(&t)))
                                    .with_partitions(
                                        parts
                                            .into_iter()
                                            .map(|(p, v)| {
                                                let (o, e, m) = committed_fields(v);
                                                let code = if unstable(&group_id, &t, p) {
                                                    codes::UNSTABLE_OFFSET_COMMIT
                                                } else {
                                                    codes::NONE
                                                };
                                                OffsetFetchResponsePartitions::default()
                                                    .with_error_code(code)
                                                    .with_partition_index(p)
                                                    .with_committed_offset(o)
                                                    .with_committed_leader_epoch(e)
                                                    .with_metadata(Some(sb(&m)))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(out);
    }
    let topics: Option<Vec<(String, Vec<i32>)>> = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect()
    });
    let refused = groups.not_serving(&req.group_id);
    if let Some(code) = refused {
        broker.count_error(ApiKey::OffsetFetch, code);
        if version >= 2 {
            return OffsetFetchResponse::default().with_error_code(code);
        }
    }
    // v0-1 have no top-level error: each requested partition carries it.
    let found = match refused {
        Some(_) => topics
            .unwrap_or_default()
            .into_iter()
            .map(|(t, parts)| (t, parts.into_iter().map(|p| (p, None)).collect()))
            .collect(),
        None => groups.fetch_offsets(&req.group_id, topics),
    };
    let partition_code = refused.unwrap_or(codes::NONE);
    OffsetFetchResponse::default().with_topics(
        found
            .into_iter()
            .map(|(t, parts)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(sb(&t)))
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|(p, v)| {
                                let (o, e, m) = committed_fields(v);
                                let code = if partition_code == codes::NONE
                                    && unstable(&req.group_id, &t, p)
                                {
                                    codes::UNSTABLE_OFFSET_COMMIT
                                } else {
                                    partition_code
                                };
                                OffsetFetchResponsePartition::default()
                                    .with_error_code(code)
                                    .with_partition_index(p)
                                    .with_committed_offset(o)
                                    .with_committed_leader_epoch(e)
                                    .with_metadata(Some(sb(&m)))
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

pub fn list_groups(broker: &Broker, req: ListGroupsRequest) -> ListGroupsResponse {
    let groups = broker
        .groups()
        .list()
        .into_iter()
        .filter(|g| {
            req.types_filter.is_empty()
                || req
                    .types_filter
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(g.group_type))
        })
        .filter(|g| {
            req.states_filter.is_empty()
                || req
                    .states_filter
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(g.state_name))
        })
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(sb(&g.group_id)))
                .with_protocol_type(sb(&g.protocol_type))
                .with_group_state(sb(g.state_name))
                .with_group_type(sb(g.group_type))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub fn describe_groups(
    broker: &Broker,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let ops = group_ops(req.include_authorized_operations);
    let groups = req
        .groups
        .into_iter()
        .map(|id| {
            match (
                broker.groups().not_serving(&id),
                broker.groups().describe(&id),
            ) {
                (Some(code), _) => {
                    broker.count_error(ApiKey::DescribeGroups, code);
                    DescribedGroup::default()
                        .with_error_code(code)
                        .with_group_id(id)
                        .with_group_state(sb("Dead"))
                        .with_authorized_operations(ops)
                }
                // Consumer-protocol groups are described by ConsumerGroupDescribe.
                (None, Some(g)) if g.group_type == "consumer" && version >= 6 => {
                    broker.count_error(ApiKey::DescribeGroups, codes::GROUP_ID_NOT_FOUND);
                    DescribedGroup::default()
                        .with_error_code(codes::GROUP_ID_NOT_FOUND)
                        .with_error_message(Some(sb(&format!(
                            "group {} is not a classic group",
                            &*id
                        ))))
                        .with_group_id(id)
                        .with_group_state(sb("Dead"))
                        .with_authorized_operations(ops)
                }
                (None, Some(g)) => DescribedGroup::default()
                    .with_group_id(id)
                    .with_group_state(sb(g.state_name))
                    .with_protocol_type(sb(&g.protocol_type))
                    .with_protocol_data(sb(&g.protocol))
                    .with_authorized_operations(ops)
                    .with_members(
                        g.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(sb(&m.member_id))
                                    .with_group_instance_id(m.instance_id.as_deref().map(sb))
                                    .with_client_id(sb(&m.client_id))
                                    .with_client_host(sb(&m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
                (None, None) if version >= 6 => {
                    broker.count_error(ApiKey::DescribeGroups, codes::GROUP_ID_NOT_FOUND);
                    DescribedGroup::default()
                        .with_error_code(codes::GROUP_ID_NOT_FOUND)
                        .with_error_message(Some(sb(&format!("group {} not found", &*id))))
                        .with_group_id(id)
                        .with_group_state(sb("Dead"))
                        .with_authorized_operations(ops)
                }
                // Before v6 an unknown group is described as Dead with no error.
                (None, None) => DescribedGroup::default()
                    .with_group_id(id)
                    .with_group_state(sb("Dead"))
                    .with_authorized_operations(ops),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub fn delete_groups(broker: &Arc<Broker>, req: DeleteGroupsRequest) -> Reply {
    let pending: Vec<_> = req
        .groups_names
        .into_iter()
        .map(|id| {
            let f = broker.groups().delete_group(&id);
            (id, f)
        })
        .collect();
    let broker = broker.clone();
    Box::pin(async move {
        let mut results = Vec::with_capacity(pending.len());
        for (id, f) in pending {
            let code = f.await;
            broker.count_error(ApiKey::DeleteGroups, code);
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(id)
                    .with_error_code(code),
            );
        }
        Some(ResponseKind::DeleteGroups(
            DeleteGroupsResponse::default().with_results(results),
        ))
    })
}

pub fn offset_delete(broker: &Arc<Broker>, req: OffsetDeleteRequest) -> Reply {
    let topics = req
        .topics
        .iter()
        .map(|t| {
            (
                t.name.to_string(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    let result = broker.groups().delete_offsets(&req.group_id, topics);
    let broker = broker.clone();
    Box::pin(async move {
        let r = match result {
            Err(code) => {
                broker.count_error(ApiKey::OffsetDelete, code);
                OffsetDeleteResponse::default().with_error_code(code)
            }
            Ok((per_topic, written)) => {
                let ok = written.await;
                OffsetDeleteResponse::default().with_topics(
                    per_topic
                        .into_iter()
                        .map(|(t, parts)| {
                            OffsetDeleteResponseTopic::default()
                                .with_name(TopicName(sb(&t)))
                                .with_partitions(
                                    parts
                                        .into_iter()
                                        .map(|(p, code)| {
                                            let code = if ok || code != codes::NONE {
                                                code
                                            } else {
                                                codes::COORDINATOR_NOT_AVAILABLE
                                            };
                                            broker.count_error(ApiKey::OffsetDelete, code);
                                            OffsetDeleteResponsePartition::default()
                                                .with_partition_index(p)
                                                .with_error_code(code)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
            }
        };
        Some(ResponseKind::OffsetDelete(r))
    })
}
