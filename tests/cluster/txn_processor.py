"""A consume-transform-produce processor with exactly-once semantics, for txn_exactly_once.py.

    txn_processor.py BOOTSTRAP INPUT OUTPUT GROUP TRANSACTIONAL_ID

Reads INPUT as a member of GROUP (isolation.level=read_committed, no auto commit, static
membership so a restarted instance takes the place of a killed one without waiting for its
session to time out) and, for every batch it polls, runs one transaction on a producer with
the fixed TRANSACTIONAL_ID: one record per input record on OUTPUT (same key, value
b"out-" + input value), the consumer's positions sent with send_offsets_to_transaction,
then commit_transaction. init_transactions runs before the consumer joins, so it fences a
killed predecessor and aborts whatever transaction that one left open (records and
offsets) before this instance reads the committed offsets.

An abortable error aborts the transaction and rewinds the consumer to the committed offsets;
a fatal one exits with status 2. Runs until killed. Prints one line per committed
transaction ("committed N records, positions {...}") on stdout.

Environment: TXN_PROCESSOR_BATCH (records per transaction at most, default 20) and
TXN_PROCESSOR_PAUSE_MS (a random pause of up to this long before send_offsets and before
commit, default 40), which widen the window in which a kill lands inside a transaction.
"""
import os
import random
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

BATCH = int(os.environ.get("TXN_PROCESSOR_BATCH", "20"))
PAUSE_MS = int(os.environ.get("TXN_PROCESSOR_PAUSE_MS", "40"))


def log(*args):
    print(time.strftime("%H:%M:%S"), "[pid %d]" % os.getpid(), *args, flush=True)


def pause():
    if PAUSE_MS > 0:
        time.sleep(random.uniform(0, PAUSE_MS / 1000.0))


def rewind(consumer):
    """Seeks every assigned partition back to its committed offset (the beginning if none)."""
    assignment = consumer.assignment()
    for tp in consumer.committed(assignment, timeout=30):
        offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
    log("rewound to committed offsets", {tp.partition: tp.offset for tp in consumer.committed(assignment, timeout=30)})


def main():
    bootstrap, input_topic, output_topic, group, txn_id = sys.argv[1:6]
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "transactional.id": txn_id,
        "transaction.timeout.ms": 60000,
        "linger.ms": 5,
        "socket.connection.setup.timeout.ms": 5000,
    })
    t0 = time.time()
    producer.init_transactions(60)
    log("init_transactions done in %.2f s" % (time.time() - t0))
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "group.instance.id": "%s-instance" % group,
        "session.timeout.ms": 10000,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "socket.connection.setup.timeout.ms": 5000,
    })
    consumer.subscribe([input_topic])
    transactions = 0
    while True:
        msgs = consumer.consume(num_messages=BATCH, timeout=0.5)
        batch = []
        for m in msgs:
            if m.error():
                log("consumer error:", m.error())
                continue
            batch.append(m)
        if not batch:
            continue
        try:
            producer.begin_transaction()
            for m in batch:
                producer.produce(output_topic, key=m.key(), value=b"out-" + m.value())
            pause()
            positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
            pause()
            for attempt in range(10):
                try:
                    producer.commit_transaction(30)
                    break
                except KafkaException as e:
                    if e.args[0].retriable() and attempt < 9:
                        log("commit_transaction retried:", e.args[0])
                        continue
                    raise
            transactions += 1
            log("committed %d records, positions %s" % (
                len(batch), {tp.partition: tp.offset for tp in positions}))
        except KafkaException as e:
            err = e.args[0]
            if err.txn_requires_abort():
                log("aborting the transaction:", err)
                producer.abort_transaction(30)
                rewind(consumer)
                continue
            log("fatal:", err)
            sys.exit(2)


if __name__ == "__main__":
    main()
