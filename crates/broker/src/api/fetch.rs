//! Fetch: committed batch bytes as stored, with long polling woken by commits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::select_all;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ProducerId, ResponseKind, TopicName,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{codes, Reply};
use crate::topics::{PartitionState, Topic};
use crate::Broker;

use codes::{FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH};
/// Upper bound on how long a fetch may park, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

pub fn fetch(broker: Arc<Broker>, req: FetchRequest, version: i16) -> Reply {
    // Fetch v0-v3 clients read record formats v0/v1: remember where each partition's read
    // starts (and its byte limit), to down-convert what is read from there.
    let legacy = (version < 4).then(|| Legacy {
        magic: protocol::legacy::fetch_magic(version),
        wait: Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP),
        from: req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    let limit = p.partition_max_bytes.max(0) as usize;
                    ((t.topic.clone(), p.partition), (p.fetch_offset, limit))
                })
            })
            .collect(),
    });
    Box::pin(async move {
        let mut response = fetch_inner(&broker, req, version).await;
        if let Some(legacy) = legacy {
            legacy.down_convert(&broker, &mut response).await;
        }
        Some(ResponseKind::Fetch(response))
    })
}

/// What a Fetch v0-v3 answer needs beyond the usual read.
struct Legacy {
    magic: i8,
    wait: Duration,
    /// Per partition: the fetch offset and the partition's byte limit.
    from: HashMap<(TopicName, i32), (i64, usize)>,
}

/// How many further reads a down-conversion may take to get past transaction markers.
const LEGACY_READ_ON: usize = 16;

impl Legacy {
    /// Replaces every partition's batches by the message set of the client's format. Where
    /// what was read held nothing to convert (only transaction markers, which these formats
    /// cannot carry), it reads on past them: an old client would otherwise ask for the same
    /// offset forever. If that leaves nothing at all for the client, the answer waits out
    /// the request's max wait, as a long poll with no data would have.
    async fn down_convert(&self, broker: &Broker, response: &mut FetchResponse) {
        let mut converted = 0usize;
        let mut skipped = false;
        for t in &mut response.responses {
            for p in &mut t.partitions {
                let Some(data) = p.records.take() else {
                    continue;
                };
                let key = (t.topic.clone(), p.partition_index);
                let (mut start, limit) = self.from.get(&key).copied().unwrap_or((0, 0));
                let (mut set, mut next) =
                    protocol::legacy::batches_to_message_set(&data, self.magic, start);
                for _ in 0..LEGACY_READ_ON {
                    if !set.is_empty() || next <= start {
                        break;
                    }
                    skipped = true;
                    let more = read_on(broker, t.topic.as_str(), p.partition_index, next, limit);
                    let Some(more) = more.filter(|m| !m.is_empty()) else {
                        break;
                    };
                    start = next;
                    (set, next) =
                        protocol::legacy::batches_to_message_set(&more, self.magic, start);
                }
                converted += set.len();
                p.records = Some(set);
            }
        }
        if skipped && converted == 0 {
            tokio::time::sleep(self.wait).await;
        }
    }
}

/// Reads a partition this node leads from `offset` (read uncommitted, as old clients do).
fn read_on(
    broker: &Broker,
    topic: &str,
    partition: i32,
    offset: i64,
    limit: usize,
) -> Option<Bytes> {
    let topic = broker.topics.get(topic)?;
    let replica = topic.partition(partition)?.leader().ok()?;
    replica.read(offset, limit).ok().map(|r| r.data)
}

enum Target {
    Ok {
        topic: Arc<Topic>,
        partition: Arc<PartitionState>,
        offset: i64,
        max_bytes: i32,
        epoch: i32,
    },
    Err(i16),
}

async fn fetch_inner(broker: &Broker, req: FetchRequest, version: i16) -> FetchResponse {
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let deadline = Instant::now() + wait;
    // isolation_level 1 (read_committed): only up to the last stable offset, with the
    // aborted transactions the client has to drop.
    let committed = version >= 4 && req.isolation_level == 1;
    let min_bytes = i64::from(req.min_bytes.max(0));
    let max_bytes = if req.max_bytes <= 0 {
        i64::from(i32::MAX)
    } else {
        i64::from(req.max_bytes)
    };
    // Resolve every requested partition once.
    let mut targets: Vec<(FetchableTopicResponse, Vec<(i32, Target)>)> = Vec::new();
    for t in &req.topics {
        let topic = if version >= 13 {
            broker.topics.get_by_id(t.topic_id)
        } else {
            broker.topics.get(t.topic.0.as_str())
        };
        let missing = if version >= 13 {
            codes::UNKNOWN_TOPIC_ID
        } else {
            codes::UNKNOWN_TOPIC_OR_PARTITION
        };
        let head = FetchableTopicResponse::default()
            .with_topic(t.topic.clone())
            .with_topic_id(t.topic_id);
        let parts = t
            .partitions
            .iter()
            .map(|p| {
                let target = match &topic {
                    None => Target::Err(missing),
                    Some(topic) => match topic.partition(p.partition) {
                        None => Target::Err(codes::UNKNOWN_TOPIC_OR_PARTITION),
                        Some(part) => Target::Ok {
                            topic: topic.clone(),
                            partition: part.clone(),
                            offset: p.fetch_offset,
                            max_bytes: p.partition_max_bytes,
                            epoch: p.current_leader_epoch,
                        },
                    },
                };
                (p.partition, target)
            })
            .collect();
        targets.push((head, parts));
    }
    loop {
        // Subscribe before reading so a commit between the read and the wait is not missed.
        let mut watchers: Vec<watch::Receiver<i64>> = Vec::new();
        if !wait.is_zero() {
            for (_, parts) in &targets {
                for (_, t) in parts {
                    if let Target::Ok { partition, .. } = t {
                        if let Some(r) = &partition.replica {
                            watchers.push(r.subscribe());
                        }
                    }
                }
            }
        }
        let (response, bytes, errors) = read_all(broker, &targets, max_bytes, committed);
        if bytes >= min_bytes || errors || watchers.is_empty() || Instant::now() >= deadline {
            return response;
        }
        let changed = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return read_all(broker, &targets, max_bytes, committed).0;
        }
    }
}

fn read_all(
    broker: &Broker,
    targets: &[(FetchableTopicResponse, Vec<(i32, Target)>)],
    max_bytes: i64,
    committed: bool,
) -> (FetchResponse, i64, bool) {
    let mut total: i64 = 0;
    let mut errors = false;
    let mut responses = Vec::with_capacity(targets.len());
    for (head, parts) in targets {
        let mut out = Vec::with_capacity(parts.len());
        for (index, target) in parts {
            let data = match target {
                Target::Err(code) => {
                    errors = true;
                    broker.count_error(ApiKey::Fetch, *code);
                    error_partition(*index, *code)
                }
                Target::Ok {
                    topic,
                    partition,
                    offset,
                    max_bytes: pmax,
                    epoch,
                } => {
                    let replica = match partition.leader() {
                        Ok(r) => r,
                        Err(code) => {
                            errors = true;
                            broker.count_error(ApiKey::Fetch, code);
                            out.push(error_partition(*index, code));
                            continue;
                        }
                    };
                    let leader_epoch = replica.leader_epoch();
                    if *epoch >= 0 && *epoch != leader_epoch {
                        errors = true;
                        let code = if *epoch < leader_epoch {
                            FENCED_LEADER_EPOCH
                        } else {
                            UNKNOWN_LEADER_EPOCH
                        };
                        broker.count_error(ApiKey::Fetch, code);
                        out.push(error_partition(*index, code));
                        continue;
                    }
                    let remaining = max_bytes - total;
                    let limit = i64::from(*pmax).min(remaining);
                    // Nothing more fits: an empty read (positions and aborted list still right).
                    let limit = limit.max(0) as usize;
                    match replica.read_isolated(*offset, limit, committed) {
                        Ok(mut r) => {
                            if limit == 0 {
                                r.data = Bytes::new();
                                r.aborted = r.aborted.map(|_| Vec::new());
                            }
                            total += r.data.len() as i64;
                            topic.metrics.bytes_out.inc_by(r.data.len() as u64);
                            topic.metrics.records_out.inc_by(record_count(&r.data));
                            ok_partition(*index, r)
                        }
                        Err(raft::Error::OffsetOutOfRange { .. }) => {
                            errors = true;
                            broker.count_error(ApiKey::Fetch, codes::OFFSET_OUT_OF_RANGE);
                            error_partition(*index, codes::OFFSET_OUT_OF_RANGE)
                                .with_high_watermark(replica.high_watermark())
                                .with_last_stable_offset(replica.last_stable_offset())
                                .with_log_start_offset(replica.log_start_offset())
                        }
                        Err(e) => {
                            errors = true;
                            tracing::warn!(topic = %topic.name, partition = index, error = %e, "fetch read failed");
                            broker.count_error(ApiKey::Fetch, codes::KAFKA_STORAGE_ERROR);
                            error_partition(*index, codes::KAFKA_STORAGE_ERROR)
                        }
                    }
                }
            };
            out.push(data);
        }
        responses.push(head.clone().with_partitions(out));
    }
    // Session id 0: no incremental fetch session (KIP-227 lets a broker decline one).
    let response = FetchResponse::default()
        .with_session_id(0)
        .with_responses(responses);
    (response, total, errors)
}

fn ok_partition(index: i32, r: raft::ReadResult) -> PartitionData {
    let aborted = r.aborted.map(|list| {
        list.into_iter()
            .map(|a| {
                AbortedTransaction::default()
                    .with_producer_id(ProducerId(a.producer_id))
                    .with_first_offset(a.first_offset)
            })
            .collect()
    });
    PartitionData::default()
        .with_partition_index(index)
        .with_high_watermark(r.high_watermark)
        .with_last_stable_offset(r.last_stable_offset)
        .with_log_start_offset(r.log_start_offset)
        .with_aborted_transactions(aborted)
        .with_preferred_read_replica(BrokerId(-1))
        .with_records(Some(r.data))
}

fn error_partition(index: i32, code: i16) -> PartitionData {
    PartitionData::default()
        .with_partition_index(index)
        .with_error_code(code)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_preferred_read_replica(BrokerId(-1))
        .with_records(Some(Bytes::new()))
}

/// Records in concatenated record batches, from their headers.
fn record_count(mut data: &[u8]) -> u64 {
    let mut n = 0u64;
    while let Ok(h) = storage::batch::BatchHeader::parse_prefix(data) {
        n += u64::try_from(h.record_count()).unwrap_or(0);
        let size = h.total_size();
        if size == 0 || size > data.len() {
            break;
        }
        data = &data[size..];
    }
    n
}
