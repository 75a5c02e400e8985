//! Kafka wire helpers shared by the broker and the fuzz targets: request header parsing and
//! body decoding (never panics, whatever the bytes), and the validation of record batches a
//! client produces, and the table of API versions the broker implements. Pure functions: no I/O, no broker state, no RocksDB.

pub mod alloc;
pub mod codes;
pub mod legacy;
pub mod request;
pub mod validate;
pub mod versions;
