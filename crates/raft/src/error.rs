use thiserror::Error;

/// Errors of the replication seam.
#[derive(Debug, Error)]
pub enum Error {
    /// The underlying log failed; the partition refuses further writes.
    #[error("storage: {0}")]
    Storage(#[from] storage::Error),
    /// A group commit failed; the partition refuses further writes until restarted.
    #[error("partition failed: {0}")]
    Failed(String),
    /// The partition was closed (shutdown or deletion) before the proposal committed.
    #[error("partition closed")]
    Closed,
    /// The requested offset is outside `[log_start_offset, log_end_offset]`.
    #[error("offset {offset} out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    /// A write reached the log, or may have, and whether it commits is not known yet (the
    /// group stopped before it said, or the wait for its commit ran out). Not a refusal: a
    /// retry must be recognisable as the same write.
    #[error("the outcome of the write is not known yet")]
    OutcomeUnknown,
    /// This replica does not lead its group; `leader` is who does, when known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    /// A proposed payload is not a well-formed batch.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
