"""Shared helpers for the real-client interop suite.

The broker under test is given by the environment (tests/interop/run.sh sets it):
  SLUICE_BOOTSTRAP   host:port of the Kafka listener (required)
  SLUICE_ADMIN_ADDR  host:port of the admin HTTP listener (optional)
  SLUICE_NODES       how many nodes the cluster has (default 1)
  SLUICE_REPLICATION_FACTOR  replication factor for the topics the tests create (default 1)
"""

from __future__ import annotations

import os
import time
import uuid

BOOTSTRAP = os.environ.get("SLUICE_BOOTSTRAP", "")
ADMIN_ADDR = os.environ.get("SLUICE_ADMIN_ADDR", "")
NODES = int(os.environ.get("SLUICE_NODES", "1"))
REPLICATION = int(os.environ.get("SLUICE_REPLICATION_FACTOR", "1"))

# The broker's default message.max.bytes (Kafka's default).
BROKER_MAX_MESSAGE_BYTES = 1048588
# A value that fits in one batch under that limit, with key/headers/overhead.
BIG_VALUE_SIZE = 1_000_000

# librdkafka's settings that make an unresponsive broker show up as an error quickly.
RDKAFKA_COMMON = {
    "socket.timeout.ms": 10000,
    "socket.connection.setup.timeout.ms": 10000,
}


def unique_topic(prefix: str) -> str:
    """A topic name no other test (or earlier run against the same data dir) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.2, what: str = "condition"):
    """Poll predicate() until it returns a truthy value; return it, or raise AssertionError."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported below if we time out
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def payload(i: int, size: int = 0) -> bytes:
    """A deterministic, compressible value of roughly `size` bytes for record i."""
    head = f"value-{i:06d}-".encode()
    if size <= len(head):
        return head
    body = (f"{i % 97:02d}-sluice-interop-" * (size // 18 + 1)).encode()
    return head + body[: size - len(head)]


def big_value(seed: int = 0) -> bytes:
    """A ~1 MB value that does not compress (so every codec still sends ~1 MB)."""
    import random

    rnd = random.Random(seed)
    return rnd.randbytes(BIG_VALUE_SIZE)


def confluent_admin():
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": BOOTSTRAP, **RDKAFKA_COMMON})


def topic_partition_leaders(admin, topic: str):
    """{partition: leader} from a metadata request for ALL topics (never auto-creates)."""
    md = admin.list_topics(timeout=10)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return None
    return {p.id: p.leader for p in t.partitions.values()}


def wait_topic_ready(admin, topic: str, partitions: int, timeout: float = 15.0):
    def ready():
        leaders = topic_partition_leaders(admin, topic)
        return leaders is not None and len(leaders) == partitions and all(
            leader >= 0 for leader in leaders.values())

    wait_for(ready, timeout, what=f"topic {topic} with {partitions} partitions and leaders")


def wait_topic_gone(admin, topic: str, timeout: float = 15.0):
    wait_for(lambda: topic_partition_leaders(admin, topic) is None, timeout,
             what=f"topic {topic} to disappear from metadata")


def create_topic(topic: str, partitions: int = 1, config: dict | None = None, admin=None):
    """Create a topic with confluent's AdminClient and wait until it has leaders."""
    from confluent_kafka.admin import NewTopic

    admin = admin or confluent_admin()
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=REPLICATION, config=config or {})],
        operation_timeout=10, request_timeout=15)
    futures[topic].result(timeout=20)
    wait_topic_ready(admin, topic, partitions)
    return topic


def make_records(n: int, with_big: bool = True, base_ts: int | None = None):
    """Records exercising keys, null keys, null values, empty values, headers
    (incl. duplicate keys and empty values), explicit timestamps and one ~1 MB value.

    Each record is a dict: key, value, headers (list of (str, bytes)), ts.
    """
    base_ts = base_ts if base_ts is not None else int(time.time() * 1000) - 3_600_000
    records = []
    for i in range(n):
        key = f"key-{i:05d}".encode()
        value = payload(i, 20 + (i * 37) % 700)
        headers = [("idx", str(i).encode()), ("kind", b"regular")]
        if i % 7 == 3:
            key = None  # null key
        if i % 11 == 5:
            value = None  # tombstone-style null value (keyed)
            key = f"key-{i:05d}".encode()
        if i % 13 == 6:
            value = b""  # empty, not null
        if i % 5 == 4:
            headers = []  # no headers at all
        if i % 9 == 2:
            headers = headers + [("dup", b"first"), ("dup", b"second"), ("empty", b"")]
        records.append({"key": key, "value": value, "headers": headers, "ts": base_ts + i * 10})
    if with_big:
        records.insert(n // 2, {
            "key": b"big-one",
            "value": big_value(n),
            "headers": [("size", str(BIG_VALUE_SIZE).encode())],
            "ts": base_ts + (n // 2) * 10 + 5,
        })
    return records


def describe_record(r) -> str:
    v = r["value"]
    vs = "None" if v is None else f"{len(v)}B:{v[:24]!r}"
    return f"key={r['key']!r} value={vs} headers={r['headers']!r} ts={r['ts']}"


def assert_records_equal(got: list[dict], want: list[dict], first_offset: int = 0):
    """Exact equality of key/value/headers/timestamp, in order, offsets contiguous."""
    assert len(got) == len(want), f"got {len(got)} records, want {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert g["offset"] == first_offset + i, (
            f"record {i}: offset {g['offset']}, want {first_offset + i} (offsets not contiguous)")
        for field in ("key", "value", "headers", "ts"):
            assert g[field] == w[field], (
                f"record {i} (offset {g['offset']}): {field} differs\n"
                f"  got:  {describe_record(g)}\n  want: {describe_record(w)}")
