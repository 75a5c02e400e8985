"""confluent-kafka (librdkafka) against Sluice: admin API, every codec, idempotence, errors.

Consumers here use manual assignment: group.id is required by librdkafka's consumer but
nothing is committed. Consumer groups are tested in test_groups.py.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

import sluice_helpers as h

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]

# Topic configs every Kafka-compatible broker describes (Kafka's TopicConfig names).
CORE_TOPIC_CONFIGS = [
    "cleanup.policy",
    "compression.type",
    "max.message.bytes",
    "message.timestamp.type",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
]


# ---------------------------------------------------------------- helpers

def producer(**conf) -> Producer:
    base = {
        "bootstrap.servers": h.BOOTSTRAP,
        "linger.ms": 5,
        "message.max.bytes": h.BROKER_MAX_MESSAGE_BYTES,
        "message.timeout.ms": 30000,
        **h.RDKAFKA_COMMON,
    }
    base.update(conf)
    return Producer(base)


def consumer(**conf) -> Consumer:
    base = {
        "bootstrap.servers": h.BOOTSTRAP,
        # Required by librdkafka's consumer; never used: manual assignment, no commits.
        "group.id": "sluice-interop-unused-" + uuid.uuid4().hex[:8],
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        **h.RDKAFKA_COMMON,
    }
    base.update(conf)
    return Consumer(base)


def produce_all(p: Producer, topic: str, records: list[dict], partition: int = 0, flush_timeout=60):
    """Produce records in order to one partition; return the delivery reports (in delivery order)."""
    reports = []

    def on_delivery(err, msg):
        reports.append((err, msg.partition(), msg.offset(), msg.key()))

    for r in records:
        kwargs = dict(key=r["key"], value=r["value"], partition=partition, on_delivery=on_delivery)
        if r.get("headers"):
            kwargs["headers"] = r["headers"]
        if r.get("ts") is not None:
            kwargs["timestamp"] = r["ts"]
        while True:
            try:
                p.produce(topic, **kwargs)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    remaining = p.flush(flush_timeout)
    assert remaining == 0, f"{remaining} messages still undelivered after {flush_timeout}s"
    return reports


def assert_delivered(reports, n, partition=0, first_offset=0):
    errors = [(e, k) for e, _, _, k in reports if e is not None]
    assert not errors, f"delivery errors: {errors[:5]}"
    assert len(reports) == n
    offsets = [o for _, _, o, _ in reports]
    assert offsets == list(range(first_offset, first_offset + n)), (
        f"delivered offsets not contiguous/in order: {offsets[:20]}...")
    assert all(p == partition for _, p, _, _ in reports)


def consume(topic: str, partition: int, count: int, start: int = OFFSET_BEGINNING,
            timeout: float = 30, expect_no_more: bool = True, **conf) -> list[dict]:
    """Read `count` records with manual assignment; optionally check nothing follows."""
    c = consumer(**conf)
    try:
        c.assign([TopicPartition(topic, partition, start)])
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            assert time.monotonic() < deadline, (
                f"timed out after {timeout}s with {len(out)} of {count} records from {topic}[{partition}]")
            for m in c.consume(num_messages=min(500, count - len(out)), timeout=1.0):
                if m.error():
                    raise AssertionError(f"consumer error: {m.error()}")
                ts_type, ts = m.timestamp()
                assert ts_type == TIMESTAMP_CREATE_TIME, f"offset {m.offset()}: timestamp type {ts_type}"
                out.append({
                    "offset": m.offset(), "key": m.key(), "value": m.value(),
                    "headers": list(m.headers() or []), "ts": ts,
                })
        if expect_no_more and out:
            # Nothing after what we read: the high watermark is right behind the last record.
            _, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            assert high == out[-1]["offset"] + 1, f"high watermark {high} after last offset {out[-1]['offset']}"
        return out
    finally:
        c.close()


def watermarks(topic: str, partition: int = 0):
    c = consumer()
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    finally:
        c.close()


def described(admin, res: ConfigResource) -> dict:
    """DescribeConfigs of one resource. confluent-kafka 2.16 fills ConfigEntry.source with
    librdkafka's plain int, so it is turned into the ConfigSource it stands for."""
    configs = admin.describe_configs([res], request_timeout=15)[res].result(timeout=20)
    for entry in configs.values():
        entry.source = ConfigSource(entry.source)
    return configs


def topic_configs(admin, topic: str) -> dict:
    return described(admin, ConfigResource(ResourceType.TOPIC, topic))


def admin_error(fut, timeout=20) -> KafkaError:
    with pytest.raises(KafkaException) as excinfo:
        fut.result(timeout=timeout)
    return excinfo.value.args[0]


# ---------------------------------------------------------------- admin

def test_describe_cluster(cadmin):
    desc = cadmin.describe_cluster(request_timeout=15).result(timeout=20)
    assert len(desc.nodes) == h.NODES, desc.nodes
    host, port = h.BOOTSTRAP.rsplit(":", 1)
    assert (host, int(port)) in [(n.host, n.port) for n in desc.nodes]
    assert desc.controller is not None and desc.controller.id in [n.id for n in desc.nodes]
    assert desc.cluster_id


def test_metadata_lists_broker_and_topics(cadmin, topic):
    h.create_topic(topic, 2, admin=cadmin)
    md = cadmin.list_topics(timeout=10)
    assert len(md.brokers) == h.NODES
    assert h.BOOTSTRAP in [f"{b.host}:{b.port}" for b in md.brokers.values()]
    t = md.topics[topic]
    assert t.error is None
    assert sorted(t.partitions) == [0, 1]
    for p in t.partitions.values():
        assert p.leader in md.brokers and p.leader in p.replicas
        assert len(p.replicas) == h.REPLICATION and len(set(p.replicas)) == h.REPLICATION
        assert sorted(p.isrs) == sorted(p.replicas)


def test_create_topics_validate_only_then_create(cadmin, topic):
    new = NewTopic(topic, num_partitions=3, replication_factor=1, config={"retention.ms": "3600000"})
    # validate_only: success, but nothing is created.
    assert cadmin.create_topics([new], validate_only=True, request_timeout=15)[topic].result(timeout=20) is None
    time.sleep(0.5)
    assert h.topic_partition_leaders(cadmin, topic) is None, "validate_only created the topic"

    assert cadmin.create_topics([new], request_timeout=15)[topic].result(timeout=20) is None
    h.wait_topic_ready(cadmin, topic, 3)

    # Creating it again: TOPIC_ALREADY_EXISTS (also in validate_only mode).
    err = admin_error(cadmin.create_topics([new], request_timeout=15)[topic])
    assert err.code() == KafkaError.TOPIC_ALREADY_EXISTS, err
    err = admin_error(cadmin.create_topics([new], validate_only=True, request_timeout=15)[topic])
    assert err.code() == KafkaError.TOPIC_ALREADY_EXISTS, err


def test_create_topics_invalid(cadmin):
    bad = "bad topic name!"
    err = admin_error(cadmin.create_topics([NewTopic(bad, 1, 1)], request_timeout=15)[bad])
    assert err.code() == KafkaError.TOPIC_EXCEPTION, err  # INVALID_TOPIC_EXCEPTION (17)

    name = h.unique_topic("bad-config")
    err = admin_error(cadmin.create_topics(
        [NewTopic(name, 1, 1, config={"retention.ms": "not-a-number"})], request_timeout=15)[name])
    assert err.code() == KafkaError.INVALID_CONFIG, err
    assert h.topic_partition_leaders(cadmin, name) is None


def test_create_partitions(cadmin, topic):
    h.create_topic(topic, 1, admin=cadmin)
    fs = cadmin.create_partitions([NewPartitions(topic, 3)], request_timeout=15)
    assert fs[topic].result(timeout=20) is None
    h.wait_topic_ready(cadmin, topic, 3)

    # Shrinking is invalid.
    err = admin_error(cadmin.create_partitions([NewPartitions(topic, 2)], request_timeout=15)[topic])
    assert err.code() == KafkaError.INVALID_PARTITIONS, err
    # Unknown topic.
    missing = h.unique_topic("no-such-topic")
    err = admin_error(cadmin.create_partitions([NewPartitions(missing, 2)], request_timeout=15)[missing])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err

    # The new partition works end to end.
    recs = [{"key": b"k", "value": b"in-partition-2", "headers": [], "ts": 1_700_000_000_000}]
    p = producer()
    assert_delivered(produce_all(p, topic, recs, partition=2), 1, partition=2)
    got = consume(topic, 2, 1)
    h.assert_records_equal(got, recs)


def test_delete_topics(cadmin, topic):
    h.create_topic(topic, 2, admin=cadmin)
    p = producer()
    assert_delivered(produce_all(p, topic, [{"key": b"a", "value": b"b", "headers": [], "ts": None}]), 1)
    del p
    assert cadmin.delete_topics([topic], request_timeout=15)[topic].result(timeout=20) is None
    h.wait_topic_gone(cadmin, topic)
    err = admin_error(cadmin.delete_topics([topic], request_timeout=15)[topic])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err
    # The name can be reused; the new topic starts empty.
    h.create_topic(topic, 1, admin=cadmin)
    assert watermarks(topic, 0) == (0, 0)


def test_describe_configs_topic(cadmin, topic):
    h.create_topic(topic, 1, config={"retention.ms": "3600000"}, admin=cadmin)
    configs = topic_configs(cadmin, topic)
    missing = [c for c in CORE_TOPIC_CONFIGS if c not in configs]
    assert not missing, f"DescribeConfigs lacks {missing}; got {sorted(configs)}"
    for name, entry in configs.items():
        assert entry.name == name
        assert isinstance(entry.source, ConfigSource) and entry.source != ConfigSource.UNKNOWN_CONFIG, (
            f"{name}: source {entry.source}")
        if not entry.is_sensitive:
            assert entry.value is not None, f"{name}: no value"
        assert entry.is_default == (entry.source == ConfigSource.DEFAULT_CONFIG), (
            f"{name}: is_default={entry.is_default} but source={entry.source}")
    rm = configs["retention.ms"]
    assert (rm.value, rm.source, rm.is_default) == ("3600000", ConfigSource.DYNAMIC_TOPIC_CONFIG, False)
    assert configs["cleanup.policy"].value == "delete"
    assert configs["cleanup.policy"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG
    assert configs["max.message.bytes"].value == str(h.BROKER_MAX_MESSAGE_BYTES)
    assert configs["message.timestamp.type"].value == "CreateTime"

    # An unknown topic is an error, not an empty list.
    missing_topic = ConfigResource(ResourceType.TOPIC, h.unique_topic("no-such-topic"))
    err = admin_error(cadmin.describe_configs([missing_topic], request_timeout=15)[missing_topic])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err


def test_describe_configs_broker(cadmin):
    node_id = cadmin.describe_cluster(request_timeout=15).result(timeout=20).nodes[0].id
    res = ConfigResource(ResourceType.BROKER, str(node_id))
    configs = described(cadmin, res)
    assert configs, "no broker configs described"
    for name, entry in configs.items():
        assert entry.source != ConfigSource.UNKNOWN_CONFIG, f"{name}: source {entry.source}"
        if not entry.is_sensitive:
            assert entry.value is not None, f"{name}: no value"
    for name in ("message.max.bytes", "num.partitions", "auto.create.topics.enable"):
        assert name in configs, f"broker config {name} not described; got {sorted(configs)[:40]}"
    assert configs["message.max.bytes"].value == str(h.BROKER_MAX_MESSAGE_BYTES)
    assert configs["num.partitions"].value == "1"
    assert configs["auto.create.topics.enable"].value == "true"


def test_alter_configs_replaces_whole_set(cadmin, topic):
    h.create_topic(topic, 1, config={"retention.ms": "3600000", "max.message.bytes": "2000000"}, admin=cadmin)
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.ms": "7200000"})
    assert cadmin.alter_configs([res], request_timeout=15)[res].result(timeout=20) is None
    configs = topic_configs(cadmin, topic)
    assert configs["retention.ms"].value == "7200000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG
    # Non-incremental AlterConfigs replaces the topic's whole set: max.message.bytes reverts.
    mmb = configs["max.message.bytes"]
    assert mmb.value == str(h.BROKER_MAX_MESSAGE_BYTES) and mmb.source != ConfigSource.DYNAMIC_TOPIC_CONFIG, (
        f"max.message.bytes={mmb.value} source={mmb.source}: AlterConfigs must reset unspecified keys")

    # validate_only changes nothing.
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.ms": "1000"})
    assert cadmin.alter_configs([res], validate_only=True, request_timeout=15)[res].result(timeout=20) is None
    assert topic_configs(cadmin, topic)["retention.ms"].value == "7200000"

    # Invalid value is rejected.
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.ms": "abc"})
    err = admin_error(cadmin.alter_configs([res], request_timeout=15)[res])
    assert err.code() == KafkaError.INVALID_CONFIG, err
    assert topic_configs(cadmin, topic)["retention.ms"].value == "7200000"


def test_incremental_alter_configs(cadmin, topic):
    h.create_topic(topic, 1, config={"max.message.bytes": "2000000"}, admin=cadmin)

    def incr(*entries, validate_only=False):
        res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=list(entries))
        return cadmin.incremental_alter_configs([res], validate_only=validate_only,
                                                request_timeout=15)[res]

    assert incr(ConfigEntry("retention.ms", "5000000",
                            incremental_operation=AlterConfigOpType.SET)).result(timeout=20) is None
    configs = topic_configs(cadmin, topic)
    assert configs["retention.ms"].value == "5000000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG
    # Incremental: keys not named are kept.
    assert configs["max.message.bytes"].value == "2000000"

    # validate_only changes nothing.
    assert incr(ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET),
                validate_only=True).result(timeout=20) is None
    assert topic_configs(cadmin, topic)["retention.ms"].value == "5000000"

    # DELETE reverts to the default.
    assert incr(ConfigEntry("retention.ms", None,
                            incremental_operation=AlterConfigOpType.DELETE)).result(timeout=20) is None
    configs = topic_configs(cadmin, topic)
    assert configs["retention.ms"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG
    assert configs["retention.ms"].value != "5000000"
    assert configs["max.message.bytes"].value == "2000000"

    # APPEND to a list config: a value already there is not repeated. Appending "compact" is
    # refused: Sluice does not compact yet and says so rather than ignore the policy.
    assert incr(ConfigEntry("cleanup.policy", "delete",
                            incremental_operation=AlterConfigOpType.APPEND)).result(timeout=20) is None
    assert topic_configs(cadmin, topic)["cleanup.policy"].value == "delete"
    err = admin_error(incr(ConfigEntry("cleanup.policy", "compact",
                                       incremental_operation=AlterConfigOpType.APPEND)))
    assert err.code() == KafkaError.INVALID_CONFIG, err
    assert topic_configs(cadmin, topic)["cleanup.policy"].value == "delete"
    # APPEND does not apply to a config that is not a list.
    err = admin_error(incr(ConfigEntry("retention.ms", "1",
                                       incremental_operation=AlterConfigOpType.APPEND)))
    assert err.code() == KafkaError.INVALID_CONFIG, err

    # Invalid value and unknown key are rejected.
    err = admin_error(incr(ConfigEntry("retention.ms", "abc", incremental_operation=AlterConfigOpType.SET)))
    assert err.code() == KafkaError.INVALID_CONFIG, err
    err = admin_error(incr(ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET)))
    assert err.code() == KafkaError.INVALID_CONFIG, err


def test_delete_records_and_list_offsets(cadmin, topic):
    h.create_topic(topic, 1, admin=cadmin)
    recs = h.make_records(10, with_big=False)
    assert_delivered(produce_all(producer(**{"linger.ms": 0}), topic, recs), 10)
    tp = TopicPartition(topic, 0)

    def offsets(spec):
        return cadmin.list_offsets({tp: spec}, request_timeout=15)[tp].result(timeout=20).offset

    assert offsets(OffsetSpec.earliest()) == 0
    assert offsets(OffsetSpec.latest()) == 10

    result = cadmin.delete_records([TopicPartition(topic, 0, 4)], request_timeout=15)
    (fut,) = result.values()
    deleted = fut.result(timeout=20)
    assert deleted.low_watermark == 4, deleted

    assert offsets(OffsetSpec.earliest()) == 4
    assert offsets(OffsetSpec.latest()) == 10
    assert watermarks(topic, 0) == (4, 10)
    got = consume(topic, 0, 6)
    h.assert_records_equal(got, recs[4:], first_offset=4)

    # Deleting beyond the high watermark is OFFSET_OUT_OF_RANGE.
    (fut,) = cadmin.delete_records([TopicPartition(topic, 0, 11)], request_timeout=15).values()
    err = admin_error(fut)
    assert err.code() == KafkaError.OFFSET_OUT_OF_RANGE, err


def test_list_offsets_by_timestamp(cadmin, topic):
    h.create_topic(topic, 1, admin=cadmin)
    base = 1_700_000_000_000
    recs = [{"key": f"k{i}".encode(), "value": f"v{i}".encode(), "headers": [], "ts": base + i * 1000}
            for i in range(5)]
    # One request per record, so every record is its own batch (different code paths
    # than a single batch; the single-batch case is covered by kafka-python's test).
    p = producer(**{"linger.ms": 0})
    for r in recs:
        assert_delivered(produce_all(p, topic, [r]), 1, first_offset=recs.index(r))
    tp = TopicPartition(topic, 0)

    def by_ts(ts):
        return cadmin.list_offsets({tp: OffsetSpec.for_timestamp(ts)}, request_timeout=15)[tp].result(timeout=20)

    assert by_ts(base - 1).offset == 0
    assert by_ts(base).offset == 0
    r = by_ts(base + 1500)
    assert (r.offset, r.timestamp) == (2, base + 2000), r
    assert by_ts(base + 4000).offset == 4
    assert by_ts(base + 4001).offset == -1  # nothing at or after: -1 (end)

    c = consumer()
    try:
        res = c.offsets_for_times([TopicPartition(topic, 0, base + 2500)], timeout=10)
        assert res[0].error is None and res[0].offset == 3, res
        res = c.offsets_for_times([TopicPartition(topic, 0, base + 99_999)], timeout=10)
        assert res[0].offset == -1, res  # librdkafka reports "end" as -1
        assert c.get_watermark_offsets(tp, timeout=10) == (0, 5)
    finally:
        c.close()


def test_auto_create_topic_on_produce(cadmin):
    name = h.unique_topic("auto-created")
    p = producer()
    assert_delivered(produce_all(p, name, [{"key": b"k", "value": b"v", "headers": [], "ts": None}]), 1)
    leaders = h.topic_partition_leaders(cadmin, name)
    assert leaders is not None and len(leaders) == 1, leaders  # num.partitions defaults to 1


# ---------------------------------------------------------------- produce / consume

@pytest.mark.parametrize("codec", CODECS)
def test_produce_consume_codec(cadmin, topic, codec):
    h.create_topic(topic, 1, admin=cadmin)
    recs = h.make_records(60, with_big=True)
    # librdkafka can send a null header value; check it survives too.
    recs.append({"key": b"null-header", "value": b"x", "headers": [("nullhdr", None), ("h", b"v")],
                 "ts": recs[-1]["ts"] + 1})
    p = producer(**{"compression.type": codec})
    assert_delivered(produce_all(p, topic, recs), len(recs))
    got = consume(topic, 0, len(recs))
    h.assert_records_equal(got, recs)

    # Read from the middle of the log (inside a batch): starts exactly there.
    got = consume(topic, 0, len(recs) - 7, start=7)
    h.assert_records_equal(got, recs[7:], first_offset=7)


def test_idempotent_producer(cadmin, topic):
    partitions, n = 3, 3000
    h.create_topic(topic, partitions, admin=cadmin)
    p = producer(**{"enable.idempotence": True, "acks": "all", "linger.ms": 2,
                    "compression.type": "lz4", "max.in.flight.requests.per.connection": 5})
    reports = []

    def on_delivery(err, msg):
        reports.append((err, msg.partition(), msg.offset(), msg.value()))

    for i in range(n):
        while True:
            try:
                p.produce(topic, key=f"k{i}".encode(), value=f"idem-{i:05d}".encode(),
                          partition=i % partitions, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    assert p.flush(60) == 0
    errors = [r for r in reports if r[0] is not None]
    assert not errors, f"{len(errors)} delivery errors, first: {errors[0][0]}"
    assert len(reports) == n
    for part in range(partitions):
        want = [f"idem-{i:05d}".encode() for i in range(part, n, partitions)]
        delivered = sorted((o, v) for _, pp, o, v in reports if pp == part)
        assert [o for o, _ in delivered] == list(range(len(want)))
        assert [v for _, v in delivered] == want, "delivery order differs from produce order"
        got = consume(topic, part, len(want))
        assert [g["offset"] for g in got] == list(range(len(want)))
        assert [g["value"] for g in got] == want, f"partition {part}: duplicates or reordering"
        assert watermarks(topic, part) == (0, len(want))


# ---------------------------------------------------------------- error paths

def test_produce_to_missing_partition_fails_fast(cadmin, topic):
    h.create_topic(topic, 1, admin=cadmin)
    p = producer(**{"message.timeout.ms": 20000})
    errs = []
    start = time.monotonic()
    try:
        p.produce(topic, value=b"x", partition=7, on_delivery=lambda e, m: errs.append(e))
        p.flush(25)
    except KafkaException as exc:  # librdkafka may refuse synchronously
        errs.append(exc.args[0])
    elapsed = time.monotonic() - start
    assert errs and errs[0] is not None, "producing to partition 7 of a 1-partition topic succeeded"
    assert errs[0].code() in (KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART), errs[0]
    assert elapsed < 15, f"took {elapsed:.1f}s (message timeout?)"


def test_produce_to_invalid_topic_name_fails_fast():
    p = producer(**{"message.timeout.ms": 20000})
    errs = []
    start = time.monotonic()
    try:
        p.produce("bad topic name!", value=b"x", on_delivery=lambda e, m: errs.append(e))
        p.flush(25)
    except KafkaException as exc:
        errs.append(exc.args[0])
    elapsed = time.monotonic() - start
    assert errs and errs[0] is not None, "producing to an invalid topic name succeeded"
    assert errs[0].code() != KafkaError._MSG_TIMED_OUT, (
        f"{errs[0]}: broker should answer INVALID_TOPIC_EXCEPTION, not leave the client waiting")
    assert elapsed < 15, f"took {elapsed:.1f}s"


def test_message_too_large_for_topic(cadmin, topic):
    h.create_topic(topic, 1, config={"max.message.bytes": "10000"}, admin=cadmin)
    import os

    p = producer()
    errs = []
    p.produce(topic, value=os.urandom(20000), partition=0, on_delivery=lambda e, m: errs.append(e))
    assert p.flush(30) == 0
    assert len(errs) == 1 and errs[0] is not None, "20000-byte record accepted by max.message.bytes=10000 topic"
    assert errs[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, errs[0]
    # The partition still works, and the rejected record took no offset.
    ok = [{"key": None, "value": b"small", "headers": [], "ts": 1_700_000_000_000}]
    assert_delivered(produce_all(p, topic, ok), 1)
    h.assert_records_equal(consume(topic, 0, 1), ok)

    # The broker-wide limit (message.max.bytes 1048588) applies to topics without an override.
    big_topic = h.create_topic(topic + "-default", 1, admin=cadmin)
    p2 = producer(**{"message.max.bytes": 4_000_000, "batch.size": 4_000_000})
    errs = []
    p2.produce(big_topic, value=os.urandom(1_100_000), partition=0, on_delivery=lambda e, m: errs.append(e))
    assert p2.flush(30) == 0
    assert len(errs) == 1 and errs[0] is not None and errs[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, errs
