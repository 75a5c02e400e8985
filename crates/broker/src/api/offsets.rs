//! ListOffsets and DeleteRecords.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    ApiKey, DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
    ResponseKind,
};
use kafka_protocol::records::RecordBatchDecoder;

use super::{codes, Reply};
use crate::Broker;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

/// The first record of `batch` matching `pick`, as (offset, timestamp).
fn find_record(batch: Bytes, pick: impl Fn(i64) -> bool) -> Option<(i64, i64)> {
    let mut buf = batch;
    let set = RecordBatchDecoder::decode(&mut buf).ok()?;
    set.records
        .iter()
        .find(|r| pick(r.timestamp))
        .map(|r| (r.offset, r.timestamp))
}

pub fn list_offsets(broker: &Broker, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let committed = version >= 2 && req.isolation_level == 1;
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let topic = broker.topics.get(t.name.0.as_str());
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let base = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1)
                .with_leader_epoch(-1);
            let Some(part) = topic.as_ref().and_then(|t| t.partition(p.partition_index)) else {
                broker.count_error(ApiKey::ListOffsets, codes::UNKNOWN_TOPIC_OR_PARTITION);
                partitions.push(base.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION));
                continue;
            };
            let replica = match part.leader() {
                Ok(r) => r,
                Err(code) => {
                    broker.count_error(ApiKey::ListOffsets, code);
                    partitions.push(base.with_error_code(code));
                    continue;
                }
            };
            // The leader epoch field exists from v4; older versions must leave it at -1.
            let epoch = if version >= 4 {
                replica.leader_epoch()
            } else {
                -1
            };
            let found: Result<Option<(i64, i64)>, raft::Error> = match p.timestamp {
                // read_committed (v2+) consumers start from the last stable offset.
                LATEST if committed => Ok(Some((replica.last_stable_offset(), -1))),
                LATEST => Ok(Some((replica.high_watermark(), -1))),
                EARLIEST | EARLIEST_LOCAL => Ok(Some((replica.log_start_offset(), -1))),
                LATEST_TIERED => Ok(None),
                MAX_TIMESTAMP => replica
                    .max_timestamp()
                    .map(|m| m.and_then(|(ts, batch)| find_record(batch, |r| r == ts))),
                ts if ts >= 0 => replica
                    .find_by_timestamp(ts)
                    .map(|b| b.and_then(|batch| find_record(batch, |r| r >= ts))),
                _ => {
                    broker.count_error(ApiKey::ListOffsets, codes::INVALID_REQUEST);
                    partitions.push(base.with_error_code(codes::INVALID_REQUEST));
                    continue;
                }
            };
            partitions.push(match found {
                Ok(Some((offset, ts))) => base
                    .with_offset(offset)
                    .with_timestamp(ts)
                    .with_leader_epoch(epoch),
                Ok(None) => base.with_leader_epoch(epoch),
                Err(e) => {
                    tracing::warn!(error = %e, "list offsets read failed");
                    broker.count_error(ApiKey::ListOffsets, codes::KAFKA_STORAGE_ERROR);
                    base.with_error_code(codes::KAFKA_STORAGE_ERROR)
                }
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// DeleteRecords: each partition's new log start is replicated through its Raft group
/// (answered once committed and applied on the leader); partitions are done concurrently.
pub fn delete_records(broker: Arc<Broker>, req: DeleteRecordsRequest) -> Reply {
    Box::pin(async move {
        let mut topics = Vec::with_capacity(req.topics.len());
        for t in req.topics {
            let topic = broker.topics.get(t.name.0.as_str());
            let calls = t.partitions.into_iter().map(|p| {
                let broker = broker.clone();
                let leader = match topic.as_ref().and_then(|t| t.partition(p.partition_index)) {
                    None => Err(codes::UNKNOWN_TOPIC_OR_PARTITION),
                    Some(part) => part.leader().cloned(),
                };
                async move {
                    let base = DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index)
                        .with_low_watermark(-1);
                    let replica = match leader {
                        Ok(r) => r,
                        Err(code) => {
                            broker.count_error(ApiKey::DeleteRecords, code);
                            return base.with_error_code(code);
                        }
                    };
                    match replica.delete_records(p.offset).await {
                        Ok(low) => base.with_low_watermark(low),
                        Err(e) => {
                            let code = match e {
                                raft::Error::OffsetOutOfRange { .. } => codes::OFFSET_OUT_OF_RANGE,
                                raft::Error::NotLeader { .. } | raft::Error::Closed => {
                                    codes::NOT_LEADER_OR_FOLLOWER
                                }
                                e => {
                                    tracing::warn!(error = %e, "delete records failed");
                                    codes::KAFKA_STORAGE_ERROR
                                }
                            };
                            broker.count_error(ApiKey::DeleteRecords, code);
                            base.with_error_code(code)
                        }
                    }
                }
            });
            let partitions = futures_util::future::join_all(calls).await;
            topics.push(
                DeleteRecordsTopicResult::default()
                    .with_name(t.name)
                    .with_partitions(partitions),
            );
        }
        Some(ResponseKind::DeleteRecords(
            DeleteRecordsResponse::default().with_topics(topics),
        ))
    })
}
