//! Writes the committed seed corpus, `fuzz/seeds/<target>/`:
//!
//! ```text
//! cd fuzz && cargo run --example gen_seeds            # or: -- <output dir>
//! ```
//!
//! Request seeds are encoded with kafka-protocol: every supported (API, version) with a
//! default body, a few with real content, and hand-written frames declaring huge arrays
//! (regressions for the guarded allocator). Batch seeds come from `sluice_fuzz::build_batch`,
//! cross-checked here by kafka-protocol's batch decoder.

use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use sluice_fuzz::{build_batch, message_set, version_pairs, BatchSpec};

fn main() {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"));
    let pairs = version_pairs();
    let batch = build_batch(&BatchSpec {
        records: 3,
        ..BatchSpec::default()
    });
    let decoded = RecordBatchDecoder::decode(&mut Bytes::from(batch.clone()))
        .expect("kafka-protocol decodes the seed batch");
    assert_eq!(decoded.records.len(), 3);

    // Requests: (file name, frame without the size prefix).
    let mut frames: Vec<(String, Vec<u8>)> = Vec::new();
    for &(key, version) in &pairs {
        for (label, body) in bodies(key, &batch) {
            let mut frame = BytesMut::new();
            RequestHeader::default()
                .with_request_api_key(key as i16)
                .with_request_api_version(version)
                .with_correlation_id(7)
                .with_client_id(Some(StrBytes::from_static_str("seed")))
                .encode(&mut frame, key.request_header_version(version))
                .expect("header encodes");
            match body.encode(&mut frame, version) {
                Ok(()) => frames.push((format!("{key:?}-v{version}-{label}"), frame.to_vec())),
                // Content a version cannot carry (e.g. a field it lacks): skip the pair.
                Err(e) => eprintln!("skipped {key:?} v{version} {label}: {e}"),
            }
        }
    }
    for (name, frame) in huge_array_frames().into_iter().chain(legacy_frames()) {
        frames.push((name.to_string(), frame));
    }

    write(
        &out.join("request_decode"),
        frames.iter().map(|(n, f)| (n.clone(), f.clone())),
    );
    // The steered target: a 2-byte index into the supported pairs replaces API key and version.
    write(
        &out.join("request_decode_by_version"),
        frames.iter().filter_map(|(name, frame)| {
            let key = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]])).ok()?;
            let version = i16::from_be_bytes([frame[2], frame[3]]);
            let index = pairs.iter().position(|&p| p == (key, version))? as u16;
            let mut seed = index.to_be_bytes().to_vec();
            seed.extend_from_slice(&frame[4..]);
            Some((name.clone(), seed))
        }),
    );

    // batch_validate: flags byte (see the target), then records or build choices.
    let two = [batch.clone(), build_batch(&BatchSpec::default())].concat();
    let mut lat = vec![2u8];
    lat.extend_from_slice(&1_800_000_000_000i64.to_be_bytes());
    lat.extend_from_slice(&batch);
    write(
        &out.join("batch_validate"),
        [
            ("raw-one-batch", [&[0u8][..], &batch].concat()),
            ("raw-two-batches", [&[0u8][..], &two].concat()),
            ("raw-log-append-time", lat),
            ("raw-too-large", [&[4u8, 0, 0, 0, 64][..], &batch].concat()),
            ("build-plain", vec![1, 1, 0, 2, 16, 0]),
            (
                "build-flip-and-fix-crc",
                vec![9, 0, 0, 3, 8, 1, 2, 0, 60, 0],
            ),
            ("build-length-field", vec![9, 0, 0, 0, 0, 1, 5, 0, 8, 3]),
        ]
        .map(|(n, b)| (n.to_string(), b)),
    );

    let mut gap = message_set(1, 2);
    gap.extend_from_slice(&message_set(0, 1));
    write(
        &out.join("legacy_message_set"),
        [
            ("magic0-three", message_set(0, 3)),
            ("magic1-five", message_set(1, 5)),
            ("mixed", gap),
            ("v2-batch", batch.clone()),
        ]
        .map(|(n, b)| (n.to_string(), b)),
    );

    let mut truncated = batch.clone();
    truncated.truncate(70);
    write(
        &out.join("storage_batch"),
        [
            ("one-batch", batch.clone()),
            ("two-batches", two),
            ("truncated", truncated),
            (
                "header-only",
                build_batch(&BatchSpec {
                    records: 1,
                    value_len: 0,
                    ..BatchSpec::default()
                })[..61]
                    .to_vec(),
            ),
        ]
        .map(|(n, b)| (n.to_string(), b)),
    );
}

/// Request bodies for `key`: always the default one, plus one with content for the APIs the
/// broker does most with.
fn bodies(key: ApiKey, batch: &[u8]) -> Vec<(&'static str, RequestKind)> {
    let topic = || TopicName(StrBytes::from_static_str("seed-topic"));
    let mut out = Vec::new();
    let default = match key {
        ApiKey::Produce => RequestKind::Produce(Default::default()),
        ApiKey::Fetch => RequestKind::Fetch(Default::default()),
        ApiKey::ListOffsets => RequestKind::ListOffsets(Default::default()),
        ApiKey::Metadata => RequestKind::Metadata(Default::default()),
        ApiKey::ApiVersions => RequestKind::ApiVersions(Default::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(Default::default()),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(Default::default()),
        ApiKey::DeleteRecords => RequestKind::DeleteRecords(Default::default()),
        ApiKey::InitProducerId => RequestKind::InitProducerId(Default::default()),
        ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(Default::default()),
        ApiKey::AlterConfigs => RequestKind::AlterConfigs(Default::default()),
        ApiKey::CreatePartitions => RequestKind::CreatePartitions(Default::default()),
        ApiKey::IncrementalAlterConfigs => RequestKind::IncrementalAlterConfigs(Default::default()),
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(Default::default()),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(Default::default()),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(Default::default()),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(Default::default()),
        ApiKey::JoinGroup => RequestKind::JoinGroup(Default::default()),
        ApiKey::Heartbeat => RequestKind::Heartbeat(Default::default()),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(Default::default()),
        ApiKey::SyncGroup => RequestKind::SyncGroup(Default::default()),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(Default::default()),
        ApiKey::ListGroups => RequestKind::ListGroups(Default::default()),
        ApiKey::DeleteGroups => RequestKind::DeleteGroups(Default::default()),
        ApiKey::OffsetDelete => RequestKind::OffsetDelete(Default::default()),
        ApiKey::ConsumerGroupHeartbeat => RequestKind::ConsumerGroupHeartbeat(Default::default()),
        ApiKey::ConsumerGroupDescribe => RequestKind::ConsumerGroupDescribe(Default::default()),
        ApiKey::AddPartitionsToTxn => RequestKind::AddPartitionsToTxn(Default::default()),
        ApiKey::AddOffsetsToTxn => RequestKind::AddOffsetsToTxn(Default::default()),
        ApiKey::EndTxn => RequestKind::EndTxn(Default::default()),
        ApiKey::TxnOffsetCommit => RequestKind::TxnOffsetCommit(Default::default()),
        ApiKey::WriteTxnMarkers => RequestKind::WriteTxnMarkers(Default::default()),
        ApiKey::DescribeTransactions => RequestKind::DescribeTransactions(Default::default()),
        ApiKey::ListTransactions => RequestKind::ListTransactions(Default::default()),
        other => panic!("{other:?} is not in the supported table"),
    };
    out.push(("default", default));
    let full = match key {
        ApiKey::Produce => Some(RequestKind::Produce(
            ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(topic())
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::copy_from_slice(batch)))])]),
        )),
        ApiKey::Fetch => Some(RequestKind::Fetch(
            FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic())
                    .with_partitions(vec![FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(5)
                        .with_partition_max_bytes(1 << 20)])]),
        )),
        ApiKey::Metadata => Some(RequestKind::Metadata(
            MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic()))
            ])),
        )),
        ApiKey::CreateTopics => Some(RequestKind::CreateTopics(
            CreateTopicsRequest::default()
                .with_timeout_ms(5_000)
                .with_topics(vec![CreatableTopic::default()
                    .with_name(topic())
                    .with_num_partitions(3)
                    .with_replication_factor(1)
                    .with_configs(vec![CreatableTopicConfig::default()
                        .with_name(StrBytes::from_static_str("retention.ms"))
                        .with_value(Some(StrBytes::from_static_str("60000")))])]),
        )),
        ApiKey::ListOffsets => Some(RequestKind::ListOffsets(
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic())
                    .with_partitions(vec![ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1)])]),
        )),
        _ => None,
    };
    if let Some(full) = full {
        out.push(("content", full));
    }
    out
}

/// Frames whose first array declares about 2^31 (or, compact, 2^32) elements and then ends:
/// the decoder reserves room for all of them before reading one. Only the guarded allocator
/// keeps that from aborting the process.
fn huge_array_frames() -> Vec<(&'static str, Vec<u8>)> {
    // Header v1: key, version, correlation id, client id (i16 length + bytes).
    fn header_v1(key: ApiKey, version: i16, out: &mut BytesMut) {
        out.put_i16(key as i16);
        out.put_i16(version);
        out.put_i32(7);
        out.put_i16(4);
        out.put_slice(b"seed");
    }
    // Header v2 adds an empty tagged-field section.
    fn header_v2(key: ApiKey, version: i16, out: &mut BytesMut) {
        header_v1(key, version, out);
        out.put_u8(0);
    }
    let mut produce_v3 = BytesMut::new();
    header_v1(ApiKey::Produce, 3, &mut produce_v3);
    produce_v3.put_i16(-1); // transactional id: null
    produce_v3.put_i16(-1); // acks
    produce_v3.put_i32(30_000); // timeout
    produce_v3.put_i32(0x7fff_ffff); // topic count

    let mut produce_v9 = BytesMut::new();
    header_v2(ApiKey::Produce, 9, &mut produce_v9);
    produce_v9.put_u8(0); // transactional id: compact null
    produce_v9.put_i16(-1);
    produce_v9.put_i32(30_000);
    produce_v9.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // compact count u32::MAX - 1

    let mut fetch_v4 = BytesMut::new();
    header_v1(ApiKey::Fetch, 4, &mut fetch_v4);
    fetch_v4.put_i32(-1); // replica id
    fetch_v4.put_i32(500); // max wait
    fetch_v4.put_i32(1); // min bytes
    fetch_v4.put_i32(1 << 20); // max bytes
    fetch_v4.put_i8(0); // isolation level
    fetch_v4.put_i32(0x7fff_ffff); // topic count

    let mut metadata_v12 = BytesMut::new();
    header_v2(ApiKey::Metadata, 12, &mut metadata_v12);
    metadata_v12.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // compact topic count

    vec![
        (
            "regression-produce-v3-huge-topic-array",
            produce_v3.to_vec(),
        ),
        (
            "regression-produce-v9-huge-compact-topic-array",
            produce_v9.to_vec(),
        ),
        ("regression-fetch-v4-huge-topic-array", fetch_v4.to_vec()),
        (
            "regression-metadata-v12-huge-compact-topic-array",
            metadata_v12.to_vec(),
        ),
    ]
}

/// Produce v2 and Fetch v2/v3 frames as kafka-go 0.2 sends them (the crate encodes neither).
fn legacy_frames() -> Vec<(&'static str, Vec<u8>)> {
    fn header(key: ApiKey, version: i16, out: &mut BytesMut) {
        out.put_i16(key as i16);
        out.put_i16(version);
        out.put_i32(7);
        out.put_i16(4);
        out.put_slice(b"seed");
    }
    let mut produce = BytesMut::new();
    header(ApiKey::Produce, 2, &mut produce);
    produce.put_i16(-1); // acks
    produce.put_i32(10_000); // timeout
    produce.put_i32(1);
    produce.put_i16(10);
    produce.put_slice(b"seed-topic");
    produce.put_i32(1);
    produce.put_i32(0); // partition
    let set = message_set(1, 3);
    produce.put_i32(set.len() as i32);
    produce.put_slice(&set);
    let fetch = |version: i16| {
        let mut f = BytesMut::new();
        header(ApiKey::Fetch, version, &mut f);
        f.put_i32(-1); // replica id
        f.put_i32(500); // max wait
        f.put_i32(1); // min bytes
        if version >= 3 {
            f.put_i32(1 << 20);
        }
        f.put_i32(1);
        f.put_i16(10);
        f.put_slice(b"seed-topic");
        f.put_i32(1);
        f.put_i32(0); // partition
        f.put_i64(0); // fetch offset
        f.put_i32(1 << 20); // partition max bytes
        f.to_vec()
    };
    vec![
        ("Produce-v2-content", produce.to_vec()),
        ("Fetch-v2-content", fetch(2)),
        ("Fetch-v3-content", fetch(3)),
    ]
}

fn write(dir: &Path, files: impl IntoIterator<Item = (String, Vec<u8>)>) {
    std::fs::create_dir_all(dir).expect("create seed dir");
    let mut n = 0;
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write seed");
        n += 1;
    }
    println!("{n} seeds in {}", dir.display());
}
