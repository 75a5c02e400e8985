"""Transactions with real clients: confluent-kafka (librdkafka) and kafka-python
transactional producers against Sluice.

- commit makes records visible to read_committed consumers, abort hides them (read_uncommitted
  consumers still see the aborted records; neither sees the markers)
- an open transaction holds read_committed consumers at its first offset (the LSO)
- zombie fencing: a second producer with the same transactional.id fences the first and
  aborts its open transaction
- send_offsets_to_transaction: offsets become committed with the transaction, not before,
  and not at all on abort
- transaction.timeout.ms: the coordinator aborts a transaction left open
"""

from __future__ import annotations

import time
import uuid

import pytest

import sluice_helpers as h

pytestmark = pytest.mark.timeout(180)


def txn_producer(txn_id: str, **extra):
    from confluent_kafka import Producer

    conf = {
        "bootstrap.servers": h.BOOTSTRAP,
        "transactional.id": txn_id,
        "linger.ms": 5,
        **h.RDKAFKA_COMMON,
    }
    conf.update(extra)
    return Producer(conf)


def read_all(topic: str, isolation: str, expect: int | None = None, partitions: int = 1,
             timeout: float = 20.0, settle: float = 2.0):
    """Every record of `topic` from the start with the given isolation level, as
    (partition, offset, key, value). Waits until `expect` records arrived (if given), then
    `settle` more seconds for anything unexpected."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({
        "bootstrap.servers": h.BOOTSTRAP,
        "group.id": f"reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "isolation.level": isolation,
        **h.RDKAFKA_COMMON,
    })
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                out.append((m.partition(), m.offset(), m.key(), m.value()))
                continue
            if expect is not None and len(out) >= expect:
                quiet_until = quiet_until or time.monotonic() + settle
                if time.monotonic() >= quiet_until:
                    break
            if expect is None:
                quiet_until = quiet_until or time.monotonic() + settle
                if time.monotonic() >= quiet_until:
                    break
    finally:
        c.close()
    return out


def values(rows):
    return [r[3] for r in rows]


def test_confluent_commit_visible_abort_hidden(topic):
    h.create_topic(topic, partitions=2)
    p = txn_producer(f"txn-{topic}")
    p.init_transactions(20)

    p.begin_transaction()
    for i in range(10):
        p.produce(topic, key=b"k%d" % i, value=b"committed-%d" % i, partition=i % 2)
    p.commit_transaction(20)

    p.begin_transaction()
    for i in range(7):
        p.produce(topic, key=b"k%d" % i, value=b"aborted-%d" % i, partition=i % 2)
    p.flush(10)
    p.abort_transaction(20)

    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=b"second-%d" % i, partition=i % 2)
    p.commit_transaction(20)

    committed = values(read_all(topic, "read_committed", expect=15, partitions=2))
    assert sorted(committed) == sorted([b"committed-%d" % i for i in range(10)]
                                       + [b"second-%d" % i for i in range(5)])
    uncommitted = values(read_all(topic, "read_uncommitted", expect=22, partitions=2))
    assert sorted(uncommitted) == sorted(
        [b"committed-%d" % i for i in range(10)] + [b"aborted-%d" % i for i in range(7)]
        + [b"second-%d" % i for i in range(5)]), "markers must not show up as records"


def test_open_transaction_holds_read_committed_at_its_first_offset(topic):
    from confluent_kafka import Producer

    h.create_topic(topic)
    p = txn_producer(f"txn-{topic}")
    p.init_transactions(20)
    plain = Producer({"bootstrap.servers": h.BOOTSTRAP, **h.RDKAFKA_COMMON})
    plain.produce(topic, value=b"before")
    plain.flush(10)

    p.begin_transaction()
    p.produce(topic, value=b"in-txn")
    p.flush(10)
    plain.produce(topic, value=b"after")
    plain.flush(10)

    # read_uncommitted sees all three; read_committed stops at the open transaction.
    assert values(read_all(topic, "read_uncommitted", expect=3)) == [b"before", b"in-txn", b"after"]
    assert values(read_all(topic, "read_committed", expect=1)) == [b"before"]

    p.commit_transaction(20)
    assert values(read_all(topic, "read_committed", expect=3)) == [b"before", b"in-txn", b"after"]


def test_confluent_zombie_is_fenced(topic):
    from confluent_kafka import KafkaException

    h.create_topic(topic)
    txn_id = f"txn-{topic}"
    old = txn_producer(txn_id)
    old.init_transactions(20)
    old.begin_transaction()
    old.produce(topic, value=b"zombie")
    old.flush(10)

    new = txn_producer(txn_id)
    new.init_transactions(30)  # fences `old` and aborts its open transaction
    new.begin_transaction()
    new.produce(topic, value=b"fresh")
    new.commit_transaction(20)

    with pytest.raises(KafkaException) as exc:
        old.produce(topic, value=b"zombie-2")
        old.commit_transaction(20)
    err = exc.value.args[0]
    assert err.fatal() or "fenced" in str(err).lower(), f"expected a fencing error, got {err}"

    assert values(read_all(topic, "read_committed", expect=1)) == [b"fresh"]


def test_send_offsets_to_transaction(topic):
    from confluent_kafka import Consumer, Producer, TopicPartition

    src, dst = topic + "-in", topic + "-out"
    h.create_topic(src)
    h.create_topic(dst)
    group = f"g-{topic}"
    plain = Producer({"bootstrap.servers": h.BOOTSTRAP, **h.RDKAFKA_COMMON})
    for i in range(20):
        plain.produce(src, value=b"%d" % i)
    plain.flush(10)

    consumer = Consumer({
        "bootstrap.servers": h.BOOTSTRAP,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        **h.RDKAFKA_COMMON,
    })
    consumer.subscribe([src])
    p = txn_producer(f"txn-{topic}")
    p.init_transactions(20)

    def consume(n):
        got = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m)
        assert len(got) == n, f"consumed {len(got)} of {n}"
        return got

    def committed():
        tp = consumer.committed([TopicPartition(src, 0)], timeout=10)[0]
        return tp.offset

    try:
        # First ten: transformed and committed with their offsets.
        batch = consume(10)
        p.begin_transaction()
        for m in batch:
            p.produce(dst, value=b"out-" + m.value())
        p.send_offsets_to_transaction(
            [TopicPartition(src, 0, batch[-1].offset() + 1)],
            consumer.consumer_group_metadata(), 20)
        p.commit_transaction(20)
        assert committed() == 10

        # Next ten: aborted, offsets stay at 10.
        batch = consume(10)
        p.begin_transaction()
        for m in batch:
            p.produce(dst, value=b"out-" + m.value())
        p.send_offsets_to_transaction(
            [TopicPartition(src, 0, batch[-1].offset() + 1)],
            consumer.consumer_group_metadata(), 20)
        p.abort_transaction(20)
        assert committed() == 10
    finally:
        consumer.close()

    got = values(read_all(dst, "read_committed", expect=10))
    assert got == [b"out-%d" % i for i in range(10)]


def test_transaction_timeout_aborts(topic):
    from confluent_kafka import KafkaException

    h.create_topic(topic)
    p = txn_producer(f"txn-{topic}", **{"transaction.timeout.ms": 2000,
                                        "socket.timeout.ms": 2000})
    p.init_transactions(20)
    p.begin_transaction()
    p.produce(topic, value=b"left-open")
    p.flush(10)
    # The coordinator aborts it after 2 s: read_committed consumers move past it and see
    # nothing of it.
    h.wait_for(lambda: read_all(topic, "read_uncommitted", expect=1, settle=0.5), 10,
               what="the open transaction's record")
    time.sleep(4)
    assert values(read_all(topic, "read_committed", settle=1.0)) == []
    with pytest.raises(KafkaException):
        p.commit_transaction(10)


def test_kafka_python_transactions(topic):
    from kafka import KafkaProducer

    h.create_topic(topic)
    p = KafkaProducer(bootstrap_servers=h.BOOTSTRAP, transactional_id=f"kp-{topic}")
    try:
        p.init_transactions()
        p.begin_transaction()
        for i in range(5):
            p.send(topic, value=b"kp-commit-%d" % i)
        p.commit_transaction()

        p.begin_transaction()
        for i in range(3):
            p.send(topic, value=b"kp-abort-%d" % i)
        p.flush()
        p.abort_transaction()
    finally:
        p.close(timeout=10)

    from kafka import KafkaConsumer, TopicPartition

    def kp_read(isolation, n):
        c = KafkaConsumer(bootstrap_servers=h.BOOTSTRAP, isolation_level=isolation,
                          enable_auto_commit=False, consumer_timeout_ms=3000)
        c.assign([TopicPartition(topic, 0)])
        c.seek_to_beginning()
        out = []
        deadline = time.monotonic() + 20
        while len(out) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                out.extend(r.value for r in recs)
        time.sleep(1)
        for recs in c.poll(timeout_ms=500).values():
            out.extend(r.value for r in recs)
        c.close()
        return out

    assert kp_read("read_committed", 5) == [b"kp-commit-%d" % i for i in range(5)]
    assert kp_read("read_uncommitted", 8) == (
        [b"kp-commit-%d" % i for i in range(5)] + [b"kp-abort-%d" % i for i in range(3)])
    # confluent's read_committed agrees.
    assert values(read_all(topic, "read_committed", expect=5)) == [
        b"kp-commit-%d" % i for i in range(5)]
