//! The replication seam of Sluice: openraft, one Raft group per partition.
//!
//! Owns [`Partition`], the handle the broker uses for one partition replica: propose record
//! batches (answered with their offsets once a Raft majority has them), read committed data,
//! the high watermark, and a way to wait for new commits (long-poll fetch). Inside, each
//! replica is an openraft group whose log is the partition's Kafka log (`store`), whose RPCs go
//! through a [`Router`] (`network`), and whose leader runs the caller's [`BatchFilter`]
//! (idempotent producers) in log order before offsets are assigned.
//!
//! This crate must never see Kafka request types: it deals in stored batch bytes, offsets,
//! terms and node ids only.

mod error;
mod liveness;
pub mod metrics;
mod network;
mod partition;
mod store;
mod transport;
mod txn;
mod types;

pub use error::{Error, Result};
pub use liveness::{cluster_config, spawn_liveness, LivenessGuard};
pub use network::{BoxFut, CallError, Forwarder, MemRouter, Registry, Router, FORWARD};
pub use partition::{
    default_config, Admit, AdmitAll, BatchFilter, FsyncPolicy, Partition, PartitionOptions,
    ProposeOutcome, RaftNode, ReadResult, Role,
};
pub use storage::LogConfig;
pub use store::forget as forget_group;
pub use transport::{Handler, Transport, TransportConfig, TransportError};
pub use txn::AbortedTxn;
pub use types::NodeId;

#[cfg(test)]
mod tests;
