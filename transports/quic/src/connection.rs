//! [`QuicConnection`]: farcall's [`Connection`] over one QUIC connection.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use farcall_core::codec::peek_route;
use farcall_core::{Connection, Frame, PeerInfo, RequestId, Route, TransportError};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectError, ConnectionError, Endpoint, RecvStream, SendStream, VarInt, WriteError};
use rustls_pki_types::CertificateDer;

use crate::drive::DriverUse;
use crate::reader::{BufferPool, Cell, HeadEnd, Hub, Kind, Reader, BARRIER_LEN};
use crate::reuse::Reusable;
use crate::{connection_error, in_async_context, lock, transport_config, ALPN};

/// Chunks shorter than this are copied together with the length prefixes
/// into one buffer; longer ones are handed to quinn as they are (no copy).
const COALESCE_MAX: usize = 4096;

/// How long [`Connection::shutdown`] waits, at most, for the peer to
/// acknowledge what was written just before it (a handshake refusal, a last
/// reply), so that closing does not discard it.
const LINGER: Duration = Duration::from_millis(500);

/// Writes older than this are taken as delivered: `shutdown` does not wait.
const LINGER_WINDOW: Duration = Duration::from_secs(2);

/// The receive buffer a connection keeps between large frames, at most
/// (see [`QuicConnection::set_max_retained_buffer`]).
pub const DEFAULT_MAX_RETAINED: usize = 16 << 20;
/// The same for accepted connections: a server has many, so it keeps less.
const SERVER_MAX_RETAINED: usize = 4 << 20;

/// The application error code of an orderly close.
const CLOSE_CODE: u32 = 0;

type AcceptFuture<T> = Pin<Box<dyn Future<Output = Result<T, ConnectionError>> + Send>>;

/// Where the reply to one of the peer's requests goes: the send half of the
/// stream the request came on.
#[derive(Debug)]
pub(crate) struct ReplySlot {
    state: tokio::sync::Mutex<SlotState>,
    /// Replies still expected on this stream (one per request seen on it).
    pending: AtomicUsize,
}

#[derive(Debug)]
struct SlotState {
    stream: Option<SendStream>,
    header_sent: bool,
}

impl ReplySlot {
    fn new(stream: Option<SendStream>) -> Self {
        ReplySlot { state: tokio::sync::Mutex::new(SlotState { stream, header_sent: false }), pending: AtomicUsize::new(0) }
    }
}

/// A farcall connection over QUIC: each call on a stream of its own (see
/// the crate docs). Made by [`QuicConnection::connect`] or accepted by a
/// [`QuicListener`](crate::QuicListener).
pub struct QuicConnection {
    conn: quinn::Connection,
    peer: PeerInfo,
    /// The peer's role, for messages ("server" or "client").
    peer_role: &'static str,
    /// `quic://ADDRESS`, for messages.
    context: String,
    max_frame: usize,
    closed: AtomicBool,
    hub: Arc<Hub>,
    recv: Mutex<RecvState>,
    recv_timeout: Mutex<Option<Duration>>,
    /// The one-way stream (opened by the first one-way send).
    oneway: tokio::sync::Mutex<Option<SendStream>>,
    /// One-way frames written so far.
    oneway_sent: AtomicU64,
    oneway_written_at: Mutex<Option<Instant>>,
    /// The last call or reply stream written, for `shutdown` to wait on.
    last_stream: Mutex<Option<(Instant, SendStream)>>,
    replies: Mutex<HashMap<RequestId, Arc<ReplySlot>>>,
    /// A connection made by `connect` holds its client endpoints (its UDP
    /// socket) until it is dropped, then they serve a later connection.
    _client: Option<Reusable>,
    /// The runtime its I/O runs on (last: dropped after everything else).
    driver: DriverUse,
}

impl std::fmt::Debug for QuicConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuicConnection({})", self.peer)
    }
}

fn accept_bi(conn: &quinn::Connection) -> AcceptFuture<(SendStream, RecvStream)> {
    let conn = conn.clone();
    Box::pin(async move { conn.accept_bi().await })
}

fn accept_uni(conn: &quinn::Connection) -> AcceptFuture<RecvStream> {
    let conn = conn.clone();
    Box::pin(async move { conn.accept_uni().await })
}

impl QuicConnection {
    /// Connects to `addr` (`host:port`) and completes the QUIC handshake,
    /// verifying the server's certificate against `server_name` and
    /// presenting the client certificate of `client_config` (made by
    /// [`farcall_tls::client_config`]; the [`ALPN`] protocol is set here).
    ///
    /// When the name resolves to several addresses they are tried at once and
    /// the first to complete the handshake wins. `timeout` bounds the whole
    /// (`None`: the handshake gives up after [`MAX_IDLE_TIMEOUT`](crate::MAX_IDLE_TIMEOUT)).
    /// Frames longer than `max_frame` are refused.
    ///
    /// In TLS 1.3 the server checks the client's certificate after the
    /// client considers the handshake done: a server refusing it shows as
    /// the first `send` or `recv` failing with an error that says why (for
    /// farcall, the handshake's `recv`).
    pub fn connect(
        addr: &str,
        server_name: &str,
        client_config: Arc<rustls::ClientConfig>,
        timeout: Option<Duration>,
        max_frame: usize,
    ) -> Result<QuicConnection, TransportError> {
        // First, so that the keeper of a reused runtime hands it over while
        // the rest is prepared.
        let mut client = Reusable::take()?;
        let driver = client.side().driver.clone();
        driver.driver().expect_caller();
        let context = format!("connecting to quic://{addr}");
        let targets: Vec<SocketAddr> = addr.to_socket_addrs().map_err(|e| TransportError::io(format!("resolving {addr}"), e))?.collect();
        if targets.is_empty() {
            return Err(TransportError::io(format!("resolving {addr}"), io::Error::new(io::ErrorKind::NotFound, "no address")));
        }
        let mut tls = (*client_config).clone();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(tls)
            .map_err(|e| TransportError::Config(format!("the TLS client configuration cannot be used for QUIC: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport_config());
        let mut endpoints = Vec::with_capacity(targets.len());
        for &target in &targets {
            endpoints.push(client.side().endpoint(target.is_ipv4(), &context));
        }

        let attempt = |target: SocketAddr, endpoint: Result<Endpoint, TransportError>| {
            let config = config.clone();
            let name = server_name.to_owned();
            let context = context.clone();
            async move {
                let endpoint = endpoint?;
                let connecting = endpoint.connect_with(config, target, &name).map_err(|e| match e {
                    ConnectError::InvalidServerName(n) => TransportError::Config(format!(
                        "`{n}` cannot be used as a server name: give the DNS name or IP address the server's certificate is for"
                    )),
                    other => TransportError::io(context.clone(), io::Error::other(other.to_string())),
                })?;
                let conn = connecting.await.map_err(|e| match e {
                    ConnectionError::TimedOut => no_answer(&context, crate::MAX_IDLE_TIMEOUT),
                    e => connection_error(&e, "server", &context),
                })?;
                Ok::<_, TransportError>(conn)
            }
        };
        let race = async {
            let mut attempts = tokio::task::JoinSet::new();
            for (t, endpoint) in targets.into_iter().zip(endpoints) {
                attempts.spawn(attempt(t, endpoint));
            }
            let mut error = None;
            while let Some(joined) = attempts.join_next().await {
                match joined {
                    Ok(Ok(done)) => return Ok(done),
                    // Certificates and names fail the same at every address:
                    // no need to wait for the others.
                    Ok(Err(e)) if matches!(e, TransportError::Config(_)) || io_kind(&e) == Some(io::ErrorKind::PermissionDenied) => {
                        return Err(e)
                    }
                    // Keep the most telling error: any before a timeout.
                    Ok(Err(e)) => {
                        if error.is_none() || io_kind(&e) != Some(io::ErrorKind::TimedOut) {
                            error = Some(e);
                        }
                    }
                    Err(join) => error = error.or(Some(TransportError::io(context.clone(), io::Error::other(join.to_string())))),
                }
            }
            Err(error.unwrap_or(TransportError::Closed))
        };
        let conn = driver.driver().block_on(async {
            match timeout {
                None => race.await,
                Some(t) => tokio::time::timeout(t, race).await.unwrap_or_else(|_| Err(no_answer(&context, t))),
            }
        })?;
        Ok(QuicConnection::establish(conn, Some(client), driver, max_frame, "server"))
    }

    /// Wraps an established quinn connection (`client`: the endpoints of
    /// one made by `connect`, `None` for an accepted one).
    pub(crate) fn establish(
        conn: quinn::Connection,
        client: Option<Reusable>,
        driver: DriverUse,
        max_frame: usize,
        peer_role: &'static str,
    ) -> QuicConnection {
        let max_retained = if client.is_some() { DEFAULT_MAX_RETAINED } else { SERVER_MAX_RETAINED };
        let identity = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|chain| farcall_tls::peer_identity(&chain));
        let address = conn.remote_address().to_string();
        QuicConnection {
            recv: Mutex::new(RecvState {
                frames: VecDeque::new(),
                work: VecDeque::new(),
                parked: Vec::new(),
                oneway_delivered: 0,
                accept_bi: Some(accept_bi(&conn)),
                accept_uni: Some(accept_uni(&conn)),
                terminal: None,
                pool: BufferPool::new(max_retained),
            }),
            context: format!("quic://{address}"),
            peer: PeerInfo { transport: "quic", address, identity },
            conn,
            peer_role,
            max_frame,
            closed: AtomicBool::new(false),
            hub: Arc::new(Hub::default()),
            recv_timeout: Mutex::new(None),
            oneway: tokio::sync::Mutex::new(None),
            oneway_sent: AtomicU64::new(0),
            oneway_written_at: Mutex::new(None),
            last_stream: Mutex::new(None),
            replies: Mutex::new(HashMap::new()),
            _client: client,
            driver,
        }
    }

    /// Keeps a receive buffer of up to `bytes` between frames: frames that
    /// fit are assembled without faulting in fresh memory each time (larger
    /// ones get a buffer of their own). Defaults: [`DEFAULT_MAX_RETAINED`]
    /// for a connection made by [`QuicConnection::connect`], 4 MiB for an
    /// accepted one.
    pub fn set_max_retained_buffer(&self, bytes: usize) {
        lock(&self.recv).pool = BufferPool::new(bytes);
    }

    /// The current round-trip time estimate of the connection.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    fn conn_error(&self, e: &ConnectionError) -> TransportError {
        connection_error(e, self.peer_role, &self.context)
    }

    fn write_error(&self, e: WriteError) -> TransportError {
        match e {
            WriteError::ConnectionLost(c) => self.conn_error(&c),
            WriteError::ClosedStream => TransportError::Closed,
            WriteError::Stopped(code) => TransportError::io(
                self.context.clone(),
                io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("the {} refused the rest of this stream (code {code}); a frame over its size limit?", self.peer_role),
                ),
            ),
            WriteError::ZeroRttRejected => TransportError::io(self.context.clone(), io::Error::other("0-RTT data rejected")),
        }
    }

    /// A call: a new bidirectional stream carrying `frames`, whose other
    /// half the reply will come back on.
    async fn write_call(&self, frames: &[&Frame]) -> Result<(), TransportError> {
        let (mut send, recv) = self.conn.open_bi().await.map_err(|e| self.conn_error(&e))?;
        let mut chunks = encode(Some(self.oneway_sent.load(Ordering::SeqCst)), frames)?;
        send.write_all_chunks(&mut chunks).await.map_err(|e| self.write_error(e))?;
        let _ = send.finish();
        Cell::new(Reader::new(recv, Kind::Reply, self.max_frame), &self.hub).arm();
        *lock(&self.last_stream) = Some((Instant::now(), send));
        Ok(())
    }

    /// A reply, on the stream its request came on.
    async fn write_reply(&self, slot: &ReplySlot, frame: &Frame) -> Result<(), TransportError> {
        let mut st = slot.state.lock().await;
        let barrier = (!st.header_sent).then(|| self.oneway_sent.load(Ordering::SeqCst));
        let mut chunks = encode(barrier, &[frame])?;
        let Some(stream) = st.stream.as_mut() else {
            return Err(TransportError::Closed);
        };
        stream.write_all_chunks(&mut chunks).await.map_err(|e| self.write_error(e))?;
        st.header_sent = true;
        if slot.pending.fetch_sub(1, Ordering::SeqCst) <= 1 {
            if let Some(mut stream) = st.stream.take() {
                let _ = stream.finish();
                *lock(&self.last_stream) = Some((Instant::now(), stream));
            }
        }
        Ok(())
    }

    /// Frames without reply, on the long-lived one-way stream.
    async fn write_oneway(&self, frames: &[&Frame]) -> Result<(), TransportError> {
        let mut chunks = encode(None, frames)?;
        let mut oneway = self.oneway.lock().await;
        if oneway.is_none() {
            *oneway = Some(self.conn.open_uni().await.map_err(|e| self.conn_error(&e))?);
        }
        let stream = oneway.as_mut().expect("opened above");
        stream.write_all_chunks(&mut chunks).await.map_err(|e| self.write_error(e))?;
        self.oneway_sent.fetch_add(frames.len() as u64, Ordering::SeqCst);
        *lock(&self.oneway_written_at) = Some(Instant::now());
        Ok(())
    }

    /// Before closing: if something was written recently, waits (a little)
    /// until the peer has acknowledged it, since closing a QUIC connection
    /// discards what is not yet delivered.
    fn linger(&self) {
        let recent = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() < LINGER_WINDOW);
        let oneway = recent(*lock(&self.oneway_written_at));
        let last = lock(&self.last_stream).take().filter(|(t, _)| recent(Some(*t)));
        if !oneway && last.is_none() {
            return;
        }
        // Not from inside an async context (a drop in a runtime task).
        if in_async_context() {
            return;
        }
        self.driver.driver().block_on(async {
            let _ = tokio::time::timeout(LINGER, async {
                if oneway {
                    let mut stream = self.oneway.lock().await;
                    if let Some(s) = stream.as_mut() {
                        let _ = s.finish();
                        let _ = s.stopped().await;
                    }
                }
                if let Some((_, s)) = &last {
                    let _ = s.stopped().await;
                }
            })
            .await;
        });
    }
}

fn io_kind(e: &TransportError) -> Option<io::ErrorKind> {
    match e {
        TransportError::Io { source, .. } => Some(source.kind()),
        _ => None,
    }
}

/// The error of a handshake that got no answer within `after`.
fn no_answer(context: &str, after: Duration) -> TransportError {
    TransportError::io(
        context,
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no QUIC handshake within {after:?}: is a farcall server listening on that UDP port, and does UDP get through?"),
        ),
    )
}

/// The frames' bytes as chunks for quinn: the barrier header (bidirectional
/// streams), then for each frame its 4-byte length and its chunks. Small
/// pieces are gathered into one buffer, large chunks passed as they are.
fn encode(barrier: Option<u64>, frames: &[&Frame]) -> Result<Vec<Bytes>, TransportError> {
    let mut out = Vec::new();
    let mut small = BytesMut::with_capacity(256);
    if let Some(b) = barrier {
        small.put_u64(b);
    }
    for f in frames {
        let len = u32::try_from(f.len())
            .map_err(|_| TransportError::io("sending", io::Error::new(io::ErrorKind::InvalidInput, "frame longer than 4 GiB")))?;
        small.put_u32(len);
        for c in f.chunks() {
            if c.len() < COALESCE_MAX {
                small.extend_from_slice(c);
            } else {
                if !small.is_empty() {
                    out.push(small.split().freeze());
                }
                out.push(c.clone());
            }
        }
    }
    if !small.is_empty() {
        out.push(small.freeze());
    }
    Ok(out)
}

impl Connection for QuicConnection {
    fn send(&self, frames: &[&Frame]) -> Result<(), TransportError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(TransportError::Closed);
        }
        let mut call = Vec::with_capacity(frames.len());
        let mut has_request = false;
        let mut replies = Vec::new();
        for &f in frames {
            match f.route {
                Route::Reply(id) => match lock(&self.replies).remove(&id) {
                    Some(slot) => replies.push((slot, f)),
                    // No stream to answer on (the request did not come on a
                    // call stream): the one-way stream still delivers it.
                    None => call.push(f),
                },
                Route::Request(_) => {
                    has_request = true;
                    call.push(f);
                }
                Route::Oneway => call.push(f),
            }
        }
        let sent = self.driver.driver().block_on(async {
            for (slot, f) in &replies {
                self.write_reply(slot, f).await?;
            }
            if !call.is_empty() {
                if has_request {
                    self.write_call(&call).await?;
                } else {
                    self.write_oneway(&call).await?;
                }
            }
            // When this thread drives the runtime, let the connection's task
            // encrypt and send the packets now, on this thread.
            tokio::task::yield_now().await;
            Ok(())
        });
        if !replies.is_empty() {
            self.driver.driver().reply_sent();
        }
        sent
    }

    fn recv(&self) -> Result<Bytes, TransportError> {
        let rt = self.driver.driver();
        let timeout = *lock(&self.recv_timeout);
        let mut state = lock(&self.recv);
        if state.frames.is_empty() && self.hub.is_empty() {
            rt.await_reply();
        }
        let next = std::future::poll_fn(|cx| state.poll_next(cx, self));
        match timeout {
            None => rt.block_on(next),
            Some(t) => rt.block_on(async { tokio::time::timeout(t, next).await }).unwrap_or_else(|_| {
                Err(TransportError::io(
                    self.context.clone(),
                    io::Error::new(io::ErrorKind::TimedOut, format!("nothing received within {t:?}")),
                ))
            }),
        }
    }

    fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    fn shutdown(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.hub.wake();
        self.linger();
        self.conn.close(VarInt::from_u32(CLOSE_CODE), b"closed");
        if !in_async_context() {
            // Send the close now if this thread can drive the runtime.
            self.driver.driver().block_on(tokio::task::yield_now());
        }
        self.driver.driver().idle_now();
    }

    fn set_recv_timeout(&self, timeout: Option<Duration>) -> Result<(), TransportError> {
        *lock(&self.recv_timeout) = timeout;
        Ok(())
    }
}

impl Drop for QuicConnection {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the thread in `recv` owns: frames read and not yet returned, the
/// streams to poll, and the futures accepting the peer's new streams.
struct RecvState {
    frames: VecDeque<Result<Bytes, TransportError>>,
    /// Cells to poll now.
    work: VecDeque<Arc<Cell>>,
    /// Streams waiting for one-way frames sent before them: `(barrier, cell)`.
    parked: Vec<(u64, Arc<Cell>)>,
    oneway_delivered: u64,
    accept_bi: Option<AcceptFuture<(SendStream, RecvStream)>>,
    accept_uni: Option<AcceptFuture<RecvStream>>,
    /// Why the connection ended, once it has; reported when all that was
    /// received before has been returned.
    terminal: Option<ConnectionError>,
    /// Memory for frames spanning several packets, reused.
    pool: BufferPool,
}

impl RecvState {
    fn poll_next(&mut self, cx: &mut Context<'_>, conn: &QuicConnection) -> Poll<Result<Bytes, TransportError>> {
        loop {
            if conn.closed.load(Ordering::SeqCst) {
                return Poll::Ready(Err(TransportError::Closed));
            }
            if let Some(frame) = self.frames.pop_front() {
                return Poll::Ready(frame);
            }
            conn.hub.take(cx, &mut self.work);
            let mut accepted = false;
            if let Some(fut) = self.accept_bi.as_mut() {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(Ok((send, recv))) => {
                        let kind = Kind::Incoming { send: Some(send), slot: None };
                        self.work.push_back(Cell::new(Reader::new(recv, kind, conn.max_frame), &conn.hub));
                        self.accept_bi = Some(accept_bi(&conn.conn));
                        accepted = true;
                    }
                    Poll::Ready(Err(e)) => {
                        self.terminal.get_or_insert(e);
                        self.accept_bi = None;
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(fut) = self.accept_uni.as_mut() {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(Ok(recv)) => {
                        self.work.push_back(Cell::new(Reader::new(recv, Kind::Oneway, conn.max_frame), &conn.hub));
                        self.accept_uni = Some(accept_uni(&conn.conn));
                        accepted = true;
                    }
                    Poll::Ready(Err(e)) => {
                        self.terminal.get_or_insert(e);
                        self.accept_uni = None;
                    }
                    Poll::Pending => {}
                }
            }
            if self.terminal.is_some() {
                // No more one-way frames will come: release what waits for them.
                self.work.extend(self.parked.drain(..).map(|(_, c)| c));
            }
            if self.work.is_empty() && !accepted {
                if !conn.hub.is_empty() {
                    continue;
                }
                if let Some(e) = &self.terminal {
                    if self.accept_bi.is_none() && self.accept_uni.is_none() {
                        return Poll::Ready(Err(conn.conn_error(e)));
                    }
                }
                return Poll::Pending;
            }
            while let Some(cell) = self.work.pop_front() {
                cell.unqueue();
                self.poll_reader(&cell, conn);
            }
        }
    }

    /// Reads what `cell`'s stream has, delivering whole frames.
    fn poll_reader(&mut self, cell: &Arc<Cell>, conn: &QuicConnection) {
        let waker = cell.waker();
        let mut cx = Context::from_waker(&waker);
        let mut guard = lock(&cell.reader);
        let reader = &mut *guard;
        if reader.poll_head(&mut cx).is_pending() {
            return;
        }
        match reader.barrier() {
            None => {
                match reader.take_end() {
                    Some(HeadEnd::Failed(e)) => self.read_failed(e),
                    _ if reader.head_got() > 0 => {
                        self.frames.push_back(Err(farcall_core::FrameError::Truncated { got: reader.head_got(), want: BARRIER_LEN }.into()))
                    }
                    // Finished without a word: a call that was dropped.
                    _ => {}
                }
                return;
            }
            Some(b) if b > self.oneway_delivered && self.terminal.is_none() => {
                self.parked.push((b, cell.clone()));
                return;
            }
            Some(_) => {}
        }
        let mut bufs: [Bytes; 32] = std::array::from_fn(|_| Bytes::new());
        loop {
            match reader.poll_chunks(&mut cx, &mut bufs) {
                Poll::Pending => return,
                Poll::Ready(Ok(Some(n))) => {
                    for chunk in &mut bufs[..n] {
                        let chunk = std::mem::take(chunk);
                        let Reader { parser, kind, .. } = &mut *reader;
                        let mut pool = std::mem::replace(&mut self.pool, BufferPool::new(0));
                        let fed = parser.feed(chunk, &mut pool, &mut |frame| self.deliver(kind, frame, conn));
                        self.pool = pool;
                        if let Err(e) = fed {
                            self.frames.push_back(Err(e.into()));
                            reader.refuse();
                            return;
                        }
                    }
                }
                Poll::Ready(Ok(None)) => {
                    if let Some(e) = reader.parser.truncated() {
                        self.frames.push_back(Err(e.into()));
                    }
                    return;
                }
                Poll::Ready(Err(e)) => {
                    self.read_failed(e);
                    return;
                }
            }
        }
    }

    fn read_failed(&mut self, e: quinn::ReadError) {
        match e {
            quinn::ReadError::ConnectionLost(c) => {
                self.terminal.get_or_insert(c);
            }
            // The peer abandoned this stream (or it was refused here): only
            // this stream ends.
            quinn::ReadError::Reset(_)
            | quinn::ReadError::ClosedStream
            | quinn::ReadError::IllegalOrderedRead
            | quinn::ReadError::ZeroRttRejected => {}
        }
    }

    fn deliver(&mut self, kind: &mut Kind, frame: Bytes, conn: &QuicConnection) {
        match kind {
            Kind::Oneway => {
                self.frames.push_back(Ok(frame));
                self.oneway_delivered += 1;
                let delivered = self.oneway_delivered;
                let RecvState { parked, work, .. } = self;
                parked.retain(|(b, cell)| {
                    let ready = *b <= delivered;
                    if ready {
                        work.push_back(cell.clone());
                    }
                    !ready
                });
            }
            Kind::Reply => self.frames.push_back(Ok(frame)),
            Kind::Incoming { send, slot } => {
                if let Some(Route::Request(id)) = peek_route(&frame) {
                    let s = slot.get_or_insert_with(|| Arc::new(ReplySlot::new(send.take()))).clone();
                    s.pending.fetch_add(1, Ordering::SeqCst);
                    lock(&conn.replies).insert(id, s);
                    conn.driver.driver().reply_expected();
                }
                self.frames.push_back(Ok(frame));
            }
        }
    }
}
