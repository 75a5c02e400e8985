//! One request frame body (the bytes after the 4-byte size), exactly as the broker's
//! connection loop sees it: prefix check against the broker's version table, then header and
//! body decoding. Neither may panic, abort or exhaust memory, whatever the bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use protocol::alloc::GuardedAlloc;
use protocol::request::{decode, parse_prefix};

// What the sluice binary installs: hostile array lengths get address space, not memory.
#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

fuzz_target!(|data: &[u8]| {
    let Ok(prefix) = parse_prefix(data, sluice_fuzz::supported) else {
        return;
    };
    if let Ok((header, _request)) = decode(&prefix, Bytes::copy_from_slice(data)) {
        // The header decoder reads the same eight bytes the prefix did.
        assert_eq!(header.request_api_key, prefix.api_key as i16);
        assert_eq!(header.request_api_version, prefix.version);
        assert_eq!(header.correlation_id, prefix.correlation_id);
    }
});
