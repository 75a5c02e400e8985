"""Compose cluster tests, started by tests/compose/run.sh once `deploy/compose.sh up` has the
three nodes of docker-compose.yml healthy (project and compose command in COMPOSE_TEST_CMD).

Phases (COMPOSE_TEST_ONLY selects some):
  producer-ids  InitProducerId asked of each node directly: three different producer ids.
  host        clients on the host: a replication-factor-3 topic; idempotent producers and
              consumers through each node's external port alone (19092, 29092, 39092);
              metadata names every node by its external address.
  network     a client in a container on the compose network (Debian's kcat, image
              sluice-kcat:local) produces and consumes through sluice-1:9092, sluice-2:9092,
              sluice-3:9092; metadata names every node by its internal address; the topic is
              auto-created with the compose default replication factor 3.
  prometheus  the compose Prometheus scrapes all three nodes, and
              rate(sluice_topic_bytes_in_total{topic=...}[30s]) is non-zero on the node that
              leads the topic (leader from /v1/partitions).
  faults      under an idempotent acks=all producer: `compose kill` of a partition leader and
              start again, then `docker network disconnect` of a leader and reconnect. Every
              partition keeps taking writes while a majority is up, the returning node's high
              watermarks reach the leader's, and every acknowledged record is read back exactly
              once, in order.
  rolling     `compose restart` of each node in turn, waiting for it to be healthy, under an
              idempotent acks=all producer: no delivery error, nothing lost or duplicated.
"""
import json
import os
import re
import shlex
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

COMPOSE = shlex.split(os.environ["COMPOSE_TEST_CMD"])
ONLY = set(os.environ.get("COMPOSE_TEST_ONLY", "producer-ids host network prometheus faults rolling").split())
NODES = (1, 2, 3)
EXTERNAL = {n: "127.0.0.1:%d9092" % n for n in NODES}
INTERNAL = {n: "sluice-%d:9092" % n for n in NODES}
BOOTSTRAP = ",".join(EXTERNAL.values())
KCAT_IMAGE = "sluice-kcat:local"
PROMETHEUS = "http://127.0.0.1:9090"
RUN = "%x" % (int(time.time()) & 0xFFFFFF)
T0 = time.time()


def log(msg):
    print("[%6.1fs] %s" % (time.time() - T0, msg), flush=True)


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


# ----------------------------------------------------------------------------- docker


def compose(*args, capture=False):
    r = subprocess.run(COMPOSE + list(args), check=True, text=True,
                       stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE if capture else None)
    return r.stdout if capture else None


def container(n):
    # -a: a stopped container too (docker compose v2 lists running ones only without it).
    cid = compose("ps", "-a", "-q", "sluice-%d" % n, capture=True).strip()
    check(cid, "service sluice-%d has no container" % n)
    return cid


def network():
    nets = json.loads(subprocess.run(
        ["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", container(1)],
        check=True, text=True, stdout=subprocess.PIPE).stdout)
    check(len(nets) == 1, "sluice-1 is on networks %s, expected one" % list(nets))
    return next(iter(nets))


def health(n):
    try:
        cid = container(n)
    except (Failed, subprocess.CalledProcessError):
        return "missing"
    r = subprocess.run(
        ["docker", "inspect", "-f",
         "{{if .State.Running}}{{if .State.Health}}{{.State.Health.Status}}{{else}}running{{end}}"
         "{{else}}{{.State.Status}}{{end}}", cid],
        text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return r.stdout.strip() or "missing"


def wait_healthy(n, timeout=90):
    """Waits for the container's Docker healthcheck (sluice healthcheck) and /health/ready."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if health(n) == "healthy" and admin_status(n, "/health/ready") == 200:
            return
        time.sleep(0.5)
    raise Failed("sluice-%d not healthy after %d s (docker says %s)" % (n, timeout, health(n)))


# ----------------------------------------------------------------------------- admin HTTP


def admin_status(n, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d9644%s" % (n, path), timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def admin_json(n, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d9644%s" % (n, path), timeout=2) as r:
            return json.load(r)
    except (OSError, ValueError):
        return None


def views(topic):
    """{node: {partition: entry}} of every node that answers /v1/partitions."""
    out = {}
    for n in NODES:
        doc = admin_json(n, "/v1/partitions")
        if doc is not None:
            out[n] = {p["partition"]: p for p in doc["partitions"] if p["topic"] == topic}
    return out


def leader_of(topic, partition, timeout=20):
    """The leader most answering nodes agree on."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        seen = [v[partition]["leader"] for v in views(topic).values()
                if partition in v and v[partition]["leader"]]
        if seen:
            return max(set(seen), key=seen.count)
        time.sleep(0.2)
    raise Failed("%s-%d has no leader after %d s" % (topic, partition, timeout))


def wait_caught_up(topic, partitions, timeout=30):
    """Waits until every replica's high watermark equals the leader's (no writes meanwhile)."""
    deadline = time.time() + timeout
    while True:
        v = views(topic)
        behind = []
        for p in range(partitions):
            hws = {n: v[n][p]["high_watermark"] for n in v if p in v[n]}
            if len(hws) < 3 or len(set(hws.values())) != 1:
                behind.append((p, hws))
        if not behind:
            return {p: v[1][p]["high_watermark"] for p in range(partitions)}
        if time.time() > deadline:
            raise Failed("replicas of %s did not converge in %d s: %s" % (topic, timeout, behind))
        time.sleep(0.3)


# ----------------------------------------------------------------------------- Kafka helpers


def create_topic(name, partitions, rf=3, bootstrap=BOOTSTRAP):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=rf)])[name].result(30)
    # Every partition has a leader before producing.
    for p in range(partitions):
        leader_of(name, p)


def read_all(topic, partitions, bootstrap=BOOTSTRAP, timeout=60):
    """Every record of every partition up to its high watermark: {partition: [value, ...]}."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "compose-check-%s" % RUN,
                  "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    try:
        ends = {}
        for p in range(partitions):
            _, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = high
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        got = {p: [] for p in range(partitions)}
        pos = {p: 0 for p in range(partitions)}
        deadline = time.time() + timeout
        while any(pos[p] < ends[p] for p in ends):
            if time.time() > deadline:
                raise Failed("reading %s: at %s of %s after %d s" % (topic, pos, ends, timeout))
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                continue
            got[m.partition()].append(m.value().decode())
            pos[m.partition()] = m.offset() + 1
        return got
    finally:
        c.close()


class LoadProducer:
    """An idempotent acks=all producer sending numbered records round-robin over the
    partitions at a steady rate in a thread, recording what was acknowledged and when."""

    def __init__(self, topic, partitions, rate, extra=None):
        conf = {
            "bootstrap.servers": BOOTSTRAP,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 120000,
            # A request to a node cut off from the network is given up (and retried, with the
            # same sequence numbers) after 5 s instead of the default 30 s.
            "request.timeout.ms": 5000,
            # Disconnects are expected here (kills, restarts): log warnings and errors only.
            "log_level": 4,
        }
        conf.update(extra or {})
        self.producer = Producer(conf)
        self.topic, self.partitions, self.rate = topic, partitions, rate
        self.lock = threading.Lock()
        self.acked = {p: [] for p in range(partitions)}
        self.ack_times = {p: [] for p in range(partitions)}  # ack time per ack, in ack order
        self.sent_at = []  # produce() time per sequence number
        self.errors = []
        self.sent = 0
        self.remaining = None
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_delivery(self, err, msg):
        with self.lock:
            if err is not None:
                self.errors.append(str(err))
                return
            seq = int(msg.value())
            self.acked[msg.partition()].append(seq)
            self.ack_times[msg.partition()].append(time.time())

    def _run(self):
        seq, start = 0, time.time()
        while not self.stop_flag.is_set():
            due = int((time.time() - start) * self.rate)
            while seq < due:
                try:
                    self.producer.produce(self.topic, value=b"%d" % seq, partition=seq % self.partitions,
                                          on_delivery=self._on_delivery)
                except BufferError:
                    break
                self.sent_at.append(time.time())
                seq += 1
            self.producer.poll(0.005)
        self.sent = seq
        self.remaining = self.producer.flush(120)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stop_flag.set()
        self.thread.join()
        check(self.remaining == 0, "%s records still unacknowledged 120 s after the producer stopped"
              % self.remaining)

    def first_ack_after(self, partition, t):
        """When the first record produced after time t was acknowledged on the partition."""
        with self.lock:
            for seq, at in zip(self.acked[partition], self.ack_times[partition]):
                if self.sent_at[seq] > t:
                    return at
        return None

    def acks_between(self, t0, t1):
        with self.lock:
            return {p: sum(1 for x in ts if t0 <= x <= t1) for p, ts in self.ack_times.items()}

    def wait_first_ack(self, partition, t, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            a = self.first_ack_after(partition, t)
            if a is not None:
                return a
            time.sleep(0.05)
        raise Failed("no acknowledged write on %s-%d within %d s" % (self.topic, partition, timeout))

    def verify(self):
        """Every acknowledged record read back exactly once, in production order."""
        got = read_all(self.topic, self.partitions)
        total = sum(len(v) for v in self.acked.values())
        log("sent %d, acknowledged %d, delivery errors %d" % (self.sent, total, len(self.errors)))
        ok = True
        for p in range(self.partitions):
            values = [int(x) for x in got[p]]
            want = self.acked[p]
            dups = len(values) - len(set(values))
            missing = len(set(want) - set(values))
            ordered = values == sorted(values)
            stray = sum(1 for x in values if x % self.partitions != p or x >= self.sent)
            log("  partition %d: acknowledged %d, read %d, duplicates %d, missing %d, in order %s, stray %d"
                % (p, len(want), len(values), dups, missing, ordered, stray))
            ok = ok and not dups and not missing and ordered and not stray
        if self.errors:
            log("  delivery errors (first 5): %s" % self.errors[:5])
        check(not self.errors, "%d delivery errors surfaced to the client" % len(self.errors))
        check(ok, "acknowledged records lost, duplicated or reordered")
        check(total > 0, "nothing was acknowledged")


def init_producer_id(addr):
    """Asks one node (host:port) for a producer id with a raw InitProducerId v1 request (no
    transactional id), so that the node answering is the one asked. Returns (error, id, epoch)."""
    host, port = addr.rsplit(":", 1)
    body = struct.pack(">hhih", 22, 1, 7, 7) + b"compose" + struct.pack(">hi", -1, 60000)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">i", buf[:4])[0]:
            chunk = sock.recv(4096)
            check(chunk, "%s closed the connection during InitProducerId" % addr)
            buf += chunk
    correlation, _throttle, error, pid, epoch = struct.unpack(">iihqh", buf[4:24])
    check(correlation == 7, "InitProducerId answer from %s has correlation id %d" % (addr, correlation))
    return error, pid, epoch


# ----------------------------------------------------------------------------- phases


def phase_producer_ids():
    """Idempotent producers that got their ids from different nodes may write to the same
    partition (the host phase does): their producer ids must differ, or the leader takes one
    producer's batches for duplicates of the other's (acknowledged, not stored) or refuses them
    as out of order."""
    pids = {}
    for n in NODES:
        error, pid, epoch = init_producer_id(EXTERNAL[n])
        check(error == 0, "InitProducerId on node %d: error %d" % (n, error))
        pids[n] = (pid, epoch)
    log("InitProducerId asked of each node: %s" % pids)
    check(len(set(pids.values())) == 3, "nodes hand out the same producer id and epoch: %s" % pids)


def phase_host():
    topic = "host-%s" % RUN
    create_topic(topic, 3, bootstrap=EXTERNAL[1])
    v = views(topic)
    for n in NODES:
        check(len(v.get(n, {})) == 3 and all(sorted(e["replicas"]) == [1, 2, 3] for e in v[n].values()),
              "node %d does not see %s with 3 partitions on replicas 1,2,3: %s" % (n, topic, v.get(n)))
    log("%s: 3 partitions, replicas 1,2,3; leaders %s" % (topic, [leader_of(topic, p) for p in range(3)]))
    sent = set()
    for n in NODES:
        # Only this node's external address: the client must learn the others from metadata.
        conf = {"bootstrap.servers": EXTERNAL[n]}
        md = AdminClient(conf).list_topics(timeout=10)
        brokers = {b.id: "%s:%d" % (b.host, b.port) for b in md.brokers.values()}
        check(brokers == {m: EXTERNAL[m] for m in NODES},
              "metadata via %s names brokers %s, expected the external addresses" % (EXTERNAL[n], brokers))
        p = Producer(dict(conf, acks="all", **{"enable.idempotence": True}))
        errors = []
        for i in range(300):
            value = "via-%d-%d" % (n, i)
            p.produce(topic, value=value.encode(), partition=i % 3,
                      on_delivery=lambda err, msg: err and errors.append(str(err)))
            sent.add(value)
        check(p.flush(30) == 0 and not errors, "producing through %s: %s" % (EXTERNAL[n], errors[:3]))
        log("produced 300 records through %s alone (metadata: %s)" % (EXTERNAL[n], sorted(brokers.values())))
    for n in NODES:
        got = read_all(topic, 3, bootstrap=EXTERNAL[n])
        values = [x for vals in got.values() for x in vals]
        check(len(values) == len(set(values)) and set(values) == sent,
              "consuming through %s: read %d (%d distinct), produced %d"
              % (EXTERNAL[n], len(values), len(set(values)), len(sent)))
        log("consumed all %d records through %s alone" % (len(values), EXTERNAL[n]))


def kcat(net, *args, stdin=None):
    r = subprocess.run(["docker", "run", "--rm", "-i", "--network", net, KCAT_IMAGE] + list(args),
                       input=stdin, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if r.returncode != 0:
        raise Failed("kcat %s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr.strip()[-500:]))
    return r.stdout


def phase_network():
    net = network()
    topic = "net-%s" % RUN
    sent = []
    for n in NODES:
        md = json.loads(kcat(net, "-b", INTERNAL[n], "-L", "-J", "-m", "10"))
        brokers = {b["id"]: b["name"] for b in md["brokers"]}
        check(brokers == {m: INTERNAL[m] for m in NODES},
              "metadata via %s inside the network names brokers %s, expected the internal addresses"
              % (INTERNAL[n], brokers))
        lines = ["in-net-%d-%d" % (n, i) for i in range(200)]
        # The first produce auto-creates the topic (compose default: 3 partitions, RF 3).
        kcat(net, "-b", INTERNAL[n], "-P", "-t", topic, "-X", "acks=all", stdin="\n".join(lines) + "\n")
        sent += lines
        log("kcat in network %s: produced 200 records through %s (metadata: %s)"
            % (net, INTERNAL[n], sorted(brokers.values())))
    v = views(topic)
    check(all(len(v.get(n, {})) == 3 for n in NODES)
          and all(sorted(e["replicas"]) == [1, 2, 3] for e in v[1].values()),
          "auto-created %s is not 3 partitions x 3 replicas on every node: %s" % (topic, v))
    for n in NODES:
        out = kcat(net, "-b", INTERNAL[n], "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%s\n")
        got = out.split()
        check(sorted(got) == sorted(sent),
              "kcat consuming through %s read %d records (%d distinct), produced %d"
              % (INTERNAL[n], len(got), len(set(got)), len(sent)))
        log("kcat in network: consumed all %d records through %s" % (len(got), INTERNAL[n]))


def prometheus_query(q):
    url = PROMETHEUS + "/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as r:
        doc = json.load(r)
    check(doc.get("status") == "success", "query %s: %s" % (q, doc))
    return doc["data"]["result"]


def prometheus_up():
    try:
        with urllib.request.urlopen(PROMETHEUS + "/-/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def phase_prometheus(load):
    """`load` has been producing to its single-partition topic since before the network phase."""
    if not prometheus_up():
        log("prometheus phase SKIPPED: no Prometheus on %s (compose.sh up said why)" % PROMETHEUS)
        return "skipped"
    topic = load.topic
    leader = leader_of(topic, 0)
    deadline = time.time() + 60
    rates = {}
    while time.time() < deadline:
        up = {r["metric"].get("node"): r["value"][1] for r in prometheus_query('up{job="sluice"}')}
        res = prometheus_query('rate(sluice_topic_bytes_in_total{topic="%s"}[30s])' % topic)
        rates = {int(r["metric"]["node"]): float(r["value"][1]) for r in res if "node" in r["metric"]}
        if up == {"1": "1", "2": "1", "3": "1"} and rates.get(leader, 0) > 0:
            break
        time.sleep(2)
    log("up{job=\"sluice\"}: %s" % up)
    check(up == {"1": "1", "2": "1", "3": "1"}, "Prometheus does not scrape all three nodes: %s" % up)
    log("rate(sluice_topic_bytes_in_total{topic=\"%s\"}[30s]) by node: %s; leader (from /v1/partitions): %d"
        % (topic, {n: round(r, 1) for n, r in sorted(rates.items())}, leader))
    check(rates.get(leader, 0) > 0, "no bytes-in rate on the leader %d: %s" % (leader, rates))
    check_dashboard()


def check_dashboard():
    """Every query of the Grafana dashboard parses in Prometheus, and every Sluice metric it
    uses is in the catalogue (docs/metrics.md), so the dashboard follows renamed metrics."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "deploy", "grafana", "dashboards", "sluice.json")) as f:
        dash = json.load(f)
    with open(os.path.join(root, "docs", "metrics.md")) as f:
        catalogue = f.read()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    empty = []
    for e in exprs:
        if not prometheus_query(e.replace("$topic", ".*")):
            empty.append(e)
    names = set(re.findall(r"\b(sluice_[a-z_]+?)(?:_bucket)?\b", " ".join(exprs)))
    unknown = sorted(n for n in names if "`%s`" % n not in catalogue)
    log("Grafana dashboard: %d queries run in Prometheus, %d with no data yet; metrics used: %d"
        % (len(exprs), len(empty), len(names)))
    check(not unknown, "the dashboard uses metrics not in docs/metrics.md: %s" % unknown)


def phase_faults():
    topic = "faults-%s" % RUN
    create_topic(topic, 3)
    net = network()
    load = LoadProducer(topic, 3, rate=1000).start()
    try:
        time.sleep(2)
        # 1. SIGKILL the leader of partition 0, start it again.
        victim = leader_of(topic, 0)
        compose("kill", "sluice-%d" % victim)
        killed = time.time()  # when `compose kill` returned: the container is dead by then
        first = load.wait_first_ack(0, killed)
        log("compose kill sluice-%d (leader of %s-0): first record produced after the kill acknowledged"
            " on partition 0 %.2f s after it" % (victim, topic, first - killed))
        time.sleep(1)
        compose("start", "sluice-%d" % victim)
        wait_healthy(victim)
        log("sluice-%d started again and healthy %.1f s after the kill" % (victim, time.time() - killed))
        time.sleep(2)
        # 2. Cut the leader of partition 1 off the network, reconnect it.
        cut = leader_of(topic, 1)
        cid = container(cut)
        subprocess.run(["docker", "network", "disconnect", net, cid], check=True)
        cut_at = time.time()
        log("docker network disconnect sluice-%d (leader of %s-1)" % (cut, topic))
        first = load.wait_first_ack(1, cut_at)
        log("first record produced after the cut acknowledged on partition 1 %.2f s after it" % (first - cut_at))
        settled = time.time()
        time.sleep(6)
        during = load.acks_between(settled, time.time())
        log("acks per partition in the %.1f s after that, sluice-%d still cut off: %s"
            % (time.time() - settled, cut, during))
        check(all(c > 0 for c in during.values()),
              "a partition with a majority took no writes while sluice-%d was cut off: %s" % (cut, during))
        # Compose's own alias (the service name) must come back with the container, so that
        # the other nodes resolve sluice-N again.
        subprocess.run(["docker", "network", "connect", "--alias", "sluice-%d" % cut, net, cid], check=True)
        back = time.time()
        log("docker network connect sluice-%d after %.1f s cut off" % (cut, back - cut_at))
        wait_healthy(cut)
        time.sleep(2)
    finally:
        load.stop()
    hws = wait_caught_up(topic, 3)
    log("sluice-%d caught up %.1f s after reconnecting: every replica at high watermarks %s"
        % (cut, time.time() - back, hws))
    load.verify()


def phase_rolling():
    topic = "rolling-%s" % RUN
    create_topic(topic, 3)
    load = LoadProducer(topic, 3, rate=1000).start()
    try:
        time.sleep(2)
        for n in NODES:
            t = time.time()
            compose("restart", "-t", "30", "sluice-%d" % n)
            stopped = time.time()
            wait_healthy(n)
            log("compose restart sluice-%d: restarted in %.1f s, healthy after %.1f s"
                % (n, stopped - t, time.time() - t))
            time.sleep(3)
    finally:
        load.stop()
    load.verify()


def main():
    timings = []
    failed = []
    prom_load = None
    phases = [p for p in ("producer-ids", "host", "network", "prometheus", "faults", "rolling") if p in ONLY]
    for name in phases:
        log("=== phase %s" % name)
        t = time.time()
        try:
            if name == "producer-ids":
                phase_producer_ids()
            elif name == "host":
                phase_host()
            elif name == "network":
                if "prometheus" in ONLY and prom_load is None:
                    prom_topic = "prom-%s" % RUN
                    create_topic(prom_topic, 1)
                    prom_load = LoadProducer(prom_topic, 1, rate=300).start()
                phase_network()
            elif name == "prometheus":
                if prom_load is None:
                    prom_topic = "prom-%s" % RUN
                    create_topic(prom_topic, 1)
                    prom_load = LoadProducer(prom_topic, 1, rate=300).start()
                    time.sleep(12)
                try:
                    status = phase_prometheus(prom_load)
                finally:
                    prom_load.stop()
                if status == "skipped":
                    timings.append((name, time.time() - t, "SKIPPED"))
                    continue
            elif name == "faults":
                phase_faults()
            elif name == "rolling":
                phase_rolling()
            timings.append((name, time.time() - t, "ok"))
        except Exception as e:  # noqa: BLE001 (any failure of a phase is reported, then the next runs)
            if not isinstance(e, (Failed, KafkaException, subprocess.CalledProcessError,
                                  subprocess.TimeoutExpired)):
                traceback.print_exc()
            # Every phase has topics of its own: go on, to report every failure at once.
            timings.append((name, time.time() - t, "FAILED"))
            failed.append("%s: %s" % (name, e))
            log("FAIL %s" % failed[-1])
    log("timings: " + ", ".join("%s %.1f s (%s)" % x for x in timings))
    if failed:
        for f in failed:
            print("compose test FAILED: " + f, flush=True)
        sys.exit(1)
    print("compose test: OK", flush=True)


if __name__ == "__main__":
    main()
