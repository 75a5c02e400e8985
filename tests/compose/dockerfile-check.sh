#!/usr/bin/env bash
# Builds deploy/Dockerfile on a machine with no image registry, then runs the compose tests on
# the image it made: proof that the Dockerfile path, like `make image`, gives an image that
# docker compose runs. Not part of `make test` (a release build inside a container: about
# 15 minutes on 2 cores, at the lowest CPU priority).
#
# The Dockerfile's base images cannot be pulled here, so stand-ins are made (and tagged under
# sluice-standin/, never under the official names):
#   sluice-standin/debian:bookworm-slim   debootstrap --variant=minbase bookworm
#   sluice-standin/rust:1-bookworm        that, plus build-essential, git, curl, pkg-config,
#                                         libssl-dev (as buildpack-deps), this machine's Rust
#                                         toolchain (rustc --print sysroot, docs left out) and
#                                         the CA certificates in /usr/local/share/ca-certificates
#                                         (a TLS-inspecting proxy in front of crates.io)
# The Dockerfile is built from `git archive HEAD` (the committed tree), as sluice:dockerfile.
#
# Environment:
#   SLUICE_STANDIN_DIR   work directory, kept between runs (default /var/tmp/sluice-standin)
#   SKIP_COMPOSE_TEST=1  only build the image
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${SLUICE_STANDIN_DIR:-/var/tmp/sluice-standin}"
DEBIAN=sluice-standin/debian:bookworm-slim
RUST=sluice-standin/rust:1-bookworm
START=$SECONDS

step() { printf '\n==> [%4ds] %s\n' $((SECONDS - START)) "$*"; }
die() {
  echo "dockerfile-check: $*" >&2
  exit 1
}

docker info >/dev/null 2>&1 || die "no usable Docker engine"
mkdir -p "$DIR"

if ! docker image inspect "$DEBIAN" >/dev/null 2>&1; then
  step "$DEBIAN: debootstrap --variant=minbase bookworm"
  command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
  rm -rf "$DIR/rootfs"
  debootstrap --variant=minbase bookworm "$DIR/rootfs" http://deb.debian.org/debian >"$DIR/debootstrap.log" 2>&1 ||
    die "debootstrap failed (see $DIR/debootstrap.log)"
  rm -rf "$DIR"/rootfs/var/lib/apt/lists/* "$DIR"/rootfs/var/cache/apt/archives/*.deb
  tar -C "$DIR/rootfs" -c . | docker import -c 'CMD ["bash"]' - "$DEBIAN" >/dev/null
  rm -rf "$DIR/rootfs"
fi

if ! docker image inspect "$RUST" >/dev/null 2>&1; then
  step "$RUST: build tools, this machine's Rust toolchain and CA certificates"
  ctx="$DIR/rust-context"
  rm -rf "$ctx"
  mkdir -p "$ctx/rust" "$ctx/ca"
  sysroot="$(rustc --print sysroot)"
  (cd "$sysroot" && tar -c --exclude ./share/doc .) | tar -x -C "$ctx/rust"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  cat >"$ctx/Dockerfile" <<EOF
FROM $DEBIAN
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      build-essential ca-certificates curl git pkg-config libssl-dev \\
 && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY rust /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    CARGO_HOME=/usr/local/cargo
EOF
  DOCKER_BUILDKIT=0 docker build --force-rm -q -t "$RUST" "$ctx" >/dev/null
  rm -rf "$ctx"
fi

step "deploy/Dockerfile -> sluice:dockerfile (release build inside the container, nice 19)"
src="$DIR/src"
rm -rf "$src"
mkdir -p "$src"
(cd "$ROOT" && git archive HEAD) | tar -x -C "$src"
# Keep the build's compilers at the lowest CPU priority: a loop renices every process of a
# docker cgroup that runs a Rust or C++ compiler or a build script.
touch "$DIR/renice.on"
(
  while [ -e "$DIR/renice.on" ]; do
    for pid in $(pgrep -f '/usr/local/rust/|cargo build|rustc|cc1plus|build-script' || true); do
      grep -q '/docker/' "/proc/$pid/cgroup" 2>/dev/null || continue
      renice -n 19 -p "$pid" >/dev/null 2>&1 || true
    done
    sleep 2
  done
) &
renicer=$!
trap 'rm -f "$DIR/renice.on"; kill "$renicer" 2>/dev/null || true' EXIT
DOCKER_BUILDKIT=0 docker build --force-rm -f "$src/deploy/Dockerfile" \
  --build-arg RUST_IMAGE="$RUST" --build-arg RUNTIME_IMAGE="$DEBIAN" \
  -t sluice:dockerfile "$src" >"$DIR/build.log" 2>&1 || {
  tail -n 40 "$DIR/build.log" >&2
  die "docker build failed (log: $DIR/build.log)"
}
rm -f "$DIR/renice.on"
docker image inspect -f 'built sluice:dockerfile: {{.Size}} bytes, user {{.Config.User}}, entrypoint {{.Config.Entrypoint}}' sluice:dockerfile

if [ "${SKIP_COMPOSE_TEST:-0}" != 1 ]; then
  step "compose tests on sluice:dockerfile"
  SLUICE_TEST_IMAGE=sluice:dockerfile "$ROOT/tests/compose/run.sh"
fi
step "done"
