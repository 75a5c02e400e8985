//! Broker metrics (Prometheus). Units are in the names. Hot paths keep child handles
//! (per API, per topic) instead of looking labels up per request.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric of a node, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_errors: IntCounterVec,
    pub request_latency: HistogramVec,
    pub bytes_in: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub commit_latency: Histogram,
    pub partitions_led: IntGauge,
    pub partitions_under_replicated: IntGauge,
    pub partitions_without_leader: IntGauge,
    pub follower_lag_max: IntGauge,
    pub partition_isr: IntGaugeVec,
    pub partition_follower_lag: IntGaugeVec,
    pub connections: IntGauge,
    pub connections_total: IntCounter,
    pub partition_high_watermark: IntGaugeVec,
    pub partition_log_size: IntGaugeVec,
    pub partition_log_start: IntGaugeVec,
    pub group_committed_offset: IntGaugeVec,
    pub group_lag: IntGaugeVec,
    pub transactions: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "sluice_kafka_requests_total",
                "Kafka requests handled, by API.",
            ),
            &["api"],
        )
        .expect("valid metric");
        let request_errors = IntCounterVec::new(
            Opts::new(
                "sluice_kafka_request_errors_total",
                "Error codes returned in Kafka responses (per partition or resource), by API and error.",
            ),
            &["api", "error"],
        )
        .expect("valid metric");
        let request_latency = HistogramVec::new(
            HistogramOpts::new(
                "sluice_kafka_request_latency_seconds",
                "Time from a request being read to its response being ready, by API.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["api"],
        )
        .expect("valid metric");
        let bytes_in = IntCounterVec::new(
            Opts::new(
                "sluice_topic_bytes_in_total",
                "Record batch bytes appended, by topic.",
            ),
            &["topic"],
        )
        .expect("valid metric");
        let bytes_out = IntCounterVec::new(
            Opts::new(
                "sluice_topic_bytes_out_total",
                "Record batch bytes fetched, by topic.",
            ),
            &["topic"],
        )
        .expect("valid metric");
        let records_in = IntCounterVec::new(
            Opts::new(
                "sluice_topic_records_in_total",
                "Records appended, by topic.",
            ),
            &["topic"],
        )
        .expect("valid metric");
        let records_out = IntCounterVec::new(
            Opts::new(
                "sluice_topic_records_out_total",
                "Records fetched (counted from the batch headers sent), by topic.",
            ),
            &["topic"],
        )
        .expect("valid metric");
        let commit_latency = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_raft_commit_latency_seconds",
                "Time from a produced batch being proposed on the leader to its Raft commit \
                 (a majority has it durably).",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        let partitions_led = IntGauge::new(
            "sluice_partitions_leader",
            "Partitions (including internal ones) whose leader is this node.",
        )
        .expect("valid metric");
        let partitions_under_replicated = IntGauge::new(
            "sluice_partitions_under_replicated",
            "Partitions led by this node with fewer in-sync replicas than replicas.",
        )
        .expect("valid metric");
        let partitions_without_leader = IntGauge::new(
            "sluice_partitions_without_leader",
            "Partitions hosted here whose replica knows no leader.",
        )
        .expect("valid metric");
        let follower_lag_max = IntGauge::new(
            "sluice_follower_lag_max_batches",
            "Largest number of log entries (record batches) any follower of a partition led \
             here is behind.",
        )
        .expect("valid metric");
        let partition_isr = IntGaugeVec::new(
            Opts::new(
                "sluice_partition_in_sync_replicas",
                "In-sync replicas per partition led by this node.",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let partition_follower_lag = IntGaugeVec::new(
            Opts::new(
                "sluice_partition_follower_lag_batches",
                "Log entries the furthest-behind follower lacks, per partition led by this node.",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let connections = IntGauge::new("sluice_kafka_connections", "Open Kafka connections.")
            .expect("valid metric");
        let connections_total = IntCounter::new(
            "sluice_kafka_connections_accepted_total",
            "Kafka connections accepted.",
        )
        .expect("valid metric");
        let partition_high_watermark = IntGaugeVec::new(
            Opts::new(
                "sluice_partition_high_watermark",
                "High watermark (offset) per partition.",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let partition_log_size = IntGaugeVec::new(
            Opts::new(
                "sluice_partition_log_size_bytes",
                "Log size on disk per partition.",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let partition_log_start = IntGaugeVec::new(
            Opts::new(
                "sluice_partition_log_start_offset",
                "Log start offset per partition.",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let group_committed_offset = IntGaugeVec::new(
            Opts::new(
                "sluice_consumer_group_committed_offset",
                "Committed offset per consumer group and partition.",
            ),
            &["group", "topic", "partition"],
        )
        .expect("valid metric");
        let group_lag = IntGaugeVec::new(
            Opts::new(
                "sluice_consumer_group_lag_records",
                "High watermark minus committed offset, per consumer group and partition.",
            ),
            &["group", "topic", "partition"],
        )
        .expect("valid metric");
        let transactions = IntCounterVec::new(
            Opts::new(
                "sluice_transactions_completed_total",
                "Transactions this node's transaction coordinator completed, by result \
                 (commit, abort, timeout: aborted by the coordinator after transaction.timeout.ms).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for c in [
            Box::new(group_committed_offset.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(transactions.clone()),
            Box::new(group_lag.clone()),
            Box::new(requests.clone()),
            Box::new(request_errors.clone()),
            Box::new(request_latency.clone()),
            Box::new(bytes_in.clone()),
            Box::new(bytes_out.clone()),
            Box::new(records_in.clone()),
            Box::new(records_out.clone()),
            Box::new(commit_latency.clone()),
            Box::new(partitions_led.clone()),
            Box::new(partitions_under_replicated.clone()),
            Box::new(partitions_without_leader.clone()),
            Box::new(follower_lag_max.clone()),
            Box::new(partition_isr.clone()),
            Box::new(partition_follower_lag.clone()),
            Box::new(storage::metrics::FSYNC_SECONDS.clone()),
            Box::new(raft::metrics::LEADER_CHANGES.clone()),
            Box::new(raft::metrics::ELECTIONS.clone()),
            Box::new(connections.clone()),
            Box::new(connections_total.clone()),
            Box::new(partition_high_watermark.clone()),
            Box::new(partition_log_size.clone()),
            Box::new(partition_log_start.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        Metrics {
            registry,
            requests,
            request_errors,
            request_latency,
            bytes_in,
            bytes_out,
            records_in,
            records_out,
            commit_latency,
            partitions_led,
            partitions_under_replicated,
            partitions_without_leader,
            follower_lag_max,
            partition_isr,
            partition_follower_lag,
            connections,
            connections_total,
            partition_high_watermark,
            partition_log_size,
            partition_log_start,
            group_committed_offset,
            group_lag,
            transactions,
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Drops the series of a deleted topic.
    pub fn remove_topic(&self, topic: &str, partitions: i32) {
        let _ = self.bytes_in.remove_label_values(&[topic]);
        let _ = self.bytes_out.remove_label_values(&[topic]);
        let _ = self.records_in.remove_label_values(&[topic]);
        let _ = self.records_out.remove_label_values(&[topic]);
        for p in 0..partitions {
            let p = p.to_string();
            for v in [
                &self.partition_high_watermark,
                &self.partition_log_size,
                &self.partition_log_start,
                &self.partition_isr,
                &self.partition_follower_lag,
            ] {
                let _ = v.remove_label_values(&[topic, &p]);
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-topic counter handles, kept in the topic so the hot path never looks labels up.
#[derive(Clone)]
pub struct TopicMetrics {
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub records_in: IntCounter,
    pub records_out: IntCounter,
}

impl TopicMetrics {
    pub fn new(m: &Metrics, topic: &str) -> Self {
        TopicMetrics {
            bytes_in: m.bytes_in.with_label_values(&[topic]),
            bytes_out: m.bytes_out.with_label_values(&[topic]),
            records_in: m.records_in.with_label_values(&[topic]),
            records_out: m.records_out.with_label_values(&[topic]),
        }
    }
}
