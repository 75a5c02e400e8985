//! ApiVersions.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::ApiVersionsResponse;

use super::SUPPORTED;

/// The broker's ApiVersions answer: exactly the ranges the handlers implement. Features are
/// left empty, so no tagged field is written at its default (old librdkafka misreads them).
pub fn api_versions_response() -> ApiVersionsResponse {
    let api_keys = SUPPORTED
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(0)
        .with_api_keys(api_keys)
        .with_finalized_features_epoch(-1)
}
