"""Controller failover on a local three-node cluster.

Started by tests/cluster/run.sh. The controller (leader of the metadata log, as /v1/cluster
reports it; Kafka clients are told the node they ask, as KRaft brokers do) is SIGKILLed; topic creation through the other nodes must work
within seconds (a new controller is elected), the new topic must take writes, and the
restarted node must learn the topic from the metadata log and catch up on its data.
"""
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_helpers import admin_get, bootstrap, local_cluster, partition_view

TOPIC = "after-controller-kill-%d" % int(time.time())


def metadata_leader(nodes):
    """The node that leads the metadata log by its own account."""
    for node in nodes:
        doc = admin_get(node, "/v1/cluster")
        if doc and doc["controller"] == node:
            return node
    return None


def main():
    controller = metadata_leader((1, 2, 3))
    if controller is None:
        raise SystemExit("FAIL: no node leads the metadata log")
    others = [n for n in (1, 2, 3) if n != controller]
    killed = time.time()
    local_cluster("kill", controller)
    survivors = AdminClient({"bootstrap.servers": bootstrap(others)})
    created = None
    while created is None and time.time() < killed + 30:
        try:
            survivors.create_topics([NewTopic(TOPIC, 1, 3)], request_timeout=10)[TOPIC].result(15)
            created = time.time()
        except Exception as e:  # NOT_CONTROLLER / timeouts while the new controller is elected
            print("create retried:", e)
            time.sleep(0.5)
    if created is None:
        raise SystemExit("FAIL: no topic could be created within 30 s of killing the controller")
    new = metadata_leader(others)
    print("killed controller node %d; node %d controls; topic created %.1f s after the kill" % (
        controller, new, created - killed))
    ok = new != controller
    p = Producer({"bootstrap.servers": bootstrap(others), "acks": "all", "enable.idempotence": True})
    acked = []
    for i in range(100):
        p.produce(TOPIC, value=b"%d" % i, on_delivery=lambda e, m: e is None and acked.append(m.offset()))
    p.flush(60)
    print("produced to the new topic with node %d down: %d acknowledged" % (controller, len(acked)))
    ok = ok and len(acked) == 100
    local_cluster("start", controller)
    deadline = time.time() + 30
    caught_up = False
    while time.time() < deadline and not caught_up:
        mine = partition_view(controller, TOPIC)
        theirs = partition_view(others[0], TOPIC)
        caught_up = bool(mine and theirs and mine["high_watermark"] == theirs["high_watermark"] == 100)
        time.sleep(0.2)
    print("restarted node %d knows the topic and caught up: %s" % (controller, caught_up))
    ok = ok and caught_up
    c = Consumer({"bootstrap.servers": bootstrap((controller,)), "group.id": "ctl-check"})
    c.assign([TopicPartition(TOPIC, 0, 0)])
    got = 0
    end = time.time() + 20
    while got < 100 and time.time() < end:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got += 1
    c.close()
    print("read back %d records" % got)
    ok = ok and got == 100
    print("controller failover test:", "OK" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
