"""Transaction coordinator failover, on a local three-node cluster.

Started by tests/cluster/run.sh. The coordinator of a transactional id is the leader of its
__transaction_state partition (abs(hashCode) mod the partition count), which must also be
what FindCoordinator (key_type 1) answers. Each round has a topic of its own (RF 3, 6
partitions) and a transactional id picked so that its coordinator leads as few of the topic's
partitions as possible; the transaction uses partitions led elsewhere:

1. a transaction writes records to a few partitions (flushed, so they are in the log), the
   coordinator node is SIGKILLed, then commit_transaction is called (librdkafka finds the
   new coordinator). Either it commits, and a read_committed consumer sees every record of
   the transaction, or it fails, and read_committed sees none of them; never a part.
2. (the node restarted and back in the ISR) a transaction commits, and right after
   commit_transaction returned the coordinator node is SIGKILLed: every record of the
   transaction must become visible to read_committed (the new coordinator finishes it).
3. zombie fencing, producers bootstrapped through different nodes: a second producer with
   the same transactional.id fences the first, whose open transaction is aborted and whose
   commit fails; only the second's records are visible.

Whether a transaction is decided is judged with sentinels: after each round a plain
producer writes one record to every partition, and read_committed returns a sentinel only
once nothing before it is undecided. After rounds 1 and 2 the killed node is started again
and must be back in the ISR of the topic's partitions and of the __transaction_state
partitions it replicates.
"""
import logging
import socket
import struct
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_helpers import (BOOTSTRAP, NODES, admin_get, bootstrap, claimed_leader, local_cluster,
                             partition_count, partition_for, partition_view)

STAMP = int(time.time())
TOPIC = None  # the current round's topic (new_topic)
PARTITIONS = 6
PER_ROUND = 120  # records of each round's transaction
TXN_TOPIC = "__transaction_state"


def find_coordinator(node, key):
    """FindCoordinator v1 with key_type 1 (transaction) sent to `node`: (error, node id)."""
    client = b"txn-failover"
    body = struct.pack(">h", len(key)) + key.encode() + struct.pack(">b", 1)
    frame = struct.pack(">hhih", 10, 1, 7, len(client)) + client + body
    try:
        with socket.create_connection(("127.0.0.1", node * 10000 + 9092), timeout=5) as s:
            s.sendall(struct.pack(">i", len(frame)) + frame)
            size = struct.unpack(">i", recv(s, 4))[0]
            data = recv(s, size)
    except OSError:
        return None
    _corr, _throttle, error, msg_len = struct.unpack(">iihh", data[:12])
    at = 12 + max(msg_len, 0)
    (coordinator,) = struct.unpack(">i", data[at:at + 4])
    return error, coordinator


def list_offsets(node, topic, partition, isolation):
    """ListOffsets v2 for the latest offset, sent to `node`: (error, offset); None if the
    node does not answer. With isolation 1 (read_committed) the offset is the last stable
    offset, with 0 the high watermark."""
    client = b"txn-failover"
    body = struct.pack(">ibi", -1, isolation, 1) + struct.pack(">h", len(topic)) + topic.encode()
    body += struct.pack(">iiq", 1, partition, -1)
    frame = struct.pack(">hhih", 2, 2, 9, len(client)) + client + body
    try:
        with socket.create_connection(("127.0.0.1", node * 10000 + 9092), timeout=5) as s:
            s.sendall(struct.pack(">i", len(frame)) + frame)
            size = struct.unpack(">i", recv(s, 4))[0]
            data = recv(s, size)
    except OSError:
        return None
    (name_len,) = struct.unpack(">h", data[12:14])
    at = 14 + name_len + 4  # past the topic name and the partitions array length
    _p, error, _ts, offset = struct.unpack(">ihqq", data[at:at + 22])
    return error, offset


def describe_partitions(parts):
    """Each partition's leader, high watermark and last stable offset, for failure messages."""
    out = []
    for p in parts:
        leader = claimed_leader(TOPIC, p)
        if leader is None:
            out.append("%d: no leader" % p)
            continue
        out.append("%d: leader %d, (error, high watermark) %s, (error, last stable offset) %s" % (
            p, leader, list_offsets(leader, TOPIC, p, 0), list_offsets(leader, TOPIC, p, 1)))
    return "; ".join(out)


def recv(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


def coordinator_of(txn_id, timeout=30, exclude=None):
    """The node leading the id's __transaction_state partition, once FindCoordinator on every
    live node agrees with it; exits with FAIL if that does not happen within `timeout`."""
    index = partition_for(txn_id, TXN_PARTITIONS)
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        leader = claimed_leader(TXN_TOPIC, index)
        answers = {n: find_coordinator(n, txn_id) for n in NODES if n != exclude}
        answers = {n: a for n, a in answers.items() if a is not None}
        last = (leader, answers)
        if leader is not None and leader != exclude and answers and all(a == (0, leader) for a in answers.values()):
            return leader
        time.sleep(0.2)
    raise SystemExit("FAIL: no agreed coordinator for %s (%s-%d) within %d s: leader %s, "
                     "FindCoordinator (error, node) by node %s" % (txn_id, TXN_TOPIC, index, timeout, *last))


def init_producer_id(node, txn_id):
    """InitProducerId v0 for `txn_id` sent to `node`: its error code; None if no answer."""
    client = b"txn-failover"
    body = struct.pack(">h", len(txn_id)) + txn_id.encode() + struct.pack(">i", 30000)
    frame = struct.pack(">hhih", 22, 0, 11, len(client)) + client + body
    try:
        with socket.create_connection(("127.0.0.1", node * 10000 + 9092), timeout=10) as s:
            s.sendall(struct.pack(">i", len(frame)) + frame)
            size = struct.unpack(">i", recv(s, 4))[0]
            data = recv(s, size)
    except OSError:
        return None
    return struct.unpack(">h", data[8:10])[0]


def describe_coordinator(txn_id):
    """Each node's view of the id's __transaction_state partition, its FindCoordinator
    answer and its InitProducerId error for the id, for failure messages (the round is over
    by then: bumping the id's epoch changes nothing that is checked)."""
    index = partition_for(txn_id, TXN_PARTITIONS)
    views = []
    for n in NODES:
        v = partition_view(n, TXN_TOPIC, index)
        views.append("node %d: %s, FindCoordinator (error, node) %s, InitProducerId error %s" % (
            n, v and {k: v.get(k) for k in ("leader", "leader_epoch", "isr", "high_watermark")},
            find_coordinator(n, txn_id), init_producer_id(n, txn_id)))
    return "%s-%d as seen by " % (TXN_TOPIC, index) + "; ".join(views)


def new_topic(name):
    """Creates this round's topic (each round has its own, so that one round's undecided
    transaction does not hold up the next) and waits for its leaders."""
    global TOPIC
    TOPIC = "txn-failover-%d-r%s" % (STAMP, name[-1])
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3)])[TOPIC].result(30)
    deadline = time.time() + 30
    while None in leaders().values() and time.time() < deadline:
        time.sleep(0.2)
    print("%s: topic %s, leaders %s" % (name, TOPIC, leaders()), flush=True)


def leaders():
    return {p: claimed_leader(TOPIC, p) for p in range(PARTITIONS)}


def partitions_away_from(node, count=3):
    """Up to `count` partitions of TOPIC whose leader is not `node` (all of them if none)."""
    away = [p for p, l in sorted(leaders().items()) if l is not None and l != node]
    if not away:
        print("note: every partition is led by the coordinator node %d" % node)
        return list(range(count))
    return away[:count]


def txn_producer(txn_id, nodes=NODES, **extra):
    return Producer({
        "bootstrap.servers": bootstrap(nodes),
        "log_level": 2,  # no connection-refused noise while a node is down
        **extra,
        "transactional.id": txn_id,
        "transaction.timeout.ms": 30000,
        "linger.ms": 5,
        "socket.connection.setup.timeout.ms": 5000,
    })


def write_sentinels(tag):
    """One record per partition after everything of the round, by a plain producer. True if
    all were acknowledged; otherwise prints the failures (and the partitions) and is False."""
    p = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all", "enable.idempotence": True,
                  "message.timeout.ms": 30000, "log_level": 2})
    failed = {}

    def on_delivery(err, msg):
        if err is not None:
            failed[msg.partition()] = str(err)

    t0 = time.time()
    for part in range(PARTITIONS):
        p.produce(TOPIC, value=b"sentinel-%s-%d" % (tag.encode(), part), partition=part,
                  on_delivery=on_delivery)
    left = p.flush(40)
    if failed or left:
        print("FAIL: sentinels of round %s not acknowledged after %.0f s (acks=all, idempotent): "
              "%d still queued; failed by partition: %s" % (tag, time.time() - t0, left, failed))
        print("  partitions: " + describe_partitions(sorted(failed) or range(PARTITIONS)))
        return False
    return True


def read_committed_until_sentinels(tag, timeout=60):
    """Every value of TOPIC visible to read_committed, once the round's sentinels are (every
    transaction before them decided); None if they did not all show up within `timeout`."""
    want = {b"sentinel-%s-%d" % (tag.encode(), part) for part in range(PARTITIONS)}
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "txn-failover-check",
                  "enable.auto.commit": False, "isolation.level": "read_committed", "log_level": 2})
    c.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
    values, errors = [], []
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and not want <= set(values):
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                errors.append(str(m.error()))
            else:
                values.append(m.value())
        positions = {tp.partition: tp.offset for tp in c.position(c.assignment())}
    finally:
        c.close()
    if not want <= set(values):
        missing = sorted(want - set(values))
        print("sentinels of round %s missing after %d s: %s" % (tag, timeout, missing))
        print("  read_committed consumer positions %s; its errors: %s" % (positions, errors[-5:]))
        print("  partitions: " + describe_partitions([int(v.rsplit(b"-", 1)[1]) for v in missing]))
        return None
    return values


def visible(values, prefix):
    return sorted(v for v in values if v.startswith(prefix))


def leader_views():
    """{(topic, partition): (leader, replicas, isr)} as the node leading each partition (in
    the latest epoch any node claims) reports them."""
    best = {}
    for node in NODES:
        doc = admin_get(node, "/v1/partitions")
        for p in (doc or {}).get("partitions", []):
            if p["leader"] != node:
                continue
            key = (p["topic"], p["partition"])
            epoch = p.get("leader_epoch") or 0
            if key not in best or epoch > best[key][0]:
                best[key] = (epoch, node, p.get("replicas") or [], p.get("isr") or [])
    return {k: v[1:] for k, v in best.items()}


def pick_txn_id(name):
    """A transactional id for the round whose coordinator leads as few partitions of the
    round's topic as any candidate's (none, mostly), so that killing it leaves the
    transaction's partitions where they are."""
    view = leader_views()
    led = {}
    for p in range(PARTITIONS):
        leader = view.get((TOPIC, p), (None,))[0]
        led[leader] = led.get(leader, 0) + 1

    def cost(txn_id):
        leader = view.get((TXN_TOPIC, partition_for(txn_id, TXN_PARTITIONS)), (None,))[0]
        return (leader is None, led.get(leader, 0))

    candidates = ["txn-failover-%d-r%s-%d" % (STAMP, name[-1], k) for k in range(100)]
    return min(candidates, key=cost)


def wait_rejoined(node, timeout=60):
    """Waits until `node` is in the ISR of every partition of TOPIC and of __transaction_state
    that it replicates, by their leaders' account; True if it is within `timeout`."""
    deadline = time.time() + timeout
    missing = None
    while time.time() < deadline:
        view = leader_views()
        missing = []
        for topic, count in ((TOPIC, PARTITIONS), (TXN_TOPIC, TXN_PARTITIONS)):
            for p in range(count):
                _leader, replicas, isr = view.get((topic, p), (None, None, []))
                if replicas is None or (node in replicas and node not in isr):
                    missing.append("%s-%d" % (topic, p))
        if not missing:
            return True
        time.sleep(0.5)
    print("node %d not in the ISR of (or no leader for) %s after %d s" % (node, missing, timeout))
    return False


def produce_txn(p, tag, parts, count=PER_ROUND):
    """Produces `count` records b"<tag>-<i>" spread over `parts`, and waits for them."""
    for i in range(count):
        p.produce(TOPIC, key=b"%d" % i, value=b"%s-%d" % (tag.encode(), i), partition=parts[i % len(parts)])
    if p.flush(30) != 0:
        raise SystemExit("FAIL: records of transaction %s not delivered" % tag)


def round_kill_before_commit(txn_id):
    """Round 1: the coordinator dies between the records and the commit."""
    ok = True
    victim = coordinator_of(txn_id)
    parts = partitions_away_from(victim)
    print("round 1: %s coordinated by node %d; writing %d records to partitions %s (leaders %s)" % (
        txn_id, victim, PER_ROUND, parts, [claimed_leader(TOPIC, p) for p in parts]), flush=True)
    p = txn_producer(txn_id)
    try:
        t0 = time.time()
        p.init_transactions(30)
    except KafkaException as e:
        print("FAIL: init_transactions failed after %.1f s: %s" % (time.time() - t0, e.args[0]))
        print("  " + describe_coordinator(txn_id))
        return False, None
    p.begin_transaction()
    produce_txn(p, "r1", parts)
    killed = time.time()
    local_cluster("kill", victim)
    outcome, errors = None, []
    deadline = killed + 60
    while outcome is None:
        try:
            p.commit_transaction(max(1.0, deadline - time.time()))
            outcome = "committed"
        except KafkaException as e:
            err = e.args[0]
            errors.append(str(err))
            if err.retriable() and time.time() < deadline:
                continue
            if err.txn_requires_abort():
                try:
                    p.abort_transaction(30)
                    outcome = "aborted after a failed commit"
                except KafkaException as e2:
                    errors.append(str(e2.args[0]))
                    outcome = "failed (abort failed too)"
            else:
                outcome = "failed (fatal: %s)" % err.fatal()
    took = time.time() - killed
    new = coordinator_of(txn_id, exclude=victim)
    print("round 1: killed node %d; commit_transaction: %s after %.1f s%s; new coordinator node %d" % (
        victim, outcome, took, (" (errors: %s)" % errors) if errors else "", new), flush=True)
    if not write_sentinels("r1"):
        return False, victim
    values = read_committed_until_sentinels("r1")
    if values is None:
        print("FAIL: round 1's transaction is not decided 60 s after the sentinels (a transaction left hanging?)")
        return False, victim
    seen = visible(values, b"r1-")
    want = sorted(b"r1-%d" % i for i in range(PER_ROUND))
    print("round 1: read_committed sees %d of the transaction's %d records" % (len(seen), PER_ROUND))
    if outcome == "committed" and seen != want:
        print("FAIL: commit_transaction returned but read_committed sees %d of %d records (%d distinct)" % (
            len(seen), PER_ROUND, len(set(seen))))
        ok = False
    if outcome != "committed" and seen:
        print("FAIL: the commit failed but read_committed sees %d of the %d records" % (len(seen), PER_ROUND))
        ok = False
    return ok, victim


def round_kill_after_commit(txn_id):
    """Round 2: the coordinator dies right after commit_transaction returned."""
    ok = True
    victim = coordinator_of(txn_id)
    parts = partitions_away_from(victim)
    print("round 2: %s coordinated by node %d; writing %d records to partitions %s (leaders %s)" % (
        txn_id, victim, PER_ROUND, parts, [claimed_leader(TOPIC, p) for p in parts]), flush=True)
    p = txn_producer(txn_id)
    try:
        t0 = time.time()
        p.init_transactions(30)
    except KafkaException as e:
        print("FAIL: init_transactions failed after %.1f s: %s" % (time.time() - t0, e.args[0]))
        print("  " + describe_coordinator(txn_id))
        return False, None
    p.begin_transaction()
    produce_txn(p, "r2", parts)
    t0 = time.time()
    try:
        p.commit_transaction(30)
    except KafkaException as e:
        print("FAIL: commit_transaction failed with every node up: %s" % e.args[0])
        print("  " + describe_coordinator(txn_id))
        return False, None
    took = time.time() - t0
    local_cluster("kill", victim)
    print("round 2: commit_transaction returned after %.2f s; killed node %d" % (took, victim), flush=True)
    if not write_sentinels("r2"):
        return False, victim
    values = read_committed_until_sentinels("r2")
    if values is None:
        print("FAIL: round 2's committed transaction is not decided 60 s after the kill")
        return False, victim
    seen = visible(values, b"r2-")
    print("round 2: read_committed sees %d of the transaction's %d records" % (len(seen), PER_ROUND))
    if seen != sorted(b"r2-%d" % i for i in range(PER_ROUND)):
        print("FAIL: a committed transaction is not entirely visible after its coordinator died "
              "(%d records seen, %d distinct)" % (len(seen), len(set(seen))))
        ok = False
    return ok, victim


def round_zombie(txn_id):
    """Round 3: zombie fencing, the two producers bootstrapped through different nodes."""
    ok = True
    coordinator = coordinator_of(txn_id)
    parts = partitions_away_from(coordinator, 2)
    others = [n for n in NODES if n != coordinator]
    quiet = logging.getLogger("fenced-producer")  # its fencing is expected: not logged
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    old = txn_producer(txn_id, [others[0]], logger=quiet)
    print("round 3: %s coordinated by node %d; the producers bootstrap through nodes %d and %d" % (
        txn_id, coordinator, others[0], others[-1]), flush=True)
    try:
        t0 = time.time()
        old.init_transactions(30)
    except KafkaException as e:
        print("FAIL: init_transactions of the first producer failed after %.1f s: %s" % (time.time() - t0, e.args[0]))
        print("  " + describe_coordinator(txn_id))
        return False, None
    old.begin_transaction()
    produce_txn(old, "old", parts, 20)
    new = txn_producer(txn_id, [others[-1]])
    try:
        t0 = time.time()
        new.init_transactions(30)  # fences `old`, aborting its open transaction
    except KafkaException as e:
        print("FAIL: init_transactions of the second producer failed after %.1f s: %s" % (time.time() - t0, e.args[0]))
        print("  " + describe_coordinator(txn_id))
        return False, None
    print("round 3: partitions %s; the second producer's init fenced the first" % (parts,), flush=True)

    # More records from the fenced producer: their partition's leader knows the bumped epoch
    # (from the abort marker), so they fail; librdkafka raises that as a fatal error from
    # flush (confluent-kafka raises fatal errors from poll/flush whatever error_cb is; with
    # delivery callbacks pending that surfaces as a SystemError, hence no callbacks here).
    late_errors = []
    for i in range(20, 30):
        try:
            old.produce(TOPIC, value=b"old-%d" % i, partition=parts[i % len(parts)])
        except Exception as e:
            late_errors.append(repr(e))
            break
    try:
        old.flush(15)
    except Exception as e:
        late_errors.append(str(e.__cause__ or e))
    try:
        old.commit_transaction(15)
        old_outcome = "committed"
    except Exception as e:
        old_outcome = "failed (%s)" % (e.args[0].name() if isinstance(e, KafkaException) else repr(e))
    new.begin_transaction()
    produce_txn(new, "new", parts, 20)
    new.commit_transaction(30)
    print("round 3: fenced producer's commit %s; errors on its late records: %s" % (
        old_outcome, late_errors[:1] or "none"), flush=True)
    if old_outcome == "committed":
        print("FAIL: the fenced producer's commit_transaction succeeded")
        ok = False
    if not write_sentinels("r3"):
        return False, None
    values = read_committed_until_sentinels("r3")
    if values is None:
        print("FAIL: round 3's transactions are not decided")
        return False, None
    old_seen, new_seen = visible(values, b"old-"), visible(values, b"new-")
    print("round 3: read_committed sees %d records of the fenced producer, %d of 20 of the new one" % (
        len(old_seen), len(new_seen)))
    if old_seen:
        print("FAIL: records of the fenced producer are visible: %s" % old_seen[:10])
        ok = False
    if new_seen != sorted(b"new-%d" % i for i in range(20)):
        print("FAIL: the new producer's committed records are not all visible once")
        ok = False
    return ok, None


def main():
    global TXN_PARTITIONS
    TXN_PARTITIONS = partition_count(TXN_TOPIC)
    if TXN_PARTITIONS is None:
        raise SystemExit("FAIL: no node lists %s in /v1/partitions" % TXN_TOPIC)
    print("%s has %d partitions" % (TXN_TOPIC, TXN_PARTITIONS), flush=True)
    start = time.time()
    ok, results = True, []
    for name, round_ in (("round 1", round_kill_before_commit), ("round 2", round_kill_after_commit),
                         ("round 3", round_zombie)):
        t0 = time.time()
        new_topic(name)
        passed, victim = round_(pick_txn_id(name))
        if victim is not None:
            local_cluster("start", victim)
            rejoined = wait_rejoined(victim)
            print("node %d restarted; back in the ISR: %s" % (victim, rejoined), flush=True)
            if not rejoined:
                print("FAIL: node %d did not rejoin the ISR" % victim)
                passed = False
        results.append("%s %s (%.0f s)" % (name, "OK" if passed else "FAIL", time.time() - t0))
        ok = ok and passed
    print("; ".join(results))
    print("transaction coordinator failover test (%.0f s):" % (time.time() - start), "OK" if ok else "FAIL")
    sys.exit(0 if ok else 1)


TXN_PARTITIONS = 50

if __name__ == "__main__":
    main()
