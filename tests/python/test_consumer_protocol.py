"""The consumer group protocol of KIP-848 (`group.protocol=consumer`) with librdkafka
(confluent-kafka): the coordinator assigns partitions; members split a topic, hand
partitions over on leave and join with no partition owned twice, commit with their member
epoch, resume from committed offsets, keep their partitions across a quick static restart,
follow a regular expression subscription; the admin API describes and lists the group.

The broker's default group.consumer.heartbeat.interval.ms (1000) makes every
reconciliation step take at most a second.
"""

from __future__ import annotations

import time
import uuid

import sluice_helpers as h
from test_groups import PARTITIONS, PER_PARTITION, group_name, produce, resume_after_commits

TIMEOUT = 60


def consumer(group: str, **extra):
    from confluent_kafka import Consumer

    conf = {"bootstrap.servers": h.BOOTSTRAP, "group.id": group, "group.protocol": "consumer",
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100, **h.RDKAFKA_COMMON}
    conf.update(extra)
    return Consumer(conf)


def owned(c) -> set:
    return {(tp.topic, tp.partition) for tp in c.assignment()}


def drive(consumers, until, what: str, seen=None, timeout: float = TIMEOUT):
    """Polls every consumer until until() holds; checks no partition is ever owned twice."""
    deadline = time.monotonic() + timeout
    while True:
        for c in consumers:
            m = c.poll(0.1)
            if m is not None and m.error() is None and seen is not None:
                seen.add((m.topic(), m.partition(), m.offset()))
        sets = [owned(c) for c in consumers]
        everything = [tp for s in sets for tp in s]
        assert len(everything) == len(set(everything)), f"a partition owned twice: {sets}"
        if until(sets):
            return sets
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {sets}"


def split_evenly(topic, n):
    want = {(topic, p) for p in range(PARTITIONS)}

    def check(sets):
        return (all(len(s) == PARTITIONS // n for s in sets)
                and set().union(*sets) == want)
    return check


def test_kip848_split_rebalance_commit_resume(topic, cadmin):
    from confluent_kafka import ConsumerGroupState, ConsumerGroupType, TopicPartition

    h.create_topic(topic, PARTITIONS, admin=cadmin)
    produce(topic)
    group = group_name("kip848")
    a, b = consumer(group), consumer(group)
    a.subscribe([topic])
    b.subscribe([topic])
    seen = set()
    drive([a, b], lambda sets: split_evenly(topic, 2)(sets)
          and len(seen) == PARTITIONS * PER_PARTITION, "a 3/3 split", seen)

    # A third member: 2/2/2, reached without any partition owned twice on the way.
    c = consumer(group)
    c.subscribe([topic])
    sets = drive([a, b, c], split_evenly(topic, 3), "a 2/2/2 split")

    # Each member commits its partitions with its member epoch; committed() reads back.
    for m, parts in zip((a, b, c), sets):
        offs = [TopicPartition(t, p, PER_PARTITION) for t, p in sorted(parts)]
        m.commit(offsets=offs, asynchronous=False)
        got = m.committed([TopicPartition(t, p) for t, p in sorted(parts)], timeout=10)
        assert [(t.partition, t.offset) for t in got] == [(p, PER_PARTITION) for _, p in sorted(parts)]

    # The admin view: ConsumerGroupDescribe.
    desc = cadmin.describe_consumer_groups([group])[group].result(timeout=15)
    assert desc.type == ConsumerGroupType.CONSUMER, desc.type
    assert desc.state == ConsumerGroupState.STABLE, desc.state
    assert desc.partition_assignor == "uniform", desc.partition_assignor
    assert len(desc.members) == 3
    described = sorted(sorted((tp.topic, tp.partition) for tp in m.assignment.topic_partitions)
                       for m in desc.members)
    assert described == sorted(sorted(s) for s in sets)
    listed = cadmin.list_consumer_groups(types={ConsumerGroupType.CONSUMER}).result(timeout=15)
    assert group in {g.group_id for g in listed.valid}
    listed = cadmin.list_consumer_groups(types={ConsumerGroupType.CLASSIC}).result(timeout=15)
    assert group not in {g.group_id for g in listed.valid}

    # b leaves: a and c take its partitions.
    b.close()
    drive([a, c], split_evenly(topic, 2), "hand-over after a leave")
    a.close()
    c.close()

    # A new member resumes after the committed offsets: only new records arrive.
    resume_after_commits(topic, consumer(group))

    # Empty now: it can be deleted.
    h.wait_for(lambda: cadmin.describe_consumer_groups([group])[group].result(timeout=15).state
               == ConsumerGroupState.EMPTY, timeout=15, what="the group to be empty")
    cadmin.delete_consumer_groups([group], request_timeout=15)[group].result(timeout=15)
    listed = cadmin.list_consumer_groups().result(timeout=15)
    assert group not in {g.group_id for g in listed.valid}


def test_kip848_static_member_restart_keeps_its_partitions(topic, cadmin):
    h.create_topic(topic, PARTITIONS, admin=cadmin)
    group = group_name("kip848-static")
    a = consumer(group, **{"group.instance.id": "a"})
    b = consumer(group, **{"group.instance.id": "b"})
    a.subscribe([topic])
    b.subscribe([topic])
    before = drive([a, b], split_evenly(topic, 2), "a 3/3 split")
    epoch_before = {m.member_id: m.assignment.topic_partitions for m in
                    cadmin.describe_consumer_groups([group])[group].result(timeout=15).members}
    assert len(epoch_before) == 2
    a.close()
    a2 = consumer(group, **{"group.instance.id": "a"})
    a2.subscribe([topic])
    after = drive([a2, b], lambda sets: sets[0] == before[0] and sets[1] == before[1],
                  "the restarted static member to get its partitions back", timeout=30)
    assert after == before
    a2.close()
    b.close()


def test_kip848_regex_subscription_follows_new_topics(cadmin):
    prefix = f"kip848re-{uuid.uuid4().hex[:8]}"
    first, second = f"{prefix}-one", f"{prefix}-two"
    h.create_topic(first, PARTITIONS, admin=cadmin)
    produce(first)
    c = consumer(group_name("kip848-re"))
    c.subscribe([f"^{prefix}-.*"])
    seen = set()
    drive([c], lambda sets: len(seen) == PARTITIONS * PER_PARTITION, "the first topic", seen)
    h.create_topic(second, PARTITIONS, admin=cadmin)
    produce(second)
    drive([c], lambda sets: len(seen) == 2 * PARTITIONS * PER_PARTITION,
          "the topic created after subscribing", seen)
    assert {t for t, _, _ in seen} == {first, second}
    c.close()


def test_kip848_and_classic_members_do_not_mix(topic, cadmin):
    from confluent_kafka import Consumer, KafkaException

    h.create_topic(topic, 2, admin=cadmin)
    group = group_name("kip848-mix")
    a = consumer(group)
    a.subscribe([topic])
    h.wait_for(lambda: (a.poll(0.1), owned(a))[1], timeout=30, interval=0, what="an assignment")
    classic = Consumer({"bootstrap.servers": h.BOOTSTRAP, "group.id": group,
                        "session.timeout.ms": 6000, **h.RDKAFKA_COMMON})
    classic.subscribe([topic])
    errors = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not errors:
        try:
            m = classic.poll(0.2)
        except KafkaException as e:  # librdkafka raises fatal group errors from poll
            errors.append(e.args[0])
            break
        if m is not None and m.error() is not None:
            errors.append(m.error())
        a.poll(0)
    assert errors, "the classic member was let into a consumer-protocol group"
    assert "INCONSISTENT_GROUP_PROTOCOL" in str(errors[0]) or errors[0].code() == 23, errors
    assert not owned(classic)
    classic.close()
    a.close()
