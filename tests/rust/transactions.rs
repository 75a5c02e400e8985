//! Transactions against a real `sluice` process: an rdkafka transactional producer, with the
//! coordinator's view checked through DescribeTransactions and ListTransactions, the last
//! stable offset through ListOffsets, and the coordinator's error codes through raw requests.

use std::time::Duration;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use sluice_tests::*;

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_string())
}

fn describe(raw: &mut Raw, id: &str) -> describe_transactions_response::TransactionState {
    let r: DescribeTransactionsResponse = raw.call(
        ApiKey::DescribeTransactions,
        0,
        &DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![TransactionalId(s(id))]),
    );
    r.transaction_states.into_iter().next().expect("one state")
}

/// InitProducerId (v4) for transactional id `id`.
fn init_txn(raw: &mut Raw, id: &str, timeout_ms: i32) -> InitProducerIdResponse {
    raw.call(
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(s(id))))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    )
}

/// AddPartitionsToTxn (v3) of partition 0 of `topic`; its error code.
fn add_partition(raw: &mut Raw, id: &str, pid: ProducerId, epoch: i16, topic: &str) -> i16 {
    let r: AddPartitionsToTxnResponse = raw.call(
        ApiKey::AddPartitionsToTxn,
        3,
        &AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(s(id)))
            .with_v3_and_below_producer_id(pid)
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(vec![
                add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(s(topic)))
                    .with_partitions(vec![0]),
            ]),
    );
    r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
}

/// EndTxn (v3); its error code.
fn end_txn(raw: &mut Raw, id: &str, pid: ProducerId, epoch: i16, commit: bool) -> i16 {
    let r: EndTxnResponse = raw.call(
        ApiKey::EndTxn,
        3,
        &EndTxnRequest::default()
            .with_transactional_id(TransactionalId(s(id)))
            .with_producer_id(pid)
            .with_producer_epoch(epoch)
            .with_committed(commit),
    );
    r.error_code
}

/// The state of `id` once its transaction's markers are written: EndTxn is answered once the
/// decision (Prepare) is committed, as in Kafka, and the markers follow.
fn completed(raw: &mut Raw, id: &str) -> describe_transactions_response::TransactionState {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let st = describe(raw, id);
        if !st.transaction_state.as_str().starts_with("Prepare") {
            return st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never completed: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn latest(raw: &mut Raw, topic: &str, isolation: i8) -> i64 {
    let r: ListOffsetsResponse = raw.call(
        ApiKey::ListOffsets,
        5,
        &ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(isolation)
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1),
                ])]),
    );
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_state_follows_the_transaction() {
    let node = Node::start_default();
    let boot = node.bootstrap();
    create_topic(&boot, "txn-state", 1, &[]).await;
    let mut raw = Raw::connect(node.kafka_addr());

    // Unknown ids are reported as such.
    assert_eq!(describe(&mut raw, "nobody").error_code, 105);

    let mut cfg = client_config(&boot);
    cfg.set("transactional.id", "txn-state-producer");
    let producer: BaseProducer = cfg.create().expect("producer");
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).expect("init");
    let st = describe(&mut raw, "txn-state-producer");
    assert_eq!(st.error_code, 0);
    assert_eq!(st.transaction_state.as_str(), "Empty");
    assert!(st.producer_id.0 >= 0);

    producer.begin_transaction().expect("begin");
    for i in 0..5 {
        let v = format!("v{i}");
        producer
            .send(
                BaseRecord::<(), _>::to("txn-state")
                    .payload(&v)
                    .partition(0),
            )
            .expect("send");
    }
    producer.flush(timeout).expect("flush");
    let st = describe(&mut raw, "txn-state-producer");
    assert_eq!(st.transaction_state.as_str(), "Ongoing");
    assert!(st.transaction_start_time_ms > 0);
    assert_eq!(st.topics.len(), 1);
    assert_eq!(st.topics[0].topic.0.as_str(), "txn-state");
    assert_eq!(st.topics[0].partitions, vec![0]);

    // The open transaction holds the last stable offset at its first record.
    assert_eq!(latest(&mut raw, "txn-state", 0), 5, "read_uncommitted end");
    assert_eq!(
        latest(&mut raw, "txn-state", 1),
        0,
        "read_committed end (LSO)"
    );

    let listed: ListTransactionsResponse = raw.call(
        ApiKey::ListTransactions,
        1,
        &ListTransactionsRequest::default()
            .with_state_filters(vec![s("Ongoing"), s("NoSuchState")])
            .with_duration_filter(-1),
    );
    assert_eq!(listed.error_code, 0);
    assert_eq!(listed.unknown_state_filters, vec![s("NoSuchState")]);
    assert!(listed
        .transaction_states
        .iter()
        .any(|t| t.transactional_id.0.as_str() == "txn-state-producer"
            && t.transaction_state.as_str() == "Ongoing"));

    producer.commit_transaction(timeout).expect("commit");
    let st = completed(&mut raw, "txn-state-producer");
    assert_eq!(st.transaction_state.as_str(), "CompleteCommit");
    assert!(st.topics.is_empty());
    // Five records and the commit marker: both ends move past the marker.
    assert_eq!(latest(&mut raw, "txn-state", 0), 6);
    assert_eq!(latest(&mut raw, "txn-state", 1), 6);
    let m = node.metrics();
    assert_eq!(
        metric_value(
            &m,
            "sluice_transactions_completed_total",
            Some("result=\"commit\"")
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_requests_get_kafka_error_codes() {
    let node = Node::start_default();
    create_topic(&node.bootstrap(), "raw-txn-topic", 1, &[]).await;
    let mut raw = Raw::connect(node.kafka_addr());
    let id = "raw-txn";
    // A timeout above transaction.max.timeout.ms is refused.
    assert_eq!(
        init_txn(&mut raw, id, 3_600_000).error_code,
        50,
        "INVALID_TRANSACTION_TIMEOUT"
    );
    let first = init_txn(&mut raw, id, 60_000);
    assert_eq!(first.error_code, 0);
    let second = init_txn(&mut raw, id, 60_000);
    assert_eq!(second.error_code, 0);
    assert_eq!(second.producer_id, first.producer_id);
    assert_eq!(
        second.producer_epoch,
        first.producer_epoch + 1,
        "epoch bumped"
    );

    // The fenced epoch, a wrong producer id, an unknown topic.
    let t = "raw-txn-topic";
    assert_eq!(
        add_partition(&mut raw, id, first.producer_id, first.producer_epoch, t),
        90
    );
    let other = ProducerId(first.producer_id.0 + 7);
    assert_eq!(
        add_partition(&mut raw, id, other, second.producer_epoch, t),
        49
    );
    let (pid, epoch) = (second.producer_id, second.producer_epoch);
    assert_eq!(add_partition(&mut raw, id, pid, epoch, "no-such-topic"), 3);

    // EndTxn without a transaction is an invalid state transition.
    assert_eq!(
        end_txn(&mut raw, id, pid, epoch, true),
        48,
        "INVALID_TXN_STATE"
    );

    // FindCoordinator for a transactional id answers this node.
    let r: FindCoordinatorResponse = raw.call(
        ApiKey::FindCoordinator,
        3,
        &FindCoordinatorRequest::default()
            .with_key(s(id))
            .with_key_type(1),
    );
    assert_eq!(r.error_code, 0);
    assert_eq!(r.port, i32::from(node.kafka_addr().port()));
}

/// A transactional id idle for longer than `transactional.id.expiration.ms` is forgotten
/// with a tombstone: gone from DescribeTransactions and ListTransactions, after a restart
/// too, and its next InitProducerId starts it afresh with a new producer id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transactional_ids_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = || NodeOpts {
        data_dir: Some(dir.path().to_path_buf()),
        extra_args: vec!["--transactional-id-expiration-ms".into(), "1500".into()],
        ..NodeOpts::default()
    };
    let node = Node::start(opts());
    let boot = node.bootstrap();
    create_topic(&boot, "txn-expire", 1, &[]).await;
    let mut cfg = client_config(&boot);
    cfg.set("transactional.id", "txn-expire-producer");
    let producer: BaseProducer = cfg.create().expect("producer");
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).expect("init");
    producer.begin_transaction().expect("begin");
    producer
        .send(
            BaseRecord::<(), _>::to("txn-expire")
                .payload("v")
                .partition(0),
        )
        .expect("send");
    producer.commit_transaction(timeout).expect("commit");
    drop(producer);
    let mut raw = Raw::connect(node.kafka_addr());
    let st = completed(&mut raw, "txn-expire-producer");
    assert_eq!(st.transaction_state.as_str(), "CompleteCommit");
    let first_pid = st.producer_id.0;

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while describe(&mut raw, "txn-expire-producer").error_code != 105 {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle id never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed: ListTransactionsResponse = raw.call(
        ApiKey::ListTransactions,
        0,
        &ListTransactionsRequest::default(),
    );
    assert!(!listed
        .transaction_states
        .iter()
        .any(|t| t.transactional_id.0.as_str() == "txn-expire-producer"));

    // The tombstone is what a restarted coordinator replays.
    drop(raw);
    drop(node);
    let node = Node::start(opts());
    let mut raw = Raw::connect(node.kafka_addr());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let st = describe(&mut raw, "txn-expire-producer");
        if st.error_code == 105 {
            break;
        }
        // COORDINATOR_LOAD_IN_PROGRESS while the state partition loads.
        assert_eq!(st.error_code, 14, "after the restart: {st:?}");
        assert!(std::time::Instant::now() < deadline, "never loaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut cfg = client_config(&node.bootstrap());
    cfg.set("transactional.id", "txn-expire-producer");
    let producer: BaseProducer = cfg.create().expect("producer");
    producer.init_transactions(timeout).expect("init again");
    let st = describe(&mut raw, "txn-expire-producer");
    assert_eq!(st.transaction_state.as_str(), "Empty");
    assert_ne!(
        st.producer_id.0, first_pid,
        "a forgotten id gets a new producer id"
    );
}

/// The Complete state is written to `__transaction_state` only when nothing newer of the id
/// supersedes it within half a second. A coordinator that restarts before (kill -9 right
/// after the commit) finds the Prepare record, writes the marker once more and completes
/// the transaction; one that restarts after finds Complete. Either way the transaction stays
/// committed: read_committed sees its records, and the id goes on with a new transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_transactions_survive_a_coordinator_crash() {
    let mut node = Node::start_default();
    let boot = node.bootstrap();
    create_topic(&boot, "txn-crash", 1, &[]).await;
    let timeout = Duration::from_secs(30);
    let commit_one = |id: &str, value: &str| {
        let mut cfg = client_config(&boot);
        cfg.set("transactional.id", id);
        let producer: BaseProducer = cfg.create().expect("producer");
        producer.init_transactions(timeout).expect("init");
        producer.begin_transaction().expect("begin");
        producer
            .send(
                BaseRecord::<(), _>::to("txn-crash")
                    .payload(value)
                    .partition(0),
            )
            .expect("send");
        producer.commit_transaction(timeout).expect("commit");
    };
    let wait_described = |raw: &mut Raw, id: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let st = describe(raw, id);
            if st.error_code == 0 && st.transaction_state.as_str() != "PrepareCommit" {
                return st;
            }
            // COORDINATOR_LOAD_IN_PROGRESS / NOT_AVAILABLE while the state partition loads.
            assert!(
                matches!(st.error_code, 0 | 14 | 15),
                "after the restart: {st:?}"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "never completed: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // Killed before the Complete record could be written.
    commit_one("txn-crash-early", "a");
    node.kill9();
    node.restart();
    let mut raw = Raw::connect(node.kafka_addr());
    let st = wait_described(&mut raw, "txn-crash-early");
    assert_eq!(st.transaction_state.as_str(), "CompleteCommit");
    assert!(st.topics.is_empty());
    // One record, its marker, and the marker written again by the restarted coordinator:
    // nothing is left open, so the last stable offset is the end of the log.
    let end = latest(&mut raw, "txn-crash", 0);
    assert!(end == 2 || end == 3, "log end {end}");
    assert_eq!(latest(&mut raw, "txn-crash", 1), end);

    // Killed after it was.
    commit_one("txn-crash-late", "b");
    std::thread::sleep(Duration::from_millis(1500));
    node.kill9();
    node.restart();
    let mut raw = Raw::connect(node.kafka_addr());
    let st = wait_described(&mut raw, "txn-crash-late");
    assert_eq!(st.transaction_state.as_str(), "CompleteCommit");
    let end2 = latest(&mut raw, "txn-crash", 0);
    assert_eq!(
        end2,
        end + 2,
        "one record and one marker, not written again"
    );
    assert_eq!(latest(&mut raw, "txn-crash", 1), end2);

    // Both ids go on: a new transaction each, committed.
    commit_one("txn-crash-early", "c");
    commit_one("txn-crash-late", "d");
    completed(&mut raw, "txn-crash-early");
    completed(&mut raw, "txn-crash-late");
    assert_eq!(latest(&mut raw, "txn-crash", 1), end2 + 4);
    let c = consumer(&boot, &[("isolation.level", "read_committed")]);
    assign_all_from_beginning(&c, "txn-crash", 1);
    let values: Vec<String> = consume(&c, 4, timeout)
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(values, vec!["a", "b", "c", "d"]);
    assert_no_more(&c, Duration::from_millis(500)).await;
}

/// EndTxn is answered once the decision is committed, before the markers (as in Kafka); the
/// producer's next AddPartitionsToTxn, sent the moment the answer arrives, waits on the
/// coordinator for them instead of getting CONCURRENT_TRANSACTIONS (which librdkafka would
/// retry only after its 100 ms backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_transaction_waits_for_the_markers_of_the_last() {
    let node = Node::start_default();
    create_topic(&node.bootstrap(), "txn-back-to-back", 1, &[]).await;
    let mut raw = Raw::connect(node.kafka_addr());
    let id = "txn-back-to-back";
    let init = init_txn(&mut raw, id, 60_000);
    assert_eq!(init.error_code, 0);
    let (pid, epoch) = (init.producer_id, init.producer_epoch);
    const ROUNDS: i64 = 20;
    for round in 0..ROUNDS {
        let code = add_partition(&mut raw, id, pid, epoch, id);
        assert_eq!(code, 0, "AddPartitionsToTxn of round {round}");
        let code = end_txn(&mut raw, id, pid, epoch, true);
        assert_eq!(code, 0, "EndTxn of round {round}");
    }
    // One commit marker per transaction, and nothing left open.
    assert_eq!(
        completed(&mut raw, id).transaction_state.as_str(),
        "CompleteCommit"
    );
    assert_eq!(latest(&mut raw, id, 0), ROUNDS);
    assert_eq!(latest(&mut raw, id, 1), ROUNDS);
}
