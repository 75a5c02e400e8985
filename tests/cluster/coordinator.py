"""Group coordinator failover on a local three-node cluster.

Started by tests/cluster/run.sh. A consumer group consumes half of a replicated topic and
commits; the node leading the group's __consumer_offsets partition (its coordinator) is
SIGKILLed. The offsets committed before the kill must be readable from the new coordinator,
the consumer must carry on (re-finding its coordinator) and commit the rest, and a fresh
consumer in the group must start exactly after everything committed. Then the node restarts.

With the argument `consumer` the group uses the consumer protocol (KIP-848,
`group.protocol=consumer`): the new coordinator restores the group's state from the log, so
the member keeps its partitions through the failover (librdkafka's on_lost never fires).
"""
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_helpers import BOOTSTRAP, claimed_leader, local_cluster
STAMP = int(time.time())
PROTOCOL = sys.argv[1] if len(sys.argv) > 1 else "classic"
TOPIC = "coord-%s-%d" % (PROTOCOL, STAMP)
GROUP = "coord-group-%s-%d" % (PROTOCOL, STAMP)
PARTITIONS = 3
PER_PARTITION = 100
OFFSETS_PARTITIONS = 50


def java_hash(s):
    h = 0
    for ch in s.encode("utf-16-be").decode("utf-16-be"):
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def coordinator():
    """The node that leads the group's offsets partition by its own account."""
    h = java_hash(GROUP)
    index = (abs(h) if h != -(1 << 31) else 0) % OFFSETS_PARTITIONS  # Kafka's Utils.abs
    return claimed_leader("__consumer_offsets", index)


def consumer():
    conf = {"bootstrap.servers": BOOTSTRAP, "group.id": GROUP, "enable.auto.commit": False,
            "auto.offset.reset": "earliest"}
    if PROTOCOL == "consumer":
        conf["group.protocol"] = "consumer"
    else:
        conf["session.timeout.ms"] = 10000
    return Consumer(conf)


def consume(c, n, timeout):
    got = []
    deadline = time.time() + timeout
    while len(got) < n and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append((m.partition(), m.offset()))
    return got


def committed(c):
    tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    return {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}


def main():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3)])[TOPIC].result(30)
    p = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all", "enable.idempotence": True})
    for part in range(PARTITIONS):
        for i in range(PER_PARTITION):
            p.produce(TOPIC, value=b"%d" % i, partition=part)
    if p.flush(60) != 0:
        raise SystemExit("FAIL: produce did not finish")
    ok = True
    c = consumer()
    lost = []
    c.subscribe([TOPIC], on_lost=lambda consumer, parts: lost.append([p.partition for p in parts]))
    half = PARTITIONS * PER_PARTITION // 2
    seen = consume(c, half, 60)
    c.commit(asynchronous=False)
    before = committed(c)
    print("consumed %d, committed before the kill: %s" % (len(seen), before))
    victim = coordinator()
    if victim is None:
        raise SystemExit("FAIL: no leader for the group's offsets partition")
    killed = time.time()
    local_cluster("kill", victim)
    # The commits made before the kill, read back through the new coordinator.
    after = None
    deadline = killed + 30
    while time.time() < deadline:
        try:
            after = committed(c)
            if all(after.get(k, -1) >= v for k, v in before.items()):
                break
        except Exception as e:  # coordinator moving: retried
            after = str(e)
        time.sleep(0.2)
    new = None
    while new is None and time.time() < killed + 30:
        new = coordinator()
        time.sleep(0.1)
    print("killed coordinator node %d; node %s took over; committed offsets read back after %.1f s: %s" % (
        victim, new, time.time() - killed, after))
    if after != before:
        print("FAIL: offsets committed before the kill are not what the new coordinator has")
        ok = False
    # The consumer carries on and commits the rest.
    seen += consume(c, PARTITIONS * PER_PARTITION - len(seen), 60)
    for _ in range(30):
        try:
            c.commit(asynchronous=False)
            break
        except Exception as e:
            print("commit retried:", e)
            time.sleep(1)
    final = committed(c)
    c.close()
    if PROTOCOL == "consumer" and lost:
        print("FAIL: the member lost its partitions in the failover: %s" % lost)
        ok = False
    print("consumed %d records in all; committed %s" % (len(seen), final))
    if sorted(set(seen)) != sorted((part, o) for part in range(PARTITIONS) for o in range(PER_PARTITION)):
        print("FAIL: not every record was consumed exactly once (%d seen, %d distinct)" % (len(seen), len(set(seen))))
        ok = False
    if final != {part: PER_PARTITION for part in range(PARTITIONS)}:
        print("FAIL: final commits are %s" % final)
        ok = False
    local_cluster("start", victim)
    # A fresh member of the group starts after everything committed: nothing more to read.
    c2 = consumer()
    c2.subscribe([TOPIC])
    extra = consume(c2, 1, 15)
    c2.close()
    if extra:
        print("FAIL: a new member re-read %s" % extra)
        ok = False
    print("coordinator failover test (%s protocol):" % PROTOCOL, "OK" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
