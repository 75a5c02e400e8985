//! Request frames: the fixed header prefix, version checks, and decoding that turns any
//! malformed input (or a decoder panic) into an error instead of a crash.

use std::panic::AssertUnwindSafe;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::Decodable;

use crate::legacy;

/// The first eight bytes of every request: api key, version, correlation id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
}

/// Why a request cannot be answered normally. Kafka closes the connection for all of these,
/// except an ApiVersions request newer than the broker knows (see [`FrameError::NewerApiVersions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    Malformed(String),
    UnknownApi(i16),
    UnsupportedVersion(ApiKey, i16),
    /// ApiVersions newer than supported: answer UNSUPPORTED_VERSION in the v0 layout (KIP-511).
    NewerApiVersions {
        correlation_id: i32,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Malformed(m) => write!(f, "malformed request: {m}"),
            FrameError::UnknownApi(k) => write!(f, "unknown or unsupported API key {k}"),
            FrameError::UnsupportedVersion(k, v) => write!(f, "unsupported version {v} of {k:?}"),
            FrameError::NewerApiVersions { .. } => write!(f, "ApiVersions version too new"),
        }
    }
}

/// Reads the prefix and checks the version against `supported` (inclusive ranges).
pub fn parse_prefix(
    frame: &[u8],
    supported: impl Fn(ApiKey) -> Option<(i16, i16)>,
) -> Result<Prefix, FrameError> {
    if frame.len() < 8 {
        return Err(FrameError::Malformed(format!(
            "{}-byte request header",
            frame.len()
        )));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(key).map_err(|_| FrameError::UnknownApi(key))?;
    let (min, max) = supported(api_key).ok_or(FrameError::UnknownApi(key))?;
    if version > max && api_key == ApiKey::ApiVersions {
        return Err(FrameError::NewerApiVersions { correlation_id });
    }
    if version < min || version > max {
        return Err(FrameError::UnsupportedVersion(api_key, version));
    }
    Ok(Prefix {
        api_key,
        version,
        correlation_id,
    })
}

/// Decodes header and body of a frame whose prefix passed [`parse_prefix`].
pub fn decode(prefix: &Prefix, frame: Bytes) -> Result<(RequestHeader, RequestKind), FrameError> {
    let mut buf = frame;
    let Prefix {
        api_key, version, ..
    } = *prefix;
    let decoded = std::panic::catch_unwind(AssertUnwindSafe(move || {
        let header = RequestHeader::decode(&mut buf, api_key.request_header_version(version))?;
        let request = match (api_key, version) {
            (ApiKey::OffsetCommit, 1) => {
                RequestKind::OffsetCommit(legacy::offset_commit_v1(&mut buf)?)
            }
            (ApiKey::Produce, 0..=2) => RequestKind::Produce(legacy::produce_request(&mut buf)?),
            (ApiKey::Fetch, 0..=3) => RequestKind::Fetch(legacy::fetch_request(&mut buf, version)?),
            (ApiKey::CreateTopics, 0..=1) => {
                RequestKind::CreateTopics(legacy::create_topics_request(&mut buf, version)?)
            }
            _ => RequestKind::decode(api_key, &mut buf, version)?,
        };
        anyhow::Ok((header, request))
    }));
    match decoded {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(e)) => Err(FrameError::Malformed(format!(
            "{api_key:?} v{version}: {e}"
        ))),
        Err(_) => Err(FrameError::Malformed(format!(
            "{api_key:?} v{version}: decoder panicked"
        ))),
    }
}

/// Encodes a response body in the layout of the request's version: by hand for the
/// versions the `kafka-protocol` crate no longer has ([`legacy`]), else by the crate.
pub fn encode_response_body(
    api_key: ApiKey,
    version: i16,
    response: &ResponseKind,
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    match (api_key, version, response) {
        (ApiKey::Produce, 0..=2, ResponseKind::Produce(r)) => {
            legacy::encode_produce_response(r, version, out)
        }
        (ApiKey::Fetch, 0..=3, ResponseKind::Fetch(r)) => {
            legacy::encode_fetch_response(r, version, out)
        }
        (ApiKey::CreateTopics, 0..=1, ResponseKind::CreateTopics(r)) => {
            legacy::encode_create_topics_response(r, version, out)
        }
        _ => Ok(response.encode(out, response_encode_version(api_key, version))?),
    }
}

/// The version a response is encoded in: the requested one, except for versions the
/// `kafka-protocol` crate no longer encodes whose layout equals a newer one's.
pub fn response_encode_version(api_key: ApiKey, version: i16) -> i16 {
    match (api_key, version) {
        // OffsetCommit responses v0-v2 are identical (throttle time arrives in v3).
        (ApiKey::OffsetCommit, 1) => 2,
        _ => version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn v1_frame(body: &[u8]) -> Bytes {
        let mut f = BytesMut::new();
        f.put_i16(ApiKey::OffsetCommit as i16);
        f.put_i16(1);
        f.put_i32(77);
        f.put_i16(1);
        f.put_slice(b"c");
        f.put_slice(body);
        f.freeze()
    }

    fn put_str(b: &mut BytesMut, s: &str) {
        b.put_i16(s.len() as i16);
        b.put_slice(s.as_bytes());
    }

    #[test]
    fn offset_commit_v1_is_decoded_by_hand() {
        let mut body = BytesMut::new();
        put_str(&mut body, "g");
        body.put_i32(3);
        put_str(&mut body, "m");
        body.put_i32(1);
        put_str(&mut body, "t");
        body.put_i32(2);
        for (p, o) in [(0, 10i64), (1, 20)] {
            body.put_i32(p);
            body.put_i64(o);
            body.put_i64(-1);
            if p == 0 {
                put_str(&mut body, "meta");
            } else {
                body.put_i16(-1);
            }
        }
        let frame = v1_frame(&body);
        let prefix = parse_prefix(&frame, |_| Some((1, 9))).expect("prefix");
        let (header, req) = decode(&prefix, frame).expect("decodes");
        assert_eq!(header.correlation_id, 77);
        let RequestKind::OffsetCommit(r) = req else {
            panic!("not an OffsetCommit")
        };
        assert_eq!(r.group_id.as_str(), "g");
        assert_eq!(r.generation_id_or_member_epoch, 3);
        assert_eq!(r.member_id.as_str(), "m");
        let parts = &r.topics[0].partitions;
        assert_eq!(
            (
                parts[0].committed_offset,
                parts[0].committed_metadata.as_deref()
            ),
            (10, Some("meta"))
        );
        assert_eq!(
            (
                parts[1].committed_offset,
                parts[1].committed_metadata.as_deref()
            ),
            (20, None)
        );
        assert_eq!(response_encode_version(ApiKey::OffsetCommit, 1), 2);
    }

    #[test]
    fn offset_commit_v1_lies_fail_cleanly() {
        let mut body = BytesMut::new();
        put_str(&mut body, "g");
        body.put_i32(3);
        put_str(&mut body, "m");
        body.put_i32(i32::MAX); // topics
        let frame = v1_frame(&body);
        let prefix = parse_prefix(&frame, |_| Some((1, 9))).expect("prefix");
        assert!(matches!(
            decode(&prefix, frame),
            Err(FrameError::Malformed(_))
        ));
        let frame = v1_frame(&[0, 5, b'a']);
        let prefix = parse_prefix(&frame, |_| Some((1, 9))).expect("prefix");
        assert!(matches!(
            decode(&prefix, frame),
            Err(FrameError::Malformed(_))
        ));
    }
}
