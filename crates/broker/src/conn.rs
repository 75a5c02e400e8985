//! Kafka connections: framing, decoding, concurrent handling, responses in request order.
//!
//! Each connection has a reader (frames in, requests decoded and dispatched in arrival order)
//! and a writer (awaits each request's reply in the same order and writes it). Handlers run
//! concurrently as tasks, but anything that must follow request order (a Produce queueing its
//! batches) happens synchronously in dispatch, before the next request is read.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;
use protocol::codes;
use protocol::request::{self, FrameError};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api;
use crate::Broker;

/// Requests a connection may have in flight before its reader waits for the writer.
const MAX_IN_FLIGHT: usize = 128;

/// How long a shutting-down node waits for the answers of requests it has read. After it,
/// the connection closes with them unanswered (a client takes that as "possibly written"
/// and retries): a produce whose partition lost its majority would otherwise hold the
/// shutdown until the client gave up on it.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Accepts Kafka connections on the broker's listener number `index` (its position in
/// `BrokerConfig::listeners`) until `shutdown` is cancelled, then waits for every connection
/// to answer what it has read.
pub async fn serve(
    listener: TcpListener,
    index: usize,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    broker.set_ready(true);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    let client = api::Client { peer, listener: index };
                    tracker.spawn(connection(sock, client, broker.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

struct Pending {
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    started: Instant,
    reply: JoinHandle<Option<ResponseKind>>,
}

/// Why a connection is closed instead of answered, as Kafka does for these inputs.
#[derive(Debug)]
enum CloseReason {
    TooLarge(usize),
    Negative(i32),
    Io(std::io::Error),
    Truncated,
    Request(FrameError),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::TooLarge(n) => {
                write!(f, "request of {n} bytes exceeds socket.request.max.bytes")
            }
            CloseReason::Negative(n) => write!(f, "negative request size {n}"),
            CloseReason::Io(e) => write!(f, "io: {e}"),
            CloseReason::Truncated => write!(f, "connection closed inside a request"),
            CloseReason::Request(e) => e.fmt(f),
        }
    }
}

async fn connection(
    sock: TcpStream,
    client: api::Client,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) {
    broker.metrics.connections.inc();
    broker.metrics.connections_total.inc();
    let (mut rd, wr) = sock.into_split();
    let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_loop(wr, rx, broker.clone(), shutdown.clone()));
    let max = broker.config.socket_request_max_bytes;
    let peer = client.peer;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break,
            f = read_frame(&mut rd, &mut buf, max) => f,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "closing connection");
                break;
            }
        };
        match decode_and_dispatch(&broker, client, frame) {
            Ok(pending) => {
                if tx.send(pending).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "closing connection");
                break;
            }
        }
    }
    drop(tx);
    // The writer answers everything already read before the connection closes.
    let _ = writer.await;
    broker.metrics.connections.dec();
}

/// Reads one size-prefixed frame. The declared size is checked against the cap before any
/// allocation, and the buffer grows only as bytes actually arrive.
async fn read_frame(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Bytes>, CloseReason> {
    while buf.len() < 4 {
        if rd.read_buf(buf).await.map_err(CloseReason::Io)? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(CloseReason::Truncated)
            };
        }
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size < 0 {
        return Err(CloseReason::Negative(size));
    }
    let size = size as usize;
    if size > max {
        return Err(CloseReason::TooLarge(size));
    }
    let total = 4 + size;
    while buf.len() < total {
        let want = (total - buf.len()).min(1 << 20);
        buf.reserve(want);
        if rd.read_buf(buf).await.map_err(CloseReason::Io)? == 0 {
            return Err(CloseReason::Truncated);
        }
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size).freeze()))
}

fn decode_and_dispatch(
    broker: &Arc<Broker>,
    client: api::Client,
    frame: Bytes,
) -> Result<Pending, CloseReason> {
    let started = Instant::now();
    let prefix = match request::parse_prefix(&frame, api::supported_versions) {
        Ok(p) => p,
        Err(FrameError::NewerApiVersions { correlation_id }) => {
            // KIP-511: answer in the v0 layout so the client retries with a version we have.
            let reply = tokio::spawn(async {
                Some(ResponseKind::ApiVersions(
                    api::versions::api_versions_response()
                        .with_error_code(codes::UNSUPPORTED_VERSION),
                ))
            });
            return Ok(Pending {
                correlation_id,
                api_key: ApiKey::ApiVersions,
                version: 0,
                started,
                reply,
            });
        }
        Err(e) => return Err(CloseReason::Request(e)),
    };
    let (header, request) = request::decode(&prefix, frame).map_err(CloseReason::Request)?;
    let reply = api::dispatch(broker, &header, client, request);
    Ok(Pending {
        correlation_id: prefix.correlation_id,
        api_key: prefix.api_key,
        version: prefix.version,
        started,
        reply: tokio::spawn(reply),
    })
}

async fn write_loop(
    wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Pending>,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let mut out = BytesMut::with_capacity(64 * 1024);
    // Completes SHUTDOWN_GRACE after the shutdown began (polled until then, once).
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::pin!(grace);
    loop {
        // Answers already written wait in `wr` only while the next one is ready too: a
        // Produce answer held behind the next request's fsync would add that wait to its
        // round trip (and chain through a pipelined client's requests).
        let mut p = match rx.try_recv() {
            Ok(p) => p,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                if wr.flush().await.is_err() {
                    break;
                }
                match rx.recv().await {
                    Some(p) => p,
                    None => break,
                }
            }
        };
        if !p.reply.is_finished() && wr.flush().await.is_err() {
            break;
        }
        let reply = tokio::select! {
            r = &mut p.reply => r,
            () = &mut grace => {
                tracing::warn!(api = ?p.api_key, "shutting down: closing a connection with requests still unanswered");
                p.reply.abort();
                break;
            }
        };
        let response = match reply {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(api = ?p.api_key, error = %e, "request handler failed; closing connection");
                break;
            }
        };
        let api_name = api::name(p.api_key);
        broker.metrics.requests.with_label_values(&[api_name]).inc();
        broker
            .metrics
            .request_latency
            .with_label_values(&[api_name])
            .observe(p.started.elapsed().as_secs_f64());
        let Some(response) = response else {
            continue; // acks=0
        };
        out.clear();
        if let Err(e) = encode_response(&mut out, p.correlation_id, p.api_key, p.version, &response)
        {
            tracing::error!(api = ?p.api_key, version = p.version, error = %e, "encoding response; closing connection");
            break;
        }
        if wr.write_all(&out).await.is_err() {
            break;
        }
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}

fn encode_response(
    out: &mut BytesMut,
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    response: &ResponseKind,
) -> anyhow::Result<()> {
    out.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(out, api_key.response_header_version(version))?;
    request::encode_response_body(api_key, version, response, out)?;
    let size = i32::try_from(out.len() - 4)?;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}
