"""Exactly-once consume-transform-produce across processor crashes, on a local three-node cluster.

Started by tests/cluster/run.sh. An input topic (replication factor 3, 3 partitions) is filled
with N numbered records by a plain idempotent producer. A processor (txn_processor.py, a
separate Python process: read_committed consumer in a group, transactional producer with a
fixed transactional.id, one transaction per polled batch carrying its output records and the
consumer's offsets) turns each input record into b"out-<value>" on an output topic (also
replication factor 3). The processor is SIGKILLed at random moments (0.1-1 s after each
instance's first commit) and restarted, several times; then it runs until the group's
committed offsets reach the end of the input. The processor must never stop by itself (one
instance at a time, nothing else disturbed: a fatal error is a failure). A read_committed consumer must then find every input record's result on the output
exactly once: none missing, none twice, each with its input's key. Also checked: no
transaction is left open on the output (a read_committed reader ends where a
read_uncommitted one does: last stable offset = high watermark).

Environment: TXN_EOS_RECORDS (default 3000), TXN_EOS_KILLS (default 6).
"""
import os
import random
import subprocess
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_helpers import BOOTSTRAP

HERE = os.path.dirname(os.path.abspath(__file__))
STAMP = int(time.time())
INPUT = "eos-in-%d" % STAMP
OUTPUT = "eos-out-%d" % STAMP
GROUP = "eos-group-%d" % STAMP
TXN_ID = "eos-processor-%d" % STAMP
PARTITIONS = 3
RECORDS = int(os.environ.get("TXN_EOS_RECORDS", "3000"))
KILLS = int(os.environ.get("TXN_EOS_KILLS", "6"))
DEADLINE = 150  # seconds for all the processing, kills included


def committed_offsets(monitor):
    """The group's committed offsets on the input, {partition: offset}; None if unreadable."""
    try:
        tps = monitor.committed([TopicPartition(INPUT, p) for p in range(PARTITIONS)], timeout=5)
    except KafkaException:
        return None
    return {tp.partition: tp.offset for tp in tps}


def committed_once(log_path, pid):
    """Whether the processor with this pid logged a committed transaction."""
    with open(log_path, "rb") as f:
        return (b"[pid %d] committed " % pid) in f.read()


def read_output(isolation, timeout=60):
    """Every record of the output topic from the start, as (partition, offset, key, value),
    read until each partition reports its end; and {partition: end offset}. The end is the
    high watermark for read_uncommitted, the last stable offset for read_committed."""
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "eos-check-%s" % isolation,
                  "enable.auto.commit": False, "isolation.level": isolation,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(OUTPUT, p, 0) for p in range(PARTITIONS)])
    out, ends = [], {}
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and len(ends) < PARTITIONS:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    ends[m.partition()] = m.offset()
                else:
                    print("output consumer error:", m.error())
                continue
            ends.pop(m.partition(), None)
            out.append((m.partition(), m.offset(), m.key(), m.value()))
    finally:
        c.close()
    if len(ends) < PARTITIONS:
        print("FAIL: %s reader did not reach the end of partitions %s within %d s" % (
            isolation, sorted(set(range(PARTITIONS)) - set(ends)), timeout))
    return out, ends


def main():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for f in admin.create_topics([NewTopic(INPUT, PARTITIONS, 3), NewTopic(OUTPUT, PARTITIONS, 3)]).values():
        f.result(30)
    p = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 5})
    for i in range(RECORDS):
        p.produce(INPUT, key=b"k%d" % i, value=b"%d" % i, partition=i % PARTITIONS)
        if i % 1000 == 999:
            p.poll(0)
    if p.flush(60) != 0:
        raise SystemExit("FAIL: the input did not finish producing")
    want = {q: len(range(q, RECORDS, PARTITIONS)) for q in range(PARTITIONS)}
    print("input %s: %d records; output %s; group %s; transactional.id %s" % (
        INPUT, RECORDS, OUTPUT, GROUP, TXN_ID), flush=True)

    monitor = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": GROUP, "enable.auto.commit": False})
    log_path = os.path.join(os.environ.get("SLUICE_LOCAL_DIR", "/tmp"), "txn-processor-%d.log" % STAMP)
    log = open(log_path, "ab")
    cmd = [sys.executable, os.path.join(HERE, "txn_processor.py"), BOOTSTRAP, INPUT, OUTPUT, GROUP, TXN_ID]
    ok = True
    kills, exits, starts = [], [], 0
    done = False
    start = time.time()
    last = None
    proc = None
    try:
        while not done and time.time() < start + DEADLINE:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            starts += 1
            # Until the next kill (none after the last one): run, watching the commits. The
            # kill comes 0.1-1 s after this instance's first commit (at most 4 s after it
            # started), so that it lands while records are flowing.
            started, first = time.time(), None
            run_for = random.uniform(0.1, 1.0) if len(kills) < KILLS else DEADLINE
            while time.time() < start + DEADLINE:
                if first is None:
                    if committed_once(log_path, proc.pid) or time.time() > started + 4:
                        first = time.time()
                elif time.time() > first + run_for:
                    break
                last = committed_offsets(monitor) or last
                if last == want:
                    done = True
                    break
                if proc.poll() is not None:
                    exits.append(proc.returncode)
                    print("processor exited by itself with status %d (see %s)" % (proc.returncode, log_path), flush=True)
                    break
                time.sleep(0.1)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                if not done:
                    kills.append(time.time() - start)
                    print("%5.1f s: killed the processor (kill %d); committed offsets %s" % (
                        kills[-1], len(kills), last), flush=True)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        monitor.close()
    took = time.time() - start
    if not done:
        print("FAIL: the group's committed offsets reached %s of %s in %d s" % (last, want, DEADLINE))
        ok = False
    with open(log_path, "rb") as f:
        lines = f.read().decode(errors="replace").splitlines()
    committed_txns = sum(1 for line in lines if " committed " in line)
    aborts = sum(1 for line in lines if "aborting the transaction" in line)

    # The result of every input record exactly once.
    got, lso = read_output("read_committed")
    values = [r[3] for r in got]
    counts = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    expected = {b"out-%d" % i for i in range(RECORDS)}
    missing = sorted(int(v[4:]) for v in expected - set(counts))
    dups = sorted(v for v, n in counts.items() if n > 1)
    strangers = sorted(v for v in counts if v not in expected)
    wrong_key = [r for r in got if r[3] in expected and r[2] != b"k%s" % r[3][4:]]
    uncommitted, hwm = read_output("read_uncommitted")
    print("processor: %d starts, %d kills, %d exits by itself, %d transactions committed, "
          "%d aborted by the processor, %.1f s" % (starts, len(kills), len(exits), committed_txns, aborts, took))
    print("output read_committed: %d records, %d distinct, missing %d, duplicated %d; "
          "read_uncommitted: %d records (%d from aborted transactions)" % (
              len(values), len(counts), len(missing), len(dups), len(uncommitted),
              len(uncommitted) - len(values)))
    if missing:
        print("FAIL: missing results of inputs (first 20):", missing[:20])
        ok = False
    if dups:
        print("FAIL: results read more than once (first 20):",
              [(v, counts[v], [(r[0], r[1]) for r in got if r[3] == v]) for v in dups[:20]])
        ok = False
    if strangers:
        print("FAIL: unexpected records (first 20):", strangers[:20])
        ok = False
    if wrong_key:
        print("FAIL: records with the wrong key (first 5):", wrong_key[:5])
        ok = False
    if len(kills) < KILLS:
        print("note: the processing finished after %d of %d kills" % (len(kills), KILLS))
    if exits:
        print("FAIL: the processor stopped by itself %d times (statuses %s):" % (len(exits), exits))
        print("\n".join("  " + line for line in lines if "fatal" in line or "abort" in line or "error" in line.lower())[-3000:])
        ok = False
    # Nothing left open on the output: its last stable offsets are its high watermarks.
    if lso != hwm:
        print("FAIL: a transaction is left open on the output: last stable offsets %s, high watermarks %s" % (lso, hwm))
        ok = False
    if not ok:
        print("processor log: %s (last lines below)" % log_path)
        print("\n".join("  " + line for line in lines[-30:]))
    print("exactly-once test:", "OK" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
