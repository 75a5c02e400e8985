//! InitProducerId for idempotent producers (transactions come with the transaction
//! coordinator).

use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::codes;
use crate::Broker;

use codes::COORDINATOR_NOT_AVAILABLE;

pub fn init_producer_id(broker: &Broker, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let fail = |code: i16| {
        broker.count_error(ApiKey::InitProducerId, code);
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if req.transactional_id.is_some() {
        // No transaction coordinator yet: FindCoordinator for transactions is not offered
        // either, so clients fail at initialisation with a clear error instead of later.
        return fail(codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    }
    // Without a transactional id every call gets a fresh id (as Kafka does, KIP-360 epoch
    // bumps included), so sequences always start from zero on a new id.
    match broker.producer_ids.next() {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => {
            tracing::error!(error = %e, "allocating a producer id");
            fail(COORDINATOR_NOT_AVAILABLE)
        }
    }
}
