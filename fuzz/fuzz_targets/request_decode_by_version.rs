//! Like `request_decode`, but the first two bytes choose one of the broker's supported
//! (API, version) pairs and the rest is the frame after the API key and version (correlation
//! id, client id, tagged fields, body): every supported version gets decoded, instead of
//! the fuzzer having to discover the valid prefixes first.
#![no_main]

use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use libfuzzer_sys::fuzz_target;
use protocol::alloc::GuardedAlloc;
use protocol::request::{decode, parse_prefix};
use sluice_fuzz::Cursor;

// What the sluice binary installs: hostile array lengths get address space, not memory.
#[global_allocator]
static ALLOC: GuardedAlloc = GuardedAlloc;

fn pairs() -> &'static [(ApiKey, i16)] {
    static PAIRS: OnceLock<Vec<(ApiKey, i16)>> = OnceLock::new();
    PAIRS.get_or_init(sluice_fuzz::version_pairs)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let pairs = pairs();
    let (api_key, version) = pairs[usize::from(input.u16()) % pairs.len()];
    let rest = input.rest();
    let mut frame = BytesMut::with_capacity(4 + rest.len());
    frame.put_i16(api_key as i16);
    frame.put_i16(version);
    frame.put_slice(rest);
    let frame = frame.freeze();

    let prefix = match parse_prefix(&frame, sluice_fuzz::supported) {
        Ok(prefix) => prefix,
        Err(e) => {
            // Only a frame too short for a correlation id may fail: the pair is supported.
            assert!(frame.len() < 8, "{api_key:?} v{version} refused: {e}");
            return;
        }
    };
    assert_eq!((prefix.api_key, prefix.version), (api_key, version));
    if let Ok((header, _request)) = decode(&prefix, Bytes::clone(&frame)) {
        assert_eq!(header.request_api_key, api_key as i16);
        assert_eq!(header.request_api_version, version);
        assert_eq!(header.correlation_id, prefix.correlation_id);
    }
});
