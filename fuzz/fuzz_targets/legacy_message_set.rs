//! Old clients' message sets (record formats v0/v1, Produce v0-v2):
//! `protocol::legacy::message_set_to_batch` on raw bytes, then `batches_to_message_set` (what
//! a Fetch v0-v3 client reads) on what it made.
//!
//! Never panics; what converts (input that is not already a v2 batch) is exactly one batch
//! that produce validation accepts, and it down-converts, in both formats, to a message set
//! that converts again to a batch of as many records with the same keys and values.
#![no_main]

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use libfuzzer_sys::fuzz_target;
use protocol::alloc::GuardedAlloc;
use protocol::legacy::{batches_to_message_set, message_set_to_batch};
use protocol::validate::produce_batches;

// What the sluice binary installs.
#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

fn records(batch: &Bytes) -> Vec<(Option<Bytes>, Option<Bytes>)> {
    let mut buf = batch.clone();
    RecordBatchDecoder::decode(&mut buf)
        .expect("a converted batch decodes")
        .records
        .into_iter()
        .map(|r| (r.key, r.value))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    let mut budget = 1 << 20;
    let Ok(batch) = message_set_to_batch(&input, &mut budget) else {
        return;
    };
    if batch == input {
        return; // already a v2 batch: passed on for produce validation to judge
    }
    let valid = produce_batches(&batch, i32::MAX, None).expect("a converted message set validates");
    assert_eq!(valid.batches.len(), 1, "one message set, one batch");
    let want = records(&batch);
    assert_eq!(want.len() as u64, valid.records);
    for magic in [0i8, 1] {
        let (set, next) = batches_to_message_set(&batch, magic, 0);
        assert_eq!(Ok(next), i64::try_from(valid.records), "read on after the whole batch");
        let mut budget = 1 << 20;
        let again = message_set_to_batch(&set, &mut budget)
            .expect("a down-converted message set converts again");
        assert_eq!(records(&again), want, "magic {magic} round trip");
    }
});
