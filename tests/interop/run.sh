#!/usr/bin/env bash
# Real-client interop suite for Sluice: the single entry point (`make test` calls it).
#
#   1. creates/updates the venv <repo>/.venv with tests/python/requirements.txt
#   2. starts the sluice binary ($SLUICE_BIN) on free loopback ports with a fresh data dir
#   3. runs the pytest suite (confluent-kafka, kafka-python, aiokafka) in tests/python
#   4. runs the kcat checks (tests/interop/kcat.sh)
#   5. builds (offline, GOPATH mode) and runs the Go smoke tests (Sarama, kafka-go)
#   6. stops the broker with SIGTERM and checks it exits 0 within 10 s
#
# Environment:
#   SLUICE_BIN          broker binary (default /var/cache/sluice/target/debug/sluice)
#   SLUICE_VENV         venv to use (default <repo>/.venv)
#   SLUICE_PYTEST_ARGS  extra pytest arguments, split as the shell would (e.g.
#                       "-x -k 'confluent or aiokafka'")
#   SLUICE_INTEROP_ONLY space-separated subset of stages: "python kcat go" (default all)
#   SLUICE_KEEP_LOGS=1  keep the broker's data dir and log even on success
#   SLUICE_INTEROP_CLUSTER=1  run everything against a three-node local cluster
#                       (deploy/local-cluster.sh, Kafka ports 19092/29092/39092) with
#                       replication factor 3 instead of a single node
#
# Exit status: 0 when nothing failed (skipped stages are reported as SKIPPED), 1 otherwise.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SLUICE_BIN="${SLUICE_BIN:-/var/cache/sluice/target/debug/sluice}"
VENV="${SLUICE_VENV:-$REPO/.venv}"
ONLY="${SLUICE_INTEROP_ONLY:-python kcat go}"
REQS="$REPO/tests/python/requirements.txt"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-interop.XXXXXX")"
DATA_DIR="$WORK/data"
BROKER_LOG="$WORK/broker.log"
BROKER_PID=""

TOTAL_PASS=0
TOTAL_FAIL=0
TOTAL_SKIP=0
declare -a SUMMARY=()

log() { printf '\n==> %s\n' "$*"; }
record() { # record STATUS NAME [DETAIL]
    local status="$1" name="$2" detail="${3:-}"
    SUMMARY+=("$(printf '%-8s %s%s' "$status" "$name" "${detail:+ ($detail)}")")
}
want_stage() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

broker_alive() { [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; }

cleanup() {
    if [ "${SLUICE_INTEROP_CLUSTER:-0}" = 1 ] && [ -n "${SLUICE_LOCAL_DIR:-}" ]; then
        "$REPO/deploy/local-cluster.sh" down >/dev/null 2>&1
    elif broker_alive; then
        kill -KILL "$BROKER_PID" 2>/dev/null
        wait "$BROKER_PID" 2>/dev/null
    fi
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM

print_broker_log() {
    [ -f "$BROKER_LOG" ] || return 0
    local lines
    lines=$(wc -l <"$BROKER_LOG")
    echo "----- broker log ($BROKER_LOG, $lines lines; last 400) -----"
    tail -n 400 "$BROKER_LOG"
    echo "----- end of broker log -----"
}

# ------------------------------------------------------------------ 1. venv
setup_venv() {
    log "python venv: $VENV"
    if ! command -v python3 >/dev/null 2>&1; then
        echo "python3 not found"
        return 1
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV" || {
            echo "python3 -m venv failed (on Debian: apt-get install python3-venv)"
            return 1
        }
    fi
    local stamp="$VENV/.sluice-interop-requirements"
    local want
    want="$(cat "$REQS"; "$VENV/bin/python" -c 'import sys; print(sys.version)')"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
        "$VENV/bin/python" -c 'import confluent_kafka, kafka, aiokafka, pytest, pytest_timeout, lz4, snappy, zstandard, cramjam' 2>/dev/null; then
        echo "requirements already satisfied (fast path)"
        return 0
    fi
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQS" || {
        echo "pip install -r $REQS failed"
        return 1
    }
    printf '%s' "$want" >"$stamp"
    "$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null |
        grep -Ei '^(confluent-kafka|kafka-python|aiokafka|pytest) '
}

# ------------------------------------------------------------------ 2. broker
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

http_ok() { # http_ok URL -> 0 when the server answers 200
    if command -v curl >/dev/null 2>&1; then
        [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null)" = "200" ]
    else
        python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
EOF
    fi
}

# The three-node variant: node 1's process stands for "the broker" in the liveness checks;
# every node must survive the suite and stop cleanly.
start_cluster() {
    log "starting a three-node cluster of $SLUICE_BIN (replication factor 3)"
    export SLUICE_LOCAL_DIR="$WORK/cluster"
    export SLUICE_LOCAL_ARGS="--default-replication-factor 3"
    "$REPO/deploy/local-cluster.sh" up || return 1
    BROKER_PID="$(cat "$SLUICE_LOCAL_DIR/node-1.pid")"
    BROKER_LOG="$SLUICE_LOCAL_DIR/node-1.log"
    export SLUICE_BOOTSTRAP="127.0.0.1:19092" SLUICE_ADMIN_ADDR="127.0.0.1:19644"
    export SLUICE_NODES=3 SLUICE_REPLICATION_FACTOR=3
}

stop_cluster() {
    log "stopping the cluster (SIGTERM to every node)"
    local n pid ok=0
    for n in 1 2 3; do
        pid="$(cat "$SLUICE_LOCAL_DIR/node-$n.pid" 2>/dev/null)"
        if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
            echo "node $n is not running any more"
            ok=1
            continue
        fi
        kill -TERM "$pid"
        local deadline=$((SECONDS + 10))
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "node $n did not exit within 10 s of SIGTERM"
            ok=1
        else
            echo "node $n exited"
        fi
    done
    "$REPO/deploy/local-cluster.sh" down >/dev/null 2>&1
    BROKER_PID=""
    return $ok
}

start_broker() {
    if [ "${SLUICE_INTEROP_CLUSTER:-0}" = 1 ]; then
        start_cluster
        return
    fi
    log "starting broker $SLUICE_BIN"
    if [ ! -x "$SLUICE_BIN" ]; then
        echo "broker binary $SLUICE_BIN not found or not executable (cargo build -p sluice)"
        return 1
    fi
    KAFKA_PORT="$(free_port)"
    ADMIN_PORT="$(free_port)"
    while [ "$ADMIN_PORT" = "$KAFKA_PORT" ]; do ADMIN_PORT="$(free_port)"; done
    mkdir -p "$DATA_DIR"
    "$SLUICE_BIN" \
        --kafka-addr "127.0.0.1:$KAFKA_PORT" \
        --advertised-kafka-addr "127.0.0.1:$KAFKA_PORT" \
        --admin-addr "127.0.0.1:$ADMIN_PORT" \
        --data-dir "$DATA_DIR" >"$BROKER_LOG" 2>&1 &
    BROKER_PID=$!
    export SLUICE_BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
    export SLUICE_ADMIN_ADDR="127.0.0.1:$ADMIN_PORT"
    echo "pid $BROKER_PID, kafka $SLUICE_BOOTSTRAP, admin $SLUICE_ADMIN_ADDR, data $DATA_DIR"
    local deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
        if ! broker_alive; then
            wait "$BROKER_PID"
            echo "broker exited during startup (status $?)"
            BROKER_PID=""
            return 1
        fi
        if http_ok "http://$SLUICE_ADMIN_ADDR/health/ready"; then
            echo "broker ready after ${SECONDS}s of script time"
            return 0
        fi
        sleep 0.2
    done
    echo "broker not ready (GET http://$SLUICE_ADMIN_ADDR/health/ready != 200) within 60 s"
    return 1
}

stop_broker() {
    if [ "${SLUICE_INTEROP_CLUSTER:-0}" = 1 ]; then
        stop_cluster
        return
    fi
    log "stopping broker (SIGTERM)"
    if ! broker_alive; then
        echo "broker is not running any more"
        return 1
    fi
    kill -TERM "$BROKER_PID"
    local deadline=$((SECONDS + 10))
    while broker_alive && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if broker_alive; then
        echo "broker did not exit within 10 s of SIGTERM; killing it"
        kill -KILL "$BROKER_PID"
        wait "$BROKER_PID" 2>/dev/null
        BROKER_PID=""
        return 1
    fi
    wait "$BROKER_PID"
    local rc=$?
    BROKER_PID=""
    echo "broker exited with status $rc"
    [ "$rc" -eq 0 ]
}

# check the broker survived a stage
check_alive_after() {
    if ! broker_alive; then
        echo "broker process died during $1"
        record FAIL "broker alive after $1"
        TOTAL_FAIL=$((TOTAL_FAIL + 1))
        return 1
    fi
    return 0
}

# ------------------------------------------------------------------ 3. pytest
run_python() {
    log "python clients (pytest tests/python)"
    local junit="$WORK/pytest-junit.xml"
    # Split with the shell's quoting rules, so a -k expression may hold spaces.
    local -a extra=()
    if [ -n "${SLUICE_PYTEST_ARGS:-}" ]; then
        eval "extra=($SLUICE_PYTEST_ARGS)"
    fi
    (cd "$REPO/tests/python" && "$VENV/bin/python" -m pytest -v --tb=short -p no:cacheprovider \
        --junitxml="$junit" "${extra[@]}" .)
    local rc=$?
    local counts
    counts="$(python3 - "$junit" <<'EOF' 2>/dev/null
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
t = sum(int(s.get("tests", 0)) for s in suites)
f = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
sk = sum(int(s.get("skipped", 0)) for s in suites)
print(t - f - sk, f, sk)
EOF
)"
    local p=0 f=0 s=0
    if [ -n "$counts" ]; then read -r p f s <<<"$counts"; fi
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi # usage error, no tests collected, crash
    TOTAL_PASS=$((TOTAL_PASS + p)); TOTAL_FAIL=$((TOTAL_FAIL + f)); TOTAL_SKIP=$((TOTAL_SKIP + s))
    if [ "$rc" -eq 0 ]; then
        record PASS "python clients" "$p passed, $s skipped"
    else
        record FAIL "python clients" "pytest exit $rc: $p passed, $f failed, $s skipped"
    fi
}

# ------------------------------------------------------------------ 4. kcat
run_kcat() {
    log "kcat"
    local out="$WORK/kcat.out"
    bash "$REPO/tests/interop/kcat.sh" 2>&1 | tee "$out"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 77 ]; then
        record SKIPPED "kcat" "kcat not installed"
        TOTAL_SKIP=$((TOTAL_SKIP + 1))
        return
    fi
    local p f
    p=$(grep -c '^ok   - ' "$out")
    f=$(grep -c '^FAIL - ' "$out")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    TOTAL_PASS=$((TOTAL_PASS + p)); TOTAL_FAIL=$((TOTAL_FAIL + f))
    if [ "$rc" -eq 0 ]; then record PASS "kcat" "$p checks"; else record FAIL "kcat" "$f of $((p + f)) checks failed"; fi
}

# ------------------------------------------------------------------ 5. Go
run_go_program() { # run_go_program NAME BINARY
    local name="$1" bin="$2"
    log "Go: $name"
    local out="$WORK/$name.out"
    timeout 240 "$bin" -brokers "$SLUICE_BOOTSTRAP" 2>&1 | tee "$out"
    local rc=${PIPESTATUS[0]}
    case "$rc" in
        0) record PASS "go $name"; TOTAL_PASS=$((TOTAL_PASS + 1)) ;;
        77) record SKIPPED "go $name" "$(grep -m1 '^SKIPPED' "$out" | sed 's/^SKIPPED: //')"
            TOTAL_SKIP=$((TOTAL_SKIP + 1)) ;;
        124) record FAIL "go $name" "timed out after 240 s"; TOTAL_FAIL=$((TOTAL_FAIL + 1)) ;;
        *) record FAIL "go $name" "exit $rc"; TOTAL_FAIL=$((TOTAL_FAIL + 1)) ;;
    esac
}

run_go() {
    log "Go smoke tests: build"
    if ! command -v go >/dev/null 2>&1; then
        echo "SKIPPED: Go smoke tests: go is not installed (apt-get install golang-go)"
        record SKIPPED "go sarama" "go not installed"
        record SKIPPED "go kafka-go" "go not installed"
        TOTAL_SKIP=$((TOTAL_SKIP + 2))
        return
    fi
    local godir="$REPO/tests/go"
    mkdir -p "$godir/bin" "$godir/gopath"
    export GO111MODULE=off GOPROXY=off GOFLAGS='' GOPATH="$godir/gopath:/usr/share/gocode"
    if [ -z "${HOME:-}" ] && [ -z "${GOCACHE:-}" ]; then export GOCACHE="$godir/bin/.gocache"; fi
    go version
    local name pkg src
    for name in sarama kafkago; do
        case $name in
            sarama) pkg=github.com/Shopify/sarama; src=golang-github-shopify-sarama-dev ;;
            kafkago) pkg=github.com/segmentio/kafka-go; src=golang-github-segmentio-kafka-go-dev ;;
        esac
        local label=$name
        [ $name = kafkago ] && label=kafka-go
        if [ ! -d "/usr/share/gocode/src/$pkg" ]; then
            echo "SKIPPED: Go $label smoke test: $pkg source not installed (apt-get install $src)"
            record SKIPPED "go $label" "$src not installed"
            TOTAL_SKIP=$((TOTAL_SKIP + 1))
            continue
        fi
        # cgo warnings from Debian's DataDog/zstd are noise; show them only on failure.
        if ! (cd "$godir/$name" && go build -o "$godir/bin/$name-smoke" . >"$WORK/go-build-$name.log" 2>&1); then
            cat "$WORK/go-build-$name.log"
            record FAIL "go $label" "build failed"
            TOTAL_FAIL=$((TOTAL_FAIL + 1))
            continue
        fi
        echo "built tests/go/bin/$name-smoke"
        run_go_program "$label" "$godir/bin/$name-smoke"
        check_alive_after "go $label" || return
    done
}

# ------------------------------------------------------------------ main
main() {
    echo "sluice interop: repo $REPO, work dir $WORK"
    local broker_ok=1
    if want_stage python; then
        if ! setup_venv; then
            record FAIL "python venv setup"
            TOTAL_FAIL=$((TOTAL_FAIL + 1))
            ONLY="${ONLY//python/}"
        fi
    fi
    if ! start_broker; then
        record FAIL "broker start" "see log"
        TOTAL_FAIL=$((TOTAL_FAIL + 1))
        broker_ok=0
    fi
    if [ $broker_ok -eq 1 ]; then
        if want_stage python; then run_python; check_alive_after "python clients" || broker_ok=0; fi
        if [ $broker_ok -eq 1 ] && want_stage kcat; then run_kcat; check_alive_after "kcat" || broker_ok=0; fi
        if [ $broker_ok -eq 1 ] && want_stage go; then run_go || broker_ok=0; fi
        if [ $broker_ok -eq 1 ]; then
            if stop_broker; then
                record PASS "broker SIGTERM shutdown" "exit 0 within 10 s"
                TOTAL_PASS=$((TOTAL_PASS + 1))
            else
                record FAIL "broker SIGTERM shutdown" "see above"
                TOTAL_FAIL=$((TOTAL_FAIL + 1))
            fi
        fi
    fi

    log "interop summary"
    printf '  %s\n' "${SUMMARY[@]}"
    if [ "$TOTAL_FAIL" -gt 0 ]; then
        print_broker_log
        echo "broker data dir and log kept in $WORK"
    elif [ "${SLUICE_KEEP_LOGS:-0}" = "1" ]; then
        echo "broker data dir and log kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    echo "interop: $TOTAL_PASS passed, $TOTAL_FAIL failed, $TOTAL_SKIP skipped"
    [ "$TOTAL_FAIL" -eq 0 ]
}

main
