//! Produce: validate record batches as sent, queue them on their partitions in request
//! order, answer when committed (acks=all), when on the leader's log (acks=1) or not at all
//! (acks=0).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use raft::ProposeOutcome;

use super::{codes, Reply};
use crate::metrics::TopicMetrics;
use crate::Broker;

type PartitionFuture = Pin<Box<dyn Future<Output = PartitionProduceResponse> + Send>>;

fn failed(index: i32, code: i16, message: impl Into<String>) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
        .with_error_message(Some(StrBytes::from_string(message.into())))
}

use crate::now_ms;

pub fn produce(broker: &Arc<Broker>, req: ProduceRequest, version: i16) -> Reply {
    let acks = req.acks;
    // Message sets of Produce v0-v2 inflate into at most this much per request.
    let mut inflate_budget = broker.config.socket_request_max_bytes;
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
    let now = now_ms();
    let mut topics: Vec<(TopicProduceResponse, Vec<PartitionFuture>)> = Vec::new();
    for td in req.topic_data {
        let name = td.name.0.as_str().to_string();
        let topic = broker.topics.get(&name);
        let mut parts: Vec<PartitionFuture> = Vec::new();
        for pd in td.partition_data {
            let index = pd.index;
            let answer = |code: i16, msg: String| -> PartitionFuture {
                broker.count_error(ApiKey::Produce, code);
                Box::pin(std::future::ready(failed(index, code, msg)))
            };
            if !matches!(acks, -1..=1) {
                parts.push(answer(
                    codes::INVALID_REQUIRED_ACKS,
                    format!("acks={acks} is not -1, 0 or 1"),
                ));
                continue;
            }
            let Some(topic) = &topic else {
                parts.push(answer(
                    codes::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("unknown topic '{name}'"),
                ));
                continue;
            };
            if topic.internal {
                parts.push(answer(
                    codes::INVALID_TOPIC_EXCEPTION,
                    format!("cannot produce to internal topic '{name}'"),
                ));
                continue;
            }
            let Some(partition) = topic.partition(index) else {
                parts.push(answer(
                    codes::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("topic '{name}' has no partition {index}"),
                ));
                continue;
            };
            let mut records = pd.records.unwrap_or_default();
            if version < 3 {
                match protocol::legacy::message_set_to_batch(&records, &mut inflate_budget) {
                    Ok(batch) => records = batch,
                    Err((code, msg)) => {
                        parts.push(answer(code, msg));
                        continue;
                    }
                }
            }
            let append_time = topic.config.log_append_time.then_some(now);
            let v = match protocol::validate::produce_batches(
                &records,
                topic.config.max_message_bytes,
                append_time,
            ) {
                Ok(v) => v,
                Err((code, msg)) => {
                    parts.push(answer(code, msg));
                    continue;
                }
            };
            let Some(replica) = partition.replica.clone() else {
                parts.push(answer(
                    codes::NOT_LEADER_OR_FOLLOWER,
                    "this node holds no replica of the partition".into(),
                ));
                continue;
            };
            // acks=all needs min.insync.replicas in sync before the write is taken (a Raft
            // commit needs a majority anyway; this is the stricter Kafka check).
            // The leader is always in sync, so the default min.insync.replicas=1 needs no
            // look at the ISR on this hot path.
            let min = topic.config.min_insync_replicas;
            if acks == -1 && min > 1 && replica.is_leader() {
                let isr = replica.in_sync_replicas().len();
                if (isr as i64) < i64::from(min) {
                    parts.push(answer(
                        codes::NOT_ENOUGH_REPLICAS,
                        format!("{isr} in-sync replicas, min.insync.replicas is {min}"),
                    ));
                    continue;
                }
            }
            // acks=1 is answered once the leader's log has the batches; acks=-1 on commit.
            let proposed = replica.propose_acks(v.batches, acks == 1);
            let metrics = topic.metrics.clone();
            let broker = broker.clone();
            let (records, bytes, append_time) = (v.records, v.bytes, append_time.unwrap_or(-1));
            let proposed_at = std::time::Instant::now();
            parts.push(Box::pin(async move {
                let outcome =
                    match tokio::time::timeout(timeout.max(Duration::from_millis(1)), proposed)
                        .await
                    {
                        Ok(r) => {
                            if r.is_ok() && acks != 1 {
                                broker
                                    .metrics
                                    .commit_latency
                                    .observe(proposed_at.elapsed().as_secs_f64());
                            }
                            r
                        }
                        Err(_) => {
                            broker.count_error(ApiKey::Produce, codes::REQUEST_TIMED_OUT);
                            return failed(
                                index,
                                codes::REQUEST_TIMED_OUT,
                                "commit did not finish within timeout_ms",
                            );
                        }
                    };
                answer_partition(
                    &broker,
                    index,
                    outcome,
                    &replica,
                    &metrics,
                    records,
                    bytes,
                    append_time,
                )
            }));
        }
        topics.push((
            TopicProduceResponse::default()
                .with_name(td.name)
                .with_topic_id(td.topic_id),
            parts,
        ));
    }
    if acks == 0 {
        // Nothing is answered; the batches are already queued on their partitions.
        for (_, parts) in topics {
            for p in parts {
                tokio::spawn(p);
            }
        }
        return Box::pin(std::future::ready(None));
    }
    Box::pin(async move {
        let mut responses = Vec::with_capacity(topics.len());
        for (topic, parts) in topics {
            let mut partition_responses = Vec::with_capacity(parts.len());
            for p in parts {
                partition_responses.push(p.await);
            }
            responses.push(topic.with_partition_responses(partition_responses));
        }
        Some(ResponseKind::Produce(
            ProduceResponse::default().with_responses(responses),
        ))
    })
}

#[allow(clippy::too_many_arguments)]
fn answer_partition(
    broker: &Broker,
    index: i32,
    outcome: raft::Result<Vec<ProposeOutcome>>,
    replica: &raft::Partition,
    metrics: &TopicMetrics,
    records: u64,
    bytes: u64,
    append_time: i64,
) -> PartitionProduceResponse {
    let outcomes = match outcome {
        Ok(o) => o,
        Err(e) => {
            // Not leading (any more) is retriable: the client refreshes metadata and resends
            // to the leader; idempotence makes the resend safe if the first try did commit.
            let code = match e {
                raft::Error::NotLeader { .. } | raft::Error::Closed => {
                    codes::NOT_LEADER_OR_FOLLOWER
                }
                // Possibly written: clients retry the same batch (same sequence numbers),
                // which the producer state recognises if the first one did commit.
                raft::Error::OutcomeUnknown => codes::REQUEST_TIMED_OUT,
                _ => codes::KAFKA_STORAGE_ERROR,
            };
            broker.count_error(ApiKey::Produce, code);
            return failed(index, code, e.to_string());
        }
    };
    let mut base = None;
    let mut appended = false;
    for o in &outcomes {
        match *o {
            ProposeOutcome::Appended { base_offset } => {
                appended = true;
                base.get_or_insert(base_offset);
            }
            ProposeOutcome::Duplicate { base_offset } => {
                base.get_or_insert(base_offset);
            }
            ProposeOutcome::Rejected(code) => {
                let code = if code < 0 {
                    codes::CORRUPT_MESSAGE
                } else {
                    code
                };
                broker.count_error(ApiKey::Produce, code);
                return failed(index, code, rejection_message(code));
            }
        }
    }
    if appended {
        metrics.bytes_in.inc_by(bytes);
        metrics.records_in.inc_by(records);
    }
    PartitionProduceResponse::default()
        .with_index(index)
        .with_base_offset(base.unwrap_or(-1))
        .with_log_append_time_ms(append_time)
        .with_log_start_offset(replica.log_start_offset())
}

fn rejection_message(code: i16) -> &'static str {
    use protocol::codes::*;
    match code {
        OUT_OF_ORDER_SEQUENCE_NUMBER => "out of order sequence number",
        INVALID_PRODUCER_EPOCH => "producer epoch is older than the current one",
        UNKNOWN_PRODUCER_ID => {
            "no state for this producer id; its first batch must have sequence 0"
        }
        _ => "batch refused",
    }
}
