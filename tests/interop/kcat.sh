#!/usr/bin/env bash
# kcat interop checks against a running Sluice broker.
#
# Debian's kcat 1.7 is built on librdkafka 2.0.2: an older client (ApiVersions v3,
# Metadata v4) that fails on responses carrying default-valued tagged fields.
# Usage: SLUICE_BOOTSTRAP=127.0.0.1:9092 tests/interop/kcat.sh
# Exit status: 0 all checks passed, 1 some failed, 77 kcat not installed (skipped).
set -u -o pipefail

B="${SLUICE_BOOTSTRAP:?set SLUICE_BOOTSTRAP=host:port}"
if ! command -v kcat >/dev/null 2>&1; then
    echo "SKIPPED: kcat tests: kcat is not installed (apt-get install kcat)"
    exit 77
fi

PASS=0
FAIL=0
RUN_ID="$(date +%s)-$$"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Every kcat call is bounded: a hang is a failure, not a stuck CI job.
kc() { timeout 30 kcat -b "$B" -X socket.timeout.ms=10000 "$@"; }

ok() { echo "ok   - $1"; PASS=$((PASS + 1)); }
fail() {
    local name="$1"; shift
    echo "FAIL - $name"
    if [ $# -gt 0 ]; then printf '%s\n' "$@" | head -40 | sed 's/^/       /'; fi
    FAIL=$((FAIL + 1))
}

# check_file NAME EXPECTED_FILE ACTUAL_FILE [STDERR_FILE]
check_file() {
    local name="$1" want="$2" got="$3" err="${4:-}"
    if cmp -s "$want" "$got"; then
        ok "$name"
    else
        fail "$name" "--- diff (expected vs actual):" "$(diff "$want" "$got" | head -30)" \
            "${err:+--- kcat stderr:}" "$( [ -n "$err" ] && tail -15 "$err")"
    fi
}

echo "kcat: $(kcat -V 2>&1 | grep -m1 -o 'Version.*')"
echo "kcat: broker $B, run $RUN_ID"

# ---------------------------------------------------------------------- 1. metadata
T1="kcat-keyed-$RUN_ID"
NODES="${SLUICE_NODES:-1}"
RF="${SLUICE_REPLICATION_FACTOR:-1}"
# RF node ids separated by commas, as kcat prints replicas and ISRs.
IDS="[0-9]+(,[0-9]+){$((RF - 1))}"
if kc -L >"$TMP/L.out" 2>"$TMP/L.err"; then
    if grep -Eq "^ *$NODES brokers:" "$TMP/L.out" && grep -Eq "^ *broker [0-9]+ at $B( |$)" "$TMP/L.out"; then
        ok "kcat -L lists exactly $NODES broker(s), $B among them"
    else
        fail "kcat -L lists exactly $NODES broker(s), $B among them" "$(cat "$TMP/L.out")"
    fi
    if [ "$(grep -Ec "^ *broker [0-9]+ at .* \(controller\)" "$TMP/L.out")" = 1 ] &&
        { [ "$NODES" != 1 ] || grep -Eq "^ *broker [0-9]+ at $B \(controller\)" "$TMP/L.out"; }; then
        ok "kcat -L marks one broker as controller"
    else
        fail "kcat -L marks one broker as controller" "$(cat "$TMP/L.out")"
    fi
else
    fail "kcat -L succeeds" "$(cat "$TMP/L.out" "$TMP/L.err")"
fi

# ---------------------------------------------------------------------- 2. keyed + headers
printf 'k1:v1\nk2:value two\nk3:v3:with:colons\nk4:\n' >"$TMP/keyed.in"
if kc -P -t "$T1" -p 0 -K: -H h1=a -H "h2=b c" <"$TMP/keyed.in" 2>"$TMP/P1.err"; then
    ok "kcat -P keyed messages with headers (topic auto-created)"
else
    fail "kcat -P keyed messages with headers (topic auto-created)" "$(cat "$TMP/P1.err")"
fi
cat >"$TMP/keyed.want" <<'EOF'
0|k1|v1|h1=a,h2=b c
1|k2|value two|h1=a,h2=b c
2|k3|v3:with:colons|h1=a,h2=b c
3|k4||h1=a,h2=b c
EOF
kc -C -t "$T1" -p 0 -o beginning -e -q -f '%o|%k|%s|%h\n' >"$TMP/keyed.got" 2>"$TMP/C1.err"
check_file "kcat -C -e -o beginning returns key/value/headers/offsets exactly" \
    "$TMP/keyed.want" "$TMP/keyed.got" "$TMP/C1.err"

# JSON envelope: create-time timestamps, headers, partition.
if kc -C -t "$T1" -p 0 -o beginning -e -q -J >"$TMP/keyed.json" 2>"$TMP/C1j.err" &&
    python3 - "$TMP/keyed.json" <<'EOF' 2>"$TMP/json.err"
import json, sys, time
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert [r["offset"] for r in rows] == [0, 1, 2, 3], rows
assert [r["key"] for r in rows] == ["k1", "k2", "k3", "k4"], rows
now = time.time() * 1000
for r in rows:
    assert r["partition"] == 0 and r["tstype"] == "create", r
    assert now - 600_000 < r["ts"] <= now + 60_000, r
    assert r.get("headers") == ["h1", "a", "h2", "b c"] or r.get("headers") == {"h1": "a", "h2": "b c"}, r
EOF
then
    ok "kcat -C -J envelope (offsets, keys, create timestamps, headers)"
else
    fail "kcat -C -J envelope (offsets, keys, create timestamps, headers)" \
        "$(cat "$TMP/keyed.json" "$TMP/C1j.err" "$TMP/json.err" 2>/dev/null)"
fi

if kc -L -t "$T1" >"$TMP/L1.out" 2>&1 && grep -q "topic \"$T1\" with 1 partitions" "$TMP/L1.out" &&
    grep -Eq "partition 0, leader [0-9]+, replicas: $IDS, isrs: $IDS\$" "$TMP/L1.out"; then
    ok "kcat -L -t shows the auto-created topic with 1 partition and a leader"
else
    fail "kcat -L -t shows the auto-created topic with 1 partition and a leader" "$(cat "$TMP/L1.out")"
fi

# ---------------------------------------------------------------------- 3. null values (-Z)
T2="kcat-null-$RUN_ID"
printf 'kn:\nkv:v\n' >"$TMP/null.in"
if kc -P -t "$T2" -p 0 -K: -Z <"$TMP/null.in" 2>"$TMP/P2.err"; then
    kc -C -t "$T2" -p 0 -o beginning -e -q -Z -f '%o|%k|%s|%S\n' >"$TMP/null.got" 2>"$TMP/C2.err"
    printf '0|kn|NULL|-1\n1|kv|v|1\n' >"$TMP/null.want"
    check_file "kcat -Z null values round-trip as NULL" "$TMP/null.want" "$TMP/null.got" "$TMP/C2.err"
else
    fail "kcat -P -Z null values" "$(cat "$TMP/P2.err")"
fi

# ---------------------------------------------------------------------- 4. codecs
for codec in none gzip snappy lz4 zstd; do
    T="kcat-codec-$codec-$RUN_ID"
    : >"$TMP/c.in"; : >"$TMP/c.want"
    for i in $(seq 0 199); do
        v="value-$i-$codec-$(printf 'abcdefgh%.0s' $(seq 1 $((i % 30 + 1))))"
        printf 'key-%s:%s\n' "$i" "$v" >>"$TMP/c.in"
        printf '%s|key-%s|%s\n' "$i" "$i" "$v" >>"$TMP/c.want"
    done
    if kc -P -t "$T" -p 0 -K: -X compression.codec="$codec" -X linger.ms=20 <"$TMP/c.in" 2>"$TMP/Pc.err"; then
        kc -C -t "$T" -p 0 -o beginning -e -q -f '%o|%k|%s\n' >"$TMP/c.got" 2>"$TMP/Cc.err"
        check_file "kcat -P -X compression.codec=$codec: 200 records consumed back exactly" \
            "$TMP/c.want" "$TMP/c.got" "$TMP/Cc.err"
        # Start in the middle (inside a compressed batch) and stop after a count.
        kc -C -t "$T" -p 0 -o 57 -c 10 -q -f '%o|%k|%s\n' >"$TMP/c.mid" 2>"$TMP/Cm.err"
        sed -n '58,67p' "$TMP/c.want" >"$TMP/c.midwant"
        check_file "kcat -C -o 57 -c 10 ($codec) starts exactly at offset 57" \
            "$TMP/c.midwant" "$TMP/c.mid" "$TMP/Cm.err"
    else
        fail "kcat -P -X compression.codec=$codec" "$(cat "$TMP/Pc.err")"
    fi
done

# ---------------------------------------------------------------------- 5. offsets by time (-Q)
if kc -Q -t "$T1:0:1" >"$TMP/Q.out" 2>&1 && grep -Eq "offset 0\b" "$TMP/Q.out"; then
    ok "kcat -Q timestamp 1 -> offset 0"
else
    fail "kcat -Q timestamp 1 -> offset 0" "$(cat "$TMP/Q.out")"
fi
FUTURE=$(( $(date +%s) * 1000 + 3600000 ))
if kc -Q -t "$T1:0:$FUTURE" >"$TMP/Q2.out" 2>&1 && grep -Eq "offset -1\b" "$TMP/Q2.out"; then
    ok "kcat -Q future timestamp -> offset -1 (end)"
else
    fail "kcat -Q future timestamp -> offset -1 (end)" "$(cat "$TMP/Q2.out")"
fi

# ---------------------------------------------------------------------- 6. consumer group (-G)
# A balanced consumer reads six records and commits on close (auto commit); the next one in
# the same group starts after them.
T6="kcat-group-$RUN_ID"
G6="kcat-group-$RUN_ID"
printf 'g0\ng1\ng2\ng3\ng4\ng5\n' | kc -P -t "$T6" -p 0 2>"$TMP/P6.err"
kc -G "$G6" -X auto.offset.reset=earliest -c 6 -q -f '%o|%s\n' "$T6" >"$TMP/G1.got" 2>"$TMP/G1.err"
printf '0|g0\n1|g1\n2|g2\n3|g3\n4|g4\n5|g5\n' >"$TMP/G1.want"
check_file "kcat -G consumes a topic as a group member" "$TMP/G1.want" "$TMP/G1.got" "$TMP/G1.err"
printf 'g6\ng7\n' | kc -P -t "$T6" -p 0 2>>"$TMP/P6.err"
kc -G "$G6" -X auto.offset.reset=earliest -c 2 -q -f '%o|%s\n' "$T6" >"$TMP/G2.got" 2>"$TMP/G2.err"
printf '6|g6\n7|g7\n' >"$TMP/G2.want"
check_file "kcat -G resumes after the group's committed offsets" "$TMP/G2.want" "$TMP/G2.got" "$TMP/G2.err"

echo "kcat: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
