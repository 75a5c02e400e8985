#!/usr/bin/env bash
# Runs the three-node compose cluster of docker-compose.yml (what `make cluster-up`,
# `make cluster-down` and `make cluster-status` call).
#   deploy/compose.sh up       # start the nodes and Prometheus, wait until every node is healthy
#   deploy/compose.sh down     # stop and remove the containers; the volumes (data) stay
#   deploy/compose.sh clean    # down, and remove the volumes too
#   deploy/compose.sh status   # the containers, then every partition's leader, replicas and
#                              # high watermark per node (admin HTTP /v1/cluster, /v1/partitions;
#                              # internal topics summarised unless SLUICE_STATUS_ALL=1)
#
# `up` never builds or pulls the Sluice image: it must exist (make image). When the Prometheus
# image is not on this machine and cannot be pulled (no registry), `up` packages Debian's
# prometheus (deploy/image.sh prometheus) and runs that instead; without it, Prometheus is
# skipped and `up` says so. The same holds for Grafana under the `monitoring` profile
# (COMPOSE_PROFILES=monitoring), minus the Debian fallback.
#
# Environment:
#   SLUICE_COMPOSE_PROJECT   compose project name (default: sluice)
#   SLUICE_COMPOSE_WAIT      seconds to wait for the nodes to be healthy (default: 120)
#   SLUICE_IMAGE, SLUICE_PROMETHEUS_IMAGE, SLUICE_GRAFANA_IMAGE, SLUICE_PUBLISH_ADDR,
#   SLUICE_EXTERNAL_HOST     passed to docker-compose.yml (see docs/configuration.md)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROJECT="${SLUICE_COMPOSE_PROJECT:-sluice}"
WAIT="${SLUICE_COMPOSE_WAIT:-120}"
NODES=(sluice-1 sluice-2 sluice-3)
export SLUICE_IMAGE="${SLUICE_IMAGE:-sluice:local}"
PROM_DEFAULT=prom/prometheus:v2.53.0
GRAFANA_DEFAULT=grafana/grafana:11.3.0

die() {
  echo "compose.sh: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 up | down | clean | status" >&2
  exit 2
}

# Sets COMPOSE to the compose command: the `docker compose` plugin, else docker-compose.
find_compose() {
  command -v docker >/dev/null 2>&1 || die "docker is not installed"
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
  else
    die "neither 'docker compose' nor 'docker-compose' is installed"
  fi
  COMPOSE+=(--project-directory "$ROOT" -f "$ROOT/docker-compose.yml" -p "$PROJECT")
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# True if image $1 is here or can be pulled now.
get_image() {
  have_image "$1" && return 0
  echo "pulling $1"
  docker pull -q "$1" >/dev/null 2>&1
}

# Container id of service $1 (empty if it has none).
# -a: stopped containers too (docker compose v2 lists running ones only without it).
container_of() { "${COMPOSE[@]}" ps -a -q "$1" 2>/dev/null | head -n 1; }

# "healthy", "unhealthy", "starting", "exited", ... of service $1's container.
health_of() {
  local id
  id="$(container_of "$1")"
  [ -n "$id" ] || {
    echo missing
    return
  }
  docker inspect -f '{{if .State.Running}}{{if .State.Health}}{{.State.Health.Status}}{{else}}running{{end}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing
}

# Waits until every service given is healthy; on a timeout prints their logs' tails, exits 1.
wait_healthy() {
  local deadline=$((SECONDS + WAIT)) s h pending
  echo "waiting up to $WAIT s for $* to be healthy"
  while :; do
    pending=()
    for s in "$@"; do
      h="$(health_of "$s")"
      [ "$h" = healthy ] || pending+=("$s:$h")
    done
    [ ${#pending[@]} -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for s in "${pending[@]}"; do
        echo "${s%%:*} is ${s#*:} after $WAIT s; its last log lines:" >&2
        "${COMPOSE[@]}" logs --tail 30 "${s%%:*}" >&2 || true
      done
      exit 1
    fi
    sleep 1
  done
  echo "healthy: $*"
}

cmd_up() {
  local services=("${NODES[@]}") profiles=",${COMPOSE_PROFILES:-},"
  have_image "$SLUICE_IMAGE" || die "image $SLUICE_IMAGE does not exist: run \`make image\` first"
  # Prometheus: the configured image, else Debian's packaged, else none.
  if [ -n "${SLUICE_PROMETHEUS_IMAGE:-}" ] || get_image "$PROM_DEFAULT"; then
    services+=(prometheus)
  elif [ -x /usr/bin/prometheus ]; then
    echo "$PROM_DEFAULT is not here and cannot be pulled: running Debian's prometheus as sluice-prometheus:local"
    have_image sluice-prometheus:local || "$ROOT/deploy/image.sh" prometheus
    export SLUICE_PROMETHEUS_IMAGE=sluice-prometheus:local
    services+=(prometheus)
  else
    echo "NOTE: Prometheus SKIPPED: $PROM_DEFAULT is not here and cannot be pulled, and Debian's" \
      "prometheus package is not installed (apt-get install prometheus, or deploy/install-deps.sh test)"
  fi
  if [[ "$profiles" == *,monitoring,* ]]; then
    if [ -n "${SLUICE_GRAFANA_IMAGE:-}" ] || get_image "$GRAFANA_DEFAULT"; then
      services+=(grafana)
    else
      echo "NOTE: Grafana SKIPPED: $GRAFANA_DEFAULT is not here and cannot be pulled"
    fi
  fi
  # Naming the services starts exactly those (profiles included); --no-build: never rebuild.
  "${COMPOSE[@]}" up -d --no-build "${services[@]}"
  wait_healthy "${NODES[@]}"
  echo "Kafka bootstrap (host):    127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092"
  echo "Kafka bootstrap (network): sluice-1:9092,sluice-2:9092,sluice-3:9092"
  echo "admin HTTP:                http://127.0.0.1:19644, :29644, :39644"
  [[ " ${services[*]} " == *" prometheus "* ]] && echo "Prometheus:                http://127.0.0.1:9090"
  [[ " ${services[*]} " == *" grafana "* ]] && echo "Grafana:                   http://127.0.0.1:3000"
  return 0
}

cmd_down() {
  # --profile is not needed: down removes every container of the project.
  "${COMPOSE[@]}" down --remove-orphans "$@"
}

cmd_status() {
  local s n
  "${COMPOSE[@]}" ps
  echo
  for n in 1 2 3; do
    printf 'sluice-%s: %s' "$n" "$(health_of "sluice-$n")"
    curl -fsS --max-time 3 "http://127.0.0.1:${n}9644/v1/cluster" 2>/dev/null | python3 -c '
import json, sys
c = json.load(sys.stdin)
p = c.get("partitions") or {}
print(", ready %s, controller %s, leads %s of %s partitions, %s without a leader" % (
    c.get("ready"), c.get("controller"), p.get("leader_here"), p.get("total"), p.get("without_leader")), end="")
' 2>/dev/null || printf ', admin HTTP not answering'
    echo
  done
  echo
  for n in 1 2 3; do
    curl -fsS --max-time 3 "http://127.0.0.1:${n}9644/v1/partitions" 2>/dev/null || echo '{}'
    echo
  done | python3 -c '
import json, os, sys
views = {}
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        doc = json.loads(line)
    except ValueError:
        continue
    if "node" in doc:
        views[doc["node"]] = {(p["topic"], p["partition"]): p for p in doc.get("partitions") or []}
if not views:
    print("no node answered /v1/partitions (admin ports 19644, 29644, 39644)")
    sys.exit(0)
nodes = sorted(views)
print("partitions (leader as most nodes see it; high watermark per node, - where not a replica"
      " or not answering); answering nodes: %s" % ", ".join(map(str, nodes)))
keys = sorted(set(k for v in views.values() for k in v))
# Internal topics (__consumer_offsets: 50 partitions) as one line each, unless SLUICE_STATUS_ALL=1.
internal = {}
if os.environ.get("SLUICE_STATUS_ALL") != "1":
    for k in [k for k in keys if k[0].startswith("__")]:
        leaders = [views[n][k].get("leader") for n in nodes if k in views[n]]
        leader = max(set(leaders), key=leaders.count) if leaders else None
        internal.setdefault(k[0], {})
        internal[k[0]][leader] = internal[k[0]].get(leader, 0) + 1
    keys = [k for k in keys if not k[0].startswith("__")]
rows = [["topic", "partition", "leader", "replicas"] + ["hw@%d" % n for n in (1, 2, 3)]]
for k in keys:
    leaders = [views[n][k].get("leader") for n in nodes if k in views[n]]
    leader = max(set(leaders), key=leaders.count) if leaders else None
    any_view = next(views[n][k] for n in nodes if k in views[n])
    hws = []
    for n in (1, 2, 3):
        hw = views.get(n, {}).get(k, {}).get("high_watermark")
        hws.append("-" if hw is None else str(hw))
    rows.append([k[0], str(k[1]), "-" if leader is None else str(leader),
                 ",".join(str(r) for r in any_view.get("replicas") or [])] + hws)
if len(rows) == 1:
    print("(no topics)")
else:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
for t, led in sorted(internal.items()):
    print("%s: %d partitions, led by %s (SLUICE_STATUS_ALL=1 lists them)" % (
        t, sum(led.values()), ", ".join("node %s: %d" % (n, c) for n, c in sorted(led.items(), key=str))))
'
}

[[ "$WAIT" =~ ^[0-9]+$ ]] || die "SLUICE_COMPOSE_WAIT must be a number of seconds, not '$WAIT'"
[ $# -eq 1 ] || usage
case "$1" in
  up)
    find_compose
    cmd_up
    ;;
  down)
    find_compose
    cmd_down
    ;;
  clean)
    find_compose
    cmd_down -v
    ;;
  status)
    find_compose
    cmd_status
    ;;
  *) usage ;;
esac
