//! Node-to-node cluster transport shared by every Raft group on a node.
//!
//! Each node runs one [`Transport`]. Outgoing calls to a peer are multiplexed over a single
//! TCP connection owned by a per-peer task: callers enqueue a request on an mpsc channel and
//! await a oneshot; the task writes requests (coalescing everything queued into one flush),
//! reads responses and routes them back by request id. Incoming connections are served by a
//! reader that spawns one task per request and a writer that coalesces responses the same way,
//! so responses may leave out of order.
//!
//! # Wire format (all integers big-endian)
//!
//! Handshake, sent once by the connecting side right after connect:
//!
//! ```text
//! magic  b"SLCT"   4 bytes
//! version u16      = 2
//! node_id u64      caller's node id (passed to the handler as `from`)
//! ```
//!
//! Then a stream of frames in both directions:
//!
//! ```text
//! len    u32   length of everything after this field (kind + id + payload)
//! kind   u8    1 = request, 2 = response ok, 3 = response err
//! id     u64   request id, chosen by the caller, echoed in the response
//! payload:
//!   request:  group_len u16, group key (group_len bytes), method u8, body (rest)
//!   ok:       body (rest)
//!   err:      UTF-8 error message (rest)
//! ```
//!
//! A frame whose `len` exceeds `max_frame_bytes` (checked before allocating), a malformed
//! frame, or a bad handshake closes that connection with a single `tracing::warn`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, warn};

pub type NodeId = u64;
/// Identifies a Raft group on the wire: opaque bytes (e.g. b"ctl" or b"orders/3"), at most
/// [`MAX_GROUP_KEY`] bytes (a partition's key is its topic name, up to 249 bytes, a dash and
/// its index).
pub type GroupKey = Bytes;
/// The future a [`Handler`] returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send + 'static>>;

const MAGIC: &[u8; 4] = b"SLCT";
const VERSION: u16 = 2;
const HANDSHAKE_LEN: usize = 4 + 2 + 8;
const KIND_REQUEST: u8 = 1;
const KIND_OK: u8 = 2;
const KIND_ERR: u8 = 3;
/// kind + request id: the smallest valid frame.
const FRAME_MIN: usize = 1 + 8;
pub const MAX_GROUP_KEY: usize = 1024;
/// A connecting peer that sends nothing is dropped after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const IO_BUF: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("peer {0} is unknown")]
    UnknownPeer(NodeId),
    #[error("peer {0} unreachable: {1}")]
    Unreachable(NodeId, String),
    /// The peer's host answered that nothing listens on its cluster port: its process is not
    /// running (a definite answer, unlike a timeout).
    #[error("peer {0} refused the connection")]
    Refused(NodeId),
    #[error("call to peer {0} timed out")]
    Timeout(NodeId),
    #[error("remote error: {0}")]
    Remote(String),
    #[error("transport closed")]
    Closed,
    #[error("group key is {0} bytes, at most 1024 allowed")]
    GroupKeyTooLong(usize),
    #[error("frame of {0} bytes exceeds max_frame_bytes")]
    FrameTooLarge(usize),
}

/// Server side: what a node does with an incoming call.
pub trait Handler: Send + Sync + 'static {
    /// `from` is the caller's node id (sent in the connection handshake).
    fn handle(&self, from: NodeId, group: GroupKey, method: u8, body: Bytes) -> HandlerFuture;
}

/// Any `Fn(from, group, method, body) -> impl Future` is a handler.
impl<F, Fut> Handler for F
where
    F: Fn(NodeId, GroupKey, u8, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, String>> + Send + 'static,
{
    fn handle(&self, from: NodeId, group: GroupKey, method: u8, body: Bytes) -> HandlerFuture {
        Box::pin(self(from, group, method, body))
    }
}

#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub node_id: NodeId,
    pub connect_timeout: Duration,
    pub max_frame_bytes: usize,
    pub reconnect_backoff_max: Duration,
}

impl TransportConfig {
    pub fn new(node_id: NodeId) -> Self {
        TransportConfig {
            node_id,
            connect_timeout: Duration::from_secs(1),
            max_frame_bytes: 64 << 20,
            reconnect_backoff_max: Duration::from_secs(1),
        }
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self::new(0)
    }
}

type Reply = oneshot::Sender<Result<Bytes, TransportError>>;

struct Request {
    group: GroupKey,
    method: u8,
    body: Bytes,
    reply: Reply,
}

/// What every background task needs. Tasks hold this rather than `Arc<Inner>` so that dropping
/// the last `Transport` drops the shutdown sender, which ends every task.
#[derive(Clone)]
struct Ctx {
    node_id: NodeId,
    connect_timeout: Duration,
    max_frame_bytes: usize,
    backoff_max: Duration,
    shutdown: watch::Receiver<bool>,
}

impl Ctx {
    /// Resolves once shutdown was requested (or the transport was dropped).
    async fn closed(&mut self) {
        let _ = self.shutdown.wait_for(|&closed| closed).await;
    }
}

struct PeerLink {
    tx: mpsc::UnboundedSender<Request>,
    task: JoinHandle<()>,
}

struct Peer {
    addr: String,
    /// Spawned lazily on the first call (so `set_peer` works outside a runtime).
    link: Option<PeerLink>,
}

struct Inner {
    config: TransportConfig,
    peers: Mutex<HashMap<NodeId, Peer>>,
    listeners: Mutex<Vec<JoinHandle<()>>>,
    shutdown_tx: watch::Sender<bool>,
    accepted: Arc<AtomicU64>,
}

/// One per node. Cheap to clone (Arc inside).
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    pub fn new(mut config: TransportConfig) -> Transport {
        // The length prefix is a u32, so that is the hard ceiling.
        config.max_frame_bytes = config.max_frame_bytes.min(u32::MAX as usize);
        let (shutdown_tx, _) = watch::channel(false);
        Transport {
            inner: Arc::new(Inner {
                config,
                peers: Mutex::new(HashMap::new()),
                listeners: Mutex::new(Vec::new()),
                shutdown_tx,
                accepted: Arc::new(AtomicU64::new(0)),
            }),
        }
    }

    fn is_closed(&self) -> bool {
        *self.inner.shutdown_tx.borrow()
    }

    fn ctx(&self) -> Ctx {
        let c = &self.inner.config;
        Ctx {
            node_id: c.node_id,
            connect_timeout: c.connect_timeout,
            max_frame_bytes: c.max_frame_bytes,
            backoff_max: c.reconnect_backoff_max,
            shutdown: self.inner.shutdown_tx.subscribe(),
        }
    }

    /// Add or replace a peer's address (host:port string, resolved at connect time).
    /// Changing the address drops the old connection; calls pending on it fail with Unreachable.
    pub fn set_peer(&self, id: NodeId, addr: String) {
        if self.is_closed() {
            return;
        }
        let mut peers = self.inner.peers.lock();
        match peers.get(&id) {
            Some(p) if p.addr == addr => {}
            _ => {
                peers.insert(id, Peer { addr, link: None });
            }
        }
    }

    pub fn remove_peer(&self, id: NodeId) {
        self.inner.peers.lock().remove(&id);
    }

    /// Number of connections the listener(s) accepted (including ones later rejected).
    pub fn accepted_connections(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Bind and serve the cluster listener; returns the bound address.
    pub async fn serve(
        &self,
        addr: &str,
        handler: Arc<dyn Handler>,
    ) -> std::io::Result<SocketAddr> {
        if self.is_closed() {
            return Err(std::io::Error::other("transport closed"));
        }
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(
            listener,
            handler,
            self.ctx(),
            self.inner.accepted.clone(),
        ));
        self.inner.listeners.lock().push(task);
        Ok(local)
    }

    /// One request/response call over the single shared connection to `peer`.
    pub async fn call(
        &self,
        peer: NodeId,
        group: GroupKey,
        method: u8,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        if group.len() > MAX_GROUP_KEY {
            return Err(TransportError::GroupKeyTooLong(group.len()));
        }
        // Refuse locally what the peer would reject by closing the connection (and with it
        // every other call in flight). Assumes max_frame_bytes is uniform across the cluster.
        let frame_len = FRAME_MIN + 2 + group.len() + 1 + body.len();
        if frame_len > self.inner.config.max_frame_bytes {
            return Err(TransportError::FrameTooLarge(frame_len));
        }
        let (reply, rx) = oneshot::channel();
        self.enqueue(
            peer,
            Request {
                group,
                method,
                body,
                reply,
            },
        )?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            // The peer task dropped the request without answering: it was removed or shut down.
            Ok(Err(_)) if self.is_closed() => Err(TransportError::Closed),
            Ok(Err(_)) => Err(TransportError::Unreachable(peer, "peer removed".into())),
            Err(_) => Err(TransportError::Timeout(peer)),
        }
    }

    fn enqueue(&self, peer: NodeId, req: Request) -> Result<(), TransportError> {
        let mut peers = self.inner.peers.lock();
        // Checked under the lock: shutdown takes the map under it too, so any task spawned here
        // is either awaited by shutdown or sees the flag already set.
        if self.is_closed() {
            return Err(TransportError::Closed);
        }
        let entry = peers
            .get_mut(&peer)
            .ok_or(TransportError::UnknownPeer(peer))?;
        if entry.link.as_ref().is_none_or(|l| l.tx.is_closed()) {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(peer_task(peer, entry.addr.clone(), rx, self.ctx()));
            entry.link = Some(PeerLink { tx, task });
        }
        match &entry.link {
            Some(link) => link
                .tx
                .send(req)
                .map_err(|_| TransportError::Unreachable(peer, "connection task ended".into())),
            None => Err(TransportError::Closed),
        }
    }

    /// Stop listening, close all connections, fail pending calls with Closed.
    pub async fn shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
        let links: Vec<PeerLink> = std::mem::take(&mut *self.inner.peers.lock())
            .into_values()
            .filter_map(|p| p.link)
            .collect();
        let listeners = std::mem::take(&mut *self.inner.listeners.lock());
        for PeerLink { tx, task } in links {
            // Keep `tx` alive until the task ended so it sees shutdown, not "peer removed".
            let _ = task.await;
            drop(tx);
        }
        for task in listeners {
            let _ = task.await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

enum ConnEnd {
    Broken(String),
    Shutdown,
    Removed,
}

/// Owns the outgoing connection to one peer: connects lazily, reconnects after a break, and
/// backs off after failed connects (failing calls immediately meanwhile).
async fn peer_task(
    peer: NodeId,
    addr: String,
    mut rx: mpsc::UnboundedReceiver<Request>,
    mut ctx: Ctx,
) {
    let (node_id, connect_timeout) = (ctx.node_id, ctx.connect_timeout);
    let mut backoff = Duration::ZERO;
    let mut retry_at: Option<Instant> = None;
    // Whether the last failed connect was refused (calls failed while backing off say so too).
    let mut refused = false;
    let failed = |refused: bool, reason: &str| {
        if refused {
            TransportError::Refused(peer)
        } else {
            TransportError::Unreachable(peer, reason.to_string())
        }
    };
    loop {
        let req = tokio::select! {
            biased;
            _ = ctx.closed() => break,
            r = rx.recv() => match r {
                Some(r) => r,
                None => return, // peer removed or readdressed
            },
        };
        if req.reply.is_closed() {
            continue; // caller already timed out
        }
        if retry_at.is_some_and(|at| Instant::now() < at) {
            let msg = "backing off after failed connect";
            let _ = req.reply.send(Err(failed(refused, msg)));
            continue;
        }
        let connected = tokio::select! {
            biased;
            _ = ctx.closed() => {
                let _ = req.reply.send(Err(TransportError::Closed));
                break;
            }
            r = connect(&addr, node_id, connect_timeout) => r,
        };
        match connected {
            Err(ConnectFailed {
                reason,
                refused: was_refused,
            }) => {
                if backoff.is_zero() {
                    debug!(peer, %addr, "cluster connect failed: {reason}");
                }
                refused = was_refused;
                backoff = (backoff * 2).max(INITIAL_BACKOFF).min(ctx.backoff_max);
                retry_at = Some(Instant::now() + backoff);
                // Everything that queued up during the attempt fails fast too.
                let _ = req.reply.send(Err(failed(refused, &reason)));
                while let Ok(r) = rx.try_recv() {
                    let _ = r.reply.send(Err(failed(refused, &reason)));
                }
            }
            Ok(stream) => {
                backoff = Duration::ZERO;
                retry_at = None;
                match run_connection(peer, stream, req, &mut rx, &mut ctx).await {
                    // Next queued call reconnects right away.
                    ConnEnd::Broken(reason) => debug!(peer, "cluster connection lost: {reason}"),
                    ConnEnd::Shutdown => break,
                    ConnEnd::Removed => return,
                }
            }
        }
    }
    rx.close();
    while let Ok(r) = rx.try_recv() {
        let _ = r.reply.send(Err(TransportError::Closed));
    }
}

struct ConnectFailed {
    reason: String,
    /// Connection refused: nothing listens at the address.
    refused: bool,
}

async fn connect(
    addr: &str,
    node_id: NodeId,
    timeout: Duration,
) -> Result<TcpStream, ConnectFailed> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut hs = [0u8; HANDSHAKE_LEN];
        hs[..4].copy_from_slice(MAGIC);
        hs[4..6].copy_from_slice(&VERSION.to_be_bytes());
        hs[6..].copy_from_slice(&node_id.to_be_bytes());
        stream.write_all(&hs).await?;
        Ok::<_, std::io::Error>(stream)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(ConnectFailed {
            reason: format!("connect to {addr}: {e}"),
            refused: e.kind() == std::io::ErrorKind::ConnectionRefused,
        }),
        Err(_) => Err(ConnectFailed {
            reason: format!("connect to {addr} timed out"),
            refused: false,
        }),
    }
}

/// Drives one established connection until it breaks, the peer is removed, or shutdown.
/// Every call still pending when it returns is failed here.
async fn run_connection(
    peer: NodeId,
    stream: TcpStream,
    first: Request,
    rx: &mut mpsc::UnboundedReceiver<Request>,
    ctx: &mut Ctx,
) -> ConnEnd {
    let (rd, wr) = stream.into_split();
    let max = ctx.max_frame_bytes;
    let pending: Mutex<HashMap<u64, Reply>> = Mutex::new(HashMap::new());

    let writer = async {
        let mut w = BufWriter::with_capacity(IO_BUF, wr);
        let mut hdr = BytesMut::with_capacity(FRAME_MIN + 4 + 2 + MAX_GROUP_KEY);
        let mut next_id: u64 = 1;
        let mut purge_at = 1024;
        let mut req = first;
        loop {
            // Write `req` plus everything queued behind it, then flush once.
            let mut yielded = false;
            loop {
                if !req.reply.is_closed() {
                    let id = next_id;
                    next_id += 1;
                    let len = FRAME_MIN + 2 + req.group.len() + 1 + req.body.len();
                    hdr.clear();
                    hdr.put_u32(len as u32); // bounded by the check in `call`
                    hdr.put_u8(KIND_REQUEST);
                    hdr.put_u64(id);
                    hdr.put_u16(req.group.len() as u16); // at most MAX_GROUP_KEY, checked in `call`
                    hdr.put_slice(&req.group);
                    hdr.put_u8(req.method);
                    pending.lock().insert(id, req.reply);
                    if let Err(e) = write_frame(&mut w, &hdr, &req.body).await {
                        return ConnEnd::Broken(format!("write: {e}"));
                    }
                }
                match try_recv_batched(rx, &mut yielded).await {
                    Ok(r) => req = r,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return ConnEnd::Removed,
                }
            }
            if let Err(e) = w.flush().await {
                return ConnEnd::Broken(format!("write: {e}"));
            }
            // Entries of callers that timed out are never answered by a handler that hangs;
            // sweep them now and then (amortised O(1) per call).
            {
                let mut p = pending.lock();
                if p.len() >= purge_at {
                    p.retain(|_, tx| !tx.is_closed());
                    purge_at = (p.len() * 2).max(1024);
                }
            }
            req = match rx.recv().await {
                Some(r) => r,
                None => return ConnEnd::Removed,
            };
        }
    };

    let reader = async {
        let mut rd = BufReader::with_capacity(IO_BUF, rd);
        loop {
            match read_frame(&mut rd, max).await {
                Ok(Frame::Response { id, result }) => {
                    // Unknown id: the caller timed out and was swept; drop silently.
                    if let Some(tx) = pending.lock().remove(&id) {
                        let _ = tx.send(result.map_err(TransportError::Remote));
                    }
                }
                Ok(Frame::Request { .. }) => {
                    warn!(
                        peer,
                        "closing cluster connection: request on outgoing connection"
                    );
                    return ConnEnd::Broken("protocol violation".into());
                }
                Err(ReadError::Eof) => return ConnEnd::Broken("closed by peer".into()),
                Err(ReadError::Io(e)) => return ConnEnd::Broken(format!("read: {e}")),
                Err(ReadError::Malformed(m)) => {
                    warn!(peer, "closing cluster connection: {m}");
                    return ConnEnd::Broken(m);
                }
            }
        }
    };

    let end = tokio::select! {
        biased;
        _ = ctx.closed() => ConnEnd::Shutdown,
        e = writer => e,
        e = reader => e,
    };
    for (_, tx) in pending.into_inner() {
        let err = match &end {
            ConnEnd::Shutdown => TransportError::Closed,
            ConnEnd::Broken(reason) => TransportError::Unreachable(peer, reason.clone()),
            ConnEnd::Removed => TransportError::Unreachable(peer, "peer removed".into()),
        };
        let _ = tx.send(Err(err));
    }
    end
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

async fn accept_loop(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    mut ctx: Ctx,
    accepted: Arc<AtomicU64>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = ctx.closed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, remote)) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(serve_connection(stream, remote, handler.clone(), ctx.clone()));
                }
                Err(e) => {
                    // E.g. EMFILE: don't spin.
                    warn!("cluster accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// Aborts the task when dropped, so a handler dies with its connection.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn join_error_message(e: JoinError) -> String {
    if !e.is_panic() {
        return "handler cancelled".into();
    }
    let payload = e.into_panic();
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string payload".into());
    format!("handler panicked: {msg}")
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    handler: Arc<dyn Handler>,
    mut ctx: Ctx,
) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(IO_BUF, rd);
    let max = ctx.max_frame_bytes;
    let from = tokio::select! {
        _ = ctx.closed() => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_handshake(&mut rd)) => match r {
            Ok(Ok(id)) => id,
            Ok(Err(m)) => {
                warn!(%remote, "closing cluster connection: {m}");
                return;
            }
            Err(_) => {
                warn!(%remote, "closing cluster connection: handshake timed out");
                return;
            }
        },
    };

    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Result<Bytes, String>)>();
    // Dropped when this function returns, aborting handlers still running for this connection.
    let mut handlers = JoinSet::new();

    let reader = async {
        loop {
            match read_frame(&mut rd, max).await {
                Ok(Frame::Request {
                    id,
                    group,
                    method,
                    body,
                }) => {
                    let handler = handler.clone();
                    let tx = tx.clone();
                    handlers.spawn(async move {
                        // The handler runs in its own task so a panic surfaces as a JoinError
                        // instead of unwinding through this connection.
                        let mut task = AbortOnDrop(tokio::spawn(async move {
                            handler.handle(from, group, method, body).await
                        }));
                        let result = match (&mut task.0).await {
                            Ok(r) => r,
                            Err(e) => Err(join_error_message(e)),
                        };
                        let _ = tx.send((id, result));
                    });
                    // Reap finished tasks without awaiting (read_frame is not cancel-safe, so
                    // it must not race join_next in a select).
                    while handlers.try_join_next().is_some() {}
                }
                Ok(Frame::Response { .. }) => {
                    warn!(%remote, from, "closing cluster connection: response on incoming connection");
                    return;
                }
                Err(ReadError::Eof) => return,
                Err(ReadError::Io(e)) => {
                    debug!(%remote, from, "cluster connection read failed: {e}");
                    return;
                }
                Err(ReadError::Malformed(m)) => {
                    warn!(%remote, from, "closing cluster connection: {m}");
                    return;
                }
            }
        }
    };

    let writer = async {
        let mut w = BufWriter::with_capacity(IO_BUF, wr);
        let mut hdr = BytesMut::with_capacity(4 + FRAME_MIN);
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            let mut yielded = false;
            while let Some((id, result)) = next.take() {
                let (kind, body) = match result {
                    Ok(b) if FRAME_MIN + b.len() <= max => (KIND_OK, b),
                    Ok(b) => (
                        KIND_ERR,
                        Bytes::from(format!(
                            "response of {} bytes exceeds max_frame_bytes",
                            b.len()
                        )),
                    ),
                    Err(m) => {
                        let mut m = m.into_bytes();
                        m.truncate(max.saturating_sub(FRAME_MIN)); // may split a UTF-8 char; lossy on decode
                        (KIND_ERR, Bytes::from(m))
                    }
                };
                hdr.clear();
                hdr.put_u32((FRAME_MIN + body.len()) as u32);
                hdr.put_u8(kind);
                hdr.put_u64(id);
                if write_frame(&mut w, &hdr, &body).await.is_err() {
                    return;
                }
                next = try_recv_batched(&mut rx, &mut yielded).await.ok();
            }
            if w.flush().await.is_err() {
                return;
            }
        }
    };

    tokio::select! {
        biased;
        _ = ctx.closed() => {}
        _ = reader => {}
        _ = writer => {}
    }
}

/// The next queued item without waiting for one. When the queue looks empty, yields to the
/// scheduler once per batch first, so producers that are running right now (other callers,
/// handlers finishing) can join this write instead of costing a syscall each.
async fn try_recv_batched<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    yielded: &mut bool,
) -> Result<T, TryRecvError> {
    match rx.try_recv() {
        Err(TryRecvError::Empty) if !*yielded => {
            *yielded = true;
            tokio::task::yield_now().await;
            rx.try_recv()
        }
        r => r,
    }
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Frame {
    Request {
        id: u64,
        group: GroupKey,
        method: u8,
        body: Bytes,
    },
    Response {
        id: u64,
        result: Result<Bytes, String>,
    },
}

#[derive(Debug)]
enum ReadError {
    /// Clean close (or a close in the middle of the length prefix).
    Eof,
    Io(std::io::Error),
    Malformed(String),
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    hdr: &[u8],
    body: &[u8],
) -> std::io::Result<()> {
    // BufWriter copies small bodies into its buffer and passes big ones straight through.
    w.write_all(hdr).await?;
    w.write_all(body).await
}

async fn read_handshake<R: AsyncRead + Unpin>(rd: &mut R) -> Result<NodeId, String> {
    let mut hs = [0u8; HANDSHAKE_LEN];
    rd.read_exact(&mut hs)
        .await
        .map_err(|e| format!("handshake read failed: {e}"))?;
    if &hs[..4] != MAGIC {
        return Err("bad handshake magic".into());
    }
    let version = u16::from_be_bytes([hs[4], hs[5]]);
    if version != VERSION {
        return Err(format!("unsupported protocol version {version}"));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&hs[6..]);
    Ok(NodeId::from_be_bytes(id))
}

async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R, max: usize) -> Result<Frame, ReadError> {
    let len = match rd.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ReadError::Eof),
        Err(e) => return Err(ReadError::Io(e)),
    };
    if len < FRAME_MIN {
        return Err(ReadError::Malformed(format!(
            "frame length {len} too short"
        )));
    }
    if len > max {
        return Err(ReadError::Malformed(format!(
            "frame length {len} exceeds max_frame_bytes {max}"
        )));
    }
    let mut buf = vec![0u8; len];
    rd.read_exact(&mut buf).await.map_err(ReadError::Io)?;
    parse_frame(Bytes::from(buf)).map_err(ReadError::Malformed)
}

/// Parses a frame body (everything after the length prefix). Never panics: every `get_*`
/// is preceded by a length check.
fn parse_frame(mut b: Bytes) -> Result<Frame, String> {
    if b.len() < FRAME_MIN {
        return Err(format!("frame length {} too short", b.len()));
    }
    let kind = b.get_u8();
    let id = b.get_u64();
    match kind {
        KIND_REQUEST => {
            if b.len() < 2 {
                return Err("request without group key length".into());
            }
            let group_len = b.get_u16() as usize;
            if b.len() < group_len + 1 {
                return Err("request truncated in group key / method".into());
            }
            let group = b.split_to(group_len);
            let method = b.get_u8();
            Ok(Frame::Request {
                id,
                group,
                method,
                body: b,
            })
        }
        KIND_OK => Ok(Frame::Response { id, result: Ok(b) }),
        KIND_ERR => Ok(Frame::Response {
            id,
            result: Err(String::from_utf8_lossy(&b).into_owned()),
        }),
        other => Err(format!("unknown frame kind {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const SLEEP: u8 = 1;
    const NEVER: u8 = 2;
    const FAIL: u8 = 3;
    const PANIC: u8 = 4;
    const ECHO: u8 = 7;
    const LONG: Duration = Duration::from_secs(10);

    /// Echo `from|group|method|body` for ECHO; other methods exercise the failure paths.
    fn handler() -> Arc<dyn Handler> {
        Arc::new(
            |from: NodeId, group: GroupKey, method: u8, body: Bytes| async move {
                match method {
                    ECHO => Ok(Bytes::from(format!(
                        "{from}|{}|{method}|{}",
                        String::from_utf8_lossy(&group),
                        String::from_utf8_lossy(&body)
                    ))),
                    SLEEP => {
                        let ms: u64 = std::str::from_utf8(&body).unwrap().parse().unwrap();
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(body)
                    }
                    NEVER => std::future::pending().await,
                    FAIL => Err("boom".to_string()),
                    PANIC => panic!("kaboom"),
                    _ => Err(format!("no method {method}")),
                }
            },
        )
    }

    fn config(id: NodeId) -> TransportConfig {
        TransportConfig {
            max_frame_bytes: 1 << 20,
            reconnect_backoff_max: Duration::from_millis(200),
            ..TransportConfig::new(id)
        }
    }

    async fn node(id: NodeId, addr: &str) -> (Transport, SocketAddr) {
        let t = Transport::new(config(id));
        let bound = t.serve(addr, handler()).await.unwrap();
        (t, bound)
    }

    /// A (id 1) and B (id 2), A knows B.
    async fn pair() -> (Transport, Transport, SocketAddr) {
        let (a, _) = node(1, "127.0.0.1:0").await;
        let (b, b_addr) = node(2, "127.0.0.1:0").await;
        a.set_peer(2, b_addr.to_string());
        (a, b, b_addr)
    }

    async fn echo(t: &Transport, peer: NodeId, body: &str) -> Result<Bytes, TransportError> {
        let body = Bytes::from(body.to_string());
        t.call(peer, Bytes::from_static(b"g"), ECHO, body, LONG)
            .await
    }

    /// Retries until the call succeeds (used after restarts, where backoff may apply).
    async fn echo_eventually(t: &Transport, peer: NodeId) -> Bytes {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match echo(t, peer, "again").await {
                Ok(b) => return b,
                Err(e) if Instant::now() < deadline => {
                    assert!(
                        matches!(
                            e,
                            TransportError::Unreachable(..) | TransportError::Refused(_)
                        ),
                        "{e}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("never recovered: {e}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip() {
        let (a, b, _) = pair().await;
        let r = a
            .call(
                2,
                Bytes::from_static(b"g1"),
                ECHO,
                Bytes::from_static(b"hi"),
                LONG,
            )
            .await
            .unwrap();
        assert_eq!(&r[..], b"1|g1|7|hi");
        assert!(matches!(
            echo(&a, 9, "x").await,
            Err(TransportError::UnknownPeer(9))
        ));
        // The longest partition key (a 249-byte topic name, a dash, a 10-digit index) works.
        let name = format!("{}-2147483647", "t".repeat(249));
        let topic_key = Bytes::from(name.clone());
        assert_eq!(
            a.call(2, topic_key, ECHO, Bytes::from_static(b"k"), LONG)
                .await
                .unwrap(),
            Bytes::from(format!("1|{name}|{ECHO}|k"))
        );
        let long_key = Bytes::from(vec![b'k'; MAX_GROUP_KEY + 1]);
        assert!(matches!(
            a.call(2, long_key, ECHO, Bytes::new(), LONG).await,
            Err(TransportError::GroupKeyTooLong(n)) if n == MAX_GROUP_KEY + 1
        ));
        let huge = Bytes::from(vec![0u8; 1 << 20]);
        assert!(matches!(
            a.call(2, Bytes::new(), ECHO, huge, LONG).await,
            Err(TransportError::FrameTooLarge(_))
        ));
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn multiplexes_over_one_connection() {
        let (a, b, _) = pair().await;
        let mut calls = JoinSet::new();
        for i in 0..1000 {
            let a = a.clone();
            calls.spawn(async move {
                let group = Bytes::from(format!("topic/{}", i % 50));
                let r = a
                    .call(2, group, ECHO, Bytes::from(i.to_string()), LONG)
                    .await;
                (i, r)
            });
        }
        while let Some(joined) = calls.join_next().await {
            let (i, r) = joined.unwrap();
            assert_eq!(r.unwrap(), format!("1|topic/{}|7|{i}", i % 50).as_bytes());
        }
        assert_eq!(b.accepted_connections(), 1);
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn responses_can_overtake() {
        let (a, b, _) = pair().await;
        let a2 = a.clone();
        let slow = tokio::spawn(async move {
            a2.call(2, Bytes::new(), SLEEP, Bytes::from_static(b"600"), LONG)
                .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = Instant::now();
        let fast = a
            .call(2, Bytes::new(), SLEEP, Bytes::from_static(b"0"), LONG)
            .await
            .unwrap();
        assert_eq!(&fast[..], b"0");
        assert!(start.elapsed() < Duration::from_millis(300));
        assert!(
            !slow.is_finished(),
            "slow call finished before the fast one"
        );
        assert_eq!(&slow.await.unwrap().unwrap()[..], b"600");
        assert_eq!(b.accepted_connections(), 1);
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timeout_keeps_connection_usable() {
        let (a, b, _) = pair().await;
        let start = Instant::now();
        let r = a
            .call(
                2,
                Bytes::new(),
                NEVER,
                Bytes::new(),
                Duration::from_millis(200),
            )
            .await;
        assert!(matches!(r, Err(TransportError::Timeout(2))), "{r:?}");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(1));
        // A response arriving after the caller gave up is dropped silently.
        let short = Duration::from_millis(100);
        let r = a
            .call(2, Bytes::new(), SLEEP, Bytes::from_static(b"300"), short)
            .await;
        assert!(matches!(r, Err(TransportError::Timeout(2))), "{r:?}");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(&echo(&a, 2, "ok").await.unwrap()[..], b"1|g|7|ok");
        assert_eq!(b.accepted_connections(), 1);
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peer_down_then_up() {
        let (a, _) = node(1, "127.0.0.1:0").await;
        // Reserve a port with nothing listening on it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        a.set_peer(2, addr.to_string());
        for _ in 0..3 {
            let start = Instant::now();
            let r = echo(&a, 2, "x").await;
            // Nothing listens there: a definite refusal, also while backing off.
            assert!(matches!(r, Err(TransportError::Refused(2))), "{r:?}");
            assert!(start.elapsed() < Duration::from_millis(500));
        }
        let (b, _) = node(2, &addr.to_string()).await;
        assert_eq!(&echo_eventually(&a, 2).await[..], b"1|g|7|again");
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_break_fails_pending_then_recovers() {
        let (a, b, b_addr) = pair().await;
        let mut pending = JoinSet::new();
        for _ in 0..5 {
            let a = a.clone();
            pending.spawn(async move { a.call(2, Bytes::new(), NEVER, Bytes::new(), LONG).await });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        b.shutdown().await;
        while let Some(r) = pending.join_next().await {
            let r = r.unwrap();
            assert!(
                matches!(
                    r,
                    Err(TransportError::Unreachable(2, _)) | Err(TransportError::Closed)
                ),
                "{r:?}"
            );
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        let (b2, _) = node(2, &b_addr.to_string()).await;
        assert_eq!(&echo_eventually(&a, 2).await[..], b"1|g|7|again");
        a.shutdown().await;
        b2.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remote_errors_and_panics() {
        let (a, b, _) = pair().await;
        let r = a.call(2, Bytes::new(), FAIL, Bytes::new(), LONG).await;
        assert!(
            matches!(&r, Err(TransportError::Remote(m)) if m == "boom"),
            "{r:?}"
        );
        let r = a.call(2, Bytes::new(), PANIC, Bytes::new(), LONG).await;
        assert!(
            matches!(&r, Err(TransportError::Remote(m)) if m.contains("kaboom")),
            "{r:?}"
        );
        assert_eq!(&echo(&a, 2, "still").await.unwrap()[..], b"1|g|7|still");
        assert_eq!(b.accepted_connections(), 1);
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readdressing_a_peer_moves_its_connection() {
        let (a, b, _) = pair().await;
        let (c, c_addr) = node(3, "127.0.0.1:0").await;
        let a2 = a.clone();
        let pending =
            tokio::spawn(async move { a2.call(2, Bytes::new(), NEVER, Bytes::new(), LONG).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.set_peer(2, c_addr.to_string());
        let r = tokio::time::timeout(Duration::from_secs(1), pending).await;
        assert!(
            matches!(r, Ok(Ok(Err(TransportError::Unreachable(2, _))))),
            "{r:?}"
        );
        assert!(echo(&a, 2, "moved").await.is_ok());
        assert_eq!(c.accepted_connections(), 1);
        a.remove_peer(2);
        assert!(matches!(
            echo(&a, 2, "x").await,
            Err(TransportError::UnknownPeer(2))
        ));
        for t in [a, b, c] {
            t.shutdown().await;
        }
    }

    fn handshake(id: NodeId) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&VERSION.to_be_bytes());
        v.extend_from_slice(&id.to_be_bytes());
        v
    }

    /// Sends `bytes` on a raw connection and expects the server to close it.
    async fn expect_rejected(addr: SocketAddr, bytes: &[u8]) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("server kept a malformed connection open");
        // EOF, or a reset if the server closed with unread input.
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_input_closes_only_that_connection() {
        let (a, b, b_addr) = pair().await;
        assert!(echo(&a, 2, "before").await.is_ok());
        expect_rejected(b_addr, b"NOPE\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01").await;
        let mut bad_version = handshake(3);
        bad_version[5] = 9;
        expect_rejected(b_addr, &bad_version).await;
        let frames: [&[u8]; 5] = [
            &[0xff, 0xff, 0xff, 0xff],                             // oversized length
            &[0, 0, 0, 2, 1, 0],                                   // shorter than kind + id
            &[0, 0, 0, 9, 99, 0, 0, 0, 0, 0, 0, 0, 1],             // unknown kind
            &[0, 0, 0, 10, 1, 0, 0, 0, 0, 0, 0, 0, 1, 200],        // group key past the end
            &[0, 0, 0, 11, 2, 0, 0, 0, 0, 0, 0, 0, 1, b'o', b'k'], // response sent to a server
        ];
        for frame in frames {
            let mut bytes = handshake(3);
            bytes.extend_from_slice(frame);
            expect_rejected(b_addr, &bytes).await;
        }
        // The established connection from A is unaffected.
        assert_eq!(&echo(&a, 2, "after").await.unwrap()[..], b"1|g|7|after");
        assert_eq!(b.accepted_connections(), 1 + 2 + frames.len() as u64);
        a.shutdown().await;
        b.shutdown().await;
    }

    #[test]
    fn parse_frame_never_panics_on_truncation() {
        let mut full = BytesMut::new();
        full.put_u8(KIND_REQUEST);
        full.put_u64(42);
        full.put_u16(2);
        full.put_slice(b"g1");
        full.put_u8(7);
        full.put_slice(b"body");
        for cut in 0..full.len() {
            let r = parse_frame(full.clone().freeze().slice(..cut));
            assert!(cut > FRAME_MIN + 2 + 2 || r.is_err(), "cut {cut}");
        }
        match parse_frame(full.freeze()).unwrap() {
            Frame::Request {
                id,
                group,
                method,
                body,
            } => assert_eq!(
                (id, &group[..], method, &body[..]),
                (42, &b"g1"[..], 7, &b"body"[..])
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_fails_pending_and_later_calls() {
        let (a, b, _) = pair().await;
        assert!(echo(&a, 2, "warm").await.is_ok());
        let a2 = a.clone();
        let pending =
            tokio::spawn(async move { a2.call(2, Bytes::new(), NEVER, Bytes::new(), LONG).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        a.shutdown().await;
        let r = pending.await.unwrap();
        assert!(matches!(r, Err(TransportError::Closed)), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(matches!(
            echo(&a, 2, "x").await,
            Err(TransportError::Closed)
        ));
        assert!(a.serve("127.0.0.1:0", handler()).await.is_err());
        b.shutdown().await;
    }
}
