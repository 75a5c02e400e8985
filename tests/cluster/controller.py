"""Controller failover on a local three-node cluster.

Started by tests/cluster/run.sh. The controller (leader of the metadata log, as /v1/cluster
reports it; Kafka clients are told the node they ask, as KRaft brokers do) is SIGKILLed; topic creation through the other nodes must work
within seconds (a new controller is elected), the new topic must take writes, and the
restarted node must learn the topic from the metadata log and catch up on its data.
"""
import json
import os
import subprocess
import sys
import time
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "deploy", "local-cluster.sh")
TOPIC = "after-controller-kill-%d" % int(time.time())


def bootstrap(nodes):
    return ",".join("127.0.0.1:%d9092" % n for n in nodes)


def view(node, topic):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d9644/v1/partitions" % node, timeout=2) as r:
            doc = json.load(r)
    except OSError:
        return None
    return next((p for p in doc["partitions"] if p["topic"] == topic and p["partition"] == 0), None)


def metadata_leader(nodes):
    """The node that leads the metadata log by its own account."""
    for node in nodes:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d9644/v1/cluster" % node, timeout=2) as r:
                if json.load(r)["controller"] == node:
                    return node
        except OSError:
            continue
    return None


def main():
    controller = metadata_leader((1, 2, 3))
    if controller is None:
        raise SystemExit("FAIL: no node leads the metadata log")
    others = [n for n in (1, 2, 3) if n != controller]
    killed = time.time()
    subprocess.run([SCRIPT, "kill", str(controller)], check=True, stdout=subprocess.DEVNULL)
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
    subprocess.run([SCRIPT, "start", str(controller)], check=True, stdout=subprocess.DEVNULL)
    deadline = time.time() + 30
    caught_up = False
    while time.time() < deadline and not caught_up:
        mine = view(controller, TOPIC)
        theirs = view(others[0], TOPIC)
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
