#!/usr/bin/env bash
# Multi-process cluster tests: three `sluice` processes on 127.0.0.1 started with
# deploy/local-cluster.sh, then an idempotent acks=all producer while the leader of a
# partition is SIGKILLed and restarted (tests/cluster/failover.py). Needs SLUICE_BIN and the
# Python venv that `make test-deps` creates (.venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export SLUICE_LOCAL_DIR="${SLUICE_LOCAL_DIR:-$(mktemp -d /tmp/sluice-cluster-test.XXXXXX)}"
PY="$ROOT/.venv/bin/python"
cleanup() {
    "$ROOT/deploy/local-cluster.sh" down >/dev/null 2>&1 || true
    if [[ "${KEEP_CLUSTER_DATA:-0}" != 1 ]]; then
        rm -rf "$SLUICE_LOCAL_DIR"
    fi
}
trap cleanup EXIT
echo "==> three-node cluster in $SLUICE_LOCAL_DIR"
"$ROOT/deploy/local-cluster.sh" up
dump_logs() {
    for n in 1 2 3; do
        echo "--- tail of node-$n.log"
        tail -n 30 "$SLUICE_LOCAL_DIR/node-$n.log" || true
    done
}
echo "==> a new topic's partitions get their preferred leaders at once"
if ! "$PY" "$ROOT/tests/cluster/preferred.py"; then
    dump_logs
    exit 1
fi
echo "==> failover under an idempotent acks=all producer"
if ! "$PY" "$ROOT/tests/cluster/failover.py"; then
    dump_logs
    exit 1
fi
echo "==> failover onto a node restarted seconds before (two kills per round)"
if ! FAILOVER_SCENARIO=restarted FAILOVER_KILLS=2 "$PY" "$ROOT/tests/cluster/failover.py"; then
    dump_logs
    exit 1
fi
echo "==> in-sync replicas and min.insync.replicas with a follower killed"
if ! "$PY" "$ROOT/tests/cluster/isr.py"; then
    dump_logs
    exit 1
fi
echo "==> producer ids unique across the nodes"
if ! "$PY" "$ROOT/tests/cluster/producer_ids.py"; then
    dump_logs
    exit 1
fi
echo "==> a 249-character topic name replicated"
if ! "$PY" "$ROOT/tests/cluster/long_names.py"; then
    dump_logs
    exit 1
fi
echo "==> controller failover"
if ! "$PY" "$ROOT/tests/cluster/controller.py"; then
    dump_logs
    exit 1
fi
echo "==> group coordinator failover"
if ! "$PY" "$ROOT/tests/cluster/coordinator.py"; then
    dump_logs
    exit 1
fi
echo "==> group coordinator failover, consumer protocol (KIP-848)"
if ! "$PY" "$ROOT/tests/cluster/coordinator.py" consumer; then
    dump_logs
    exit 1
fi
echo "==> exactly-once consume-transform-produce with processor crashes"
if ! "$PY" "$ROOT/tests/cluster/txn_exactly_once.py"; then
    dump_logs
    exit 1
fi
echo "==> transaction coordinator failover"
if ! "$PY" "$ROOT/tests/cluster/txn_failover.py"; then
    dump_logs
    exit 1
fi
echo "==> SIGTERM on a leader that lost its majority (last: stops every node, then starts them)"
if ! "$PY" "$ROOT/tests/cluster/shutdown.py"; then
    dump_logs
    exit 1
fi
