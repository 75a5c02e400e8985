//! Black-box test harness: runs the real `sluice` binary as a child process on free
//! loopback ports and builds real Kafka clients (rdkafka / librdkafka) against it.
//!
//! This crate owns no broker logic and must never link the broker crates: everything
//! it knows about a node comes through the Kafka port, the admin HTTP port, the
//! process exit status and the log file.
//!
//! The binary is found through `SLUICE_BIN`, else next to the running test executable
//! (`<target>/<profile>/sluice`), else under `CARGO_TARGET_DIR` or the project's fixed
//! target dir. `cargo test -p sluice-tests` does not rebuild it: run `cargo build -p
//! sluice` first.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

pub use rdkafka;

use bytes::{Buf, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Fixed target dir of the project (see `.cargo/config.toml`).
const DEFAULT_TARGET_DIR: &str = "/var/cache/sluice/target";

/// How a node is started.
#[derive(Clone, Debug)]
pub struct NodeOpts {
    /// Use this data dir instead of a fresh temp dir (the caller owns it).
    pub data_dir: Option<PathBuf>,
    /// `--fsync always|interval`; `None` leaves the broker's default.
    pub fsync: Option<String>,
    /// More command-line arguments, appended after the standard ones.
    pub extra_args: Vec<String>,
    /// Extra environment variables for the broker process.
    pub env: Vec<(String, String)>,
    /// How long to wait for `/health/ready` to answer 200.
    pub ready_timeout: Duration,
    /// Two named Kafka listeners instead of one: `INTERNAL` on the node's Kafka port
    /// (advertised as 127.0.0.1) and `EXTERNAL` on [`Node::second_port`] (advertised as
    /// `localhost`).
    pub second_listener: bool,
}

impl Default for NodeOpts {
    fn default() -> Self {
        let secs = std::env::var("SLUICE_READY_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        NodeOpts {
            data_dir: None,
            fsync: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(secs),
            second_listener: false,
        }
    }
}

/// One running (or stopped) sluice process with its ports, data dir and log.
pub struct Node {
    opts: NodeOpts,
    bin: PathBuf,
    child: Option<Child>,
    kafka_port: u16,
    admin_port: u16,
    second_port: u16,
    data_dir: PathBuf,
    owned_data_dir: Option<tempfile::TempDir>,
    log_dir: Option<tempfile::TempDir>,
    log_path: PathBuf,
    starts: u32,
}

/// Where the broker binary is expected.
pub fn sluice_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_BIN") {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // Test executables live in <target>/<profile>/deps, binaries in <target>/<profile>.
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join("sluice"));
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("debug").join("sluice"));
    }
    candidates.push(Path::new(DEFAULT_TARGET_DIR).join("debug").join("sluice"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| candidates.last().cloned().expect("at least one candidate"))
}

/// Picks a loopback port nobody listens on right now (bind port 0, read it, release it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

impl Node {
    /// Starts a node with default options; panics (printing the node log) on failure.
    pub fn start_default() -> Node {
        Node::start(NodeOpts::default())
    }

    /// Starts a node and waits until `/health/ready` answers 200.
    pub fn start(opts: NodeOpts) -> Node {
        let bin = sluice_bin();
        if !bin.is_file() {
            panic!(
                "sluice binary not found at {}: run `cargo build -p sluice` first \
                 (or point SLUICE_BIN at the binary)",
                bin.display()
            );
        }
        let log_dir = tempfile::Builder::new()
            .prefix("sluice-test-log-")
            .tempdir()
            .expect("create log temp dir");
        let log_path = log_dir.path().join("node.log");
        let (data_dir, owned_data_dir) = match &opts.data_dir {
            Some(d) => {
                fs::create_dir_all(d).expect("create data dir");
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("sluice-test-data-")
                    .tempdir()
                    .expect("create data temp dir");
                (t.path().to_path_buf(), Some(t))
            }
        };
        let mut node = Node {
            opts,
            bin,
            child: None,
            kafka_port: 0,
            admin_port: 0,
            second_port: 0,
            data_dir,
            owned_data_dir,
            log_dir: Some(log_dir),
            log_path,
            starts: 0,
        };
        // Ports are picked by binding port 0 and releasing it, so another process can
        // grab one in between: retry with fresh ports if the first start fails.
        let mut last_err = None;
        for _ in 0..3 {
            node.kafka_port = free_port();
            node.admin_port = free_port();
            while node.admin_port == node.kafka_port {
                node.admin_port = free_port();
            }
            node.second_port = free_port();
            while [node.kafka_port, node.admin_port].contains(&node.second_port) {
                node.second_port = free_port();
            }
            match node.spawn_and_wait() {
                Ok(()) => return node,
                Err(e) => {
                    node.kill_quietly();
                    last_err = Some(e);
                }
            }
        }
        let e = last_err.expect("three attempts");
        node.fail(&format!("node did not become ready: {e:#}"))
    }

    fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .context("open node log")?;
        let (k, s) = (self.kafka_port, self.second_port);
        let mut args: Vec<String> = if self.opts.second_listener {
            vec![
                "--listeners".into(),
                format!("INTERNAL://127.0.0.1:{k},EXTERNAL://127.0.0.1:{s}"),
                "--advertised-listeners".into(),
                format!("INTERNAL://127.0.0.1:{k},EXTERNAL://localhost:{s}"),
            ]
        } else {
            vec![
                "--kafka-addr".into(),
                format!("127.0.0.1:{k}"),
                "--advertised-kafka-addr".into(),
                format!("127.0.0.1:{k}"),
            ]
        };
        args.extend([
            "--admin-addr".into(),
            format!("127.0.0.1:{}", self.admin_port),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
        ]);
        if let Some(f) = &self.opts.fsync {
            args.push("--fsync".into());
            args.push(f.clone());
        }
        args.extend(self.opts.extra_args.iter().cloned());
        writeln!(
            log,
            "==== harness: start #{} of {} {} ====",
            self.starts,
            self.bin.display(),
            args.join(" ")
        )?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("process exited before it was ready: {status}");
            }
            let last = match http_get(self.admin_addr(), "/health/ready") {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("HTTP {code}: {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "/health/ready not 200 within {:?} (last: {last})",
                    self.opts.ready_timeout
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    /// The `EXTERNAL` listener's port (with `NodeOpts::second_listener`).
    pub fn second_port(&self) -> u16 {
        self.second_port
    }

    pub fn kafka_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.kafka_port))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Process id of the running broker.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True if the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// Panics (with the log) if the process has exited on its own.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                self.fail(&format!("node exited unexpectedly: {status}"));
            }
        } else {
            self.fail("node is not running");
        }
    }

    /// `GET path` on the admin port: (status, body).
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.admin_addr(), path)
    }

    /// Prometheus text from `/metrics`.
    pub fn metrics(&self) -> String {
        match self.admin_get("/metrics") {
            Ok((200, body)) => body,
            Ok((code, body)) => panic!("/metrics answered {code}: {body}"),
            Err(e) => panic!("/metrics failed: {e:#}"),
        }
    }

    /// SIGKILL and reap: the crash case.
    pub fn kill9(&mut self) {
        let Some(mut c) = self.child.take() else {
            self.fail("kill9: node is not running");
        };
        let _ = c.kill();
        let status = c.wait().expect("wait for killed node");
        self.note(&format!("==== harness: SIGKILL, exit {status} ===="));
    }

    /// SIGTERM, wait for exit and return the status (no assertion on it).
    pub fn terminate_status(&mut self, timeout: Duration) -> ExitStatus {
        let Some(mut c) = self.child.take() else {
            self.fail("terminate: node is not running");
        };
        let pid = c.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = c.kill();
            let _ = c.wait();
            self.fail("could not send SIGTERM (`kill -TERM` failed)");
        }
        let deadline = Instant::now() + timeout;
        loop {
            match c.try_wait() {
                Ok(Some(status)) => {
                    self.note(&format!("==== harness: SIGTERM, exit {status} ===="));
                    return status;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    self.fail(&format!(
                        "node did not exit within {timeout:?} after SIGTERM"
                    ));
                }
            }
        }
    }

    /// SIGTERM, wait (up to 30 s) and assert a clean exit (status 0).
    pub fn terminate(&mut self) {
        let status = self.terminate_status(Duration::from_secs(30));
        if !status.success() {
            self.fail(&format!("SIGTERM shutdown was not clean: {status}"));
        }
    }

    /// Starts the stopped node again on the same data dir and ports.
    pub fn restart(&mut self) {
        if self.is_running() {
            self.fail("restart: node is still running; kill9() or terminate() it first");
        }
        self.child = None;
        if let Err(e) = self.spawn_and_wait() {
            self.kill_quietly();
            self.fail(&format!("node did not become ready after restart: {e:#}"));
        }
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Prints the last lines of the node log to stderr (shown by the test runner on failure).
    pub fn print_log(&self) {
        const TAIL: usize = 300;
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let skip = lines.len().saturating_sub(TAIL);
        eprintln!(
            "---- sluice node log ({}, kafka {}, admin {}, data {}), last {} of {} lines ----",
            self.log_path.display(),
            self.kafka_port,
            self.admin_port,
            self.data_dir.display(),
            lines.len() - skip,
            lines.len()
        );
        for l in &lines[skip..] {
            eprintln!("{l}");
        }
        eprintln!("---- end of sluice node log ----");
    }

    fn note(&self, line: &str) {
        if let Ok(mut f) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(f, "{line}");
        }
    }

    fn kill_quietly(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Panics with `msg`; the log is printed (and kept) by `Drop`.
    fn fail(&mut self, msg: &str) -> ! {
        panic!("{msg} (node log: {})", self.log_path.display());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_quietly();
        if std::thread::panicking() {
            self.print_log();
            // Keep the log and data for a post-mortem.
            if let Some(d) = self.log_dir.take() {
                let p = d.keep();
                eprintln!("kept node log dir {}", p.display());
            }
            if let Some(d) = self.owned_data_dir.take() {
                let p = d.keep();
                eprintln!("kept node data dir {}", p.display());
            }
        }
    }
}

/// Minimal HTTP/1.0 GET (no keep-alive, so no chunked bodies): (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).context("read HTTP response")?;
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or_default();
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP status line {status_line:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Value of a Prometheus sample `name{labels}` (exact label text) or `name`, summed over
/// all label sets when `labels` is `None`.
pub fn metric_value(metrics: &str, name: &str, labels: Option<&str>) -> Option<f64> {
    let mut sum = None;
    for line in metrics.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, rest)) => (n, Some(rest.trim_end_matches('}'))),
            None => (series, None),
        };
        if n != name || (labels.is_some() && labels != l) {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

// ---------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------

/// Settings shared by every test client: IPv4 loopback, short timeouts so a broken
/// broker fails a test quickly instead of hanging it.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000")
        .set("topic.metadata.refresh.interval.ms", "2000")
        .set("reconnect.backoff.ms", "20")
        .set("reconnect.backoff.max.ms", "500")
        .set("retry.backoff.ms", "50");
    if let Ok(d) = std::env::var("SLUICE_TEST_RDKAFKA_DEBUG") {
        c.set("debug", d);
    }
    c
}

fn apply(c: &mut ClientConfig, extra: &[(&str, &str)]) {
    for (k, v) in extra {
        c.set(*k, *v);
    }
}

/// A `FutureProducer` (acks=all, 15 s delivery timeout unless overridden).
pub fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut c = client_config(bootstrap);
    c.set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "15000");
    apply(&mut c, extra);
    c.create().expect("create producer")
}

/// A `StreamConsumer` for manual `assign()` only: a group id is set because librdkafka
/// requires one, but nothing subscribes or commits, so no coordinator is involved.
pub fn consumer(bootstrap: &str, extra: &[(&str, &str)]) -> StreamConsumer {
    let mut c = client_config(bootstrap);
    c.set("group.id", "sluice-tests-manual-assign")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100");
    apply(&mut c, extra);
    c.create().expect("create consumer")
}

pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    client_config(bootstrap)
        .create()
        .expect("create admin client")
}

pub fn admin_opts() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(Duration::from_secs(15)))
}

/// Creates a topic and waits until metadata shows every partition with a leader.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin = admin(bootstrap);
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let res = admin
        .create_topics([&t], &admin_opts())
        .await
        .unwrap_or_else(|e| panic!("CreateTopics {name}: request failed: {e}"));
    assert_eq!(res.len(), 1, "one result per topic");
    if let Err((topic, code)) = &res[0] {
        panic!("CreateTopics {topic}: {code:?}");
    }
    wait_for_topic(bootstrap, name, partitions).await;
}

/// Polls metadata until `topic` exists with `partitions` partitions that all have a leader.
pub async fn wait_for_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let c = consumer(bootstrap, &[("allow.auto.create.topics", "false")]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    loop {
        match c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => {
                if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
                    let ready = t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0);
                    if ready {
                        return;
                    }
                    last = format!(
                        "error {:?}, {} partitions, leaders {:?}",
                        t.error(),
                        t.partitions().len(),
                        t.partitions()
                            .iter()
                            .map(|p| p.leader())
                            .collect::<Vec<_>>()
                    );
                }
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            panic!("topic {topic} not ready with {partitions} partitions within 15s: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Assigns `(partition, offset)` pairs of `topic`.
pub fn assign(c: &StreamConsumer, topic: &str, parts: impl IntoIterator<Item = (i32, Offset)>) {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in parts {
        tpl.add_partition_offset(topic, p, o)
            .expect("add partition offset");
    }
    c.assign(&tpl).expect("assign");
}

/// Assigns partitions `0..n` of `topic` from the beginning.
pub fn assign_all_from_beginning(c: &StreamConsumer, topic: &str, n: i32) {
    assign(c, topic, (0..n).map(|p| (p, Offset::Beginning)));
}

/// Receives exactly `n` messages or panics after `timeout` with what it got.
pub async fn consume(c: &StreamConsumer, n: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => panic!("consumer error after {} of {n} messages: {e}", out.len()),
            Err(_) => panic!(
                "timed out after {timeout:?} with {} of {n} messages; last: {:?}",
                out.len(),
                out.last().map(|m| (m.partition(), m.offset()))
            ),
        }
    }
    out
}

/// Asserts that no message arrives within `wait`.
pub async fn assert_no_more(c: &StreamConsumer, wait: Duration) {
    if let Ok(r) = tokio::time::timeout(wait, c.recv()).await {
        match r {
            Ok(m) => panic!(
                "unexpected extra message at {}/{} offset {}",
                m.topic(),
                m.partition(),
                m.offset()
            ),
            Err(e) => panic!("unexpected consumer error: {e}"),
        }
    }
}

/// One acknowledged record: where it landed and what it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Produces `(key, value)` records (partition chosen by the client's partitioner unless
/// given) and waits for every delivery report; panics on the first failure.
pub async fn produce_all(
    p: &FutureProducer,
    topic: &str,
    records: &[(Option<i32>, Option<String>, String)],
) -> Vec<Acked> {
    let mut futures = Vec::with_capacity(records.len());
    for (partition, key, value) in records {
        let mut r = FutureRecord::<String, String>::to(topic).payload(value);
        if let Some(k) = key {
            r = r.key(k);
        }
        if let Some(part) = partition {
            r = r.partition(*part);
        }
        loop {
            match p.send_result(r) {
                Ok(f) => {
                    futures.push(f);
                    break;
                }
                Err((e, back)) => {
                    if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                        r = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        panic!("enqueue to {topic} failed: {e}");
                    }
                }
            }
        }
    }
    let mut acked = Vec::with_capacity(records.len());
    for (i, f) in futures.into_iter().enumerate() {
        let d = f
            .await
            .expect("delivery future canceled")
            .unwrap_or_else(|(e, _)| panic!("record {i} to {topic} not delivered: {e}"));
        acked.push(Acked {
            partition: d.partition,
            offset: d.offset,
            key: records[i].1.clone().map(String::into_bytes),
            value: Some(records[i].2.clone().into_bytes()),
        });
    }
    acked
}

/// Flushes a producer (bounded).
pub fn flush(p: &FutureProducer) {
    p.flush(Duration::from_secs(15)).expect("flush producer");
}

/// `(low, high)` watermarks of one partition.
pub fn watermarks(c: &StreamConsumer, topic: &str, partition: i32) -> (i64, i64) {
    c.fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("ListOffsets {topic}/{partition}: {e}"))
}

/// Groups messages by partition, each list in the order received.
pub fn by_partition(msgs: &[OwnedMessage]) -> HashMap<i32, Vec<&OwnedMessage>> {
    let mut m: HashMap<i32, Vec<&OwnedMessage>> = HashMap::new();
    for msg in msgs {
        m.entry(msg.partition()).or_default().push(msg);
    }
    m
}

/// A raw Kafka connection: one request at a time, encoded and decoded with kafka-protocol,
/// for requests and error codes real clients do not expose.
pub struct Raw {
    s: TcpStream,
    corr: i32,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Raw { s, corr: 0 }
    }

    /// The broker address this connection talks to.
    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.s.peer_addr()
    }

    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        v: i16,
        req: &Req,
    ) -> Resp {
        let mut body = BytesMut::new();
        req.encode(&mut body, v).expect("encode request");
        let mut buf = self.call_raw(key, v, &body);
        let r = Resp::decode(&mut buf, v).expect("decode response");
        assert!(!buf.has_remaining(), "{key:?} v{v}: trailing bytes");
        r
    }

    /// Sends a request body encoded by the caller (for versions kafka-protocol no longer
    /// has) and returns the response body after its header.
    pub fn call_raw(&mut self, key: ApiKey, v: i16, request: &[u8]) -> bytes::Bytes {
        self.corr += 1;
        let mut body = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(v)
            .with_correlation_id(self.corr)
            .with_client_id(Some(StrBytes::from_static_str("raw-client")))
            .encode(&mut body, key.request_header_version(v))
            .expect("encode header");
        body.extend_from_slice(request);
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.s.write_all(&frame).expect("send");
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).expect("response length");
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut buf).expect("response body");
        let mut buf = bytes::Bytes::from(buf);
        let h = ResponseHeader::decode(&mut buf, key.response_header_version(v)).expect("header");
        assert_eq!(h.correlation_id, self.corr);
        buf
    }
}
