//! The `sluice` binary: configuration, wiring, the admin HTTP listener, clean shutdown.

mod admin;
mod config;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use broker::metrics::Metrics;
use broker::Broker;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Oversized allocations (a hostile array length in a request) get address space, not an
/// abort: see `protocol::alloc`.
#[global_allocator]
static ALLOC: protocol::alloc::GuardedAlloc = protocol::alloc::GuardedAlloc;

fn main() -> anyhow::Result<()> {
    let mut cli = config::Cli::parse();
    let command = cli.command.take();
    let cfg = cli.resolve()?;
    if let Some(config::Command::Healthcheck { url }) = command {
        let url = url.unwrap_or_else(|| {
            let mut addr = cfg.admin_addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}/health/ready")
        });
        match healthcheck(&url) {
            Ok(()) => return Ok(()),
            Err(e) => {
                eprintln!("not healthy: {e:#}");
                std::process::exit(1);
            }
        }
    }
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .context("invalid log filter")?;
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not in files, journald or `docker logs`.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice")
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(run(cfg));
    // Blocking tasks (file deletion) get a moment to finish; partitions are already closed.
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "sluice stopped");
    }
    result
}

/// GET `url` (plain http://HOST:PORT/PATH) and succeed on status 200.
fn healthcheck(url: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("'{url}' is not an http:// URL"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = hostport
        .to_socket_addrs()
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} resolves to no address"))?;
    let timeout = Duration::from_secs(3);
    let mut sock = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    write!(
        sock,
        "GET {path} HTTP/1.0\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = Vec::new();
    sock.take(4096).read_to_end(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    let status = text.lines().next().unwrap_or_default();
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => anyhow::bail!("{url} answered '{status}'"),
    }
}

async fn run(cfg: config::NodeConfig) -> anyhow::Result<()> {
    tracing::info!(
        node_id = cfg.broker.node_id,
        kafka = ?cfg.kafka_addrs,
        advertised = %cfg.broker.advertised_listeners(),
        admin = %cfg.admin_addr,
        data_dir = %cfg.broker.data_dir.display(),
        fsync = ?cfg.broker.fsync,
        "starting sluice"
    );
    let metrics = Metrics::new();
    let broker_cfg = cfg.broker.clone();
    let broker = Broker::open(broker_cfg, metrics)
        .await
        .with_context(|| format!("opening data directory {}", cfg.broker.data_dir.display()))?;
    let shutdown = CancellationToken::new();

    let admin_listener = tokio::net::TcpListener::bind(cfg.admin_addr)
        .await
        .with_context(|| format!("binding the admin listener on {}", cfg.admin_addr))?;
    let mut kafka_listeners = Vec::new();
    for (addr, endpoint) in cfg.kafka_addrs.iter().zip(&cfg.broker.listeners) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the Kafka listener {} on {addr}", endpoint.name))?;
        kafka_listeners.push(listener);
    }

    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        broker.clone(),
        shutdown.clone(),
    ));
    let retention_task = tokio::spawn(retention_loop(broker.clone(), shutdown.clone()));
    let kafka_tasks: Vec<_> = kafka_listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| {
            tokio::spawn(broker::serve(
                listener,
                index,
                broker.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    tracing::info!("sluice is ready");

    wait_for_signal().await;
    tracing::info!("shutting down: answering in-flight requests");
    shutdown.cancel();
    broker.begin_shutdown();
    for task in kafka_tasks {
        let _ = task.await;
    }
    let _ = retention_task.await;
    broker.shutdown().await;
    let _ = admin_task.await;
    tracing::info!("shutdown complete: logs synced");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
        _ = term.recv() => tracing::info!("received SIGTERM"),
    }
}

/// Applies retention and refreshes per-partition gauges on the configured interval.
async fn retention_loop(broker: Arc<Broker>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(broker.config.log_retention_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        broker.topics.enforce_retention(broker::now_ms()).await;
    }
}
