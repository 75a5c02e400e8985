//! The consumer group protocol of KIP-848: ConsumerGroupHeartbeat and
//! ConsumerGroupDescribe. Topics travel as ids on the wire and as names in
//! `crate::groups::consumer`; this module translates.

use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment as DescribedAssignment, DescribedGroup, Member, TopicPartitions as DescribedTopic,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment as HeartbeatAssignment, TopicPartitions as HeartbeatTopic,
};
use kafka_protocol::messages::*;

use crate::groups::consumer::{Assignment, HeartbeatArgs, TopicView, ASSIGNORS};
use crate::{sb, Broker};

use super::{codes, Reply};

/// The broker's topics as the group coordinator sees them.
struct Topics<'a>(&'a Broker);

impl TopicView for Topics<'_> {
    fn partitions(&self, topic: &str) -> Option<i32> {
        self.0.topics.get(topic).map(|t| t.partitions.len() as i32)
    }

    fn names(&self) -> Vec<String> {
        self.0
            .topics
            .all()
            .into_iter()
            .filter(|t| !t.name.starts_with("__"))
            .map(|t| t.name.clone())
            .collect()
    }
}

pub fn consumer_group_heartbeat(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    peer: SocketAddr,
    req: ConsumerGroupHeartbeatRequest,
    version: i16,
) -> Reply {
    match heartbeat_args(broker, header, peer, req, version) {
        Err(r) => super::ready(ResponseKind::ConsumerGroupHeartbeat(*r)),
        Ok(args) => {
            let answer = broker.groups().consumer_heartbeat(args, &Topics(broker));
            let broker = broker.clone();
            Box::pin(async move {
                let ans = answer.await;
                broker.count_error(ApiKey::ConsumerGroupHeartbeat, ans.error);
                let assignment = ans.assignment.map(|a| {
                    HeartbeatAssignment::default().with_topic_partitions(
                        a.into_iter()
                            .filter_map(|(t, ps)| {
                                let id = broker.topics.get(&t)?.id;
                                Some(
                                    HeartbeatTopic::default()
                                        .with_topic_id(id)
                                        .with_partitions(ps.into_iter().collect()),
                                )
                            })
                            .collect(),
                    )
                });
                Some(ResponseKind::ConsumerGroupHeartbeat(
                    ConsumerGroupHeartbeatResponse::default()
                        .with_error_code(ans.error)
                        .with_error_message(ans.message.as_deref().map(sb))
                        .with_member_id(Some(sb(&ans.member_id)))
                        .with_member_epoch(ans.member_epoch)
                        .with_heartbeat_interval_ms(ans.heartbeat_interval_ms)
                        .with_assignment(assignment),
                ))
            })
        }
    }
}

/// Checks a heartbeat's shape and translates it; `Err` is the answer to a malformed one.
fn heartbeat_args(
    broker: &Broker,
    header: &RequestHeader,
    peer: SocketAddr,
    req: ConsumerGroupHeartbeatRequest,
    version: i16,
) -> Result<HeartbeatArgs, Box<ConsumerGroupHeartbeatResponse>> {
    let fail = |code: i16, msg: &str| {
        broker.count_error(ApiKey::ConsumerGroupHeartbeat, code);
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(code)
            .with_error_message(Some(sb(msg)))
            .with_member_id(Some(req.member_id.clone()))
            .with_member_epoch(req.member_epoch)
    };
    // A join must say everything; later heartbeats only what changed.
    if req.member_epoch == 0
        && (req.rebalance_timeout_ms < 0
            || (req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none())
            || req.topic_partitions.is_none())
    {
        return Err(Box::new(fail(
            codes::INVALID_REQUEST,
            "a join (member epoch 0) needs rebalance timeout, subscription and owned partitions",
        )));
    }
    // v0 lets the coordinator name a joining member; v1 members name themselves.
    if req.member_id.is_empty() && (req.member_epoch != 0 || version >= 1) {
        return Err(Box::new(fail(
            codes::INVALID_REQUEST,
            "the member id is empty",
        )));
    }
    if req.member_epoch < -2 {
        return Err(Box::new(fail(
            codes::INVALID_REQUEST,
            "invalid member epoch",
        )));
    }
    if let Some(a) = req.server_assignor.as_deref() {
        if !ASSIGNORS.contains(&a) {
            return Err(Box::new(fail(
                codes::UNSUPPORTED_ASSIGNOR,
                &format!("assignor {a} is not supported (uniform, range)"),
            )));
        }
    }
    if req.instance_id.as_deref().is_some_and(str::is_empty) {
        return Err(Box::new(fail(
            codes::INVALID_REQUEST,
            "the instance id is empty",
        )));
    }
    // Owned partitions of topics that no longer exist are simply not owned any more.
    let owned = req.topic_partitions.map(|tps| {
        let mut a = Assignment::new();
        for tp in tps {
            if let Some(t) = broker.topics.get_by_id(tp.topic_id) {
                a.entry(t.name.clone())
                    .or_default()
                    .extend(tp.partitions.iter().copied());
            }
        }
        a
    });
    Ok(HeartbeatArgs {
        group_id: req.group_id.to_string(),
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.map(|s| s.to_string()),
        rack_id: req.rack_id.map(|s| s.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        topics: req
            .subscribed_topic_names
            .map(|v| v.into_iter().map(|t| t.to_string()).collect()),
        regex: req.subscribed_topic_regex.map(|s| s.to_string()),
        assignor: req.server_assignor.map(|s| s.to_string()),
        owned,
        client_id: super::client_id(header),
        client_host: format!("/{}", peer.ip()),
    })
}

fn described(broker: &Broker, a: Assignment) -> DescribedAssignment {
    DescribedAssignment::default().with_topic_partitions(
        a.into_iter()
            .filter_map(|(t, ps)| {
                let id = broker.topics.get(&t)?.id;
                Some(
                    DescribedTopic::default()
                        .with_topic_id(id)
                        .with_topic_name(TopicName(sb(&t)))
                        .with_partitions(ps.into_iter().collect()),
                )
            })
            .collect(),
    )
}

pub fn consumer_group_describe(
    broker: &Broker,
    req: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let ops = super::groups::group_ops(req.include_authorized_operations);
    let groups = req
        .group_ids
        .into_iter()
        .map(|id| match broker.groups().describe_consumer(&id) {
            Err(code) => {
                broker.count_error(ApiKey::ConsumerGroupDescribe, code);
                let msg = match code {
                    codes::GROUP_ID_NOT_FOUND => {
                        format!("group {} is not a consumer-protocol group", &*id)
                    }
                    _ => "this node does not coordinate the group now".to_string(),
                };
                DescribedGroup::default()
                    .with_group_id(id)
                    .with_error_code(code)
                    .with_error_message(Some(sb(&msg)))
                    .with_group_state(sb("Dead"))
                    .with_authorized_operations(ops)
            }
            Ok(g) => DescribedGroup::default()
                .with_group_id(id)
                .with_group_state(sb(g.state))
                .with_group_epoch(g.epoch)
                .with_assignment_epoch(g.assignment_epoch)
                .with_assignor_name(sb(&g.assignor))
                .with_authorized_operations(ops)
                .with_members(
                    g.members
                        .into_iter()
                        .map(|m| {
                            Member::default()
                                .with_member_id(sb(&m.member_id))
                                .with_instance_id(m.instance_id.as_deref().map(sb))
                                .with_rack_id(m.rack_id.as_deref().map(sb))
                                .with_member_epoch(m.member_epoch)
                                .with_client_id(sb(&m.client_id))
                                .with_client_host(sb(&m.client_host))
                                .with_subscribed_topic_names(
                                    m.topics.iter().map(|t| TopicName(sb(t))).collect(),
                                )
                                .with_subscribed_topic_regex(m.regex.as_deref().map(sb))
                                .with_assignment(described(broker, m.assignment))
                                .with_target_assignment(described(broker, m.target))
                                .with_member_type(1)
                        })
                        .collect(),
                ),
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}
