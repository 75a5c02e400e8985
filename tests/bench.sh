#!/usr/bin/env bash
# `make bench`: throughput, latency, broker CPU and memory of one release-built node.
#
# Starts a fresh node (fsync policy `always`, the default) on 127.0.0.1:19092 with data in a
# temporary directory, runs the phases below with sluice-bench (rdkafka), and prints one JSON
# line per phase on stdout; everything else goes to stderr. Figures go to docs/benchmarks.md.
#
#   RECORDS=2000000 tests/bench.sh        # records per phase (default 2,000,000)
#   COMMITS=10000 ASYNC_COMMITS=50000 REBALANCE_ROUNDS=7 tests/bench.sh   # group phases
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=/var/cache/sluice/target}"
SLUICE="$CARGO_TARGET_DIR/release/sluice"
BENCH="$CARGO_TARGET_DIR/release/sluice-bench"
RECORDS="${RECORDS:-2000000}"
COMMITS="${COMMITS:-10000}"
ASYNC_COMMITS="${ASYNC_COMMITS:-50000}"
REBALANCE_ROUNDS="${REBALANCE_ROUNDS:-7}"
PORT="${BENCH_PORT:-19092}"
ADMIN_PORT="${BENCH_ADMIN_PORT:-19644}"
BOOT="127.0.0.1:$PORT"
for b in "$SLUICE" "$BENCH"; do
  [ -x "$b" ] || { echo "missing $b: run 'make release' first" >&2; exit 1; }
done

DATA="$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")"
PID=""
stop_node() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
  fi
  PID=""
}
cleanup() { stop_node; rm -rf "$DATA"; }
trap cleanup EXIT

start_node() {
  rm -rf "$DATA/node"; mkdir -p "$DATA/node"
  "$SLUICE" --data-dir "$DATA/node" --kafka-addr "$BOOT" --advertised-kafka-addr "$BOOT" \
    --admin-addr "127.0.0.1:$ADMIN_PORT" --fsync always --log-level warn \
    >"$DATA/node.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/health/ready" >/dev/null 2>&1 && return 0
    kill -0 "$PID" 2>/dev/null || { cat "$DATA/node.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "node did not become ready" >&2; exit 1
}

bench() { "$BENCH" --bootstrap "$BOOT" --broker-pid "$PID" --report-secs 0 "$@"; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)" >&2
echo "records per phase: $RECORDS, 100-byte records, 6 partitions, fsync always" >&2

# 1. Peak produce rate, acks=1, then consume it all back from a fresh consumer.
start_node
peak_json="$(bench --mode produce --topic bench-a1 --partitions 6 --records "$RECORDS" \
  --record-size 100 --acks 1 --linger-ms 5)"
echo "$peak_json" | sed 's/^{/{"phase":"produce acks=1",/'
# librdkafka stops fetching a partition once queued.min.messages (100k) are waiting in the
# client and backs off fetch.queue.backoff.ms (1 s) before it looks again, so with its
# defaults the consumer idles most of the time whatever the broker does. Both runs are shown.
bench --mode consume --topic bench-a1 --records "$RECORDS" \
  --consumer-prop queued.min.messages=1000000 --consumer-prop fetch.queue.backoff.ms=10 |
  sed 's/^{/{"phase":"consume (queued.min.messages=1000000, fetch.queue.backoff.ms=10)",/'
bench --mode consume --topic bench-a1 --records "$RECORDS" |
  sed 's/^{/{"phase":"consume (librdkafka defaults)",/'
stop_node

# 2. Produce with acks=all.
start_node
bench --mode produce --topic bench-all --partitions 6 --records "$RECORDS" --record-size 100 \
  --acks all --linger-ms 5 | sed 's/^{/{"phase":"produce acks=all",/'
stop_node

# 3. Latency at half of the peak acks=1 rate measured in phase 1.
peak_rate="$(echo "$peak_json" | sed -n 's/.*"records_per_sec":\([0-9.]*\).*/\1/p')"
half=$(awk -v r="$peak_rate" 'BEGIN { printf "%d", r / 2 }')
# What earlier phases left dirty is written back first, not into this phase's tail.
sync
start_node
bench --mode produce --topic bench-half --partitions 6 --records "$RECORDS" --record-size 100 \
  --acks 1 --linger-ms 5 --throughput "$half" | sed "s/^{/{\"phase\":\"produce acks=1 at half rate ($half\/s)\",/"
# The same with linger.ms 1: with 5 the client holds records about 5 ms before sending, so
# no p99 can be under 5 ms (the latency is from send to delivery report).
bench --mode produce --topic bench-half-l1 --partitions 6 --records "$RECORDS" --record-size 100 \
  --acks 1 --linger-ms 1 --throughput "$half" |
  sed "s/^{/{\"phase\":\"produce acks=1 at half rate ($half\/s), linger.ms 1\",/"
stop_node

# 4. Idle memory with 100 partitions that have each seen some data.
start_node
bench --mode produce --topic bench-idle --partitions 100 --records 10000 --record-size 100 \
  --acks 1 --linger-ms 5 >/dev/null
sleep 5
rss_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")
echo "{\"phase\":\"idle with 100 partitions\",\"broker_rss_mib\":$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')}"
stop_node

# 5. Offset commits: one group member assigned all 100 partitions of a topic commits a new
#    offset for every partition per OffsetCommit request, synchronously (one at a time,
#    latency per commit), then asynchronously (all sent without waiting but the last).
start_node
bench --mode commit --topic bench-commit --partitions 100 --commits "$COMMITS" \
  --commit-mode sync | sed 's/^{/{"phase":"offset commit, sync, 100 partitions",/'
bench --mode commit --topic bench-commit --partitions 100 --commits "$ASYNC_COMMITS" \
  --commit-mode async | sed 's/^{/{"phase":"offset commit, async, 100 partitions",/'
stop_node

# 6. Rebalance of a 10-member group on 20 partitions: all join from nothing (includes the
#    broker's group.initial.rebalance.delay.ms, 3 s), then repeatedly one member leaves
#    (close) and the time until the other nine own all partitions is measured; a new member
#    then joins (also timed). The others learn of a rebalance only from their next heartbeat,
#    so heartbeat.interval.ms (librdkafka default 3000) is run at its default and at 500.
start_node
bench --mode rebalance --topic bench-rebalance --partitions 20 --members 10 \
  --rounds "$REBALANCE_ROUNDS" --assignor range |
  sed 's/^{/{"phase":"rebalance, 10 members, range, heartbeat.interval.ms=3000",/'
bench --mode rebalance --topic bench-rebalance --partitions 20 --members 10 \
  --rounds "$REBALANCE_ROUNDS" --assignor range --consumer-prop heartbeat.interval.ms=500 |
  sed 's/^{/{"phase":"rebalance, 10 members, range, heartbeat.interval.ms=500",/'
bench --mode rebalance --topic bench-rebalance --partitions 20 --members 10 \
  --rounds "$REBALANCE_ROUNDS" --assignor cooperative-sticky |
  sed 's/^{/{"phase":"rebalance, 10 members, cooperative-sticky, heartbeat.interval.ms=3000",/'
stop_node

# 7. The same group with the consumer protocol (KIP-848, group.protocol=consumer, the
#    broker's uniform assignor): the broker sets the heartbeat interval
#    (group.consumer.heartbeat.interval.ms), run at Sluice's default (1000) and Kafka's (5000).
SLUICE_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS=5000 start_node
bench --mode rebalance --topic bench-rebalance --partitions 20 --members 10 \
  --rounds "$REBALANCE_ROUNDS" --assignor uniform |
  sed 's/^{/{"phase":"rebalance, 10 members, consumer protocol, group.consumer.heartbeat.interval.ms=5000",/'
stop_node
start_node
bench --mode rebalance --topic bench-rebalance --partitions 20 --members 10 \
  --rounds "$REBALANCE_ROUNDS" --assignor uniform |
  sed 's/^{/{"phase":"rebalance, 10 members, consumer protocol, group.consumer.heartbeat.interval.ms=1000",/'
stop_node
