#!/usr/bin/env bash
# Installs the Debian packages Sluice needs to build and test, only those missing.
#   deploy/install-deps.sh build   # what `make run` needs
#   deploy/install-deps.sh test    # plus the real Kafka clients the tests drive
set -euo pipefail
want=(clang libclang-dev pkg-config make gcc g++ curl zlib1g-dev)
if [ "${1:-build}" = test ]; then
  want+=(kcat python3-venv golang-go golang-github-shopify-sarama-dev golang-github-segmentio-kafka-go-dev)
fi
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (https://rustup.rs), then run make again" >&2
  exit 1
fi
