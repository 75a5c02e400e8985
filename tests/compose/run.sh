#!/usr/bin/env bash
# Compose tests: the three-node cluster of docker-compose.yml in containers, from a clean state,
# with real clients on the host and in the compose network, Prometheus, and faults across
# containers (tests/compose/compose_test.py says what is checked). `make test` runs this
# through `make compose-test`; it is SKIPPED, and says so, where no Docker engine is usable.
#
# Environment:
#   SLUICE_BIN          binary packaged into the test image (default: the debug build)
#   SLUICE_TEST_IMAGE   test this image instead of packaging SLUICE_BIN (e.g. sluice:dockerfile,
#                       built from deploy/Dockerfile by tests/compose/dockerfile-check.sh)
#   SLUICE_VENV         Python venv with confluent-kafka (default <repo>/.venv; created if missing)
#   KEEP_COMPOSE=1      leave the containers and volumes up at the end (the project name is printed)
#   COMPOSE_TEST_ONLY   subset of phases for compose_test.py, e.g. "host network"
#                       (phases: producer-ids host network prometheus faults rolling)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
START=$SECONDS

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "compose tests SKIPPED: no usable Docker engine here (docker info failed)"
  exit 0
fi
if docker compose version >/dev/null 2>&1; then
  COMPOSE_BIN="docker compose"
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE_BIN="docker-compose"
else
  echo "compose tests SKIPPED: a Docker engine is here but neither 'docker compose' nor 'docker-compose'"
  exit 0
fi

export SLUICE_BIN="${SLUICE_BIN:-${CARGO_TARGET_DIR:-/var/cache/sluice/target}/debug/sluice}"
if [ -z "${SLUICE_TEST_IMAGE:-}" ] && [ ! -x "$SLUICE_BIN" ]; then
  echo "compose tests: $SLUICE_BIN does not exist (cargo build -p sluice)" >&2
  exit 1
fi
VENV="${SLUICE_VENV:-$ROOT/.venv}"
if ! "$VENV/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
  echo "==> creating the Python venv $VENV (tests/python/requirements.txt)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$ROOT/tests/python/requirements.txt"
fi

# A project of its own, so the test never touches a cluster started with `make cluster-up`;
# the image tag too (sluice:local stays the release image).
export SLUICE_COMPOSE_PROJECT="sluice-test-$$"
export SLUICE_IMAGE="${SLUICE_TEST_IMAGE:-sluice:test}"
export SLUICE_COMPOSE_WAIT=120
export SLUICE_PUBLISH_ADDR=127.0.0.1 SLUICE_EXTERNAL_HOST=127.0.0.1
export COMPOSE_TEST_CMD="$COMPOSE_BIN --project-directory $ROOT -f $ROOT/docker-compose.yml -p $SLUICE_COMPOSE_PROJECT"
unset COMPOSE_PROFILES
echo "compose tests: $COMPOSE_BIN, project $SLUICE_COMPOSE_PROJECT, image $SLUICE_IMAGE" \
  "$([ -n "${SLUICE_TEST_IMAGE:-}" ] || echo "from $SLUICE_BIN")"

# The published ports are fixed: something else on them (make cluster-up, make local-cluster)
# would make the test talk to the wrong cluster.
busy=()
for port in 19092 29092 39092 19644 29644 39644 9090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then busy+=("$port"); fi
done
if [ ${#busy[@]} -gt 0 ]; then
  echo "compose tests: ports ${busy[*]} on 127.0.0.1 are in use (make cluster-down / make local-cluster CMD=down?)" >&2
  exit 1
fi

step() {
  printf '\n==> [%3ds] %s\n' $((SECONDS - START)) "$*"
}

cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo
    echo "--- compose tests failed; last log lines of every container"
    $COMPOSE_TEST_CMD logs --no-color --tail 40 2>&1 | tail -n 200 || true
  fi
  if [ "${KEEP_COMPOSE:-0}" = 1 ]; then
    echo "KEEP_COMPOSE=1: project $SLUICE_COMPOSE_PROJECT left running" \
      "(remove it: SLUICE_COMPOSE_PROJECT=$SLUICE_COMPOSE_PROJECT deploy/compose.sh clean)"
  else
    "$ROOT/deploy/compose.sh" clean >/dev/null 2>&1 || true
  fi
  printf '\n==> compose tests: %s in %d s\n' "$([ "$rc" -eq 0 ] && echo passed || echo FAILED)" $((SECONDS - START))
}
trap cleanup EXIT

if [ -n "${SLUICE_TEST_IMAGE:-}" ]; then
  step "images: $SLUICE_IMAGE as given, sluice-kcat:local (in-network client)"
  docker image inspect "$SLUICE_IMAGE" >/dev/null 2>&1 || {
    echo "compose tests: image $SLUICE_IMAGE does not exist" >&2
    exit 1
  }
else
  step "images: $SLUICE_IMAGE from $SLUICE_BIN, sluice-kcat:local (in-network client)"
  "$ROOT/deploy/image.sh" sluice
fi
"$ROOT/deploy/image.sh" kcat

step "compose up from a clean state"
"$ROOT/deploy/compose.sh" clean >/dev/null 2>&1 || true
"$ROOT/deploy/compose.sh" up

step "compose_test.py"
"$VENV/bin/python" -u "$ROOT/tests/compose/compose_test.py"
