//! ListOffsets and DeleteRecords.

use bytes::Bytes;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    ApiKey, DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
};
use kafka_protocol::records::RecordBatchDecoder;

use super::codes;
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

pub fn delete_records(broker: &Broker, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let topic = broker.topics.get(t.name.0.as_str());
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let base = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            let Some(part) = topic.as_ref().and_then(|t| t.partition(p.partition_index)) else {
                broker.count_error(ApiKey::DeleteRecords, codes::UNKNOWN_TOPIC_OR_PARTITION);
                partitions.push(base.with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION));
                continue;
            };
            let replica = match part.leader() {
                Ok(r) => r,
                Err(code) => {
                    broker.count_error(ApiKey::DeleteRecords, code);
                    partitions.push(base.with_error_code(code));
                    continue;
                }
            };
            partitions.push(match replica.delete_records(p.offset) {
                Ok(low) => base.with_low_watermark(low),
                Err(raft::Error::OffsetOutOfRange { .. }) => {
                    broker.count_error(ApiKey::DeleteRecords, codes::OFFSET_OUT_OF_RANGE);
                    base.with_error_code(codes::OFFSET_OUT_OF_RANGE)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "delete records failed");
                    broker.count_error(ApiKey::DeleteRecords, codes::KAFKA_STORAGE_ERROR);
                    base.with_error_code(codes::KAFKA_STORAGE_ERROR)
                }
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
