//! Kafka API handlers, one module per API family, and the table of what each supports.
//!
//! A handler gets the decoded request and returns a future for its response. Work that must
//! keep request order on a connection (queueing produce batches) is done before the future is
//! returned; the rest runs concurrently with later requests.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};

use crate::Broker;

pub mod configs;
pub mod consumer_groups;
pub mod fetch;
pub mod groups;
pub mod metadata;
pub mod offsets;
pub mod produce;
pub mod producer_id;
pub mod topics;
pub mod txn;
pub mod versions;

pub type Reply = Pin<Box<dyn Future<Output = Option<ResponseKind>> + Send + 'static>>;

pub use protocol::versions::{supported_versions, SUPPORTED};

/// A stable metric label for an API.
pub fn name(key: ApiKey) -> &'static str {
    match key {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::ConsumerGroupHeartbeat => "ConsumerGroupHeartbeat",
        ApiKey::ConsumerGroupDescribe => "ConsumerGroupDescribe",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::AddOffsetsToTxn => "AddOffsetsToTxn",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::TxnOffsetCommit => "TxnOffsetCommit",
        ApiKey::WriteTxnMarkers => "WriteTxnMarkers",
        ApiKey::DescribeTransactions => "DescribeTransactions",
        ApiKey::ListTransactions => "ListTransactions",
        _ => "Other",
    }
}

pub(crate) fn ready(r: ResponseKind) -> Reply {
    Box::pin(std::future::ready(Some(r)))
}

/// The client id a request header names ("" when none).
pub(crate) fn client_id(header: &RequestHeader) -> String {
    header
        .client_id
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Who sent a request: the peer's address and the listener (an index into the broker's
/// `listeners`) it connected on, which decides the addresses Metadata answers with.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub peer: SocketAddr,
    pub listener: usize,
}

/// Routes a decoded request to its handler.
pub fn dispatch(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    client: Client,
    request: RequestKind,
) -> Reply {
    let v = header.request_api_version;
    let peer = client.peer;
    match request {
        RequestKind::ApiVersions(_) => {
            ready(ResponseKind::ApiVersions(versions::api_versions_response()))
        }
        RequestKind::Metadata(r) => metadata::metadata(broker.clone(), r, v, client.listener),
        RequestKind::DescribeCluster(r) => ready(ResponseKind::DescribeCluster(
            metadata::describe_cluster(broker, r, client.listener),
        )),
        RequestKind::Produce(r) => produce::produce(broker, r, v),
        RequestKind::Fetch(r) => fetch::fetch(broker.clone(), r, v),
        RequestKind::ListOffsets(r) => ready(ResponseKind::ListOffsets(offsets::list_offsets(
            broker, r, v,
        ))),
        RequestKind::DeleteRecords(r) => offsets::delete_records(broker.clone(), r),
        RequestKind::InitProducerId(r) => producer_id::init_producer_id(broker.clone(), r, v),
        RequestKind::AddPartitionsToTxn(r) => txn::add_partitions_to_txn(broker.clone(), r, v),
        RequestKind::AddOffsetsToTxn(r) => txn::add_offsets_to_txn(broker.clone(), r, v),
        RequestKind::EndTxn(r) => txn::end_txn(broker.clone(), r, v),
        RequestKind::TxnOffsetCommit(r) => txn::txn_offset_commit(broker, r),
        RequestKind::WriteTxnMarkers(r) => txn::write_txn_markers(broker.clone(), r),
        RequestKind::DescribeTransactions(r) => txn::describe_transactions(broker.clone(), r),
        RequestKind::ListTransactions(r) => txn::list_transactions(broker.clone(), r),
        RequestKind::CreateTopics(r) => topics::create_topics(broker.clone(), r, v),
        RequestKind::DeleteTopics(r) => topics::delete_topics(broker.clone(), r, v),
        RequestKind::CreatePartitions(r) => topics::create_partitions(broker.clone(), r),
        RequestKind::DescribeConfigs(r) => ready(ResponseKind::DescribeConfigs(
            configs::describe_configs(broker, r, v),
        )),
        RequestKind::AlterConfigs(r) => configs::alter_configs(broker.clone(), r),
        RequestKind::IncrementalAlterConfigs(r) => {
            configs::incremental_alter_configs(broker.clone(), r)
        }
        RequestKind::FindCoordinator(r) => ready(ResponseKind::FindCoordinator(
            groups::find_coordinator(broker, r, v, client.listener),
        )),
        RequestKind::JoinGroup(r) => groups::join_group(broker, header, peer, r, v),
        RequestKind::SyncGroup(r) => groups::sync_group(broker, r),
        RequestKind::Heartbeat(r) => ready(ResponseKind::Heartbeat(groups::heartbeat(broker, r))),
        RequestKind::LeaveGroup(r) => {
            ready(ResponseKind::LeaveGroup(groups::leave_group(broker, r, v)))
        }
        RequestKind::OffsetCommit(r) => groups::offset_commit(broker, r),
        RequestKind::OffsetFetch(r) => ready(ResponseKind::OffsetFetch(groups::offset_fetch(
            broker, r, v,
        ))),
        RequestKind::ListGroups(r) => {
            ready(ResponseKind::ListGroups(groups::list_groups(broker, r)))
        }
        RequestKind::DescribeGroups(r) => ready(ResponseKind::DescribeGroups(
            groups::describe_groups(broker, r, v),
        )),
        RequestKind::DeleteGroups(r) => groups::delete_groups(broker, r),
        RequestKind::OffsetDelete(r) => groups::offset_delete(broker, r),
        RequestKind::ConsumerGroupHeartbeat(r) => {
            consumer_groups::consumer_group_heartbeat(broker, header, peer, r, v)
        }
        RequestKind::ConsumerGroupDescribe(r) => ready(ResponseKind::ConsumerGroupDescribe(
            consumer_groups::consumer_group_describe(broker, r),
        )),
        // `supported_versions` lets nothing else through; answer nothing rather than guess.
        _ => Box::pin(std::future::ready(None)),
    }
}

/// Kafka error codes.
pub use protocol::codes;

impl Broker {
    /// Counts an error code answered by an API (per partition or resource).
    pub(crate) fn count_error(&self, api: ApiKey, code: i16) {
        if code != 0 {
            self.metrics
                .request_errors
                .with_label_values(&[name(api), &code.to_string()])
                .inc();
        }
    }
}
