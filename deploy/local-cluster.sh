#!/usr/bin/env bash
# Runs a three-node Sluice cluster on 127.0.0.1, for trying out replication by hand.
#   deploy/local-cluster.sh up         # start the nodes that are not running, wait until ready
#   deploy/local-cluster.sh down       # stop every node (SIGTERM, SIGKILL after 15 s); data stays
#   deploy/local-cluster.sh kill N     # SIGKILL node N, print when
#   deploy/local-cluster.sh start N    # restart node N on its existing data, wait until ready
#   deploy/local-cluster.sh status     # which nodes run, then the partition table
#   deploy/local-cluster.sh clean      # down, then delete the data directory
#
# Node N (1, 2 or 3) listens on 127.0.0.1: Kafka N9092, cluster (Raft) N9093, admin HTTP N9644.
# Environment:
#   SLUICE_BIN          binary to run (default: $CARGO_TARGET_DIR/debug/sluice, built if missing)
#   SLUICE_LOCAL_DIR    data, logs and pid files (default: ./local-cluster)
#   SLUICE_LOCAL_ARGS   extra flags for every node, split on whitespace
#   SLUICE_LOCAL_WAIT   seconds to wait for /health/ready (default: 60)
set -euo pipefail

NODES=(1 2 3)
HOST=127.0.0.1
PEERS="1@$HOST:19093,2@$HOST:29093,3@$HOST:39093"
BOOTSTRAP="$HOST:19092,$HOST:29092,$HOST:39092"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$(realpath -m -- "${SLUICE_LOCAL_DIR:-./local-cluster}")"
WAIT="${SLUICE_LOCAL_WAIT:-60}"
STOP_WAIT=15

usage() {
  cat >&2 <<EOF
usage: $0 up | down | status | clean | kill N | start N     (N: 1, 2 or 3)
  environment: SLUICE_BIN, SLUICE_LOCAL_DIR (now $DIR), SLUICE_LOCAL_ARGS, SLUICE_LOCAL_WAIT
EOF
  exit 2
}

die() {
  echo "local-cluster: $*" >&2
  exit 1
}

# Per-node addresses and files.
kafka_addr() { echo "$HOST:${1}9092"; }
cluster_addr() { echo "$HOST:${1}9093"; }
admin_addr() { echo "$HOST:${1}9644"; }
pid_file() { echo "$DIR/node-$1.pid"; }
log_file() { echo "$DIR/node-$1.log"; }

# Exits with the usage message unless $1 is a node id.
check_node() {
  case "${1:-}" in
    1 | 2 | 3) ;;
    *)
      echo "local-cluster: node must be 1, 2 or 3, not '${1:-}'" >&2
      usage
      ;;
  esac
}

# Prints node $1's pid and succeeds if its pid file names a live process started as node $1
# (its command line holds `--node-id $1`), so a stale pid file whose pid was reused by some
# other process does not count.
running_pid() {
  local n=$1 pid cmdline
  pid="$(cat "$(pid_file "$n")" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  # /proc/PID/cmdline separates arguments with NUL; a zombie's is empty.
  cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
  [[ " $cmdline " == *" --node-id $n "* ]] || return 1
  echo "$pid"
}

# Sets BIN: $SLUICE_BIN, else the debug build, which is built first if it does not exist.
resolve_bin() {
  if [ -n "${SLUICE_BIN:-}" ]; then
    BIN="$SLUICE_BIN"
    [ -x "$BIN" ] || die "SLUICE_BIN=$BIN is not an executable file"
    return
  fi
  local target="${CARGO_TARGET_DIR:-/var/cache/sluice/target}"
  BIN="$target/debug/sluice"
  if [ ! -x "$BIN" ]; then
    command -v cargo >/dev/null 2>&1 || die "$BIN does not exist and cargo is missing (see deploy/install-deps.sh)"
    echo "$BIN does not exist: building it (cargo build -p sluice)"
    (cd "$ROOT" && CARGO_TARGET_DIR="$target" cargo build -p sluice)
    [ -x "$BIN" ] || die "cargo build finished but $BIN does not exist"
  fi
}

# Starts node $1 in the background, detached from this shell and its terminal (setsid +
# nohup), so it outlives the script and a Ctrl-C here does not reach it. The node's own
# process writes the pid file just before it execs the binary, so the pid is exact.
start_node() {
  local n=$1 pid extra=() i
  read -r -a extra <<<"${SLUICE_LOCAL_ARGS:-}"
  mkdir -p "$DIR/node-$n"
  rm -f "$(pid_file "$n")"
  echo "=== $(date '+%F %T') local-cluster.sh: starting node $n ===" >>"$(log_file "$n")"
  # shellcheck disable=SC2016 # $$, $0 and $@ are for the inner bash
  setsid nohup bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$(pid_file "$n")" \
    "$BIN" --node-id "$n" \
    --kafka-addr "$(kafka_addr "$n")" --advertised-kafka-addr "$(kafka_addr "$n")" \
    --cluster-addr "$(cluster_addr "$n")" --admin-addr "$(admin_addr "$n")" \
    --data-dir "$DIR/node-$n" --peers "$PEERS" "${extra[@]}" \
    >>"$(log_file "$n")" 2>&1 </dev/null &
  # Wait (at most 5 s) for the pid file; stop waiting if the process is already gone.
  for ((i = 0; i < 50; i++)); do
    if pid="$(running_pid "$n")"; then
      echo "node $n: started (pid $pid)"
      return 0
    fi
    # Written, but that process has exited. (Its cmdline can be briefly unreadable while
    # it execs, so only a process that is gone counts as a failed start.)
    if pid="$(cat "$(pid_file "$n")" 2>/dev/null)" && [[ "$pid" =~ ^[0-9]+$ ]] &&
      ! kill -0 "$pid" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  tail -n 30 "$(log_file "$n")" >&2 || true
  die "node $n did not start (log above: $(log_file "$n"))"
}

# True if node $1 answers 200 on /health/ready.
is_ready() {
  local code
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$(admin_addr "$1")/health/ready")" || true
  [ "$code" = 200 ]
}

# Waits up to $WAIT seconds for every node given to be ready, then prints one line per node.
# On a timeout, or as soon as one of them exits, prints the tail of its log and exits 1.
wait_ready() {
  local n pending=("$@") left deadline=$((SECONDS + WAIT))
  echo "waiting up to $WAIT s for /health/ready of node(s) $*"
  while [ ${#pending[@]} -gt 0 ]; do
    left=()
    for n in "${pending[@]}"; do
      if ! running_pid "$n" >/dev/null; then
        echo "node $n exited; last lines of $(log_file "$n"):" >&2
        tail -n 30 "$(log_file "$n")" >&2 || true
        exit 1
      fi
      is_ready "$n" || left+=("$n")
    done
    pending=("${left[@]+"${left[@]}"}")
    [ ${#pending[@]} -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for n in "${pending[@]}"; do
        echo "node $n not ready after $WAIT s; last lines of $(log_file "$n"):" >&2
        tail -n 30 "$(log_file "$n")" >&2 || true
      done
      exit 1
    fi
    sleep 0.5
  done
  for n in "$@"; do
    echo "node $n: ready, kafka $(kafka_addr "$n")  (admin http://$(admin_addr "$n"), log $(log_file "$n"))"
  done
}

cmd_up() {
  local n pid started=0
  for n in "${NODES[@]}"; do
    if pid="$(running_pid "$n")"; then
      echo "node $n: already running (pid $pid)"
    else
      [ "$started" = 1 ] || resolve_bin
      started=1
      start_node "$n"
    fi
  done
  wait_ready "${NODES[@]}"
  echo "bootstrap: $BOOTSTRAP"
}

cmd_start() {
  local n=$1 pid
  if pid="$(running_pid "$n")"; then
    die "node $n is already running (pid $pid)"
  fi
  resolve_bin
  start_node "$n"
  wait_ready "$n"
}

cmd_kill() {
  local n=$1 pid t
  pid="$(running_pid "$n")" || die "node $n is not running"
  kill -KILL "$pid"
  t="$(date +%s.%N)"
  rm -f "$(pid_file "$n")"
  echo "node $n (pid $pid) killed at $t"
}

cmd_down() {
  local n pid pids=() deadline=$((SECONDS + STOP_WAIT))
  for n in "${NODES[@]}"; do
    if pid="$(running_pid "$n")"; then
      echo "node $n: stopping (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$n:$pid")
    else
      rm -f "$(pid_file "$n")" # stale or absent
    fi
  done
  [ ${#pids[@]} -gt 0 ] || {
    echo "no node is running"
    return 0
  }
  # Wait for every node to exit; after STOP_WAIT seconds SIGKILL the rest.
  while :; do
    local alive=()
    for n in "${pids[@]}"; do
      running_pid "${n%%:*}" >/dev/null && alive+=("$n")
    done
    [ ${#alive[@]} -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for n in "${alive[@]}"; do
        echo "node ${n%%:*}: still running after $STOP_WAIT s, sending SIGKILL (pid ${n#*:})"
        kill -KILL "${n#*:}" 2>/dev/null || true
      done
      break
    fi
    sleep 0.2
  done
  for n in "${NODES[@]}"; do rm -f "$(pid_file "$n")"; done
  echo "stopped; data stays in $DIR"
}

cmd_status() {
  local n pid first="" json
  for n in "${NODES[@]}"; do
    if pid="$(running_pid "$n")"; then
      echo "node $n: running (pid $pid), kafka $(kafka_addr "$n")"
      [ -n "$first" ] || first=$n
    else
      echo "node $n: stopped"
    fi
  done
  if [ -z "$first" ]; then
    echo "no node is running"
    return 0
  fi
  json="$(curl -fsS --max-time 5 "http://$(admin_addr "$first")/v1/partitions")" ||
    die "could not read partitions from node $first (http://$(admin_addr "$first")/v1/partitions)"
  echo
  echo "partitions, as node $first sees them:"
  printf '%s' "$json" | python3 -c '
import json, sys
parts = json.load(sys.stdin).get("partitions") or []
if not parts:
    print("(no partitions)")
    sys.exit(0)
rows = [("topic", "partition", "leader", "replicas", "high_watermark")]
for p in sorted(parts, key=lambda p: (p.get("topic", ""), p.get("partition", 0))):
    leader = p.get("leader")
    rows.append((
        str(p.get("topic")),
        str(p.get("partition")),
        "-" if leader is None else str(leader),
        ",".join(str(r) for r in p.get("replicas") or []),
        str(p.get("high_watermark", "-")),
    ))
widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
for r in rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
' || die "unexpected answer from node $first's /v1/partitions"
}

cmd_clean() {
  cmd_down
  [ -e "$DIR" ] || return 0
  [ -d "$DIR" ] || die "$DIR is not a directory; not removing it"
  # Only delete a directory this script made: one holding node-N, or an empty one.
  if [ -e "$DIR/node-1" ] || [ -e "$DIR/node-2" ] || [ -e "$DIR/node-3" ] || [ -z "$(ls -A "$DIR")" ]; then
    rm -rf -- "$DIR"
    echo "removed $DIR"
  else
    die "$DIR does not look like a local-cluster directory (no node-1, node-2 or node-3); not removing it"
  fi
}

# Validate SLUICE_LOCAL_WAIT up front: it is used in arithmetic.
[[ "$WAIT" =~ ^[0-9]+$ ]] || die "SLUICE_LOCAL_WAIT must be a number of seconds, not '$WAIT'"

case "${1:-}" in
  up | down | status | clean)
    [ $# -eq 1 ] || usage
    "cmd_$1"
    ;;
  kill | start)
    [ $# -eq 2 ] || usage
    check_node "$2"
    "cmd_$1" "$2"
    ;;
  *) usage ;;
esac
