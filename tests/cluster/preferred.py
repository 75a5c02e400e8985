"""A new topic's partitions are led by their preferred replicas from the start.

Started by tests/cluster/run.sh on a freshly started `deploy/local-cluster.sh up` cluster
(before any node is killed: a node restarted moments ago defers to the others). Creates a
topic with 12 partitions and replication factor 3, waits until every partition has a leader,
and checks that each leader is the partition's first replica (its preferred leader), and
that no leadership moves afterwards: leader balancing hands a partition to its preferred
replica 5 s after another took it, which clients see as a leader change in the middle of
their first writes.
"""
import sys
import time

from confluent_kafka.admin import AdminClient, NewTopic

from cluster_helpers import BOOTSTRAP, NODES, admin_get

TOPIC = "preferred-%d" % int(time.time())
PARTITIONS = 12


def epochs():
    """Per partition of the topic, its leader epoch (Raft term): the highest any node
    reports (a follower may not have heard of the leader yet)."""
    out = {}
    for n in NODES:
        doc = admin_get(n, "/v1/partitions") or {"partitions": []}
        for p in doc["partitions"]:
            if p["topic"] == TOPIC:
                out[p["partition"]] = max(out.get(p["partition"], 0), p["leader_epoch"])
    return out


def leaders(admin):
    md = admin.list_topics(TOPIC, timeout=10).topics[TOPIC]
    return {p.id: (p.leader, list(p.replicas)) for p in md.partitions.values()}


def main():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    start = time.time()
    admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=3)])[
        TOPIC].result(30)
    deadline = time.time() + 15
    while True:
        view = leaders(admin)
        if len(view) == PARTITIONS and all(l >= 0 for l, _ in view.values()):
            print("every partition has a leader %.2f s after CreateTopics was sent"
                  % (time.time() - start))
            break
        if time.time() > deadline:
            print("partitions without a leader after 15 s: %s" % view)
            return 1
        time.sleep(0.05)
    before = epochs()
    others = {p: v for p, v in view.items() if v[0] != v[1][0]}
    print("%d of %d partitions led by their preferred replica" % (PARTITIONS - len(others), PARTITIONS))
    if others:
        print("led by another replica (partition: (leader, replicas)): %s" % others)
        return 1
    # Past leader balancing's 5 s: nothing should have to move, so no partition of the
    # topic sees a new leader epoch.
    time.sleep(7)
    after = epochs()
    moved = {k: (before.get(k), e) for k, e in after.items() if before.get(k) != e}
    if moved or leaders(admin) != view:
        print("leadership moved (partition: (epoch before, after)): %s" % moved)
        return 1
    print("preferred leaders test: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
