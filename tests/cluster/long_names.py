"""A topic with the longest name Kafka allows (249 characters), replicated on three nodes.

Started by tests/cluster/run.sh. Its partitions' Raft groups carry the topic name on the
cluster transport; acks=all writes must commit and read back.
"""
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_helpers import BOOTSTRAP

TOPIC = ("long-%d-" % int(time.time())).ljust(249, "x")


def main():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(TOPIC, 2, 3)])[TOPIC].result(30)
    p = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all", "enable.idempotence": True})
    acked = []
    for i in range(20):
        p.produce(TOPIC, value=b"%d" % i, partition=i % 2,
                  on_delivery=lambda e, m: e is None and acked.append(int(m.value())))
    p.flush(60)
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "long-names"})
    c.assign([TopicPartition(TOPIC, part, 0) for part in range(2)])
    got = []
    end = time.time() + 20
    while len(got) < 20 and time.time() < end:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(int(m.value()))
    c.close()
    ok = sorted(acked) == list(range(20)) and sorted(got) == list(range(20))
    print("249-character topic name, RF=3: acknowledged %d, read back %d" % (len(acked), len(got)))
    print("long topic name test:", "OK" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
