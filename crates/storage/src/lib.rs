//! Sluice storage: everything that touches files.
//!
//! Owns the segmented partition log ([`log::PartitionLog`]: segments, sparse offset and time
//! indexes, crash recovery, retention), the Kafka record batch v2 header layout that is its
//! on-disk format ([`batch`]), the RocksDB key-value store for metadata and Raft state
//! ([`kv::MetaStore`], feature `kv`, on by default) and the durable-write helpers ([`durable`]).
//!
//! It must never know Kafka requests or Raft roles: the log stores Raft `term`/`index` per
//! entry and Kafka offsets per batch, and callers decide what is committed (they pass the
//! high watermark as an upper bound) and when to fsync (`sync()` is a group commit).
//!
//! Naming, used consistently: a Kafka offset is an `i64` called `offset`; a Raft log index and
//! a Raft term are `u64`s called `index` and `term`. The two never mix: Raft entries that are
//! not record batches take an index but no offset, and the log converts between them in one
//! place ([`log::PartitionLog::offset_for_index`]).

pub mod batch;
pub mod durable;
mod error;
#[cfg(feature = "kv")]
pub mod kv;
pub mod log;
pub mod metrics;

pub use error::{Error, Result};
#[cfg(feature = "kv")]
pub use kv::MetaStore;
pub use log::{AppendInfo, Entry, EntryKind, FsyncPolicy, LogConfig, PartitionLog, ReadResult};
