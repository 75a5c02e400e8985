#!/usr/bin/env bash
# `make bench`, three-node part: a local cluster of release-built nodes on loopback
# (deploy/local-cluster.sh, fsync `always`), topics with replication factor 3, acks=all.
# Prints one JSON line per phase on stdout (figures go to docs/benchmarks.md), then the
# failover times of tests/cluster/failover.py. The three nodes and the client share the
# machine.
#
#   RECORDS=2000000 tests/bench-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
: "${CARGO_TARGET_DIR:=/var/cache/sluice/target}"
export SLUICE_BIN="$CARGO_TARGET_DIR/release/sluice"
BENCH="$CARGO_TARGET_DIR/release/sluice-bench"
RECORDS="${RECORDS:-2000000}"
BOOT="127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092"
for b in "$SLUICE_BIN" "$BENCH"; do
  [ -x "$b" ] || { echo "missing $b: run 'make release' first" >&2; exit 1; }
done
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] ||
  { echo "missing $ROOT/.venv (the failover phase needs it): run 'make test-deps' first" >&2; exit 1; }
export SLUICE_LOCAL_DIR="$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-cluster.XXXXXX")"
export SLUICE_LOCAL_ARGS="--log-level warn --fsync always"
cleanup() { deploy/local-cluster.sh down >/dev/null 2>&1 || true; rm -rf "$SLUICE_LOCAL_DIR"; }
trap cleanup EXIT
deploy/local-cluster.sh up >&2

bench() { "$BENCH" --bootstrap "$BOOT" --report-secs 0 --replication-factor 3 "$@"; }
# The three nodes' CPU seconds (summed) go into each produce line: against the bench's own
# (client_cpu_s), they show who took the two cores. Phase 5 restarts nodes, so it comes last.
NODES=()
for n in 1 2 3; do NODES+=(--broker-pid "$(cat "$SLUICE_LOCAL_DIR/node-$n.pid")"); done
echo "three nodes, replication factor 3, acks=all, 6 partitions, fsync always" >&2

# 1. Peak rate, 100-byte records.
peak_json="$(bench --mode produce --topic rf3-100 --partitions 6 --records "$RECORDS" "${NODES[@]}" \
  --record-size 100 --acks all --linger-ms 5)"
echo "$peak_json" | sed 's/^{/{"phase":"3 nodes RF=3 produce acks=all, 100 B",/'
# 2. Latency at half the peak rate of phase 1, right after it, once the disk has written
# back what phase 1 left dirty (its flush would otherwise land in this phase's tail).
sync
peak_rate="$(echo "$peak_json" | sed -n 's/.*"records_per_sec":\([0-9.]*\).*/\1/p')"
half=$(awk -v r="$peak_rate" 'BEGIN { printf "%d", r / 2 }')
bench --mode produce --topic rf3-half --partitions 6 --records "$RECORDS" --record-size 100 \
  --acks all --linger-ms 5 --throughput "$half" |
  sed "s/^{/{\"phase\":\"3 nodes RF=3 acks=all at half rate ($half\/s)\",/"
# 3. Peak rate, 1 KiB records.
bench --mode produce --topic rf3-1k --partitions 6 --records "$((RECORDS / 4))" \
  --record-size 1024 --acks all --linger-ms 5 |
  sed 's/^{/{"phase":"3 nodes RF=3 produce acks=all, 1 KiB",/'
# 3b. Transactions of 100 records (100 B each): a transactional producer committing after
# every 100 records, same topic settings as phase 1 (compare with its records/s).
bench --mode produce --topic rf3-txn --partitions 6 --records "$((RECORDS / 10))" "${NODES[@]}" \
  --record-size 100 --acks all --linger-ms 5 --txn-records 100 |
  sed 's/^{/{"phase":"3 nodes RF=3 transactional, 100 records per transaction, 100 B",/'
bench --mode produce --topic rf3-txn8 --partitions 6 --records "$((RECORDS / 5))" "${NODES[@]}" \
  --record-size 100 --acks all --linger-ms 5 --txn-records 100 --producers 8 |
  sed 's/^{/{"phase":"3 nodes RF=3 transactional, 8 producers, 100 records per transaction",/'
# 4. Consume back what phase 1 wrote (from the leaders).
bench --mode consume --topic rf3-100 --records "$RECORDS" \
  --consumer-prop queued.min.messages=1000000 --consumer-prop fetch.queue.backoff.ms=10 |
  sed 's/^{/{"phase":"3 nodes consume (queued.min.messages=1000000, fetch.queue.backoff.ms=10)",/'
# 5. Failover: kill the leader of a partition under load, three times.
FAILOVER_KILLS=3 "$PY" tests/cluster/failover.py 2>/dev/null | grep -v '^%' >&2
