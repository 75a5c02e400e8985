"""The on-disk logs of a partition's replicas, read from deploy/local-cluster.sh's data
directories, and the invariants they must hold after any sequence of kills and restarts.

Reads the segment files as crates/storage writes them (docs/architecture.md, "On-disk layout"):
each entry is a 32-byte frame header (magic 'S', kind, reserved u16, payload length u32,
Raft term u64, Raft index u64, CRC-32C u32, reserved u32, big-endian) and its payload; a
kind-1 payload is one Kafka record batch v2 with its offsets stamped. A torn tail (a node
writing while this reads) ends the read of that file.

Checked, per partition:
- every replica's batches have contiguous offsets;
- no idempotent batch (producer id, epoch, first sequence) is in one replica's log twice;
- replicas agree, entry for entry (term, offsets, producer id, epoch, sequence), on the
  Raft indexes all of them hold.

Usage: replica_logs.py LOCAL_DIR TOPIC PARTITIONS (exit 1 and a list of problems if any).
"""
import os
import struct
import sys

FRAME = struct.Struct(">BBHIQQII")
BATCH_KIND = 1


def read_entries(partition_dir):
    """(index, term, batch identity or None) for each entry, in log order. A batch identity
    is (base offset, last offset, producer id, producer epoch, base sequence)."""
    out = []
    segments = sorted(f for f in os.listdir(partition_dir) if f.endswith(".log"))
    for seg in segments:
        with open(os.path.join(partition_dir, seg), "rb") as f:
            data = f.read()
        at = 0
        while at + FRAME.size <= len(data):
            magic, kind, _, length, term, index, _, _ = FRAME.unpack_from(data, at)
            if magic != 0x53 or at + FRAME.size + length > len(data):
                break
            payload = data[at + FRAME.size:at + FRAME.size + length]
            at += FRAME.size + length
            ident = None
            if kind == BATCH_KIND and len(payload) >= 61:
                base, = struct.unpack_from(">q", payload, 0)
                delta, = struct.unpack_from(">i", payload, 23)
                pid, epoch, seq = struct.unpack_from(">qhi", payload, 43)
                ident = (base, base + delta, pid, epoch, seq)
            out.append((index, term, ident))
    # A suffix truncated and rewritten may leave the same index twice across segments: the
    # later write wins, as in the log itself.
    by_index = {}
    for index, term, ident in out:
        by_index[index] = (term, ident)
    return [(i, t, b) for i, (t, b) in sorted(by_index.items())]


def check(local_dir, topic, partitions, nodes=(1, 2, 3)):
    problems = []
    for p in range(partitions):
        logs = {}
        for n in nodes:
            d = os.path.join(local_dir, "node-%d" % n, "log", "%s-%d" % (topic, p))
            if os.path.isdir(d):
                logs[n] = read_entries(d)
        for n, entries in logs.items():
            batches = [b for _, _, b in entries if b is not None]
            for prev, cur in zip(batches, batches[1:]):
                if cur[0] != prev[1] + 1:
                    problems.append("partition %d node %d: offsets jump from %d to %d" % (
                        p, n, prev[1], cur[0]))
            seen = {}
            for b in batches:
                if b[2] < 0 or b[4] < 0:
                    continue
                key = (b[2], b[3], b[4])
                if key in seen:
                    problems.append(
                        "partition %d node %d: producer %d epoch %d sequence %d written twice, "
                        "at offsets %d and %d" % (p, n, b[2], b[3], b[4], seen[key], b[0]))
                seen[key] = b[0]
        if len(logs) > 1:
            tables = {n: {i: (t, b) for i, t, b in e} for n, e in logs.items()}
            common = set.intersection(*(set(t) for t in tables.values()))
            for i in sorted(common):
                views = {n: t[i] for n, t in tables.items()}
                if len(set(views.values())) > 1:
                    problems.append("partition %d: replicas differ at Raft index %d: %s" % (
                        p, i, views))
                    break
    return problems


def report(topic_partitions):
    """Checks the (topic, partition count) pairs in the local cluster's data directory
    (SLUICE_LOCAL_DIR), prints the outcome and the first problems; True if all hold or
    there is no directory to read."""
    local_dir = os.environ.get("SLUICE_LOCAL_DIR")
    if not local_dir:
        return True
    problems = [line for topic, partitions in topic_partitions
                for line in check(local_dir, topic, partitions)]
    for line in problems[:10]:
        print("  " + line)
    print("replica logs: %s" % ("OK" if not problems else "%d problem(s)" % len(problems)))
    return not problems


def main():
    local_dir, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    problems = check(local_dir, topic, partitions)
    for line in problems:
        print(line)
    print("replica logs:", "OK" if not problems else "%d problem(s)" % len(problems))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
