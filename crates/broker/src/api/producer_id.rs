//! InitProducerId: a fresh producer id for idempotent producers; for transactional ones the
//! id's producer id with a bumped epoch, from the transaction coordinator.

use std::sync::Arc;

use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId, ResponseKind,
};

use super::{codes, Reply};
use crate::Broker;

pub fn init_producer_id(broker: Arc<Broker>, req: InitProducerIdRequest, version: i16) -> Reply {
    Box::pin(async move {
        let fail = |code: i16| {
            broker.count_error(ApiKey::InitProducerId, code);
            InitProducerIdResponse::default()
                .with_error_code(code)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        };
        let r = if let Some(id) = req.transactional_id.as_ref().filter(|i| !i.0.is_empty()) {
            let expected =
                (req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
            let txn = broker.txn().clone();
            match txn
                .init_producer(
                    &broker,
                    id.0.as_str(),
                    req.transaction_timeout_ms,
                    expected,
                    version >= 4,
                )
                .await
            {
                Ok((pid, epoch)) => InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch),
                Err(code) => fail(code),
            }
        } else {
            // Without a transactional id every call gets a fresh id (as Kafka does, KIP-360
            // epoch bumps included), so sequences always start from zero on a new id.
            match broker.next_producer_id().await {
                Ok(id) => InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(id))
                    .with_producer_epoch(0),
                Err(e) => {
                    tracing::warn!(error = %e.message, "allocating a producer id");
                    // Retriable: the client asks again (no metadata quorum right now).
                    fail(codes::COORDINATOR_NOT_AVAILABLE)
                }
            }
        };
        Some(ResponseKind::InitProducerId(r))
    })
}
