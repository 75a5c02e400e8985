"""Shared helpers of the multi-process cluster tests (tests/cluster/*.py).

The cluster is deploy/local-cluster.sh's: node N has Kafka on 127.0.0.1:N9092 and its admin
HTTP on 127.0.0.1:N9644.
"""
import json
import os
import subprocess
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "deploy", "local-cluster.sh")
NODES = (1, 2, 3)
BOOTSTRAP = "127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092"


def bootstrap(nodes):
    return ",".join("127.0.0.1:%d9092" % n for n in nodes)


def admin_get(node, path):
    """The JSON a node's admin listener answers for `path`; None if the node does not answer."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d9644%s" % (node, path), timeout=2) as r:
            return json.load(r)
    except OSError:
        return None


def partition_view(node, topic, partition=0):
    """The node's /v1/partitions entry for the partition (leader, isr, high watermark...)."""
    doc = admin_get(node, "/v1/partitions")
    if doc is None:
        return None
    return next((p for p in doc["partitions"]
                 if p["topic"] == topic and p["partition"] == partition), None)


def claimed_leader(topic, partition=0):
    """The node leading the partition by its own account, in the latest epoch any node claims
    it (a deposed leader may still claim an older one); None if none does."""
    claims = []
    for node in NODES:
        p = partition_view(node, topic, partition)
        if p and p["leader"] == node:
            claims.append((p.get("leader_epoch") or 0, node))
    return max(claims)[1] if claims else None


def local_cluster(*args):
    subprocess.run([SCRIPT, *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def java_hash(s):
    """Java's String.hashCode of s (a signed 32-bit int)."""
    h = 0
    units = s.encode("utf-16-be")
    for i in range(0, len(units), 2):
        h = (31 * h + int.from_bytes(units[i:i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def partition_for(key, partitions):
    """The partition of an internal topic (__consumer_offsets, __transaction_state) holding a
    group or transactional id: abs(hashCode) mod the partition count, Kafka's Utils.abs."""
    h = java_hash(key)
    return (abs(h) if h != -(1 << 31) else 0) % partitions


def partition_count(topic):
    """How many partitions of `topic` the first node that answers lists; None if none does."""
    for node in NODES:
        doc = admin_get(node, "/v1/partitions")
        if doc is not None:
            return sum(1 for p in doc["partitions"] if p["topic"] == topic) or None
    return None
