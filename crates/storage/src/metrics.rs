//! Process-wide storage metrics. The node registers them in its Prometheus registry.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts};

/// fdatasync of partition log segments (group commits, rolls, truncations).
pub static FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::with_opts(
        HistogramOpts::new(
            "sluice_log_fsync_latency_seconds",
            "Time an fdatasync of a partition log segment takes (one per group commit).",
        )
        .buckets(vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ]),
    )
    .expect("valid metric")
});
