//! Request frames: the fixed header prefix, version checks, and decoding that turns any
//! malformed input (or a decoder panic) into an error instead of a crash.

use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;

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
        let request = RequestKind::decode(api_key, &mut buf, version)?;
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
