//! The record batch v2 header helpers of `storage::batch` on arbitrary bytes: splitting a
//! concatenation, parsing one header, CRC checks and offset stamping. Never panics, and the
//! pieces agree with each other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::alloc::GuardedAlloc;
use storage::batch::{self, BatchHeader};

// What the sluice binary installs.
#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

fuzz_target!(|data: &[u8]| {
    // split_batches: contiguous ranges from 0, each one whole parseable batch; an error
    // ends the walk; without one the ranges cover everything.
    let mut next = 0usize;
    let mut failed = false;
    for item in batch::split_batches(data) {
        assert!(!failed, "split_batches yielded after an error");
        match item {
            Ok((start, end)) => {
                assert_eq!(start, next);
                assert!(
                    start < end && end <= data.len(),
                    "range {start}..{end} of {}",
                    data.len()
                );
                let h = BatchHeader::parse(&data[start..end]).expect("split range parses");
                assert_eq!(h.total_size(), end - start);
                next = end;
            }
            Err(_) => failed = true,
        }
    }
    assert!(failed || next == data.len());

    // parse_prefix vs parse vs declared_size.
    let prefix = BatchHeader::parse_prefix(data);
    if let Ok(h) = prefix {
        assert!(h.total_size() <= data.len());
        assert_eq!(batch::declared_size(data), Some(h.total_size() as i64));
        assert_eq!(BatchHeader::parse(&data[..h.total_size()]), Ok(h));
        inspect(&h);
    }
    let whole = BatchHeader::parse(data);
    if let Ok(h) = whole {
        assert_eq!(prefix, Ok(h));
        assert_eq!(h.total_size(), data.len());
    }

    // CRC: validate agrees with compute on anything long enough.
    let crc_ok = batch::validate_crc(data);
    let _ = batch::compute_crc(data);
    if data.len() >= batch::HEADER_SIZE {
        let stored = u32::from_be_bytes([data[17], data[18], data[19], data[20]]);
        assert_eq!(crc_ok, stored == batch::compute_crc(data));
    } else {
        assert!(!crc_ok);
    }

    // stamp: base offset and leader epoch are outside the CRC.
    if let (Ok(h), true) = (whole, crc_ok) {
        let mut b = data.to_vec();
        let offset = h.base_offset.wrapping_mul(31) ^ 0x55;
        let epoch = h.partition_leader_epoch.wrapping_add(1);
        batch::stamp(&mut b, offset, epoch);
        assert!(batch::validate_crc(&b));
        let s = BatchHeader::parse(&b).expect("stamped batch parses");
        assert_eq!((s.base_offset, s.partition_leader_epoch), (offset, epoch));
        assert_eq!(
            (s.crc, s.records_count, s.last_offset_delta),
            (h.crc, h.records_count, h.last_offset_delta)
        );
    }
});

/// Every accessor, as the log and the broker use them on a parsed header.
fn inspect(h: &BatchHeader) {
    let _ = (
        h.compression(),
        h.is_control(),
        h.is_transactional(),
        h.is_log_append_time(),
    );
    let _ = (
        h.producer_id(),
        h.producer_epoch(),
        h.base_sequence(),
        h.max_timestamp(),
    );
    assert_eq!(h.offset_count(), i64::from(h.last_offset_delta) + 1);
    assert!(h.record_count() == h.records_count);
    // `last_offset` adds to the base offset: the log only calls it on batches it stamped
    // itself, with offsets far below i64::MAX, so only check it where that holds.
    if h.base_offset <= i64::MAX - i64::from(i32::MAX) {
        assert!(h.last_offset() >= h.base_offset);
    }
}
