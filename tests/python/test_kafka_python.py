"""kafka-python (pure Python) against Sluice: admin API, every codec, idempotence, errors.

Consumers use group_id=None with manual assignment (groups: test_groups.py).
"""

from __future__ import annotations

import os
import time

import pytest
import kafka.errors as Errors
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import AlterConfigOp, ConfigResource, ConfigResourceType, KafkaAdminClient

import sluice_helpers as h

CODECS = [None, "gzip", "snappy", "lz4", "zstd"]


# ---------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def kadmin():
    admin = KafkaAdminClient(bootstrap_servers=h.BOOTSTRAP, client_id="sluice-interop-kp-admin",
                             request_timeout_ms=15000)
    yield admin
    admin.close()


def producer(**conf) -> KafkaProducer:
    base = dict(bootstrap_servers=h.BOOTSTRAP, client_id="sluice-interop-kp", acks="all",
                linger_ms=5, enable_idempotence=False, max_request_size=h.BROKER_MAX_MESSAGE_BYTES,
                max_block_ms=15000, request_timeout_ms=15000, delivery_timeout_ms=30000,
                retries=3)
    base.update(conf)
    return KafkaProducer(**base)


def consumer(**conf) -> KafkaConsumer:
    base = dict(bootstrap_servers=h.BOOTSTRAP, client_id="sluice-interop-kp", group_id=None,
                enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=100,
                request_timeout_ms=15000)
    base.update(conf)
    return KafkaConsumer(**base)


def produce_all(p: KafkaProducer, topic: str, records: list[dict], partition: int = 0):
    futures = [p.send(topic, key=r["key"], value=r["value"], headers=list(r["headers"]) or None,
                      partition=partition, timestamp_ms=r["ts"]) for r in records]
    p.flush(timeout=60)
    return [f.get(timeout=30) for f in futures]


def consume(topic: str, partition: int, count: int, start: int = 0, timeout: float = 30,
            expect_no_more: bool = True, **conf) -> list[dict]:
    c = consumer(**conf)
    try:
        tp = TopicPartition(topic, partition)
        c.assign([tp])
        c.seek(tp, start)
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            assert time.monotonic() < deadline, (
                f"timed out after {timeout}s with {len(out)} of {count} records from {topic}[{partition}]")
            for recs in c.poll(timeout_ms=1000).values():
                for r in recs:
                    assert r.timestamp_type == 0, f"offset {r.offset}: timestamp type {r.timestamp_type}"
                    out.append({"offset": r.offset, "key": r.key, "value": r.value,
                                "headers": [tuple(x) for x in (r.headers or [])], "ts": r.timestamp})
        if expect_no_more and out:
            high = c.end_offsets([tp])[tp]
            assert high == out[-1]["offset"] + 1, f"end offset {high} after last offset {out[-1]['offset']}"
        return out
    finally:
        c.close()


def wait_topic(kadmin, topic, partitions):
    def ready():
        (t,) = kadmin.describe_topics([topic])
        return t["error_code"] == 0 and len(t["partitions"]) == partitions and all(
            p["leader_id"] >= 0 for p in t["partitions"])

    h.wait_for(ready, what=f"{topic} with {partitions} partitions")


def create(kadmin, topic, partitions=1, configs=None):
    kadmin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1,
                                  "configs": configs or {}}})
    wait_topic(kadmin, topic, partitions)
    return topic


def topic_configs(kadmin, topic):
    res = kadmin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
    return res["topic"][topic]


# ---------------------------------------------------------------- admin

def test_create_topics(kadmin, topic):
    spec = {topic: {"num_partitions": 3, "replication_factor": 1, "configs": {"retention.ms": "3600000"}}}
    res = kadmin.create_topics(spec, validate_only=True)
    assert [t["error_code"] for t in res["topics"]] == [0], res
    time.sleep(0.5)
    assert topic not in kadmin.list_topics(), "validate_only created the topic"

    res = kadmin.create_topics(spec)
    assert [(t["name"], t["error_code"]) for t in res["topics"]] == [(topic, 0)], res
    wait_topic(kadmin, topic, 3)
    assert topic in kadmin.list_topics()

    with pytest.raises(Errors.TopicAlreadyExistsError):
        kadmin.create_topics(spec)
    res = kadmin.create_topics(spec, raise_errors=False)
    assert res["topics"][0]["error_code"] == Errors.TopicAlreadyExistsError.errno


def test_create_topics_invalid_name(kadmin):
    with pytest.raises(Errors.InvalidTopicError):
        kadmin.create_topics({"bad topic name!": {"num_partitions": 1, "replication_factor": 1}})


def test_create_partitions(kadmin, topic):
    create(kadmin, topic, 1)
    kadmin.create_partitions({topic: 4})
    wait_topic(kadmin, topic, 4)
    with pytest.raises(Errors.InvalidPartitionsError):
        kadmin.create_partitions({topic: 2})
    # New partitions are usable.
    p = producer()
    rec = {"key": b"k", "value": b"p3", "headers": [], "ts": 1_700_000_000_000}
    (md,) = produce_all(p, topic, [rec], partition=3)
    p.close()
    assert (md.partition, md.offset) == (3, 0)
    h.assert_records_equal(consume(topic, 3, 1), [rec])


def test_delete_topics(kadmin, topic):
    create(kadmin, topic, 2)
    res = kadmin.delete_topics([topic])
    assert [(t["name"], t["error_code"]) for t in res["topics"]] == [(topic, 0)], res
    h.wait_for(lambda: topic not in kadmin.list_topics(), what=f"{topic} deleted")
    with pytest.raises(Errors.UnknownTopicOrPartitionError):
        kadmin.delete_topics([topic])


def test_describe_configs(kadmin, topic):
    create(kadmin, topic, 1, {"retention.ms": "3600000"})
    configs = topic_configs(kadmin, topic)
    for name in ("cleanup.policy", "retention.ms", "max.message.bytes", "segment.bytes", "compression.type"):
        assert name in configs, f"{name} not described; got {sorted(configs)}"
    for name, cfg in configs.items():
        assert "value" in cfg and "config_source" in cfg, (name, cfg)
        assert cfg["config_source"] != "UNKNOWN", (name, cfg)
        if not cfg.get("is_sensitive"):
            assert cfg["value"] is not None, (name, cfg)
    assert configs["retention.ms"]["value"] == "3600000"
    assert configs["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    assert configs["cleanup.policy"]["value"] == "delete"
    assert configs["cleanup.policy"]["config_source"] != "DYNAMIC_TOPIC_CONFIG"

    # Default filter ('modified') returns only what was set on the topic.
    modified = kadmin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])["topic"][topic]
    assert set(modified) == {"retention.ms"}, sorted(modified)

    # Asking for named keys returns just those.
    res = kadmin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, ["retention.ms", "cleanup.policy"])],
        config_filter="all")
    assert set(res["topic"][topic]) == {"retention.ms", "cleanup.policy"}, sorted(res["topic"][topic])


def test_alter_configs(kadmin, topic):
    create(kadmin, topic, 1, {"max.message.bytes": "2000000"})
    # Incremental (IncrementalAlterConfigs) SET keeps other keys.
    res = kadmin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": "5000000"})],
                               incremental=True)
    assert res == {"topic": {topic: "OK"}}, res
    configs = topic_configs(kadmin, topic)
    assert configs["retention.ms"]["value"] == "5000000"
    assert configs["max.message.bytes"]["value"] == "2000000"

    # Incremental DELETE back to the default.
    res = kadmin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                               {"retention.ms": (AlterConfigOp.DELETE, None)})],
                               incremental=True)
    assert res == {"topic": {topic: "OK"}}, res
    assert topic_configs(kadmin, topic)["retention.ms"]["config_source"] != "DYNAMIC_TOPIC_CONFIG"

    # Legacy AlterConfigs (the client re-sends the other modified keys itself).
    res = kadmin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": "6000000"})],
                               incremental=False)
    assert res == {"topic": {topic: "OK"}}, res
    configs = topic_configs(kadmin, topic)
    assert configs["retention.ms"]["value"] == "6000000"
    assert configs["max.message.bytes"]["value"] == "2000000"

    # reset_configs: everything back to defaults.
    # An empty dict asks for a full reset; kafka-python 3.0.12 fails on configs=None here
    # (it iterates the resource's None configs) whatever the broker answers.
    res = kadmin.reset_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {})])
    assert res == {"topic": {topic: "OK"}}, res
    modified = kadmin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])["topic"][topic]
    assert modified == {}, modified

    # An invalid value is reported per resource.
    res = kadmin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": "abc"})],
                               incremental=True)
    assert res["topic"][topic] != "OK" and "InvalidConfig" in res["topic"][topic], res


def test_delete_records(kadmin, topic):
    create(kadmin, topic, 1)
    recs = h.make_records(12, with_big=False)
    p = producer()
    produce_all(p, topic, recs)
    p.close()
    tp = TopicPartition(topic, 0)
    res = kadmin.delete_records({tp: 5})
    assert res[tp]["low_watermark"] == 5 and res[tp]["error_code"] == 0, res
    c = consumer()
    try:
        assert c.beginning_offsets([tp]) == {tp: 5}
        assert c.end_offsets([tp]) == {tp: 12}
    finally:
        c.close()
    h.assert_records_equal(consume(topic, 0, 7, start=5), recs[5:], first_offset=5)
    with pytest.raises(Errors.OffsetOutOfRangeError):
        kadmin.delete_records({tp: 13})


def test_list_offsets(kadmin, topic):
    create(kadmin, topic, 1)
    base = 1_600_000_000_000
    # All in one batch: timestamp lookups must look inside batches.
    recs = [{"key": None, "value": f"v{i}".encode(), "headers": [], "ts": base + i * 1000} for i in range(6)]
    p = producer(linger_ms=50)
    produce_all(p, topic, recs)
    p.close()
    tp = TopicPartition(topic, 0)
    c = consumer()
    try:
        assert c.beginning_offsets([tp]) == {tp: 0}
        assert c.end_offsets([tp]) == {tp: 6}
        res = c.offsets_for_times({tp: base + 2500})[tp]
        assert (res.offset, res.timestamp) == (3, base + 3000), res
        res = c.offsets_for_times({tp: base})[tp]
        assert (res.offset, res.timestamp) == (0, base), res
        assert c.offsets_for_times({tp: base + 10_000})[tp] is None
    finally:
        c.close()


# ---------------------------------------------------------------- produce / consume

@pytest.mark.parametrize("codec", CODECS, ids=[c or "none" for c in CODECS])
def test_produce_consume_codec(kadmin, topic, codec):
    create(kadmin, topic, 1)
    recs = h.make_records(60, with_big=True)
    p = producer(compression_type=codec)
    mds = produce_all(p, topic, recs)
    p.close()
    assert [m.offset for m in mds] == list(range(len(recs)))
    got = consume(topic, 0, len(recs), max_partition_fetch_bytes=2 * 1024 * 1024)
    h.assert_records_equal(got, recs)
    got = consume(topic, 0, len(recs) - 9, start=9, max_partition_fetch_bytes=2 * 1024 * 1024)
    h.assert_records_equal(got, recs[9:], first_offset=9)


def test_idempotent_producer(kadmin, topic):
    n = 2000
    create(kadmin, topic, 2)
    p = producer(enable_idempotence=True, acks="all", retries=5, compression_type="gzip", linger_ms=2)
    futures = [p.send(topic, key=f"k{i}".encode(), value=f"idem-{i:05d}".encode(), partition=i % 2)
               for i in range(n)]
    p.flush(timeout=60)
    mds = [f.get(timeout=30) for f in futures]
    p.close()
    for part in range(2):
        want = [f"idem-{i:05d}".encode() for i in range(part, n, 2)]
        assert [m.offset for m in mds if m.partition == part] == list(range(len(want)))
        got = consume(topic, part, len(want))
        assert [g["value"] for g in got] == want, f"partition {part}: duplicates or reordering"
        assert [g["offset"] for g in got] == list(range(len(want)))


# ---------------------------------------------------------------- error paths

def test_produce_to_missing_partition(kadmin, topic):
    create(kadmin, topic, 1)
    p = producer()
    start = time.monotonic()
    with pytest.raises((ValueError, Errors.KafkaError)):
        p.send(topic, value=b"x", partition=5).get(timeout=20)
    assert time.monotonic() - start < 20
    p.close()


def test_produce_to_invalid_topic_name():
    p = producer(max_block_ms=10000)
    start = time.monotonic()
    with pytest.raises((ValueError, Errors.KafkaError)):
        p.send("bad topic name!", value=b"x").get(timeout=20)
    assert time.monotonic() - start < 20
    p.close()


def test_message_too_large(kadmin, topic):
    create(kadmin, topic, 1, {"max.message.bytes": "10000"})
    p = producer()
    fut = p.send(topic, value=os.urandom(20000), partition=0)  # accepted by the client ...
    with pytest.raises(Errors.MessageSizeTooLargeError):
        fut.get(timeout=30)  # ... rejected by the broker
    md = p.send(topic, value=b"small", partition=0).get(timeout=30)
    assert md.offset == 0, md
    p.close()
