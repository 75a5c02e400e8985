//! `sluice-bench`: producer and consumer load generator in the manner of Kafka's
//! `kafka-producer-perf-test` / `kafka-consumer-perf-test`, built on librdkafka (rdkafka).
//!
//! Prints exactly one JSON line per phase on stdout (progress goes to stderr):
//! `{"mode":"produce","records":..,"records_per_sec":..,"mb_per_sec":..,"p50_ms":..,
//!   "p99_ms":..,"p999_ms":..,"broker_cpu_s":..,"broker_cpu_s_per_million":..,
//!   "broker_peak_rss_mib":.., ...}`
//! MB is 2^20 bytes of record payload (as Kafka's tools count). Produce latency is from
//! the `send` call to the delivery report, so it includes time spent in the client queue.
//! Broker CPU and RSS come from `/proc/<pid>` when `--broker-pid` is given; the peak RSS
//! (VmHWM) is the broker's lifetime peak, not the phase's.
//!
//! `--mode commit`: one group member owning every partition of the topic sends `--commits`
//! OffsetCommit requests (each with an offset per partition), sync or async; prints
//! `{"mode":"commit","commits_per_sec":..,"partition_offsets_per_sec":..,"p50_ms":..,..}`.
//! `--mode rebalance`: `--members` consumers join one group, then `--rounds` times one leaves
//! (close) and one joins; prints `{"mode":"rebalance","join_all_ms":..,
//! "leave_rebalance_ms":[..],"leave_rebalance_median_ms":..,..}`.
//!
//! Exit status 1 if any record or commit failed or the consumer fell short.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Produce,
    Consume,
    Both,
    /// Offset commits of one group member covering every partition of the topic.
    Commit,
    /// Rebalance times of a group of `--members` consumers.
    Rebalance,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CommitMode {
    Sync,
    Async,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "sluice-bench",
    about = "Kafka producer/consumer throughput and latency, offset commit and rebalance tool"
)]
struct Args {
    /// bootstrap.servers
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Topic to write and read.
    #[arg(long, default_value = "sluice-bench")]
    topic: String,
    /// Partitions of the topic, created if missing (produce and both modes).
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Replication factor of the topic when the bench creates it.
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    /// Records to produce (and to consume).
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Payload size in bytes (null key).
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// acks: 0, 1 or all.
    #[arg(long, default_value = "1", value_parser = ["0", "1", "all", "-1"])]
    acks: String,
    /// linger.ms
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// compression.type: none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none", value_parser = ["none", "gzip", "snappy", "lz4", "zstd"])]
    compression: String,
    /// Produce mode: producers running side by side, each sending records / producers.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Produce mode: send in transactions of this many records (a transactional producer,
    /// commit after each); 0 for none.
    #[arg(long, default_value_t = 0)]
    txn_records: u64,
    /// Rate limit in records/s; -1 for as fast as possible.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    throughput: i64,
    /// produce, consume (all partitions from the beginning), or both (produce, then consume).
    #[arg(long, value_enum, default_value_t = Mode::Produce)]
    mode: Mode,
    /// Broker process id, to report its CPU time and peak RSS from /proc (repeatable: the
    /// nodes of a cluster, their CPU times summed, the largest RSS).
    #[arg(long)]
    broker_pid: Vec<u32>,
    /// Extra librdkafka property for the producer, `key=value` (repeatable).
    #[arg(short = 'X', long = "producer-prop", value_parser = parse_kv)]
    producer_props: Vec<(String, String)>,
    /// Extra librdkafka property for the consumer, `key=value` (repeatable).
    #[arg(long = "consumer-prop", value_parser = parse_kv)]
    consumer_props: Vec<(String, String)>,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Produce mode: librdkafka's statistics every this many ms (0: off). Each interval's
    /// per-broker windows (time in the client's partition queue, in its send buffer, and the
    /// request round trip) go to stderr, and the output gains the largest p99 of each.
    #[arg(long, default_value_t = 0)]
    stats_ms: u64,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 5)]
    report_secs: u64,
    /// Commit mode: OffsetCommit requests (each covering every partition of the topic).
    #[arg(long, default_value_t = 2000)]
    commits: u64,
    /// Commit mode: wait for each commit (sync), or send all without waiting but the last (async).
    #[arg(long, value_enum, default_value_t = CommitMode::Sync)]
    commit_mode: CommitMode,
    /// Rebalance mode: consumers in the group.
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Rebalance mode: times one member leaves (and a new one takes its place).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Commit and rebalance modes: partition.assignment.strategy of the group's consumers
    /// (classic protocol), or `uniform`: the consumer protocol (KIP-848,
    /// group.protocol=consumer) with the broker's uniform assignor.
    #[arg(long, default_value = "range", value_parser = ["range", "roundrobin", "cooperative-sticky", "uniform"])]
    assignor: String,
}

/// The group protocol and assignor of a consumer: `uniform` is the consumer protocol with
/// the broker's assignor; anything else a classic client-side assignor.
fn set_group_protocol(cfg: &mut ClientConfig, assignor: &str) {
    if assignor == "uniform" {
        cfg.set("group.protocol", "consumer")
            .set("group.remote.assignor", "uniform");
    } else {
        cfg.set("partition.assignment.strategy", assignor);
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("sluice-bench: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Runs the requested phases; `Ok(false)` when a phase saw errors.
fn run(args: &Args) -> anyhow::Result<bool> {
    let mut ok = true;
    if matches!(args.mode, Mode::Produce | Mode::Both) {
        ensure_topic(args)?;
        ok &= produce_all(args)?;
    }
    if matches!(args.mode, Mode::Consume | Mode::Both) {
        ok &= consume(args)?;
    }
    if args.mode == Mode::Commit {
        ensure_topic(args)?;
        ok &= commit(args)?;
    }
    if args.mode == Mode::Rebalance {
        ensure_topic(args)?;
        ok &= rebalance(args)?;
    }
    Ok(ok)
}

fn base_config(args: &Args) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &args.bootstrap)
        .set("client.id", "sluice-bench");
    c
}

fn ensure_topic(args: &Args) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        base_config(args).create().context("admin client")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let topic = NewTopic::new(
        &args.topic,
        args.partitions,
        TopicReplication::Fixed(args.replication_factor),
    );
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let res = rt
        .block_on(admin.create_topics([&topic], &opts))
        .context("CreateTopics")?;
    match res.into_iter().next() {
        Some(Ok(_)) => eprintln!(
            "created topic {} with {} partitions",
            args.topic, args.partitions
        ),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {
            eprintln!("topic {} exists; using it as it is", args.topic)
        }
        Some(Err((t, code))) => bail!("CreateTopics {t}: {code:?}"),
        None => bail!("CreateTopics: empty answer"),
    }
    Ok(())
}

/// Partition count of the topic, waiting until every partition has a leader.
fn partitions_of(
    client: &rdkafka::client::Client<impl ClientContext>,
    topic: &str,
) -> anyhow::Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = client
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .context("metadata")?;
        if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
            if t.error().is_none()
                && !t.partitions().is_empty()
                && t.partitions().iter().all(|p| p.leader() >= 0)
            {
                return Ok(t.partitions().len() as i32);
            }
        }
        if Instant::now() > deadline {
            bail!("topic {topic} has no leaders for all partitions after 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Produce
// ---------------------------------------------------------------------------

struct BenchContext {
    start: Instant,
    hist: Mutex<Histogram>,
    acked: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Largest p99 seen in any statistics interval, in microseconds: time in the partition
    /// queue (int_latency), in the broker's send buffer (outbuf_latency), round trip (rtt).
    stats_p99_us: Mutex<[i64; 3]>,
}

impl ClientContext for BenchContext {
    fn stats(&self, stats: rdkafka::Statistics) {
        let mut worst = self.stats_p99_us.lock().expect("stats lock");
        let mut brokers: Vec<_> = stats.brokers.values().filter(|b| b.nodeid >= 0).collect();
        brokers.sort_by_key(|b| b.nodeid);
        let mut line = format!("stats t={:.1}s", self.start.elapsed().as_secs_f64());
        for b in brokers {
            let w = [&b.int_latency, &b.outbuf_latency, &b.rtt];
            if w.iter().all(|w| w.as_ref().is_none_or(|w| w.cnt == 0)) {
                continue;
            }
            let ms = |w: &Option<rdkafka::statistics::Window>,
                      f: fn(&rdkafka::statistics::Window) -> i64| {
                w.as_ref().map_or(0.0, |w| f(w) as f64 / 1000.0)
            };
            line += &format!(
                " | n{} queue p50/p99/max {:.1}/{:.1}/{:.1} outbuf {:.1}/{:.1}/{:.1} rtt {:.1}/{:.1}/{:.1} ms, waitresp {} ({} msgs)",
                b.nodeid,
                ms(w[0], |w| w.p50), ms(w[0], |w| w.p99), ms(w[0], |w| w.max),
                ms(w[1], |w| w.p50), ms(w[1], |w| w.p99), ms(w[1], |w| w.max),
                ms(w[2], |w| w.p50), ms(w[2], |w| w.p99), ms(w[2], |w| w.max),
                b.waitresp_cnt, b.waitresp_msg_cnt,
            );
            for (i, w) in w.iter().enumerate() {
                if let Some(w) = w {
                    worst[i] = worst[i].max(w.p99);
                }
            }
        }
        eprintln!("{line}");
    }
}

impl ProducerContext for BenchContext {
    /// Nanoseconds since `start` at the `send` call.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        match result {
            Ok(_) => {
                let now_ns = self.start.elapsed().as_nanos() as u64;
                let us = now_ns.saturating_sub(sent_ns as u64) / 1000;
                self.hist.lock().expect("histogram lock").record(us);
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().expect("error lock");
                if first.is_none() {
                    *first = Some(e.to_string());
                }
            }
        }
    }
}

/// Runs `--producers` producers side by side (each `records / producers` records, its own
/// transactional id) and prints one line for all: records/s over the longest run, the
/// largest of their latency percentiles.
///
/// The line (one producer's too) gains the bench's own CPU time (`client_cpu_s`: every
/// thread of this process, the librdkafka ones included, from creating the producers to the
/// last delivery report), per million records and, for transactions, per transaction: on a
/// machine the client shares with the brokers, what the client takes bounds what they get.
fn produce_all(args: &Args) -> anyhow::Result<bool> {
    let client_before = proc_stats(std::process::id())?;
    if args.producers <= 1 {
        let (mut out, ok) = produce(args, 0)?;
        add_client_stats(&mut out, client_before)?;
        println!("{out}");
        return Ok(ok);
    }
    let brokers_before = brokers_stats(&args.broker_pid)?;
    let mut each = Args::clone(args);
    each.records = args.records / args.producers as u64;
    each.report_secs = 0;
    each.broker_pid = Vec::new();
    let results: Vec<anyhow::Result<(serde_json::Value, bool)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.producers)
            .map(|k| {
                let each = &each;
                s.spawn(move || produce(each, k))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("producer thread"))
            .collect()
    });
    let mut outs = Vec::new();
    let mut ok = true;
    for r in results {
        let (out, o) = r?;
        ok &= o;
        outs.push(out);
    }
    let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let records: f64 = outs.iter().map(|o| num(o, "records")).sum();
    let elapsed = outs.iter().map(|o| num(o, "elapsed_s")).fold(0.0, f64::max);
    let worst = |k: &str| outs.iter().map(|o| num(o, k)).fold(0.0, f64::max);
    let mut out = json!({
        "mode": "produce",
        "producers": args.producers,
        "records": records,
        "errors": outs.iter().map(|o| num(o, "errors")).sum::<f64>(),
        "records_per_sec": round(records / elapsed, 1),
        "mb_per_sec": round(records * args.record_size as f64 / elapsed / MIB, 3),
        "p50_ms": worst("p50_ms"),
        "p99_ms": worst("p99_ms"),
        "p999_ms": worst("p999_ms"),
        "max_ms": worst("max_ms"),
        "elapsed_s": round(elapsed, 3),
        "record_size": args.record_size,
        "acks": args.acks,
        "linger_ms": args.linger_ms,
        "txn_records": args.txn_records,
        "transactions": outs.iter().map(|o| num(o, "transactions")).sum::<f64>(),
        "topic": args.topic,
    });
    let brokers_after = brokers_stats(&args.broker_pid)?;
    add_broker_stats(&mut out, brokers_before, brokers_after, records as u64);
    add_client_stats(&mut out, client_before)?;
    println!("{out}");
    Ok(ok)
}

/// The smallest lead over the asked rate the producer sleeps off (less is sent at once: a
/// burst of at most this much of the rate).
const PACE_SLEEP_MIN: Duration = Duration::from_micros(500);

/// One producer's run; `k` tells producers of one run apart (transactional ids).
fn produce(args: &Args, k: usize) -> anyhow::Result<(serde_json::Value, bool)> {
    let mut cfg = base_config(args);
    cfg.set("acks", &args.acks)
        .set("linger.ms", args.linger_ms.to_string())
        .set("compression.type", &args.compression)
        .set("queue.buffering.max.messages", "1000000");
    for (k, v) in &args.producer_props {
        cfg.set(k, v);
    }
    if args.txn_records > 0 {
        cfg.set(
            "transactional.id",
            format!("sluice-bench-{}-{k}", std::process::id()),
        );
    }
    let ctx = BenchContext {
        start: Instant::now(),
        hist: Mutex::new(Histogram::new()),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_error: Mutex::new(None),
        stats_p99_us: Mutex::new([0; 3]),
    };
    if args.stats_ms > 0 {
        cfg.set("statistics.interval.ms", args.stats_ms.to_string());
    }
    let producer: BaseProducer<BenchContext> = cfg.create_with_context(ctx).context("producer")?;
    if args.txn_records == 0 {
        return produce_with(args, &producer, false);
    }
    // Transactions: a thread of its own serves the delivery reports, so that a commit can
    // wait in librdkafka's flush (see [`flush_now`]). It polls in long slices: rust-rdkafka's
    // poll spins through the last (sub-millisecond) part of each slice.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                producer.poll(Duration::from_secs(1));
            }
        });
        let out = produce_with(args, &producer, true);
        stop.store(true, Ordering::Relaxed);
        out
    })
}

/// Sends what the producer holds at once (linger.ms cut short) and waits until nothing is in
/// flight. This is what commit_transaction does in librdkafka's C API, the Java client and
/// confluent-kafka: their flush holds librdkafka's "flushing" flag while it waits, so the
/// last batches go out without lingering. rust-rdkafka's commit_transaction first runs its
/// own flush, which calls `rd_kafka_flush` with no wait and polls in between, so the flag is
/// hardly ever seen and every transaction waited out linger.ms. With delivery reports as
/// events (as rust-rdkafka sets them), `rd_kafka_flush` only waits for the message count to
/// reach zero while another thread serves the reports.
#[allow(unsafe_code)]
fn flush_now(producer: &BaseProducer<BenchContext>, deadline: Instant) -> anyhow::Result<()> {
    let wait_ms = i32::try_from(
        deadline
            .saturating_duration_since(Instant::now())
            .as_millis(),
    )
    .unwrap_or(i32::MAX);
    // SAFETY: a live producer handle; the call only sets a flag, wakes librdkafka's broker
    // threads and waits on the handle's message count.
    let err = unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), wait_ms) };
    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        bail!("flush before commit: {}", RDKafkaErrorCode::from(err));
    }
    Ok(())
}

/// The produce loop of one producer; `served`: another thread serves the delivery reports
/// (always so for transactions).
fn produce_with(
    args: &Args,
    producer: &BaseProducer<BenchContext>,
    served: bool,
) -> anyhow::Result<(serde_json::Value, bool)> {
    // Serves delivery reports for up to `timeout` (zero: what is queued), or waits while
    // another thread does.
    let serve = |timeout: Duration| {
        if !served {
            producer.poll(timeout);
        } else if !timeout.is_zero() {
            std::thread::sleep(timeout);
        }
    };
    // Connect and learn leaders before the clock starts.
    partitions_of(producer.client(), &args.topic)?;
    let txn_timeout = Duration::from_secs(60);
    if args.txn_records > 0 {
        producer
            .init_transactions(txn_timeout)
            .context("init_transactions")?;
    }
    let mut commits = 0u64;

    let mut rng = rand::thread_rng();
    let payload: Vec<u8> = (0..args.record_size)
        .map(|_| rng.gen_range(b'A'..=b'Z'))
        .collect();
    let broker_before = brokers_stats(&args.broker_pid)?;
    let ctx = producer.context();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let rate = (args.throughput > 0).then_some(args.throughput as f64);
    let mut progress = Progress::new(args.report_secs);

    for i in 0..args.records {
        if let Some(rate) = rate {
            // Ahead of the asked rate: serve delivery reports, then sleep it off once the lead
            // is worth a sleep. Not `poll(due - now)`: rust-rdkafka hands librdkafka the wait in
            // whole milliseconds (0 here, the gaps are microseconds), so that poll spun on a
            // core for the whole run at any rate, taking it from the brokers.
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                serve(Duration::ZERO);
                let ahead = due.saturating_duration_since(Instant::now());
                if ahead >= PACE_SLEEP_MIN {
                    std::thread::sleep(ahead);
                }
            }
        }
        if args.txn_records > 0 && i % args.txn_records == 0 {
            if i > 0 {
                flush_now(producer, deadline)?;
                producer
                    .commit_transaction(txn_timeout)
                    .context("commit_transaction")?;
                commits += 1;
            }
            producer.begin_transaction().context("begin_transaction")?;
        }
        let sent_ns = ctx.start.elapsed().as_nanos() as usize;
        let mut record = BaseRecord::<'_, [u8], [u8], usize>::with_opaque_to(&args.topic, sent_ns)
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    serve(Duration::from_millis(5));
                    if Instant::now() > deadline {
                        bail!("timed out with a full producer queue after {i} records");
                    }
                }
                Err((e, _)) => bail!("send failed after {i} records: {e}"),
            }
        }
        if i % 256 == 0 {
            serve(Duration::ZERO);
            progress.tick("produce", ctx.acked.load(Ordering::Relaxed), started);
        }
    }
    if args.txn_records > 0 && args.records > 0 {
        flush_now(producer, deadline)?;
        producer
            .commit_transaction(txn_timeout)
            .context("commit_transaction")?;
        commits += 1;
    }
    while producer.in_flight_count() > 0 {
        if Instant::now() > deadline {
            bail!(
                "timed out waiting for {} deliveries",
                producer.in_flight_count()
            );
        }
        serve(Duration::from_millis(50));
        progress.tick("produce", ctx.acked.load(Ordering::Relaxed), started);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let broker_after = brokers_stats(&args.broker_pid)?;

    let acked = ctx.acked.load(Ordering::Relaxed);
    let failed = ctx.failed.load(Ordering::Relaxed);
    let hist = ctx.hist.lock().expect("histogram lock");
    let mut out = json!({
        "mode": "produce",
        "records": acked,
        "errors": failed,
        "records_per_sec": round(acked as f64 / elapsed, 1),
        "mb_per_sec": round(acked as f64 * args.record_size as f64 / elapsed / MIB, 3),
        "p50_ms": hist.percentile_ms(0.50),
        "p99_ms": hist.percentile_ms(0.99),
        "p999_ms": hist.percentile_ms(0.999),
        "max_ms": hist.max_ms(),
        "mean_ms": hist.mean_ms(),
        "elapsed_s": round(elapsed, 3),
        "record_size": args.record_size,
        "acks": args.acks,
        "linger_ms": args.linger_ms,
        "compression": args.compression,
        "txn_records": args.txn_records,
        "transactions": commits,
        "target_records_per_sec": args.throughput,
        "topic": args.topic,
    });
    add_broker_stats(&mut out, broker_before, broker_after, acked);
    if args.stats_ms > 0 {
        let w = *ctx.stats_p99_us.lock().expect("stats lock");
        out["client_queue_p99_ms_max"] = json!(w[0] as f64 / 1000.0);
        out["client_outbuf_p99_ms_max"] = json!(w[1] as f64 / 1000.0);
        out["client_rtt_p99_ms_max"] = json!(w[2] as f64 / 1000.0);
    }
    if let Some(e) = ctx.first_error.lock().expect("error lock").as_ref() {
        eprintln!("{failed} records failed; first error: {e}");
    }
    Ok((out, failed == 0 && acked == args.records))
}

// ---------------------------------------------------------------------------
// Consume
// ---------------------------------------------------------------------------

fn consume(args: &Args) -> anyhow::Result<bool> {
    let mut cfg = base_config(args);
    // Manual assignment only: the group id is required by librdkafka, never used.
    cfg.set("group.id", "sluice-bench")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in &args.consumer_props {
        cfg.set(k, v);
    }
    let consumer: BaseConsumer = cfg.create().context("consumer")?;
    let parts = partitions_of(consumer.client(), &args.topic)?;
    let mut available = 0u64;
    for p in 0..parts {
        let (lo, hi) = consumer
            .fetch_watermarks(&args.topic, p, Duration::from_secs(10))
            .with_context(|| format!("watermarks of {}/{p}", args.topic))?;
        available += (hi - lo).max(0) as u64;
    }
    let target = args.records.min(available);
    if target < args.records {
        eprintln!(
            "topic {} holds {available} records, fewer than --records {}; reading {target}",
            args.topic, args.records
        );
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(&args.topic, p, Offset::Beginning)
            .context("assignment")?;
    }

    let broker_before = brokers_stats(&args.broker_pid)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    consumer.assign(&tpl).context("assign")?;
    let mut progress = Progress::new(args.report_secs);
    let (mut n, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let mut first_record_at = None;
    while n < target && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first_record_at.get_or_insert_with(Instant::now);
                n += 1;
                bytes += (m.payload_len() + m.key_len()) as u64;
            }
            Some(Err(e)) => {
                errors += 1;
                eprintln!("consumer error: {e}");
            }
            None => {}
        }
        progress.tick("consume", n, started);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let broker_after = brokers_stats(&args.broker_pid)?;
    let mut out = json!({
        "mode": "consume",
        "records": n,
        "errors": errors,
        "records_per_sec": round(n as f64 / elapsed, 1),
        "mb_per_sec": round(bytes as f64 / elapsed / MIB, 3),
        "elapsed_s": round(elapsed, 3),
        "first_record_ms": first_record_at.map(|t| round(t.duration_since(started).as_secs_f64() * 1e3, 3)),
        "bytes": bytes,
        "topic": args.topic,
        "partitions": parts,
    });
    add_broker_stats(&mut out, broker_before, broker_after, n);
    println!("{out}");
    Ok(n == target && n == args.records && errors == 0)
}

// ---------------------------------------------------------------------------
// Commit
// ---------------------------------------------------------------------------

/// One member joins a group subscribed to the topic, waits for all partitions, then sends
/// `--commits` OffsetCommit requests, each with a new offset for every partition.
fn commit(args: &Args) -> anyhow::Result<bool> {
    let mut cfg = base_config(args);
    let group = format!("sluice-bench-commit-{}", std::process::id());
    cfg.set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    set_group_protocol(&mut cfg, &args.assignor);
    for (k, v) in &args.consumer_props {
        cfg.set(k, v);
    }
    let consumer: BaseConsumer = cfg.create().context("consumer")?;
    let parts = partitions_of(consumer.client(), &args.topic)?;
    consumer.subscribe(&[&args.topic]).context("subscribe")?;
    let join_started = Instant::now();
    let deadline = join_started + Duration::from_secs(args.timeout_secs);
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) < parts as usize {
        if Instant::now() > deadline {
            bail!("no assignment of all {parts} partitions");
        }
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(50)) {
            eprintln!("consumer error: {e}");
        }
    }
    let join_ms = join_started.elapsed().as_secs_f64() * 1e3;
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(&args.topic, p, Offset::Offset(0))
            .context("offsets")?;
    }

    let mut hist = Histogram::new();
    let mut errors = 0u64;
    let mut first_error = None;
    let broker_before = brokers_stats(&args.broker_pid)?;
    let started = Instant::now();
    let mut progress = Progress::new(args.report_secs);
    for i in 1..=args.commits {
        tpl.set_all_offsets(Offset::Offset(i as i64))
            .context("offsets")?;
        // Async: librdkafka reports the result of an rd_kafka_commit(async) only to an
        // offset_commit_cb, which rdkafka does not install, so all but the last commit are
        // sent without waiting and the last one is synchronous. The broker answers one
        // connection's requests in order, so when it returns every commit has been answered.
        let sync = args.commit_mode == CommitMode::Sync || i == args.commits;
        let t = Instant::now();
        let r = consumer.commit(
            &tpl,
            if sync {
                rdkafka::consumer::CommitMode::Sync
            } else {
                rdkafka::consumer::CommitMode::Async
            },
        );
        if sync {
            hist.record(t.elapsed().as_micros() as u64);
        } else {
            consumer.poll(Duration::ZERO);
        }
        if let Err(e) = r {
            errors += 1;
            first_error.get_or_insert_with(|| e.to_string());
        }
        if Instant::now() > deadline {
            bail!("timed out after {i} commits");
        }
        progress.tick("commit", i, started);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let broker_after = brokers_stats(&args.broker_pid)?;

    // The last commit must be what the group reads back.
    let committed = consumer
        .committed(Duration::from_secs(10))
        .context("OffsetFetch")?;
    let read_back_ok = committed.count() == parts as usize
        && committed
            .elements()
            .iter()
            .all(|e| e.offset() == Offset::Offset(args.commits as i64));
    if !read_back_ok {
        eprintln!("committed offsets read back do not match the last commit: {committed:?}");
    }
    let is_sync = args.commit_mode == CommitMode::Sync;
    let mut out = json!({
        "mode": "commit",
        "commit_mode": if is_sync { "sync" } else { "async" },
        "commits": args.commits,
        "errors": errors,
        "partitions": parts,
        "commits_per_sec": round(args.commits as f64 / elapsed, 1),
        "partition_offsets_per_sec": round(args.commits as f64 * parts as f64 / elapsed, 1),
        "p50_ms": is_sync.then(|| hist.percentile_ms(0.50)).flatten(),
        "p99_ms": is_sync.then(|| hist.percentile_ms(0.99)).flatten(),
        "max_ms": is_sync.then(|| hist.max_ms()).flatten(),
        "mean_ms": is_sync.then(|| hist.mean_ms()).flatten(),
        "elapsed_s": round(elapsed, 3),
        "join_ms": round(join_ms, 1),
        "read_back_ok": read_back_ok,
        "assignor": args.assignor,
        "topic": args.topic,
    });
    add_broker_stats(&mut out, broker_before, broker_after, args.commits);
    // Per million commits is not a useful unit here: per thousand.
    if let Some(per_m) = out["broker_cpu_s_per_million"].as_f64() {
        out["broker_cpu_ms_per_commit"] = json!(round(per_m / 1e3, 4));
    }
    out.as_object_mut()
        .expect("object")
        .remove("broker_cpu_s_per_million");
    println!("{out}");
    if let Some(e) = first_error {
        eprintln!("{errors} commits failed; first error: {e}");
    }
    Ok(errors == 0 && read_back_ok)
}

// ---------------------------------------------------------------------------
// Rebalance
// ---------------------------------------------------------------------------

/// What every member currently owns, as its rebalance callbacks report it.
struct Group {
    /// Per member (by index): `Some` while it takes part, `None` once it was told to leave.
    owned: Vec<Option<BTreeSet<i32>>>,
    /// Members asked to leave: index → when they were asked.
    leave: Vec<Option<Instant>>,
    /// When each leaving member's thread called close.
    close_started: Vec<Option<Instant>>,
}

struct Shared {
    group: Mutex<Group>,
    changed: Condvar,
}

struct MemberContext {
    idx: usize,
    cooperative: bool,
    shared: Arc<Shared>,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut g = self.shared.group.lock().expect("group lock");
        let Some(owned) = g.owned[self.idx].as_mut() else {
            return; // leaving: its own revocation is not part of the group's state
        };
        let parts = |tpl: &TopicPartitionList| -> Vec<i32> {
            tpl.elements().iter().map(|e| e.partition()).collect()
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                if !self.cooperative {
                    owned.clear();
                }
                owned.extend(parts(tpl));
            }
            Rebalance::Revoke(tpl) => {
                if self.cooperative {
                    for p in parts(tpl) {
                        owned.remove(&p);
                    }
                } else {
                    owned.clear();
                }
            }
            Rebalance::Error(e) => eprintln!("member {}: rebalance error {e}", self.idx),
        }
        drop(g);
        self.shared.changed.notify_all();
    }
}

/// The members still in the group own every partition exactly once, and evenly (each
/// `floor(P/M)` or `ceil(P/M)`): the state a rebalance ends in with range, roundrobin and
/// cooperative-sticky alike.
fn settled(g: &Group, partitions: i32) -> bool {
    let active: Vec<&BTreeSet<i32>> = g.owned.iter().flatten().collect();
    if active.is_empty() {
        return false;
    }
    let total: usize = active.iter().map(|s| s.len()).sum();
    let union: BTreeSet<i32> = active.iter().flat_map(|s| s.iter().copied()).collect();
    let lo = partitions as usize / active.len();
    let hi = lo + usize::from(!(partitions as usize).is_multiple_of(active.len()));
    total == partitions as usize
        && union.len() == partitions as usize
        && active.iter().all(|s| (lo..=hi).contains(&s.len()))
}

fn spawn_member(
    args: &Args,
    group_id: &str,
    idx: usize,
    shared: &Arc<Shared>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<f64>>> {
    let mut cfg = base_config(args);
    cfg.set("group.id", group_id)
        .set("client.id", format!("sluice-bench-member-{idx}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    set_group_protocol(&mut cfg, &args.assignor);
    for (k, v) in &args.consumer_props {
        cfg.set(k, v);
    }
    let ctx = MemberContext {
        idx,
        // The consumer protocol assigns incrementally, as cooperative-sticky does.
        cooperative: matches!(args.assignor.as_str(), "cooperative-sticky" | "uniform"),
        shared: shared.clone(),
    };
    let consumer: BaseConsumer<MemberContext> = cfg.create_with_context(ctx).context("consumer")?;
    consumer.subscribe(&[&args.topic]).context("subscribe")?;
    let shared = shared.clone();
    Ok(std::thread::spawn(move || {
        // Poll (rebalance callbacks run in here) until told to leave; then close, which
        // revokes, sends LeaveGroup and waits for librdkafka to finish. Returns the close's ms.
        loop {
            if shared.group.lock().expect("group lock").leave[idx].is_some() {
                break;
            }
            if let Some(Err(e)) = consumer.poll(Duration::from_millis(20)) {
                eprintln!("member {idx}: consumer error {e}");
            }
        }
        let t = Instant::now();
        shared.group.lock().expect("group lock").close_started[idx] = Some(t);
        drop(consumer);
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }))
}

/// Waits until the group has settled; when it was seen settled.
fn wait_settled(shared: &Shared, partitions: i32, timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    let mut g = shared.group.lock().expect("group lock");
    while !settled(&g, partitions) {
        let now = Instant::now();
        if now > deadline {
            bail!("group did not settle within {timeout:?}: {:?}", g.owned);
        }
        g = shared
            .changed
            .wait_timeout(g, deadline - now)
            .expect("group lock")
            .0;
    }
    Ok(Instant::now())
}

fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}

fn median_max(v: &[f64]) -> (Option<f64>, Option<f64>) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let median = match s.len() {
        0 => None,
        n if !n.is_multiple_of(2) => Some(s[n / 2]),
        n => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    };
    (median.map(|m| round(m, 1)), s.last().map(|m| round(*m, 1)))
}

/// `--members` consumers join one group from nothing (timed until all partitions are spread
/// evenly over all of them); then `--rounds` times the longest-serving member leaves (close)
/// and the time until the others own all partitions again is measured, after which a new
/// member joins to restore the group's size (also timed).
fn rebalance(args: &Args) -> anyhow::Result<bool> {
    let parts = {
        let probe: BaseConsumer = base_config(args).create().context("metadata client")?;
        partitions_of(probe.client(), &args.topic)?
    };
    if args.members == 0 || args.members > parts as usize {
        bail!("--members must be between 1 and the partition count ({parts})");
    }
    let group_id = format!("sluice-bench-rebalance-{}", std::process::id());
    let slots = args.members + args.rounds;
    let shared = Arc::new(Shared {
        group: Mutex::new(Group {
            owned: vec![None; slots],
            leave: vec![None; slots],
            close_started: vec![None; slots],
        }),
        changed: Condvar::new(),
    });
    let timeout = Duration::from_secs(args.timeout_secs.min(120));
    let broker_before = brokers_stats(&args.broker_pid)?;

    let mut threads = Vec::new();
    let started = Instant::now();
    for idx in 0..args.members {
        shared.group.lock().expect("group lock").owned[idx] = Some(BTreeSet::new());
        threads.push(spawn_member(args, &group_id, idx, &shared)?);
    }
    let join_all_ms = ms_between(started, wait_settled(&shared, parts, timeout)?);
    eprintln!("{} members joined in {join_all_ms:.0} ms", args.members);

    let (mut leave_ms, mut close_ms, mut rejoin_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut rng = rand::thread_rng();
    for round in 0..args.rounds {
        // Leave at a random point of the members' heartbeat cycle: their heartbeats are in
        // step (they all got their assignment at the same moment), and the rest learn of the
        // rebalance only from their next heartbeat, so a fixed pause would measure the pause.
        std::thread::sleep(Duration::from_millis(rng.gen_range(500..3500)));
        let t0 = Instant::now();
        {
            let mut g = shared.group.lock().expect("group lock");
            g.owned[round] = None;
            g.leave[round] = Some(t0);
        }
        let at = wait_settled(&shared, parts, timeout)?;
        let close_started = shared.group.lock().expect("group lock").close_started[round];
        let ms = ms_between(close_started.unwrap_or(t0), at);
        let closed = std::mem::replace(&mut threads[round], std::thread::spawn(|| Ok(0.0)))
            .join()
            .map_err(|_| anyhow::anyhow!("member thread panicked"))??;
        eprintln!("round {round}: member {round} left; rebalanced in {ms:.0} ms (close took {closed:.0} ms)");
        leave_ms.push(ms);
        close_ms.push(closed);

        std::thread::sleep(Duration::from_millis(rng.gen_range(500..3500)));
        let idx = args.members + round;
        let t1 = Instant::now();
        shared.group.lock().expect("group lock").owned[idx] = Some(BTreeSet::new());
        threads.push(spawn_member(args, &group_id, idx, &shared)?);
        let ms = ms_between(t1, wait_settled(&shared, parts, timeout)?);
        eprintln!("round {round}: member {idx} joined; rebalanced in {ms:.0} ms");
        rejoin_ms.push(ms);
    }
    let broker_after = brokers_stats(&args.broker_pid)?;
    {
        let mut g = shared.group.lock().expect("group lock");
        for (i, l) in g.leave.iter_mut().enumerate() {
            if l.is_none() && i < args.members + args.rounds {
                *l = Some(Instant::now());
            }
        }
        g.owned.iter_mut().for_each(|o| *o = None);
    }
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("member thread panicked"))??;
    }

    let (leave_median, leave_max) = median_max(&leave_ms);
    let (rejoin_median, rejoin_max) = median_max(&rejoin_ms);
    let r1 = |v: &[f64]| v.iter().map(|x| round(*x, 1)).collect::<Vec<_>>();
    let props: serde_json::Map<String, serde_json::Value> = args
        .consumer_props
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let mut out = json!({
        "mode": "rebalance",
        "members": args.members,
        "partitions": parts,
        "assignor": args.assignor,
        "consumer_props": props,
        "join_all_ms": round(join_all_ms, 1),
        "leave_rebalance_ms": r1(&leave_ms),
        "leave_rebalance_median_ms": leave_median,
        "leave_rebalance_max_ms": leave_max,
        "close_ms": r1(&close_ms),
        "join_one_rebalance_ms": r1(&rejoin_ms),
        "join_one_rebalance_median_ms": rejoin_median,
        "join_one_rebalance_max_ms": rejoin_max,
        "topic": args.topic,
    });
    add_broker_stats(&mut out, broker_before, broker_after, 0);
    out.as_object_mut()
        .expect("object")
        .remove("broker_cpu_s_per_million");
    println!("{out}");
    Ok(true)
}

// ---------------------------------------------------------------------------
// Progress, broker stats, histogram
// ---------------------------------------------------------------------------

const MIB: f64 = 1024.0 * 1024.0;

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

struct Progress {
    every: Option<Duration>,
    next: Instant,
    last_count: u64,
    last_at: Instant,
}

impl Progress {
    fn new(secs: u64) -> Progress {
        let every = (secs > 0).then(|| Duration::from_secs(secs));
        let now = Instant::now();
        Progress {
            every,
            next: now + every.unwrap_or_default(),
            last_count: 0,
            last_at: now,
        }
    }

    fn tick(&mut self, what: &str, count: u64, started: Instant) {
        let Some(every) = self.every else { return };
        let now = Instant::now();
        if now < self.next {
            return;
        }
        let window = now.duration_since(self.last_at).as_secs_f64();
        eprintln!(
            "{what}: {count} records in {:.1} s, {:.0} records/s in the last {:.1} s",
            now.duration_since(started).as_secs_f64(),
            (count - self.last_count) as f64 / window,
            window
        );
        self.last_count = count;
        self.last_at = now;
        self.next = now + every;
    }
}

#[derive(Clone, Copy, Debug)]
struct ProcStats {
    cpu_s: f64,
    hwm_kib: u64,
    rss_kib: u64,
}

/// utime+stime of `/proc/<pid>/stat` and VmHWM/VmRSS of `/proc/<pid>/status`.
fn proc_stats(pid: u32) -> anyhow::Result<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat (is --broker-pid right?)"))?;
    // The command name may hold spaces; fields after ")" start at field 3 (state),
    // so utime (field 14) and stime (field 15) are at 11 and 12.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/pid/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/pid/stat")?
            .parse::<u64>()
            .context("tick count")? as f64)
    };
    let cpu_s = (ticks(11)? + ticks(12)?) / clock_ticks_per_sec();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcStats {
        cpu_s,
        hwm_kib: kib("VmHWM:"),
        rss_kib: kib("VmRSS:"),
    })
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

/// The CPU and memory of the brokers in `pids` (None for none): CPU times summed, the
/// largest RSS and peak RSS.
fn brokers_stats(pids: &[u32]) -> anyhow::Result<Option<ProcStats>> {
    let mut all: Option<ProcStats> = None;
    for &pid in pids {
        let s = proc_stats(pid)?;
        all = Some(match all {
            None => s,
            Some(a) => ProcStats {
                cpu_s: a.cpu_s + s.cpu_s,
                hwm_kib: a.hwm_kib.max(s.hwm_kib),
                rss_kib: a.rss_kib.max(s.rss_kib),
            },
        });
    }
    Ok(all)
}

/// Adds this process's CPU time since `before` to a produce result (see [`produce_all`]).
fn add_client_stats(out: &mut serde_json::Value, before: ProcStats) -> anyhow::Result<()> {
    let cpu = proc_stats(std::process::id())?.cpu_s - before.cpu_s;
    let records = out["records"].as_f64().unwrap_or(0.0);
    let txns = out["transactions"].as_f64().unwrap_or(0.0);
    out["client_cpu_s"] = json!(round(cpu, 3));
    out["client_cpu_s_per_million"] = json!((records > 0.0).then(|| round(cpu / records * 1e6, 3)));
    out["client_cpu_ms_per_txn"] = json!((txns > 0.0).then(|| round(cpu / txns * 1e3, 3)));
    Ok(())
}

fn add_broker_stats(
    out: &mut serde_json::Value,
    before: Option<ProcStats>,
    after: Option<ProcStats>,
    records: u64,
) {
    let (cpu, per_million, peak, rss) = match (before, after) {
        (Some(b), Some(a)) => {
            let cpu = a.cpu_s - b.cpu_s;
            let per_million = (records > 0).then(|| round(cpu / records as f64 * 1e6, 3));
            (
                Some(round(cpu, 3)),
                per_million,
                Some(round(a.hwm_kib as f64 / 1024.0, 1)),
                Some(round(a.rss_kib as f64 / 1024.0, 1)),
            )
        }
        _ => (None, None, None, None),
    };
    out["broker_cpu_s"] = json!(cpu);
    out["broker_cpu_s_per_million"] = json!(per_million);
    out["broker_peak_rss_mib"] = json!(peak);
    out["broker_rss_mib"] = json!(rss);
}

/// Log-linear histogram of microsecond values: exact below 128 µs, then 64 buckets per
/// power of two (under 1.6 % relative error), like HdrHistogram with 2 significant digits.
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    max: u64,
}

const LINEAR: u64 = 128;
const SUB: u64 = 64;

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: vec![0; Self::index(u64::MAX) + 1],
            total: 0,
            sum: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < LINEAR {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as u64; // v in [2^e, 2^(e+1)), e >= 7
        let shift = e - 6;
        let sub = v >> shift; // in [64, 128)
        (shift * SUB + sub) as usize
    }

    /// Highest value that falls in bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < LINEAR {
            return i;
        }
        let shift = i / SUB - 1;
        let sub = i % SUB + SUB;
        (sub << shift) + ((1u64 << shift) - 1)
    }

    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.sum += v as u128;
        self.max = self.max.max(v);
    }

    fn percentile_us(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::upper(i).min(self.max));
            }
        }
        Some(self.max)
    }

    fn percentile_ms(&self, q: f64) -> Option<f64> {
        self.percentile_us(q).map(|us| round(us as f64 / 1e3, 3))
    }

    fn max_ms(&self) -> Option<f64> {
        (self.total > 0).then(|| round(self.max as f64 / 1e3, 3))
    }

    fn mean_ms(&self) -> Option<f64> {
        (self.total > 0).then(|| round(self.sum as f64 / self.total as f64 / 1e3, 3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_tight() {
        let mut prev_upper = None;
        for i in 0..Histogram::index(u64::MAX) {
            let up = Histogram::upper(i);
            if let Some(p) = prev_upper {
                assert!(up > p, "bucket {i} upper {up} after {p}");
            }
            assert_eq!(Histogram::index(up), i, "upper of {i} maps back");
            assert_eq!(
                Histogram::index(up + 1),
                i + 1,
                "next value opens bucket {}",
                i + 1
            );
            prev_upper = Some(up);
        }
        for v in [0u64, 1, 127, 128, 129, 1000, 12_345, 1 << 40, u64::MAX] {
            let up = Histogram::upper(Histogram::index(v));
            assert!(
                up >= v && (up - v) as f64 <= v as f64 / 64.0 + 1.0,
                "{v} -> {up}"
            );
        }
    }

    #[test]
    fn histogram_percentiles() {
        let mut h = Histogram::new();
        assert_eq!(h.percentile_us(0.5), None);
        for v in 1..=1000u64 {
            h.record(v * 10);
        }
        let p50 = h.percentile_us(0.5).expect("p50");
        let p99 = h.percentile_us(0.99).expect("p99");
        assert!((5000..=5080).contains(&p50), "p50 {p50}");
        assert!((9900..=10_000).contains(&p99), "p99 {p99}");
        assert_eq!(h.percentile_us(1.0), Some(10_000));
        assert_eq!(h.mean_ms(), Some(5.005));
    }

    #[test]
    fn a_group_is_settled_when_partitions_are_spread_evenly_once() {
        let set = |v: &[i32]| Some(v.iter().copied().collect::<BTreeSet<i32>>());
        let g = |owned: Vec<Option<BTreeSet<i32>>>| Group {
            leave: vec![None; owned.len()],
            close_started: vec![None; owned.len()],
            owned,
        };
        assert!(settled(&g(vec![set(&[0, 1]), set(&[2]), None]), 3));
        // Members that left do not count; one member with nothing is not settled.
        assert!(!settled(&g(vec![set(&[0, 1, 2]), set(&[])]), 3));
        assert!(
            !settled(&g(vec![set(&[0, 1]), set(&[1, 2])]), 3),
            "owned twice"
        );
        assert!(!settled(&g(vec![set(&[0]), set(&[1])]), 3), "orphaned");
        assert!(!settled(&g(vec![None, None]), 3));
        assert!(settled(&g(vec![set(&[0, 1, 2]), set(&[3, 4])]), 5));
        assert!(
            !settled(&g(vec![set(&[0, 1, 2, 3]), set(&[4])]), 5),
            "uneven"
        );
    }

    #[test]
    fn median_and_max() {
        assert_eq!(median_max(&[]), (None, None));
        assert_eq!(median_max(&[3.0, 1.0, 2.0]), (Some(2.0), Some(3.0)));
        assert_eq!(median_max(&[4.0, 1.0, 2.0, 3.0]), (Some(2.5), Some(4.0)));
    }

    #[test]
    fn proc_stats_of_self() {
        let s = proc_stats(std::process::id()).expect("own /proc");
        assert!(s.hwm_kib > 0 && s.rss_kib > 0 && s.cpu_s >= 0.0);
    }
}
