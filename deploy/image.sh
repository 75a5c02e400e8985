#!/usr/bin/env bash
# Builds container images on a machine with no image registry: `FROM scratch` plus a binary
# that is already built here and the shared libraries it needs (from ldd, the dynamic loader
# included). deploy/Dockerfile is the multi-stage build for machines that can pull base images;
# `deploy/image.sh sluice` gives an image that runs the same way (same user, paths, ports,
# volume, healthcheck and entrypoint).
#
#   deploy/image.sh sluice       # sluice:local from $SLUICE_BIN (default: the release binary)
#   deploy/image.sh prometheus   # sluice-prometheus:local from Debian's /usr/bin/prometheus,
#                                #   laid out like prom/prometheus (used where that image is absent)
#   deploy/image.sh kcat         # sluice-kcat:local, Debian's kcat: a Kafka client for
#                                #   containers on the compose network (tests/compose)
#
# Environment:
#   SLUICE_BIN     binary to package (default: $CARGO_TARGET_DIR/release/sluice)
#   SLUICE_IMAGE   tag of the sluice image (default: sluice:local)
set -euo pipefail

TARGET="${CARGO_TARGET_DIR:-/var/cache/sluice/target}"
SLUICE_UID=10001

die() {
  echo "image.sh: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 sluice | prometheus | kcat" >&2
  exit 2
}

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "no usable Docker engine (docker info failed)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sluice-image.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# Files owned by root go to $WORK/root, files owned by the service user to $WORK/owned.
mkdir -p "$WORK/root" "$WORK/owned"

# Copies executable $1 to $2 (a path in the image) and every shared library ldd finds for it
# to the same path in the image, following symlinks (so the loader is a real file at the
# path the ELF interpreter field names).
add_binary() {
  local bin=$1 dest=$2 lib
  [ -x "$bin" ] || die "$bin is not an executable file"
  mkdir -p "$WORK/root$(dirname "$dest")"
  cp -L "$bin" "$WORK/root$dest"
  if ! ldd "$bin" >"$WORK/ldd.txt" 2>&1; then
    # A static binary: ldd says "not a dynamic executable" and needs nothing else.
    grep -q 'not a dynamic executable' "$WORK/ldd.txt" && return 0
    cat "$WORK/ldd.txt" >&2
    die "ldd $bin failed"
  fi
  if grep -q 'not found' "$WORK/ldd.txt"; then
    cat "$WORK/ldd.txt" >&2
    die "$bin needs a library that is not installed"
  fi
  # Lines are "libx.so.1 => /path/libx.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)".
  for lib in $(grep -oE '(^|[[:space:]])/[^[:space:]]+' "$WORK/ldd.txt"); do
    [ -e "$WORK/root$lib" ] && continue
    mkdir -p "$WORK/root$(dirname "$lib")"
    cp -L "$lib" "$WORK/root$lib"
  done
}

# /etc files every image gets: a passwd and group naming the service user $1 (uid/gid $2),
# hosts resolution from /etc/hosts then DNS, and a world-writable sticky /tmp.
add_base() {
  local user=$1 id=$2
  mkdir -p "$WORK/root/etc" "$WORK/root/tmp"
  chmod 1777 "$WORK/root/tmp"
  cat >"$WORK/root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
$user:x:$id:$id:$user:/nonexistent:/sbin/nologin
EOF
  cat >"$WORK/root/etc/group" <<EOF
root:x:0:
$user:x:$id:
EOF
  echo 'hosts: files dns' >"$WORK/root/etc/nsswitch.conf"
}

# Builds image $1 from $WORK/root (owned by root), $WORK/owned (owned by uid:gid $2) and the
# Dockerfile lines on stdin, which come after `FROM scratch` and the ADD of the file tree.
build() {
  local tag=$1 owner=$2
  tar -cf "$WORK/rootfs.tar" --numeric-owner --owner=0 --group=0 -C "$WORK/root" .
  if [ -n "$(ls -A "$WORK/owned")" ]; then
    tar -rf "$WORK/rootfs.tar" --numeric-owner --owner="$owner" --group="$owner" -C "$WORK/owned" .
  fi
  {
    echo "FROM scratch"
    echo "ADD rootfs.tar /"
    cat
  } >"$WORK/Dockerfile"
  mkdir -p "$WORK/ctx"
  mv "$WORK/rootfs.tar" "$WORK/Dockerfile" "$WORK/ctx/"
  local old
  old="$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"
  # The legacy builder needs no buildx plugin and pulls nothing for FROM scratch.
  DOCKER_BUILDKIT=0 docker build --force-rm -q -t "$tag" "$WORK/ctx" >/dev/null 2>"$WORK/build.err" || {
    cat "$WORK/build.err" >&2
    die "docker build of $tag failed"
  }
  # The image this tag named before is left untagged: remove it unless a container uses it.
  if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
  echo "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MiB", $1/1048576}'))"
}

image_sluice() {
  local bin="${SLUICE_BIN:-$TARGET/release/sluice}" tag="${SLUICE_IMAGE:-sluice:local}"
  [ -x "$bin" ] || die "$bin does not exist: run \`make release\` first, or set SLUICE_BIN"
  add_binary "$bin" /usr/local/bin/sluice
  add_base sluice "$SLUICE_UID"
  mkdir -p "$WORK/owned/var/lib/sluice"
  echo "packaging $bin as $tag"
  # Keep in step with deploy/Dockerfile.
  build "$tag" "$SLUICE_UID" <<EOF
ENV SLUICE_DATA_DIR=/var/lib/sluice \\
    SLUICE_LISTENERS=PLAINTEXT://0.0.0.0:9092 \\
    SLUICE_CLUSTER_ADDR=0.0.0.0:9093 \\
    SLUICE_ADMIN_ADDR=0.0.0.0:9644
USER $SLUICE_UID:$SLUICE_UID
WORKDIR /var/lib/sluice
VOLUME /var/lib/sluice
EXPOSE 9092 9093 9644
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \\
    CMD ["/usr/local/bin/sluice", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sluice"]
LABEL org.opencontainers.image.title="sluice" \\
      org.opencontainers.image.source="deploy/image.sh (FROM scratch, $(basename "$bin") built on $(hostname))"
EOF
}

image_prometheus() {
  local bin=/usr/bin/prometheus tag=sluice-prometheus:local
  [ -x "$bin" ] || die "$bin is missing: install Debian's prometheus package (deploy/install-deps.sh test)"
  # prom/prometheus: /bin/prometheus, config in /etc/prometheus, data in /prometheus, user nobody.
  add_binary "$bin" /bin/prometheus
  add_base nobody 65534
  mkdir -p "$WORK/root/etc/prometheus" "$WORK/owned/prometheus"
  cp /etc/prometheus/prometheus.yml "$WORK/root/etc/prometheus/" 2>/dev/null || true
  # Debian's web UI assets are left out (220 MiB once their symlinks into
  # /usr/share/javascript are followed): the HTTP API (/api/v1/...) is what is served.
  build "$tag" 65534 <<'EOF'
USER 65534:65534
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
}

image_kcat() {
  local bin=/usr/bin/kcat tag=sluice-kcat:local
  [ -x "$bin" ] || die "$bin is missing: install Debian's kcat package (deploy/install-deps.sh test)"
  add_binary "$bin" /usr/bin/kcat
  add_base kcat 10002
  build "$tag" 10002 <<'EOF'
USER 10002:10002
ENTRYPOINT ["/usr/bin/kcat"]
EOF
}

[ $# -eq 1 ] || usage
case "$1" in
  sluice | prometheus | kcat) "image_$1" ;;
  *) usage ;;
esac
