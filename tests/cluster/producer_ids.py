"""Producer ids are unique across the cluster.

Started by tests/cluster/run.sh. Sends raw InitProducerId (v0) requests to every node in
turn: all the ids handed out must differ (two producers sharing an id would have one's
batches taken as duplicates of the other's and acknowledged without being written).
"""
import socket
import struct
import sys


def init_producer_id(port, correlation):
    body = struct.pack(">hi", -1, 60000)  # transactional_id = null, transaction timeout
    client = b"pid-check"
    header = struct.pack(">hhih", 22, 0, correlation, len(client)) + client
    frame = header + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(struct.pack(">i", len(frame)) + frame)
        size = struct.unpack(">i", recv(s, 4))[0]
        data = recv(s, size)
    corr, _throttle, error, pid, epoch = struct.unpack(">iihqh", data[:20])
    assert corr == correlation, (corr, correlation)
    return error, pid, epoch


def recv(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise SystemExit("FAIL: connection closed")
        buf += chunk
    return buf


def main():
    ids = []
    for round_ in range(3):
        for node in (1, 2, 3):
            error, pid, epoch = init_producer_id(node * 10000 + 9092, round_ * 10 + node)
            if error != 0:
                raise SystemExit("FAIL: node %d answered InitProducerId with error %d" % (node, error))
            ids.append((node, pid))
    print("producer ids by node:", ids)
    pids = [p for _, p in ids]
    ok = len(set(pids)) == len(pids)
    print("producer id test:", "OK" if ok else "FAIL (an id was handed out twice)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
