"""aiokafka (asyncio, pure Python) against Sluice: admin API, every codec, idempotence, errors.

Consumers use group_id=None with manual assignment (groups: test_groups.py).
Each test drives its own event loop with asyncio.run (no pytest plugin needed).
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import aiokafka.errors as Errors
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

import sluice_helpers as h

CODECS = [None, "gzip", "snappy", "lz4", "zstd"]
TIMEOUT = 60  # seconds for any one test body


def run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, TIMEOUT)

    return asyncio.run(bounded())


# ---------------------------------------------------------------- helpers

async def admin_client() -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=h.BOOTSTRAP, client_id="sluice-interop-aio-admin",
                                request_timeout_ms=15000)
    await admin.start()
    return admin


async def producer(**conf) -> AIOKafkaProducer:
    base = dict(bootstrap_servers=h.BOOTSTRAP, client_id="sluice-interop-aio", acks="all", linger_ms=5,
                max_request_size=h.BROKER_MAX_MESSAGE_BYTES, request_timeout_ms=15000)
    base.update(conf)
    p = AIOKafkaProducer(**base)
    await p.start()
    return p


async def consumer(**conf) -> AIOKafkaConsumer:
    base = dict(bootstrap_servers=h.BOOTSTRAP, client_id="sluice-interop-aio", group_id=None,
                enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=100,
                request_timeout_ms=15000)
    base.update(conf)
    c = AIOKafkaConsumer(**base)
    await c.start()
    return c


async def produce_all(p, topic, records, partition=0):
    futs = [await p.send(topic, key=r["key"], value=r["value"], partition=partition,
                         timestamp_ms=r["ts"], headers=list(r["headers"]) or None) for r in records]
    return [await f for f in futs]


async def consume(topic, partition, count, start=0, timeout=30.0, expect_no_more=True, **conf):
    c = await consumer(**conf)
    try:
        tp = TopicPartition(topic, partition)
        c.assign([tp])
        c.seek(tp, start)
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            assert time.monotonic() < deadline, (
                f"timed out after {timeout}s with {len(out)} of {count} records from {topic}[{partition}]")
            batches = await c.getmany(tp, timeout_ms=1000)
            for r in batches.get(tp, []):
                assert r.timestamp_type == 0, f"offset {r.offset}: timestamp type {r.timestamp_type}"
                out.append({"offset": r.offset, "key": r.key, "value": r.value,
                            "headers": [tuple(x) for x in (r.headers or [])], "ts": r.timestamp})
        if expect_no_more and out:
            high = (await c.end_offsets([tp]))[tp]
            assert high == out[-1]["offset"] + 1, f"end offset {high} after last offset {out[-1]['offset']}"
        return out
    finally:
        await c.stop()


def topic_errors(resp):
    """[(topic, error_code)] from CreateTopics / DeleteTopics / CreatePartitions responses."""
    obj = resp.to_object()
    rows = obj.get("topic_errors") or obj.get("topic_error_codes") or []
    return [(r.get("topic") or r.get("name"), r["error_code"]) for r in rows]


async def wait_topic(admin, topic, partitions, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        (t,) = await admin.describe_topics([topic])
        if t["error_code"] == 0 and len(t["partitions"]) == partitions and all(
                p["leader"] >= 0 for p in t["partitions"]):
            return
        assert time.monotonic() < deadline, f"{topic}: {t}"
        await asyncio.sleep(0.2)


async def create(admin, topic, partitions=1, configs=None):
    resp = await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs or {})])
    assert topic_errors(resp) == [(topic, 0)], resp
    await wait_topic(admin, topic, partitions)


async def describe_topic_configs(admin, topic):
    # The node answering may not have applied the topic's creation yet (other nodes apply
    # the metadata log moments later, as Kafka brokers do): UNKNOWN_TOPIC_OR_PARTITION (3)
    # is retried for a while.
    for _ in range(50):
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        (res,) = resp.to_object()["resources"]
        if res["error_code"] != 3:
            break
        await asyncio.sleep(0.2)
    assert res["error_code"] == 0, res
    return {e["config_names"]: e for e in res["config_entries"]}


# ---------------------------------------------------------------- admin

def test_admin_topics_partitions_configs(topic):
    async def body():
        admin = await admin_client()
        try:
            # validate_only creates nothing
            resp = await admin.create_topics([NewTopic(topic, 2, 1)], validate_only=True)
            assert topic_errors(resp) == [(topic, 0)], resp
            assert topic not in await admin.list_topics()

            await create(admin, topic, 2, {"retention.ms": "3600000"})
            resp = await admin.create_topics([NewTopic(topic, 2, 1)])
            assert topic_errors(resp) == [(topic, Errors.TopicAlreadyExistsError.errno)], resp

            configs = await describe_topic_configs(admin, topic)
            assert configs["retention.ms"]["config_value"] == "3600000"
            assert configs["cleanup.policy"]["config_value"] == "delete"
            for name, e in configs.items():
                if not e["is_sensitive"]:
                    assert e["config_value"] is not None, (name, e)
                if "config_source" in e:  # v1+
                    assert e["config_source"] in (1, 2, 3, 4, 5), (name, e)
            if "config_source" in configs["retention.ms"]:
                assert configs["retention.ms"]["config_source"] == 1  # DYNAMIC_TOPIC_CONFIG
                assert configs["cleanup.policy"]["config_source"] != 1

            # AlterConfigs (legacy, whole set)
            (resp,) = await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": "7200000"})])
            assert [r[0] for r in resp.resources] == [0], resp
            # The node answering DescribeConfigs may not be the one that took the change;
            # other nodes apply the metadata log moments later (as Kafka brokers do).
            for _ in range(50):
                seen = (await describe_topic_configs(admin, topic))["retention.ms"]["config_value"]
                if seen == "7200000":
                    break
                await asyncio.sleep(0.2)
            assert seen == "7200000"

            resp = await admin.create_partitions({topic: NewPartitions(3)})
            assert topic_errors(resp) == [(topic, 0)], resp
            await wait_topic(admin, topic, 3)
            with pytest.raises(Errors.InvalidPartitionsError):
                await admin.create_partitions({topic: NewPartitions(1)})

            resp = await admin.delete_topics([topic])
            assert topic_errors(resp) == [(topic, 0)], resp
            deadline = time.monotonic() + 15
            while topic in await admin.list_topics():
                assert time.monotonic() < deadline, "topic still listed after delete"
                await asyncio.sleep(0.2)
            resp = await admin.delete_topics([topic])
            assert topic_errors(resp) == [(topic, Errors.UnknownTopicOrPartitionError.errno)], resp
        finally:
            await admin.close()

    run(body())


def test_delete_records_and_offsets(topic):
    async def body():
        admin = await admin_client()
        try:
            await create(admin, topic, 1)
            base = 1_650_000_000_000
            recs = [{"key": f"k{i}".encode(), "value": f"v{i}".encode(), "headers": [], "ts": base + i * 1000}
                    for i in range(10)]
            p = await producer()
            try:
                mds = await produce_all(p, topic, recs)
            finally:
                await p.stop()
            assert [m.offset for m in mds] == list(range(10))
            tp = TopicPartition(topic, 0)
            c = await consumer()
            try:
                assert await c.beginning_offsets([tp]) == {tp: 0}
                assert await c.end_offsets([tp]) == {tp: 10}
                res = (await c.offsets_for_times({tp: base + 4500}))[tp]
                assert (res.offset, res.timestamp) == (5, base + 5000), res
                assert (await c.offsets_for_times({tp: base + 60_000}))[tp] is None

                res = await admin.delete_records({tp: RecordsToDelete(before_offset=3)})
                assert res == {tp: 3}, res
                assert await c.beginning_offsets([tp]) == {tp: 3}
                assert await c.end_offsets([tp]) == {tp: 10}
            finally:
                await c.stop()
            got = await consume(topic, 0, 7, start=3)
            h.assert_records_equal(got, recs[3:], first_offset=3)
        finally:
            await admin.close()

    run(body())


# ---------------------------------------------------------------- produce / consume

@pytest.mark.parametrize("codec", CODECS, ids=[c or "none" for c in CODECS])
def test_produce_consume_codec(topic, codec):
    async def body():
        admin = await admin_client()
        try:
            await create(admin, topic, 1)
        finally:
            await admin.close()
        recs = h.make_records(60, with_big=True)
        p = await producer(compression_type=codec)
        try:
            mds = await produce_all(p, topic, recs)
        finally:
            await p.stop()
        assert [m.offset for m in mds] == list(range(len(recs)))
        got = await consume(topic, 0, len(recs), max_partition_fetch_bytes=2 * 1024 * 1024)
        h.assert_records_equal(got, recs)
        got = await consume(topic, 0, len(recs) - 11, start=11, max_partition_fetch_bytes=2 * 1024 * 1024)
        h.assert_records_equal(got, recs[11:], first_offset=11)

    run(body())


def test_idempotent_producer(topic):
    n = 2000

    async def body():
        admin = await admin_client()
        try:
            await create(admin, topic, 1)
        finally:
            await admin.close()
        p = await producer(enable_idempotence=True, acks="all", compression_type="zstd", linger_ms=2)
        try:
            futs = [await p.send(topic, key=f"k{i}".encode(), value=f"idem-{i:05d}".encode(), partition=0)
                    for i in range(n)]
            mds = [await f for f in futs]
        finally:
            await p.stop()
        assert [m.offset for m in mds] == list(range(n))
        got = await consume(topic, 0, n)
        assert [g["value"] for g in got] == [f"idem-{i:05d}".encode() for i in range(n)]

    run(body())


# ---------------------------------------------------------------- error paths

def test_message_too_large(topic):
    async def body():
        admin = await admin_client()
        try:
            await create(admin, topic, 1, {"max.message.bytes": "10000"})
        finally:
            await admin.close()
        p = await producer()
        try:
            with pytest.raises(Errors.MessageSizeTooLargeError):
                await p.send_and_wait(topic, value=os.urandom(20000), partition=0)
            md = await p.send_and_wait(topic, value=b"small", partition=0)
            assert md.offset == 0, md
        finally:
            await p.stop()

    run(body())


def test_produce_to_missing_partition(topic):
    async def body():
        admin = await admin_client()
        try:
            await create(admin, topic, 1)
        finally:
            await admin.close()
        p = await producer(request_timeout_ms=10000)
        try:
            start = time.monotonic()
            with pytest.raises((AssertionError, ValueError, Errors.KafkaError)):
                await asyncio.wait_for(p.send_and_wait(topic, value=b"x", partition=5), 20)
            assert time.monotonic() - start < 20
        finally:
            await p.stop()

    run(body())
