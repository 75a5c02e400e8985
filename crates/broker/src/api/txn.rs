//! Transactions: AddPartitionsToTxn, AddOffsetsToTxn, EndTxn (transaction coordinator),
//! TxnOffsetCommit (group coordinator), WriteTxnMarkers (partition leaders),
//! DescribeTransactions and ListTransactions.

use std::sync::Arc;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{self, TopicData};
use kafka_protocol::messages::list_transactions_response;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, ApiKey, DescribeTransactionsRequest, DescribeTransactionsResponse,
    EndTxnRequest, EndTxnResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    ResponseKind, TopicName, TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
    WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;

use super::{codes, Reply};
use crate::groups::{partition_for, CommitItem, OFFSETS_TOPIC};
use crate::txn::Marker;
use crate::{now_ms, sb, Broker};

/// The (topic, partition) pairs of a request, each with UNKNOWN_TOPIC_OR_PARTITION when it
/// does not exist.
fn resolve(broker: &Broker, topics: &[AddPartitionsToTxnTopic]) -> Vec<(String, i32, i16)> {
    let mut out = Vec::new();
    for t in topics {
        let name = t.name.0.to_string();
        let topic = broker.topics.get(&name);
        for p in &t.partitions {
            let ok = topic.as_ref().is_some_and(|t| t.partition(*p).is_some());
            let code = if ok {
                codes::NONE
            } else {
                codes::UNKNOWN_TOPIC_OR_PARTITION
            };
            out.push((name.clone(), *p, code));
        }
    }
    out
}

/// Adds one transaction's partitions; per-partition codes grouped by topic.
async fn add_one(
    broker: &Arc<Broker>,
    id: &str,
    pid: i64,
    epoch: i16,
    topics: &[AddPartitionsToTxnTopic],
    version: i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let parts = resolve(broker, topics);
    let unknown = parts.iter().any(|(_, _, c)| *c != codes::NONE);
    let outcome = if unknown {
        Err(codes::OPERATION_NOT_ATTEMPTED)
    } else {
        let list = parts.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        broker
            .txn()
            .add_partitions(id, pid, epoch, list, version >= 2)
            .await
    };
    let mut by_topic: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for (topic, p, own) in parts {
        let code = match outcome {
            Ok(()) => codes::NONE,
            Err(codes::OPERATION_NOT_ATTEMPTED) if own != codes::NONE => own,
            Err(c) => c,
        };
        broker.count_error(ApiKey::AddPartitionsToTxn, code);
        let r = AddPartitionsToTxnPartitionResult::default()
            .with_partition_index(p)
            .with_partition_error_code(code);
        match by_topic.iter_mut().find(|t| t.name.0.as_str() == topic) {
            Some(t) => t.results_by_partition.push(r),
            None => by_topic.push(
                AddPartitionsToTxnTopicResult::default()
                    .with_name(TopicName(sb(&topic)))
                    .with_results_by_partition(vec![r]),
            ),
        }
    }
    by_topic
}

pub fn add_partitions_to_txn(
    broker: Arc<Broker>,
    req: AddPartitionsToTxnRequest,
    version: i16,
) -> Reply {
    Box::pin(async move {
        let resp = if version <= 3 {
            let results = add_one(
                &broker,
                req.v3_and_below_transactional_id.0.as_str(),
                req.v3_and_below_producer_id.0,
                req.v3_and_below_producer_epoch,
                &req.v3_and_below_topics,
                version,
            )
            .await;
            AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
        } else {
            // The batched form (v4+, sent by brokers verifying a transaction): one result
            // per transaction; verify_only checks without adding.
            let mut out = Vec::with_capacity(req.transactions.len());
            for t in &req.transactions {
                let results = if t.verify_only {
                    verify(&broker, t).await
                } else {
                    add_one(
                        &broker,
                        t.transactional_id.0.as_str(),
                        t.producer_id.0,
                        t.producer_epoch,
                        &t.topics,
                        version,
                    )
                    .await
                };
                out.push(
                    AddPartitionsToTxnResult::default()
                        .with_transactional_id(t.transactional_id.clone())
                        .with_topic_results(results),
                );
            }
            AddPartitionsToTxnResponse::default().with_results_by_transaction(out)
        };
        Some(ResponseKind::AddPartitionsToTxn(resp))
    })
}

/// verify_only: whether each partition is in the transaction (INVALID_TXN_STATE if not).
async fn verify(
    broker: &Arc<Broker>,
    t: &kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTransaction,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let state = broker.txn().describe(t.transactional_id.0.as_str()).await;
    t.topics
        .iter()
        .map(|topic| {
            let name = topic.name.0.to_string();
            let results = topic
                .partitions
                .iter()
                .map(|p| {
                    let code = match &state {
                        Err(c) => *c,
                        Ok(m) if m.producer_id != t.producer_id.0 => {
                            codes::INVALID_PRODUCER_ID_MAPPING
                        }
                        Ok(m) if m.producer_epoch != t.producer_epoch => codes::PRODUCER_FENCED,
                        Ok(m) if m.partitions.contains(&(name.clone(), *p)) => codes::NONE,
                        Ok(_) => codes::INVALID_TXN_STATE,
                    };
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*p)
                        .with_partition_error_code(code)
                })
                .collect();
            AddPartitionsToTxnTopicResult::default()
                .with_name(topic.name.clone())
                .with_results_by_partition(results)
        })
        .collect()
}

pub fn add_offsets_to_txn(broker: Arc<Broker>, req: AddOffsetsToTxnRequest, version: i16) -> Reply {
    Box::pin(async move {
        let code = match broker.topics.get(OFFSETS_TOPIC) {
            None => codes::COORDINATOR_NOT_AVAILABLE,
            Some(t) => {
                let k = partition_for(req.group_id.0.as_str(), t.partitions.len());
                broker
                    .txn()
                    .add_partitions(
                        req.transactional_id.0.as_str(),
                        req.producer_id.0,
                        req.producer_epoch,
                        vec![(OFFSETS_TOPIC.to_string(), k as i32)],
                        version >= 2,
                    )
                    .await
                    .err()
                    .unwrap_or(codes::NONE)
            }
        };
        broker.count_error(ApiKey::AddOffsetsToTxn, code);
        Some(ResponseKind::AddOffsetsToTxn(
            AddOffsetsToTxnResponse::default().with_error_code(code),
        ))
    })
}

pub fn end_txn(broker: Arc<Broker>, req: EndTxnRequest, version: i16) -> Reply {
    Box::pin(async move {
        let txn = broker.txn().clone();
        let code = txn
            .end_txn(
                &broker,
                req.transactional_id.0.as_str(),
                req.producer_id.0,
                req.producer_epoch,
                req.committed,
                version >= 2,
            )
            .await
            .err()
            .unwrap_or(codes::NONE);
        broker.count_error(ApiKey::EndTxn, code);
        Some(ResponseKind::EndTxn(
            EndTxnResponse::default()
                .with_error_code(code)
                .with_producer_id(req.producer_id)
                .with_producer_epoch(req.producer_epoch),
        ))
    })
}

pub fn txn_offset_commit(broker: &Arc<Broker>, req: TxnOffsetCommitRequest) -> Reply {
    let mut items = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            items.push(CommitItem {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            });
        }
    }
    let shape: Vec<(TopicName, Vec<i32>)> = req
        .topics
        .iter()
        .map(|t| {
            let parts = t.partitions.iter().map(|p| p.partition_index).collect();
            (t.name.clone(), parts)
        })
        .collect();
    let answer = move |code: i16| -> TxnOffsetCommitResponse {
        let topics = shape
            .iter()
            .map(|(name, parts)| {
                TxnOffsetCommitResponseTopic::default()
                    .with_name(name.clone())
                    .with_partitions(
                        parts
                            .iter()
                            .map(|p| {
                                TxnOffsetCommitResponsePartition::default()
                                    .with_partition_index(*p)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
        TxnOffsetCommitResponse::default().with_topics(topics)
    };
    let too_big = items
        .iter()
        .any(|i| i.metadata.len() > broker.config.offset_metadata_max_bytes);
    if too_big {
        broker.count_error(ApiKey::TxnOffsetCommit, codes::OFFSET_METADATA_TOO_LARGE);
        return super::ready(ResponseKind::TxnOffsetCommit(answer(
            codes::OFFSET_METADATA_TOO_LARGE,
        )));
    }
    let written = broker.groups().txn_commit(
        req.group_id.0.as_str(),
        req.producer_id.0,
        req.producer_epoch,
        req.generation_id,
        req.member_id.as_str(),
        req.group_instance_id.as_deref(),
        items,
    );
    let broker = broker.clone();
    Box::pin(async move {
        let code = match written {
            Err(c) => c,
            Ok(f) => f.await.err().unwrap_or(codes::NONE),
        };
        broker.count_error(ApiKey::TxnOffsetCommit, code);
        Some(ResponseKind::TxnOffsetCommit(answer(code)))
    })
}

pub fn write_txn_markers(broker: Arc<Broker>, req: WriteTxnMarkersRequest) -> Reply {
    Box::pin(async move {
        let mut results = Vec::with_capacity(req.markers.len());
        for m in req.markers {
            let markers: Vec<Marker> = m
                .topics
                .iter()
                .flat_map(|t| {
                    t.partition_indexes.iter().map(|p| Marker {
                        topic: t.name.0.to_string(),
                        partition: *p,
                        producer_id: m.producer_id.0,
                        producer_epoch: m.producer_epoch,
                        commit: m.transaction_result,
                        coordinator_epoch: m.coordinator_epoch,
                    })
                })
                .collect();
            let written = crate::txn::write_markers_local(&broker, markers).await;
            let mut topics: Vec<WritableTxnMarkerTopicResult> = Vec::new();
            for (mk, code) in written {
                broker.count_error(ApiKey::WriteTxnMarkers, code);
                let r = WritableTxnMarkerPartitionResult::default()
                    .with_partition_index(mk.partition)
                    .with_error_code(code);
                match topics.iter_mut().find(|t| t.name.0.as_str() == mk.topic) {
                    Some(t) => t.partitions.push(r),
                    None => topics.push(
                        WritableTxnMarkerTopicResult::default()
                            .with_name(TopicName(sb(&mk.topic)))
                            .with_partitions(vec![r]),
                    ),
                }
            }
            results.push(
                WritableTxnMarkerResult::default()
                    .with_producer_id(m.producer_id)
                    .with_topics(topics),
            );
        }
        Some(ResponseKind::WriteTxnMarkers(
            WriteTxnMarkersResponse::default().with_markers(results),
        ))
    })
}

pub fn describe_transactions(broker: Arc<Broker>, req: DescribeTransactionsRequest) -> Reply {
    Box::pin(async move {
        let mut states = Vec::with_capacity(req.transactional_ids.len());
        for id in req.transactional_ids {
            let base = describe_transactions_response::TransactionState::default()
                .with_transactional_id(id.clone())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1);
            let s = match broker.txn().describe(id.0.as_str()).await {
                Err(code) => {
                    broker.count_error(ApiKey::DescribeTransactions, code);
                    base.with_error_code(code)
                }
                Ok(m) => {
                    let mut topics: Vec<TopicData> = Vec::new();
                    for (t, p) in &m.partitions {
                        match topics.iter_mut().find(|x| x.topic.0.as_str() == t) {
                            Some(x) => x.partitions.push(*p),
                            None => topics.push(
                                TopicData::default()
                                    .with_topic(TopicName(sb(t)))
                                    .with_partitions(vec![*p]),
                            ),
                        }
                    }
                    base.with_transaction_state(sb(m.status.name()))
                        .with_transaction_timeout_ms(m.timeout_ms)
                        .with_transaction_start_time_ms(m.start_ms)
                        .with_producer_id(ProducerId(m.producer_id))
                        .with_producer_epoch(m.producer_epoch)
                        .with_topics(topics)
                }
            };
            states.push(s);
        }
        Some(ResponseKind::DescribeTransactions(
            DescribeTransactionsResponse::default().with_transaction_states(states),
        ))
    })
}

/// The states ListTransactions knows (Kafka's names).
const STATES: &[&str] = &[
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

pub fn list_transactions(broker: Arc<Broker>, req: ListTransactionsRequest) -> Reply {
    Box::pin(async move {
        let filters: Vec<String> = req.state_filters.iter().map(|s| s.to_string()).collect();
        let unknown: Vec<_> = filters
            .iter()
            .filter(|f| !STATES.contains(&f.as_str()))
            .map(|f| sb(f))
            .collect();
        let now = now_ms();
        let states = broker
            .txn()
            .list()
            .await
            .into_iter()
            .filter(|s| filters.is_empty() || filters.iter().any(|f| f == s.meta.status.name()))
            .filter(|s| {
                req.producer_id_filters.is_empty()
                    || req
                        .producer_id_filters
                        .iter()
                        .any(|p| p.0 == s.meta.producer_id)
            })
            .filter(|s| {
                // duration_filter (v1): transactions running longer than this many ms.
                req.duration_filter < 0
                    || (s.meta.start_ms >= 0 && now - s.meta.start_ms > req.duration_filter)
            })
            .map(|s| {
                list_transactions_response::TransactionState::default()
                    .with_transactional_id(TransactionalId(sb(&s.id)))
                    .with_producer_id(ProducerId(s.meta.producer_id))
                    .with_transaction_state(sb(s.meta.status.name()))
            })
            .collect();
        Some(ResponseKind::ListTransactions(
            ListTransactionsResponse::default()
                .with_unknown_state_filters(unknown)
                .with_transaction_states(states),
        ))
    })
}
