"""In-sync replicas and min.insync.replicas on a local three-node cluster, with a follower kill.

Started by tests/cluster/run.sh after failover.py. Two topics with replication factor 3:
one with min.insync.replicas=3, one with 2. While a follower of both is SIGKILLed:
the leader drops it from the ISR (its /v1/partitions and Kafka Metadata), reports the
partition under-replicated in /metrics, refuses acks=all writes to the min.insync=3 topic
with NOT_ENOUGH_REPLICAS, and keeps taking them on the min.insync=2 topic. After the
follower restarts it is back in the ISR, has caught up, and every acknowledged record
reads back once. The other nodes answer with the ISR the leader recorded in the metadata log:
the third node drops the victim too, and never lists the restarted follower in sync before
the leader does.
"""
import sys
import threading
import time
import urllib.request

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_helpers import BOOTSTRAP, claimed_leader, local_cluster, partition_view
import replica_logs
STAMP = int(time.time())
STRICT = "isr-strict-%d" % STAMP  # min.insync.replicas=3
LENIENT = "isr-lenient-%d" % STAMP  # min.insync.replicas=2


def get(node, path):
    with urllib.request.urlopen("http://127.0.0.1:%d9644%s" % (node, path), timeout=2) as r:
        return r.read().decode()


def wait_for(what, cond, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise SystemExit("FAIL: %s within %d s" % (what, timeout))


def leader(topic):
    return claimed_leader(topic)


def metric(node, name):
    total = 0.0
    for line in get(node, "/metrics").splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def produce(topic, values, retries=True):
    """Produces values acks=all; returns (acked values, error codes)."""
    conf = {"bootstrap.servers": BOOTSTRAP, "acks": "all", "linger.ms": 2}
    if retries:
        conf.update({"enable.idempotence": True, "message.timeout.ms": 60000})
    else:
        conf.update({"retries": 0, "message.timeout.ms": 10000})
    p = Producer(conf)
    acked, errors = [], []

    def cb(err, msg):
        if err is None:
            acked.append(int(msg.value()))
        else:
            errors.append(err.code())
    for v in values:
        p.produce(topic, value=b"%d" % v, partition=0, on_delivery=cb)
    p.flush(90)
    return acked, errors


def main():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    futures = admin.create_topics([
        NewTopic(STRICT, 1, 3, config={"min.insync.replicas": "3"}),
        NewTopic(LENIENT, 1, 3, config={"min.insync.replicas": "2"}),
    ])
    for f in futures.values():
        f.result(30)
    ok = True
    acked = {STRICT: [], LENIENT: []}
    for topic in (STRICT, LENIENT):
        wait_for("a leader for %s" % topic, lambda: leader(topic), 15)
        a, e = produce(topic, range(0, 100))
        acked[topic] += a
        if e or len(a) != 100:
            print("FAIL: all-in-sync produce to %s: %d acked, errors %s" % (topic, len(a), e[:3]))
            ok = False
    lead = leader(STRICT)
    isr = wait_for("a full ISR on the leader", lambda: (partition_view(lead, STRICT) or {}).get("isr"), 10)
    print("leader of %s: node %d, isr %s" % (STRICT, lead, isr))
    if sorted(isr) != [1, 2, 3]:
        print("FAIL: isr with every node up is %s" % isr)
        ok = False
    # Kill a follower of the strict topic (a replica of every RF=3 partition).
    victim = next(n for n in (1, 2, 3) if n != lead)
    killed = time.time()
    local_cluster("kill", victim)

    def shrunk():
        lead_now = leader(STRICT)
        view = lead_now and partition_view(lead_now, STRICT)
        return view and victim not in view["isr"] and len(view["isr"]) == 2 and (lead_now, view["isr"])
    lead, isr = wait_for("the ISR to drop the killed follower", shrunk, 10)
    print("killed follower %d; leader %d reports isr %s after %.1f s" % (victim, lead, isr, time.time() - killed))
    # librdkafka sends Metadata to whichever broker it likes: the leader answers with its live
    # view, another node with the ISR recorded in the metadata log, which follows within the
    # publishing interval (1 s) plus a metadata commit. Like Kafka's, it is eventually the same.
    md_admin = AdminClient({"bootstrap.servers": "127.0.0.1:%d9092" % lead})
    shrunk_at = time.time()
    md_isr = None
    while time.time() - shrunk_at < 5:
        md = md_admin.list_topics(STRICT, timeout=10)
        md_isr = sorted(md.topics[STRICT].partitions[0].isrs)
        if victim not in md_isr:
            break
        time.sleep(0.1)
    print("Kafka Metadata isr: %s, %.1f s after the leader's" % (md_isr, time.time() - shrunk_at))
    if victim in md_isr:
        print("FAIL: Metadata still lists node %d in sync 5 s after the leader dropped it" % victim)
        ok = False
    # Every node answers with the leader's ISR (recorded in the metadata log), not its own guess.
    third = next(n for n in (1, 2, 3) if n not in (lead, victim))
    t_isr = wait_for("node %d to report the leader's ISR" % third,
                     lambda: (lambda v: v and victim not in v["isr"] and v["isr"])(partition_view(third, STRICT)), 10)
    print("node %d (neither leader nor victim) reports isr %s" % (third, sorted(t_isr)))
    urp = wait_for("under-replicated partitions in the leader's metrics",
                   lambda: metric(lead, "sluice_partitions_under_replicated"), 10)
    print("leader's sluice_partitions_under_replicated:", urp)
    a, e = produce(STRICT, range(100, 110), retries=False)
    print("acks=all to min.insync=3 with 2 in sync: acked %d, errors %s" % (len(a), sorted(set(e))))
    if a or not e or any(c != KafkaError.NOT_ENOUGH_REPLICAS for c in e):
        print("FAIL: expected NOT_ENOUGH_REPLICAS for every record")
        ok = False
    a, e = produce(LENIENT, range(100, 200))
    acked[LENIENT] += a
    print("acks=all to min.insync=2 with 2 in sync: acked %d, errors %s" % (len(a), e[:3]))
    if e or len(a) != 100:
        ok = False
    # Bring the follower back: it rejoins the ISR and catches up.
    # Started in the background: `start` returns once the node is ready, and by then it may
    # be back in the ISR; the window below is while it starts and catches up.
    starter = threading.Thread(target=local_cluster, args=("start", victim))
    restarted = time.time()
    starter.start()
    # While the restarted follower catches up, the third node must not call it in sync before
    # the leader does: it is asked first, then the leader, so "third says yes" implies the
    # leader already said yes (its own guess would include any node answering pings).
    early = []
    polls = [0]

    def full():
        polls[0] += 1
        t_view = partition_view(third, STRICT)
        lead_now = leader(STRICT)
        view = lead_now and partition_view(lead_now, STRICT)
        if t_view and view and victim in t_view["isr"] and victim not in view["isr"]:
            early.append((round(time.time() - restarted, 2), t_view["isr"], view["isr"]))
        return view and sorted(view["isr"]) == [1, 2, 3]
    wait_for("the restarted follower back in the ISR", full, 30)
    print("node %d back in the ISR %.1f s after its restart (%d polls of node %d meanwhile)"
          % (victim, time.time() - restarted, polls[0], third))
    starter.join(30)
    if early:
        print("FAIL: node %d listed node %d in sync before the leader did: %s" % (third, victim, early[:3]))
        ok = False
    wait_for("every node to report the full ISR",
             lambda: all(sorted((partition_view(n, STRICT) or {}).get("isr", [])) == [1, 2, 3] for n in (1, 2, 3)), 10)
    print("every node reports isr [1, 2, 3]")
    a, e = produce(STRICT, range(200, 300))
    acked[STRICT] += a
    if e or len(a) != 100:
        print("FAIL: produce with the full ISR again: %d acked, errors %s" % (len(a), e[:3]))
        ok = False

    def caught_up():
        lead_now = leader(LENIENT)
        lv, fv = partition_view(lead_now, LENIENT), partition_view(victim, LENIENT)
        return lv and fv and fv["high_watermark"] == lv["high_watermark"] and lv["high_watermark"]
    hw = wait_for("the restarted follower catching up", caught_up, 30)
    print("restarted follower caught up on %s: high watermark %d" % (LENIENT, hw))
    for topic in (STRICT, LENIENT):
        c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "isr-check", "enable.auto.commit": False})
        c.assign([TopicPartition(topic, 0, 0)])
        got = []
        idle_until = time.time() + 15
        while time.time() < idle_until and len(got) < len(acked[topic]):
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(int(m.value()))
        c.close()
        missing = set(acked[topic]) - set(got)
        dups = len(got) - len(set(got))
        print("%s: acknowledged %d, read %d, missing %d, duplicates %d" % (
            topic, len(acked[topic]), len(got), len(missing), dups))
        if missing or dups:
            ok = False
    # The caught-up follower's log is the leader's, entry for entry.
    if not replica_logs.report([(STRICT, 1), (LENIENT, 1)]):
        ok = False
    print("isr test:", "OK" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
