//! The crate's one error type.

use std::path::PathBuf;

/// Errors from the partition log and the metadata store.
///
/// `Poisoned` is fatal for the log that returned it: an fsync failed, the kernel may have
/// dropped dirty pages, and retrying the fsync could falsely report success. Every other
/// variant leaves the log usable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt data in {}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("log is poisoned after a failed fsync; it refuses all further writes")]
    Poisoned,
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    #[error("offset {offset} is out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    #[error("raft index range {from}..{to} is outside the log's {first}..={last}")]
    IndexOutOfRange {
        from: u64,
        to: u64,
        first: u64,
        last: u64,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("log is closed")]
    Closed,
    #[error("record batch: {0}")]
    Batch(#[from] crate::batch::BatchError),
    #[cfg(feature = "kv")]
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("unknown column family {0:?}")]
    UnknownColumnFamily(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
