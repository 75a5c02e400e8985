//! InitProducerId for idempotent producers (transactions come with the transaction
//! coordinator).

use std::sync::Arc;

use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId, ResponseKind,
};

use super::{codes, Reply};
use crate::Broker;

pub fn init_producer_id(broker: Arc<Broker>, req: InitProducerIdRequest) -> Reply {
    Box::pin(async move {
        let fail = |code: i16| {
            broker.count_error(ApiKey::InitProducerId, code);
            InitProducerIdResponse::default()
                .with_error_code(code)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        };
        let r = if req.transactional_id.is_some() {
            // No transaction coordinator yet: FindCoordinator for transactions is not
            // offered either, so clients fail at initialisation with a clear error.
            fail(codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
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
