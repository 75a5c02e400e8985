//! The replication seam of Sluice.
//!
//! Owns [`Partition`], the handle the broker uses for one partition replica: propose record
//! batches (answered with their offsets once committed), read committed data, the high
//! watermark, and a way to wait for new commits (long-poll fetch).
//!
//! Today a single local replica backs the handle: "committed" means appended and, under the
//! `always` fsync policy, fsynced (group commit: one fsync for everything queued). The
//! replication issue swaps openraft in behind the same handle. This crate must never see Kafka
//! request types: it deals in stored batch bytes, offsets and terms only. Batch admission
//! (idempotent producer sequence checks) is a caller-supplied [`BatchFilter`], run in log order
//! on the proposing replica.

mod error;
mod partition;

pub use error::{Error, Result};
pub use partition::{
    Admit, AdmitAll, BatchFilter, FsyncPolicy, Partition, PartitionOptions, ProposeOutcome,
    ReadResult,
};
pub use storage::LogConfig;
