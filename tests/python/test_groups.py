"""Consumer groups with every Python client: subscribe, split a topic between two members,
commit, read commits back, hand partitions over on close, resume from committed offsets;
three members split six partitions and every record is consumed exactly once; auto-commit
and asynchronous manual commits survive a consumer restart; a static member
(group.instance.id) restarting within its session timeout keeps its partitions with no
rebalance.

What a client cannot do is not tested for it:
- aiokafka has no fire-and-forget commit: commit() is a coroutine (there is no callback
  style commitAsync). Its "async" case runs commit() as a background task while the members
  keep fetching, which is what asynchronous commit means in asyncio.
"""

from __future__ import annotations

import asyncio
import collections
import struct
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


def check_split(*sets: set):
    """Every member owns a partition, none is owned twice, none is orphaned."""
    assert all(sets), f"every member owns partitions: {sets}"
    owned = [p for s in sets for p in s]
    twice = {p for p in owned if owned.count(p) > 1}
    assert not twice, f"owned twice: {twice} in {sets}"
    assert set(owned) == set(range(PARTITIONS)), \
        f"orphaned: {set(range(PARTITIONS)) - set(owned)} in {sets}"


def evenly_split(sets) -> bool:
    """The split every assignor the clients use by default (range, roundrobin) makes of
    six partitions: 6 / len(sets) each, disjoint and complete. Requiring the even sizes
    also rules out a mix of two generations' views passing for a split."""
    return (all(len(s) == PARTITIONS // len(sets) for s in sets)
            and set().union(*sets) == set(range(PARTITIONS)))


def check_consumed_once(records, owners, per_partition: int = PER_PARTITION):
    """records: (member index, partition, offset) as delivered; owners: each member's
    partitions. Every record was delivered exactly once, by the member owning it."""
    counts = collections.Counter((p, o) for _, p, o in records)
    want = {(p, o) for p in range(PARTITIONS) for o in range(per_partition)}
    assert set(counts) == want, \
        f"missing {sorted(want - set(counts))}, extra {sorted(set(counts) - want)}"
    twice = sorted(k for k, n in counts.items() if n > 1)
    assert not twice, f"delivered more than once: {twice}"
    strays = [(i, p, o) for i, p, o in records if p not in owners[i]]
    assert not strays, f"delivered to a member not owning the partition: {strays} (owners {owners})"


def describe_static(cadmin, group: str):
    """(state, {group.instance.id: member id}) from DescribeGroups."""
    desc = cadmin.describe_consumer_groups([group])[group].result(timeout=15)
    return desc.state, {m.group_instance_id: m.member_id for m in desc.members}


# The members' session.timeout.ms.
SESSION_S = 6.0


def check_handed_over(closed: float):
    """A member that left (LeaveGroup on close) handed its partitions over within the
    session timeout: the group did not wait for its session to expire."""
    took = time.monotonic() - closed
    print(f"hand-over {took:.2f} s after close")
    assert took < SESSION_S, f"hand-over took {took:.2f} s, session timeout {SESSION_S} s"


# How long a static restart test watches the group after the member closed: past the session
# timeout, so that a replaced member's session expiring (a rebalance) would be seen too.
STATIC_WATCH = 6.0 + 1.5


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

    # b leaves: a gets everything, within the session timeout.
    b.close()
    closed = time.monotonic()
    h.wait_for(lambda: (a.poll(0.1), {tp.partition for tp in a.assignment()})[1]
               == set(range(PARTITIONS)), timeout=15, interval=0, what="hand-over to a")
    check_handed_over(closed)
    a.close()

    # A new member resumes after the committed offsets: only new records arrive.
    resume_after_commits(topic, ck_consumer(group))

    # The group is empty now and can be deleted.
    res = cadmin.delete_consumer_groups([group], request_timeout=15)
    res[group].result(timeout=15)
    listed = cadmin.list_consumer_groups().result(timeout=15)
    assert group not in {g.group_id for g in listed.valid}


def ck_owned(c) -> set:
    return {tp.partition for tp in c.assignment()}


def ck_drive(consumers, until, what: str, records=None, timeout: float = TIMEOUT):
    """Polls every consumer until until(owned sets) holds; records (member index, partition,
    offset) of what arrives."""
    deadline = time.monotonic() + timeout
    while True:
        for i, c in enumerate(consumers):
            m = c.poll(0.1)
            if m is not None and m.error() is None and records is not None:
                records.append((i, m.partition(), m.offset()))
        sets = [ck_owned(c) for c in consumers]
        if until(sets):
            return sets
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {sets}"


def ck_poll_for(consumers, seconds: float, records=None):
    """Keeps polling every consumer for `seconds` (callbacks run, late records show up)."""
    end = time.monotonic() + seconds
    return ck_drive(consumers, lambda sets: time.monotonic() >= end, "", records,
                    timeout=seconds + 5)


def ck_generation(c) -> int:
    """The member's generation: confluent-kafka has no accessor for it, but the consumer group
    metadata it hands to transactional producers is librdkafka's serialization
    (rd_kafka_consumer_group_metadata_write): b"CGMDv2:", the int32 generation id in host
    byte order, then the group id, member id and instance id."""
    md = c.consumer_group_metadata()
    assert md[:7] == b"CGMDv2:", md
    return struct.unpack_from("=i", md, 7)[0]


def test_confluent_three_members_split_six_partitions(topic, cadmin):
    h.create_topic(topic, PARTITIONS, admin=cadmin)
    group = group_name("ck3")
    members = [ck_consumer(group) for _ in range(3)]
    for c in members:
        c.subscribe([topic])
    sets = ck_drive(members, evenly_split, "a 2/2/2 split", timeout=30)
    check_split(*sets)
    # Produced once the split is settled, so no rebalance can hand a record out twice.
    produce(topic)
    records = []
    ck_drive(members, lambda now: len(records) >= PARTITIONS * PER_PARTITION,
             "all records", records, timeout=30)
    ck_poll_for(members, 0.5, records)  # anything delivered twice would show up now
    assert [ck_owned(c) for c in members] == sets, "the assignment changed while consuming"
    check_consumed_once(records, sets)
    for c in members:
        c.close()


@pytest.mark.parametrize("mode", ["auto", "async"])
def test_confluent_commits_survive_restart(topic, cadmin, mode):
    """auto: enable.auto.commit with a 200 ms interval; async: commit(asynchronous=True),
    the result reported to on_commit. Either way committed() reads the offsets back while the
    members run, and after both closed a new member resumes after them."""
    from confluent_kafka import TopicPartition

    h.create_topic(topic, PARTITIONS, admin=cadmin)
    produce(topic)
    group = group_name(f"ck-{mode}")
    results = []
    if mode == "auto":
        extra = {"enable.auto.commit": True, "auto.commit.interval.ms": 200}
    else:
        extra = {"on_commit": lambda err, parts: results.append(
            (err, [(tp.partition, tp.offset, tp.error) for tp in parts]))}
    a, b = ck_consumer(group, **extra), ck_consumer(group, **extra)
    a.subscribe([topic])
    b.subscribe([topic])
    records = []
    pa, pb = ck_drive([a, b], lambda sets: evenly_split(sets)
                      and len({(p, o) for _, p, o in records}) == PARTITIONS * PER_PARTITION,
                      "a split and every record", records, timeout=30)
    check_split(pa, pb)

    if mode == "async":
        for c, parts in ((a, pa), (b, pb)):
            offsets = [TopicPartition(topic, p, PER_PARTITION) for p in sorted(parts)]
            assert c.commit(offsets=offsets, asynchronous=True) is None
        # The results arrive through poll(), like every librdkafka callback.
        ck_drive([a, b], lambda sets: len(results) == 2, "both on_commit callbacks", timeout=15)
        assert all(err is None for err, _ in results), results
        assert sorted(p for _, parts in results for p, _, _ in parts) == list(range(PARTITIONS))
        assert {(o, e) for _, parts in results for _, o, e in parts} == {(PER_PARTITION, None)}

    def committed_back():
        for c in (a, b):
            c.poll(0.05)
        got = {}
        for c, parts in ((a, pa), (b, pb)):
            for tp in c.committed([TopicPartition(topic, p) for p in sorted(parts)], timeout=10):
                got[tp.partition] = tp.offset
        assert got == {p: PER_PARTITION for p in range(PARTITIONS)}, f"committed: {got}"
        return True

    h.wait_for(committed_back, timeout=15, interval=0.1, what=f"{mode} commits read back")
    a.close()
    b.close()
    resume_after_commits(topic, ck_consumer(group))


def test_confluent_static_member_restart_keeps_partitions(topic, cadmin):
    """Two static members; one closes (a static member sends no LeaveGroup) and a new consumer
    with its group.instance.id joins within the session timeout: it gets the same partitions,
    the other member sees no rebalance (no revoke/assign callback, same generation), and the
    group keeps its generation, past the point where the old member's session would expire."""
    from confluent_kafka import ConsumerGroupState

    h.create_topic(topic, PARTITIONS, admin=cadmin)
    group = group_name("ck-static")
    events = collections.Counter()

    def member(name):
        c = ck_consumer(group, **{"group.instance.id": name})
        c.subscribe([topic], on_assign=lambda c_, parts: events.update([(name, "assign")]),
                    on_revoke=lambda c_, parts: events.update([(name, "revoke")]))
        return c

    a, b = member("a"), member("b")
    pa, pb = ck_drive([a, b], evenly_split, "a 3/3 split", timeout=30)
    check_split(pa, pb)
    gen = ck_generation(b)
    assert gen > 0 and ck_generation(a) == gen
    state, ids = describe_static(cadmin, group)
    assert state == ConsumerGroupState.STABLE and ids == {"a": a.memberid(), "b": b.memberid()}, \
        (state, ids)
    b_events = (events["b", "assign"], events["b", "revoke"])

    a.close()
    closed = time.monotonic()
    a2 = member("a")
    ck_drive([a2, b], lambda sets: sets == [pa, pb], "the restarted member's partitions",
             timeout=5)
    assert time.monotonic() - closed < 6, "restarted within the session timeout"
    ck_poll_for([a2, b], STATIC_WATCH - (time.monotonic() - closed))
    assert [ck_owned(a2), ck_owned(b)] == [pa, pb]
    assert (events["b", "assign"], events["b", "revoke"]) == b_events, \
        f"b saw a rebalance: {events}"
    assert ck_generation(b) == gen and ck_generation(a2) == gen, \
        (gen, ck_generation(b), ck_generation(a2))
    state, ids2 = describe_static(cadmin, group)
    assert state == ConsumerGroupState.STABLE, state
    assert ids2 == {"a": a2.memberid(), "b": ids["b"]}, (ids, ids2)
    assert ids2["a"] != ids["a"], "a restarted member gets a new member id"
    a2.close()
    b.close()


# ---------------------------------------------------------------- kafka-python

def kp_consumer(group: str, topic: str, listener=None, **extra):
    from kafka import KafkaConsumer

    conf = dict(bootstrap_servers=h.BOOTSTRAP, group_id=group,
                client_id="sluice-interop-kp-group", enable_auto_commit=False,
                auto_offset_reset="earliest", session_timeout_ms=6000,
                heartbeat_interval_ms=500, fetch_max_wait_ms=100, request_timeout_ms=15000)
    conf.update(extra)
    if listener is None:
        return KafkaConsumer(topic, **conf)
    c = KafkaConsumer(**conf)
    c.subscribe([topic], listener=listener)
    return c


class KpMember:
    """A kafka-python group member polled by its own thread (joins and rebalances happen
    inside poll, and a KafkaConsumer must stay on one thread). `extra` goes to KafkaConsumer."""

    def __init__(self, group: str, topic: str, **extra):
        import threading

        self.group, self.topic, self.extra = group, topic, extra
        self.seen = set()
        self.records = []  # (partition, offset) in delivery order
        self.assigned = set()
        self.rebalances = 0  # rebalance listener calls (revoked + assigned)
        self.generation = self.member_id = None
        self.error = None
        self.commands = []
        self.results = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            self.loop()
        except BaseException as exc:  # noqa: BLE001 - surfaced by view()
            with self.lock:
                self.error = exc

    def loop(self):
        from kafka import ConsumerRebalanceListener, TopicPartition
        from kafka.structs import OffsetAndMetadata

        member = self

        class Counting(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                with member.lock:
                    member.rebalances += 1

            def on_partitions_assigned(self, assigned):
                with member.lock:
                    member.rebalances += 1

        c = kp_consumer(self.group, self.topic, listener=Counting(), **self.extra)
        try:
            while True:
                for recs in c.poll(timeout_ms=100).values():
                    with self.lock:
                        self.seen.update((r.partition, r.offset) for r in recs)
                        self.records.extend((r.partition, r.offset) for r in recs)
                gm = c.group_metadata()
                with self.lock:
                    self.assigned = {tp.partition for tp in c.assignment()}
                    self.generation, self.member_id = gm.generation_id, gm.member_id
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
                    if isinstance(cmd, tuple):  # ("call", fn, future): fn(consumer) on this thread
                        _, fn, fut = cmd
                        try:
                            fut.set_result(fn(c))
                        except Exception as exc:  # noqa: BLE001 - handed to the caller
                            fut.set_exception(exc)
        finally:
            c.close()

    def send(self, cmd):
        with self.lock:
            self.commands.append(cmd)

    def call(self, fn, timeout: float = 20):
        """fn(consumer) run on the member's thread; its result."""
        import concurrent.futures

        fut = concurrent.futures.Future()
        self.send(("call", fn, fut))
        return fut.result(timeout)

    def close(self, timeout: float = 20):
        self.send("close")
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "kafka-python member did not close"

    def state(self):
        with self.lock:
            return set(self.assigned), set(self.seen), list(self.results)

    def view(self):
        import types

        with self.lock:
            if self.error is not None:
                raise AssertionError(f"kafka-python member failed: {self.error!r}")
            return types.SimpleNamespace(assigned=set(self.assigned), records=list(self.records),
                                         rebalances=self.rebalances, generation=self.generation,
                                         member_id=self.member_id)


def kp_resume_after_commits(group: str, topic: str):
    """A new kafka-python member of a group that committed PER_PARTITION on every partition
    reads only the records produced after those commits."""
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
        closed = time.monotonic()
        b.thread.join(20)
        h.wait_for(lambda: a.state()[0] == set(range(PARTITIONS)), timeout=20,
                   what="hand-over to a")
        check_handed_over(closed)
        a.send("close")
        a.thread.join(20)

        kp_resume_after_commits(group, topic)

        # OffsetDelete of one partition of the (now empty) group, then DeleteGroups.
        admin.delete_group_offsets(group, [TopicPartition(topic, 0)])
        left = admin.list_group_offsets({group: None})[group]
        assert sorted(tp.partition for tp in left) == list(range(1, PARTITIONS)), left
        assert admin.delete_groups([group]) == {group: "OK"}
        assert group not in {g["group_id"] for g in admin.list_groups()}
    finally:
        admin.close()


def kp_close_all(members):
    for m in members:
        if m.thread.is_alive():
            m.close()


def test_kafka_python_three_members_split_six_partitions(topic, cadmin):
    h.create_topic(topic, PARTITIONS, admin=cadmin)
    group = group_name("kp3")
    members = [KpMember(group, topic) for _ in range(3)]
    try:
        h.wait_for(lambda: evenly_split([m.view().assigned for m in members]), timeout=30,
                   what="a 2/2/2 split between three kafka-python members")
        sets = [m.view().assigned for m in members]
        check_split(*sets)
        # Produced once the split is settled, so no rebalance can hand a record out twice.
        produce(topic)
        h.wait_for(lambda: sum(len(m.view().records) for m in members)
                   >= PARTITIONS * PER_PARTITION, timeout=30, what="every record")
        time.sleep(0.5)  # anything delivered twice would show up now
        views = [m.view() for m in members]
        assert [v.assigned for v in views] == sets, "the assignment changed while consuming"
        check_consumed_once([(i, p, o) for i, v in enumerate(views) for p, o in v.records], sets)
    finally:
        kp_close_all(members)


@pytest.mark.parametrize("mode", ["auto", "async"])
def test_kafka_python_commits_survive_restart(topic, cadmin, mode):
    """auto: enable_auto_commit with a 200 ms interval; async: commit_async() with a callback.
    Either way committed() reads the offsets back while the members run, and after both closed
    a new member resumes after them."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    h.create_topic(topic, PARTITIONS, admin=cadmin)
    produce(topic)
    group = group_name(f"kp-{mode}")
    extra = {"enable_auto_commit": True, "auto_commit_interval_ms": 200} if mode == "auto" else {}
    members = [KpMember(group, topic, **extra) for _ in range(2)]
    try:
        def split_and_consumed():
            views = [m.view() for m in members]
            return evenly_split([v.assigned for v in views]) and len(
                {r for v in views for r in v.records}) == PARTITIONS * PER_PARTITION

        h.wait_for(split_and_consumed, timeout=30, what="a split and every record")
        sets = [m.view().assigned for m in members]
        check_split(*sets)

        if mode == "async":
            results = []
            for m, parts in zip(members, sets):
                offsets = {TopicPartition(topic, p): OffsetAndMetadata(PER_PARTITION, "", -1)
                           for p in parts}
                m.call(lambda c, o=offsets: c.commit_async(
                    o, callback=lambda offs, resp: results.append((offs, resp))))
            h.wait_for(lambda: len(results) == 2, timeout=15, what="both commit_async callbacks")
            assert not [r for _, r in results if isinstance(r, Exception)], results
            assert sorted(tp.partition for offs, _ in results for tp in offs) == \
                list(range(PARTITIONS))

        def committed_back():
            got = {}
            for m, parts in zip(members, sets):
                got.update(m.call(lambda c, ps=sorted(parts): {
                    p: c.committed(TopicPartition(topic, p)) for p in ps}))
            assert got == {p: PER_PARTITION for p in range(PARTITIONS)}, f"committed: {got}"
            return True

        h.wait_for(committed_back, timeout=15, interval=0.1, what=f"{mode} commits read back")
    finally:
        kp_close_all(members)
    kp_resume_after_commits(group, topic)


def test_kafka_python_static_member_restart_keeps_partitions(topic, cadmin):
    """Two static members (group_instance_id); one closes (a static member sends no LeaveGroup)
    and a new consumer with its instance id joins within the session timeout: it gets the same
    partitions, the other member sees no rebalance (no listener call, same generation), and
    the group keeps its generation, past the point where the old member's session would expire."""
    from confluent_kafka import ConsumerGroupState

    h.create_topic(topic, PARTITIONS, admin=cadmin)
    group = group_name("kp-static")
    a = KpMember(group, topic, group_instance_id="a")
    b = KpMember(group, topic, group_instance_id="b")
    a2 = None
    try:
        h.wait_for(lambda: evenly_split([a.view().assigned, b.view().assigned]), timeout=30,
                   what="a 3/3 split between two static kafka-python members")
        va, vb = a.view(), b.view()
        pa, pb = va.assigned, vb.assigned
        check_split(pa, pb)
        gen = vb.generation
        assert gen > 0 and va.generation == gen, (va.generation, vb.generation)
        state, ids = describe_static(cadmin, group)
        assert state == ConsumerGroupState.STABLE, state
        assert ids == {"a": va.member_id, "b": vb.member_id}, ids

        a.close()
        closed = time.monotonic()
        a2 = KpMember(group, topic, group_instance_id="a")
        h.wait_for(lambda: a2.view().assigned == pa, timeout=5, interval=0.05,
                   what="the restarted member's partitions")
        assert time.monotonic() - closed < 6, "restarted within the session timeout"
        time.sleep(max(0.0, STATIC_WATCH - (time.monotonic() - closed)))
        va2, vb2 = a2.view(), b.view()
        assert [va2.assigned, vb2.assigned] == [pa, pb]
        assert vb2.rebalances == vb.rebalances, \
            f"b saw a rebalance: {vb.rebalances} -> {vb2.rebalances} listener calls"
        assert vb2.generation == gen and va2.generation == gen, \
            (gen, vb2.generation, va2.generation)
        state, ids2 = describe_static(cadmin, group)
        assert state == ConsumerGroupState.STABLE, state
        assert ids2 == {"a": va2.member_id, "b": vb.member_id}, (ids, ids2)
        assert va2.member_id != va.member_id, "a restarted member gets a new member id"
    finally:
        kp_close_all([m for m in (a, b, a2) if m is not None])


# ---------------------------------------------------------------- aiokafka

async def aio_consumer(group: str, topic: str, listener=None, **extra):
    """A started aiokafka group member; `extra` goes to AIOKafkaConsumer."""
    from aiokafka import AIOKafkaConsumer

    conf = dict(bootstrap_servers=h.BOOTSTRAP, group_id=group,
                client_id="sluice-interop-aio-group", enable_auto_commit=False,
                auto_offset_reset="earliest", session_timeout_ms=6000,
                heartbeat_interval_ms=500, fetch_max_wait_ms=100, request_timeout_ms=15000)
    conf.update(extra)
    c = AIOKafkaConsumer(**conf)
    c.subscribe([topic], listener=listener)
    await c.start()
    return c


def aio_owned(c) -> set:
    return {tp.partition for tp in c.assignment()}


async def aio_drive(consumers, until, what: str, records=None, timeout: float = TIMEOUT):
    """Fetches from every consumer until until(owned sets) holds; records (member index,
    partition, offset) of what arrives."""
    deadline = time.monotonic() + timeout
    while True:
        for i, c in enumerate(consumers):
            for recs in (await c.getmany(timeout_ms=100)).values():
                if records is not None:
                    records.extend((i, r.partition, r.offset) for r in recs)
        sets = [aio_owned(c) for c in consumers]
        if until(sets):
            return sets
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {sets}"


async def aio_poll_for(consumers, seconds: float, records=None):
    """Keeps fetching from every consumer for `seconds`."""
    end = time.monotonic() + seconds
    return await aio_drive(consumers, lambda sets: time.monotonic() >= end, "", records,
                           timeout=seconds + 5)


async def aio_resume_after_commits(group: str, topic: str):
    """A new aiokafka member of a group that committed PER_PARTITION on every partition reads
    only the records produced after those commits."""
    produce(topic, per_partition=1, tag="late")
    c = await aio_consumer(group, topic)
    got = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(got) < PARTITIONS:
            for recs in (await c.getmany(timeout_ms=500)).values():
                got.extend((r.partition, r.offset, r.value) for r in recs)
            assert time.monotonic() < deadline, f"resume: {got}"
    finally:
        await c.stop()
    assert sorted(got) == [(p, PER_PARTITION, f"late-{p}-0".encode()) for p in range(PARTITIONS)]


async def aio_stop_all(consumers):
    for c in consumers:
        await c.stop()


def test_aiokafka_group_split_commit_resume(topic, cadmin):
    from aiokafka import TopicPartition

    h.create_topic(topic, PARTITIONS, admin=cadmin)
    produce(topic)
    group = group_name("aio")

    async def member():
        return await aio_consumer(group, topic)

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

        closed = time.monotonic()
        await b.stop()
        deadline = time.monotonic() + 20
        while {tp.partition for tp in a.assignment()} != set(range(PARTITIONS)):
            await a.getmany(timeout_ms=100)
            assert time.monotonic() < deadline, f"hand-over: {a.assignment()}"
        check_handed_over(closed)
        await a.stop()

        await aio_resume_after_commits(group, topic)

    asyncio.run(asyncio.wait_for(body(), TIMEOUT * 3))


def test_aiokafka_three_members_split_six_partitions(topic, cadmin):
    h.create_topic(topic, PARTITIONS, admin=cadmin)
    group = group_name("aio3")

    async def body():
        members = [await aio_consumer(group, topic) for _ in range(3)]
        try:
            sets = await aio_drive(members, evenly_split, "a 2/2/2 split", timeout=30)
            check_split(*sets)
            # Produced once the split is settled, so no rebalance can hand a record out twice.
            produce(topic)
            records = []
            await aio_drive(members, lambda now: len(records) >= PARTITIONS * PER_PARTITION,
                            "every record", records, timeout=30)
            await aio_poll_for(members, 0.5, records)  # anything delivered twice would show up now
            assert [aio_owned(c) for c in members] == sets, "the assignment changed while consuming"
            check_consumed_once(records, sets)
        finally:
            await aio_stop_all(members)

    asyncio.run(asyncio.wait_for(body(), TIMEOUT * 2))


@pytest.mark.parametrize("mode", ["auto", "async"])
def test_aiokafka_commits_survive_restart(topic, cadmin, mode):
    """auto: enable_auto_commit with a 200 ms interval; async: aiokafka's commit() is a
    coroutine with no callback variant, so the asynchronous case runs it as a background task
    while the members keep fetching. Either way committed() reads the offsets back while the
    members run, and after both stopped a new member resumes after them."""
    from aiokafka import TopicPartition

    h.create_topic(topic, PARTITIONS, admin=cadmin)
    produce(topic)
    group = group_name(f"aio-{mode}")
    extra = {"enable_auto_commit": True, "auto_commit_interval_ms": 200} if mode == "auto" else {}

    async def body():
        members = [await aio_consumer(group, topic, **extra) for _ in range(2)]
        try:
            records = []
            sets = await aio_drive(members, lambda sets: evenly_split(sets) and len(
                {(p, o) for _, p, o in records}) == PARTITIONS * PER_PARTITION,
                "a split and every record", records, timeout=30)
            check_split(*sets)
            if mode == "async":
                tasks = [asyncio.create_task(c.commit(
                    {TopicPartition(topic, p): PER_PARTITION for p in parts}))
                    for c, parts in zip(members, sets)]
                await aio_drive(members, lambda sets: all(t.done() for t in tasks),
                                "the commit tasks", timeout=15)
                for t in tasks:
                    t.result()  # raises what the commit raised
            deadline = time.monotonic() + 15
            while True:
                got = {p: await c.committed(TopicPartition(topic, p))
                       for c, parts in zip(members, sets) for p in parts}
                if got == {p: PER_PARTITION for p in range(PARTITIONS)}:
                    break
                assert time.monotonic() < deadline, f"{mode} commits read back: {got}"
                await aio_poll_for(members, 0.1)
        finally:
            await aio_stop_all(members)
        await aio_resume_after_commits(group, topic)

    asyncio.run(asyncio.wait_for(body(), TIMEOUT * 2))


def test_aiokafka_static_member_restart_keeps_partitions(topic, cadmin):
    """Two static members (group_instance_id); one stops (a static member sends no LeaveGroup)
    and a new consumer with its instance id joins within the session timeout: it gets the same
    partitions, the other member sees no rebalance (no listener call, same generation), and
    the group keeps its generation, past the point where the old member's session would expire.
    aiokafka has no public accessor for the generation: it is read from the consumer's
    coordinator (`_coordinator.generation`, `_coordinator.member_id`)."""
    from aiokafka import ConsumerRebalanceListener
    from confluent_kafka import ConsumerGroupState

    h.create_topic(topic, PARTITIONS, admin=cadmin)
    group = group_name("aio-static")
    events = collections.Counter()

    class Counting(ConsumerRebalanceListener):
        def __init__(self, name):
            self.name = name

        def on_partitions_revoked(self, revoked):
            events[self.name, "revoke"] += 1

        def on_partitions_assigned(self, assigned):
            events[self.name, "assign"] += 1

    def member(name):
        return aio_consumer(group, topic, listener=Counting(name), group_instance_id=name)

    async def body():
        a, b = await member("a"), await member("b")
        running = [a, b]
        try:
            pa, pb = await aio_drive([a, b], evenly_split, "a 3/3 split", timeout=30)
            check_split(pa, pb)
            gen = b._coordinator.generation
            assert gen > 0 and a._coordinator.generation == gen
            a_id, b_id = a._coordinator.member_id, b._coordinator.member_id
            state, ids = describe_static(cadmin, group)
            assert state == ConsumerGroupState.STABLE, state
            assert ids == {"a": a_id, "b": b_id}, ids
            b_events = (events["b", "assign"], events["b", "revoke"])

            running.remove(a)
            await a.stop()
            closed = time.monotonic()
            a2 = await member("a")
            running.append(a2)
            await aio_drive([a2, b], lambda sets: sets == [pa, pb],
                            "the restarted member's partitions", timeout=5)
            assert time.monotonic() - closed < 6, "restarted within the session timeout"
            await aio_poll_for([a2, b], STATIC_WATCH - (time.monotonic() - closed))
            assert [aio_owned(a2), aio_owned(b)] == [pa, pb]
            assert (events["b", "assign"], events["b", "revoke"]) == b_events, \
                f"b saw a rebalance: {events}"
            assert b._coordinator.generation == gen and a2._coordinator.generation == gen, \
                (gen, b._coordinator.generation, a2._coordinator.generation)
            state, ids2 = describe_static(cadmin, group)
            assert state == ConsumerGroupState.STABLE, state
            assert ids2 == {"a": a2._coordinator.member_id, "b": b_id}, (ids, ids2)
            assert ids2["a"] != a_id, "a restarted member gets a new member id"
        finally:
            await aio_stop_all(running)

    asyncio.run(asyncio.wait_for(body(), TIMEOUT * 2))
