"""Consumer groups with every Python client: subscribe, split a topic between two members,
commit, read commits back, hand partitions over on close, resume from committed offsets.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

import sluice_helpers as h

PARTITIONS = 6
PER_PARTITION = 5
TIMEOUT = 60


def group_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def produce(topic: str, per_partition: int = PER_PARTITION, tag: str = "v"):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": h.BOOTSTRAP, "acks": "all", **h.RDKAFKA_COMMON})
    errors = []
    for part in range(PARTITIONS):
        for i in range(per_partition):
            p.produce(topic, value=f"{tag}-{part}-{i}".encode(), partition=part,
                      on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(30) == 0
    assert not errors, errors


def resume_after_commits(topic: str, c):
    """A new librdkafka member `c` of a group that committed PER_PARTITION on every
    partition reads only the records produced after those commits."""
    produce(topic, per_partition=1, tag="late")
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + TIMEOUT
    while len(got) < PARTITIONS:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append((m.partition(), m.offset(), m.value()))
        assert time.monotonic() < deadline, f"resume: {got}"
    c.close()
    assert sorted(got) == [(p, PER_PARTITION, f"late-{p}-0".encode()) for p in range(PARTITIONS)]


def check_split(a: set, b: set):
    assert a and b, f"both members own partitions: {a} / {b}"
    assert not (a & b), f"owned twice: {a & b}"
    assert a | b == set(range(PARTITIONS)), f"orphaned: {set(range(PARTITIONS)) - (a | b)}"


# ---------------------------------------------------------------- confluent-kafka

def ck_consumer(group: str, **extra):
    from confluent_kafka import Consumer

    conf = {"bootstrap.servers": h.BOOTSTRAP, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500, "fetch.wait.max.ms": 100, **h.RDKAFKA_COMMON}
    conf.update(extra)
    return Consumer(conf)


def test_confluent_group_split_commit_resume(topic, cadmin):
    from confluent_kafka import TopicPartition
    from confluent_kafka import ConsumerGroupState

    h.create_topic(topic, PARTITIONS, admin=cadmin)
    produce(topic)
    group = group_name("ck")
    a, b = ck_consumer(group), ck_consumer(group)
    a.subscribe([topic])
    b.subscribe([topic])
    seen = set()
    deadline = time.monotonic() + TIMEOUT
    while True:
        for c in (a, b):
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                seen.add((m.partition(), m.offset()))
        pa = {tp.partition for tp in a.assignment()}
        pb = {tp.partition for tp in b.assignment()}
        if pa and pb and not (pa & pb) and pa | pb == set(range(PARTITIONS)) \
                and len(seen) == PARTITIONS * PER_PARTITION:
            break
        assert time.monotonic() < deadline, f"no split: {pa} / {pb}, {len(seen)} records"
    check_split(pa, pb)

    # Each member commits what it consumed (sync); committed() reads it back.
    for c, parts in ((a, pa), (b, pb)):
        offsets = [TopicPartition(topic, p, PER_PARTITION) for p in sorted(parts)]
        c.commit(offsets=offsets, asynchronous=False)
        got = c.committed([TopicPartition(topic, p) for p in sorted(parts)], timeout=10)
        assert [(t.partition, t.offset) for t in got] == [(p, PER_PARTITION) for p in sorted(parts)]

    # Admin view of the group.
    desc = cadmin.describe_consumer_groups([group])[group].result(timeout=15)
    assert desc.state == ConsumerGroupState.STABLE
    assert len(desc.members) == 2
    listed = cadmin.list_consumer_groups().result(timeout=15)
    assert group in {g.group_id for g in listed.valid}

    # b leaves: a gets everything.
    b.close()
    h.wait_for(lambda: (a.poll(0.1), {tp.partition for tp in a.assignment()})[1]
               == set(range(PARTITIONS)), timeout=15, interval=0, what="hand-over to a")
    a.close()

    # A new member resumes after the committed offsets: only new records arrive.
    resume_after_commits(topic, ck_consumer(group))

    # The group is empty now and can be deleted.
    res = cadmin.delete_consumer_groups([group], request_timeout=15)
    res[group].result(timeout=15)
    listed = cadmin.list_consumer_groups().result(timeout=15)
    assert group not in {g.group_id for g in listed.valid}


# ---------------------------------------------------------------- kafka-python

def kp_consumer(group: str, topic: str):
    from kafka import KafkaConsumer

    return KafkaConsumer(topic, bootstrap_servers=h.BOOTSTRAP, group_id=group,
                         client_id="sluice-interop-kp-group", enable_auto_commit=False,
                         auto_offset_reset="earliest", session_timeout_ms=6000,
                         heartbeat_interval_ms=500, fetch_max_wait_ms=100,
                         request_timeout_ms=15000)


class KpMember:
    """A kafka-python group member polled by its own thread (joins and rebalances happen
    inside poll, and a KafkaConsumer must stay on one thread)."""

    def __init__(self, group: str, topic: str):
        import threading

        self.group, self.topic = group, topic
        self.seen = set()
        self.assigned = set()
        self.commands = []
        self.results = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        c = kp_consumer(self.group, self.topic)
        try:
            while True:
                for recs in c.poll(timeout_ms=100).values():
                    with self.lock:
                        self.seen.update((r.partition, r.offset) for r in recs)
                with self.lock:
                    self.assigned = {tp.partition for tp in c.assignment()}
                    cmds, self.commands = self.commands, []
                for cmd in cmds:
                    if cmd == "close":
                        return
                    if cmd == "commit":
                        parts = sorted(self.assigned)
                        c.commit({TopicPartition(self.topic, p):
                                  OffsetAndMetadata(PER_PARTITION, "kp-meta", -1) for p in parts})
                        back = {p: c.committed(TopicPartition(self.topic, p)) for p in parts}
                        with self.lock:
                            self.results.append((parts, back))
        finally:
            c.close()

    def send(self, cmd):
        with self.lock:
            self.commands.append(cmd)

    def state(self):
        with self.lock:
            return set(self.assigned), set(self.seen), list(self.results)


def test_kafka_python_group_split_commit_resume(topic, cadmin):
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient

    h.create_topic(topic, PARTITIONS, admin=cadmin)
    produce(topic)
    group = group_name("kp")
    a, b = KpMember(group, topic), KpMember(group, topic)

    def split():
        (pa, sa, _), (pb, sb, _) = a.state(), b.state()
        return pa and pb and not (pa & pb) and pa | pb == set(range(PARTITIONS)) \
            and len(sa | sb) == PARTITIONS * PER_PARTITION

    h.wait_for(split, timeout=TIMEOUT, what="a split of the topic between two kafka-python members")
    check_split(a.state()[0], b.state()[0])
    for m in (a, b):
        m.send("commit")
    h.wait_for(lambda: a.state()[2] and b.state()[2], timeout=20, what="commits")
    for m in (a, b):
        ((parts, back),) = m.state()[2]
        assert back == {p: PER_PARTITION for p in parts}, back

    admin = KafkaAdminClient(bootstrap_servers=h.BOOTSTRAP, request_timeout_ms=15000)
    try:
        listed = {g["group_id"]: g for g in admin.list_groups()}
        assert listed[group]["group_state"] == "Stable", listed[group]
        assert group in {g["group_id"] for g in admin.list_groups(states_filter=["Stable"])}
        assert group not in {g["group_id"] for g in admin.list_groups(states_filter=["Empty"])}
        desc = admin.describe_groups([group])[group]
        assert desc["error"] is None and desc["group_state"] == "Stable", desc
        assert len(desc["members"]) == 2, desc
        offsets = admin.list_group_offsets({group: None})[group]
        assert {tp.partition: om.offset for tp, om in offsets.items()} == \
            {p: PER_PARTITION for p in range(PARTITIONS)}
        assert {om.metadata for om in offsets.values()} == {"kp-meta"}

        b.send("close")
        b.thread.join(20)
        h.wait_for(lambda: a.state()[0] == set(range(PARTITIONS)), timeout=20,
                   what="hand-over to a")
        a.send("close")
        a.thread.join(20)

        produce(topic, per_partition=1, tag="late")
        c = kp_consumer(group, topic)
        got = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < PARTITIONS:
            for recs in c.poll(timeout_ms=500).values():
                got.extend((r.partition, r.offset, r.value) for r in recs)
            assert time.monotonic() < deadline, f"resume: {got}"
        c.close()
        assert sorted(got) == [(p, PER_PARTITION, f"late-{p}-0".encode()) for p in range(PARTITIONS)]

        # OffsetDelete of one partition of the (now empty) group, then DeleteGroups.
        admin.delete_group_offsets(group, [TopicPartition(topic, 0)])
        left = admin.list_group_offsets({group: None})[group]
        assert sorted(tp.partition for tp in left) == list(range(1, PARTITIONS)), left
        assert admin.delete_groups([group]) == {group: "OK"}
        assert group not in {g["group_id"] for g in admin.list_groups()}
    finally:
        admin.close()


# ---------------------------------------------------------------- aiokafka

def test_aiokafka_group_split_commit_resume(topic, cadmin):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    h.create_topic(topic, PARTITIONS, admin=cadmin)
    produce(topic)
    group = group_name("aio")

    async def member():
        c = AIOKafkaConsumer(topic, bootstrap_servers=h.BOOTSTRAP, group_id=group,
                             client_id="sluice-interop-aio-group", enable_auto_commit=False,
                             auto_offset_reset="earliest", session_timeout_ms=6000,
                             heartbeat_interval_ms=500, fetch_max_wait_ms=100,
                             request_timeout_ms=15000)
        await c.start()
        return c

    async def body():
        a, b = await member(), await member()
        seen = set()
        deadline = time.monotonic() + TIMEOUT
        while True:
            for c in (a, b):
                for recs in (await c.getmany(timeout_ms=200)).values():
                    seen.update((r.partition, r.offset) for r in recs)
            pa = {tp.partition for tp in a.assignment()}
            pb = {tp.partition for tp in b.assignment()}
            if pa and pb and not (pa & pb) and pa | pb == set(range(PARTITIONS)) \
                    and len(seen) == PARTITIONS * PER_PARTITION:
                break
            assert time.monotonic() < deadline, f"no split: {pa} / {pb}, {len(seen)} records"
        check_split(pa, pb)
        for c, parts in ((a, pa), (b, pb)):
            await c.commit({TopicPartition(topic, p): PER_PARTITION for p in parts})
            for p in parts:
                assert await c.committed(TopicPartition(topic, p)) == PER_PARTITION

        await b.stop()
        deadline = time.monotonic() + 20
        while {tp.partition for tp in a.assignment()} != set(range(PARTITIONS)):
            await a.getmany(timeout_ms=100)
            assert time.monotonic() < deadline, f"hand-over: {a.assignment()}"
        await a.stop()

        produce(topic, per_partition=1, tag="late")
        c = await member()
        got = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < PARTITIONS:
            for recs in (await c.getmany(timeout_ms=500)).values():
                got.extend((r.partition, r.offset, r.value) for r in recs)
            assert time.monotonic() < deadline, f"resume: {got}"
        await c.stop()
        assert sorted(got) == [(p, PER_PARTITION, f"late-{p}-0".encode()) for p in range(PARTITIONS)]

    asyncio.run(asyncio.wait_for(body(), TIMEOUT * 3))
