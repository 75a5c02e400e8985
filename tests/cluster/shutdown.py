"""SIGTERM on a leader whose partition has lost its majority, on a local three-node cluster.

Started by tests/cluster/run.sh last (it stops every node, then starts them again). Both
followers of a partition are SIGKILLed while an idempotent acks=all producer has a write
waiting for its commit on the leader; the leader then gets SIGTERM. A shutdown answers
what it has read, but that write can never commit: the node must still exit within its
grace period (5 s) plus the time to close its partitions, cleanly ("shutdown complete" in
its log), not when the client gives up on the request (30 s) or never.
"""
import os
import subprocess
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_helpers import BOOTSTRAP, NODES, SCRIPT, claimed_leader, local_cluster

TOPIC = "shutdown-%d" % int(time.time())
LIMIT_S = 20


def main():
    local_dir = os.environ["SLUICE_LOCAL_DIR"]
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=3)])[TOPIC].result(30)
    deadline = time.time() + 15
    leader = None
    while leader is None and time.time() < deadline:
        leader = claimed_leader(TOPIC)
        time.sleep(0.1)
    if leader is None:
        raise SystemExit("FAIL: %s has no leader" % TOPIC)
    producer = Producer({
        "bootstrap.servers": "127.0.0.1:%d9092" % leader,
        "acks": "all",
        "enable.idempotence": True,
        "message.timeout.ms": 120000,
    })
    producer.produce(TOPIC, b"committed")
    if producer.flush(30) != 0:
        raise SystemExit("FAIL: the first write was not acknowledged")
    for n in NODES:
        if n != leader:
            subprocess.run([SCRIPT, "kill", str(n)], check=True, capture_output=True)
    producer.produce(TOPIC, b"stuck")
    producer.poll(1.0)
    with open(os.path.join(local_dir, "node-%d.pid" % leader)) as f:
        pid = int(f.read().strip())
    started = time.time()
    os.kill(pid, 15)
    while time.time() - started < 60:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.1)
    took = time.time() - started
    with open(os.path.join(local_dir, "node-%d.log" % leader)) as f:
        # This run of the node: the log after the script's last start marker.
        this_run = f.read().rsplit("local-cluster.sh: starting node", 1)[-1]
    clean = "shutdown complete" in this_run
    print("node %d (leader, both followers killed, a write waiting): SIGTERM to exit %.1f s, "
          "clean %s" % (leader, took, clean))
    # The cluster as the other tests left it, for whatever runs after this.
    for n in NODES:
        local_cluster("start", n)
    ok = took < LIMIT_S and clean
    print("shutdown test:", "OK" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
