#!/usr/bin/env bash
# Installs the Debian packages Sluice needs to build and test, only those missing.
#   deploy/install-deps.sh build   # what `make run` needs
#   deploy/install-deps.sh test    # plus the real Kafka clients the tests drive, and
#                                  # Prometheus for the compose tests (tests/compose)
set -euo pipefail
want=(clang libclang-dev pkg-config make gcc g++ curl zlib1g-dev)
# Installed without their recommended packages (Debian's prometheus recommends the node
# exporter and its collectors, which the tests do not use).
want_norec=()
if [ "${1:-build}" = test ]; then
  want+=(kcat python3-venv golang-go golang-github-shopify-sarama-dev golang-github-segmentio-kafka-go-dev)
  want_norec+=(prometheus)
fi
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
missing_norec=()
for p in "${want[@]}"; do installed "$p" || missing+=("$p"); done
for p in "${want_norec[@]+"${want_norec[@]}"}"; do installed "$p" || missing_norec+=("$p"); done
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_norec[@]} -gt 0 ]; then
  echo "installing: ${missing[*]} ${missing_norec[*]+"${missing_norec[*]}"}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  apt=($sudo env DEBIAN_FRONTEND=noninteractive apt-get)
  "${apt[@]}" update -q
  [ ${#missing[@]} -eq 0 ] || "${apt[@]}" install -y -q "${missing[@]}"
  [ ${#missing_norec[@]} -eq 0 ] || "${apt[@]}" install -y -q --no-install-recommends "${missing_norec[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (https://rustup.rs), then run make again" >&2
  exit 1
fi
