//! Produce-side record batch validation (`protocol::validate::produce_batches`).
//!
//! Input layout (a [`Cursor`], so short inputs read zeros):
//! - byte 0, flags: bit 0 build valid batches and mutate them (else the rest is the records
//!   field verbatim); bit 1 stamp LogAppendTime; bit 2 read max.message.bytes from the input
//!   (else Kafka's default, 1 MiB + 12); bit 3 rewrite every batch CRC after mutating.
//! - max.message.bytes (i32) if bit 2, LogAppendTime (i64) if bit 1.
//! - raw mode: the records field.
//! - build mode: number of batches (1..=3), then per batch records (1..=8), value length
//!   (0..=31) and attributes (one byte); then up to 7 mutations of (op, position u16, value).
//!
//! Never panics; what it accepts re-validates on its own, parses with
//! `storage::batch::BatchHeader::parse` and is the input byte for byte (apart from the
//! LogAppendTime stamp); unmutated valid batches within the size limit are accepted.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use protocol::alloc::GuardedAlloc;
use protocol::validate::produce_batches;
use sluice_fuzz::{build_batch, fix_crcs, BatchSpec, Cursor};
use storage::batch::{self, BatchHeader};

// What the sluice binary installs.
#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

/// Kafka's default `message.max.bytes` (1 MiB + record batch overhead).
const DEFAULT_MAX: i32 = 1_048_588;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let flags = input.u8();
    let max_message_bytes = if flags & 4 != 0 {
        input.u32() as i32
    } else {
        DEFAULT_MAX
    };
    let log_append_time = (flags & 2 != 0).then(|| input.u64() as i64);

    let (records, must_accept) = if flags & 1 == 0 {
        (input.rest().to_vec(), false)
    } else {
        build_and_mutate(&mut input, flags & 8 != 0)
    };
    let records = Bytes::from(records);
    let result = produce_batches(&records, max_message_bytes, log_append_time);

    let Ok(valid) = result else {
        if must_accept && records.len() <= max_message_bytes.max(0) as usize {
            panic!("valid unmutated batches refused: {result:?}");
        }
        return;
    };
    // Everything was consumed, in order, into whole batches.
    assert_eq!(valid.bytes, records.len() as u64);
    let mut pos = 0usize;
    let mut count = 0u64;
    for b in &valid.batches {
        let original = &records[pos..pos + b.len()];
        pos += b.len();
        let h = BatchHeader::parse(b).expect("accepted batch parses");
        assert!(batch::validate_crc(b), "accepted batch has a bad CRC");
        assert!(b.len() <= max_message_bytes as usize);
        assert!(h.records_count >= 1);
        assert_eq!(
            i64::from(h.last_offset_delta),
            i64::from(h.records_count) - 1
        );
        assert!(!h.is_control(), "a control batch was accepted from a client");
        assert!(
            !h.is_transactional() || h.producer_id >= 0,
            "a transactional batch without a producer id was accepted"
        );
        count += h.records_count as u64;
        match log_append_time {
            None => assert_eq!(&b[..], original, "batch changed without LogAppendTime"),
            Some(ts) => {
                assert!(h.is_log_append_time());
                assert_eq!(h.max_timestamp, ts);
                // Only attributes, max timestamp and the CRC over them may change.
                assert_eq!(b[..17], original[..17]);
                assert_eq!(b[23..35], original[23..35]);
                assert_eq!(b[43..], original[43..]);
            }
        }
        let again = produce_batches(&Bytes::copy_from_slice(b), max_message_bytes, None)
            .expect("an accepted batch validates again");
        assert_eq!(again.batches.len(), 1);
        assert_eq!(again.records, h.records_count as u64);
        assert_eq!(again.batches[0][..], b[..]);
    }
    assert_eq!(pos, records.len());
    assert_eq!(count, valid.records);
});

/// Valid batches from the input's choices, then mutations; also says whether the result
/// must be accepted (nothing mutated, no attribute the validator refuses).
fn build_and_mutate(input: &mut Cursor<'_>, refix_crc: bool) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut acceptable = true;
    for i in 0..1 + input.u8() % 3 {
        let attributes = i16::from(input.u8());
        // Control (0x20) batches are refused from clients, and so are transactional (0x10)
        // ones without a producer id (these are built with -1) and codec ids Kafka does not
        // define (5-7 in the low three bits).
        acceptable &= attributes & 0x30 == 0 && attributes & 0x7 <= 4;
        out.extend_from_slice(&build_batch(&BatchSpec {
            base_offset: i64::from(i),
            records: 1 + i32::from(input.u8() % 8),
            value_len: usize::from(input.u8() % 32),
            attributes,
            ..BatchSpec::default()
        }));
    }
    let mutations = input.u8() % 8;
    for _ in 0..mutations {
        let op = input.u8();
        let at = usize::from(input.u16()) % (out.len() + 1);
        let value = input.u8();
        match op % 6 {
            0 => out.insert(at, value),
            1 if at < out.len() => out[at] = value,
            2 if at < out.len() => out[at] ^= 1 << (value % 8),
            3 => out.truncate(at),
            4 if at < out.len() => {
                out.remove(at);
            }
            // A 32-bit field (lengths, counts, deltas) set to a boundary-ish value.
            5 if at + 4 <= out.len() => {
                let v = [0i32, 1, -1, 48, 49, i32::MAX, i32::MIN, i32::from(value)]
                    [usize::from(value % 8)];
                out[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
            _ => {}
        }
    }
    if refix_crc {
        fix_crcs(&mut out);
    }
    (out, acceptable && mutations == 0)
}
