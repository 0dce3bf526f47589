//! Network impairment relays for tests and benchmarks: a poor man's netem on
//! loopback.
//!
//! The kernel's `netem` is not available on the machines farcall is tested
//! on, so a client that should see a bad network talks to a relay instead of
//! the server, and the relay forwards to the server after impairing traffic:
//!
//! - [`UdpRelay`] forwards datagrams between one client and an upstream
//!   address (QUIC), adding a one-way [`delay`](Impairment::delay) with
//!   uniform [`jitter`](Impairment::jitter), random [`loss`](Impairment::loss)
//!   and [`reordering`](Impairment::reorder), in each direction.
//! - [`TcpRelay`] forwards TCP connections (plain TCP or TLS), adding delay
//!   and jitter to each chunk of bytes while keeping their order.
//!
//! Delivery is scheduled by due time, so delay adds latency without limiting
//! throughput: many datagrams (or chunks) are in flight at once, as on a long
//! fat link. Randomness comes from a small xorshift generator seeded by
//! [`Impairment::seed`], one stream per direction, so a run with the same seed
//! and the same traffic makes the same choices.
//!
//! What this does **not** simulate: a bandwidth limit or a bottleneck queue
//! (there is no rate shaping; the only queue limit is a memory bound, beyond
//! which datagrams are dropped and counted), correlated or bursty loss,
//! duplication, corruption, MTU changes, or NAT rebinding. [`TcpRelay`] cannot
//! drop or reorder anything: it terminates TCP on both sides, so loss below
//! TCP is invisible at this level, and the TCP connections on each side see
//! a loopback round-trip time, not the simulated one: only the data is
//! delayed, so the data in flight is bounded by the relay's buffer
//! ([`DEFAULT_TCP_BUFFER_LIMIT`]) rather than by the congestion and receive
//! windows a real long path would impose. Delays are as precise as the
//! operating system's timers (typically tens of microseconds), and the relay
//! itself adds a few microseconds of processing per datagram or chunk.
//!
//! ```no_run
//! use std::time::Duration;
//! use farcall_tests::relay::{Impairment, UdpRelay};
//!
//! let server: std::net::SocketAddr = "127.0.0.1:4433".parse().unwrap();
//! // 50 ms round-trip time, 2% loss each way.
//! let relay = UdpRelay::start(server, Impairment::rtt(Duration::from_millis(50)).with_loss(0.02))
//!     .unwrap();
//! // Clients dial relay.local_addr() instead of the server.
//! println!("{}", relay.local_addr());
//! ```

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What a relay does to traffic, the same in each direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// One-way delay added to every datagram or chunk (a round trip through
    /// the relay gains twice this).
    pub delay: Duration,
    /// Uniform jitter: each datagram or chunk gets `delay ± jitter` (never
    /// less than zero). For UDP, jitter larger than the gap between
    /// datagrams reorders them, as on a real network; for TCP the order of
    /// bytes is kept (a chunk is never delivered before an earlier one).
    pub jitter: Duration,
    /// Probability (0 to 1) that a datagram is dropped, drawn independently
    /// for each datagram in each direction. Ignored by [`TcpRelay`].
    pub loss: f64,
    /// Probability (0 to 1) that a datagram is held back and sent just after
    /// the next datagram in the same direction. A held datagram that no later
    /// one overtakes within `max(delay, 10 ms)` after its due time is sent
    /// anyway (and is not counted as reordered). Ignored by [`TcpRelay`].
    pub reorder: f64,
    /// Seed of the pseudo-random choices (loss, jitter, reordering).
    pub seed: u64,
}

impl Default for Impairment {
    /// No impairment at all: no delay, no loss, seed 1.
    fn default() -> Self {
        Impairment { delay: Duration::ZERO, jitter: Duration::ZERO, loss: 0.0, reorder: 0.0, seed: 1 }
    }
}

impl Impairment {
    /// No impairment: the relay only forwards.
    pub fn none() -> Self {
        Self::default()
    }

    /// A one-way delay of `delay` in each direction, nothing else.
    pub fn delay(delay: Duration) -> Self {
        Impairment { delay, ..Self::default() }
    }

    /// A round-trip time of `rtt` added (half of it each way), nothing else.
    pub fn rtt(rtt: Duration) -> Self {
        Self::delay(rtt / 2)
    }

    /// The same with `jitter`.
    pub fn with_jitter(self, jitter: Duration) -> Self {
        Impairment { jitter, ..self }
    }

    /// The same with `loss` (0 to 1).
    pub fn with_loss(self, loss: f64) -> Self {
        Impairment { loss, ..self }
    }

    /// The same with `reorder` (0 to 1).
    pub fn with_reorder(self, reorder: f64) -> Self {
        Impairment { reorder, ..self }
    }

    /// The same with `seed`.
    pub fn with_seed(self, seed: u64) -> Self {
        Impairment { seed, ..self }
    }

    /// The largest [`delay`](Self::delay) or [`jitter`](Self::jitter) a
    /// relay accepts: one hour.
    pub const MAX_DELAY: Duration = Duration::from_secs(3600);

    /// Checks that the probabilities are within 0 to 1 and the delay and
    /// jitter at most [`MAX_DELAY`](Self::MAX_DELAY).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming the field that is out of range.
    pub fn validate(&self) -> io::Result<()> {
        for (name, d) in [("delay", self.delay), ("jitter", self.jitter)] {
            if d > Self::MAX_DELAY {
                return Err(io::Error::new(ErrorKind::InvalidInput, format!("impairment {name} must be at most one hour, not {d:?}")));
            }
        }
        for (name, p) in [("loss", self.loss), ("reorder", self.reorder)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(io::Error::new(
                    ErrorKind::InvalidInput,
                    format!("impairment {name} must be a probability between 0 and 1, not {p}"),
                ));
            }
        }
        Ok(())
    }
}

/// xorshift64* seeded through splitmix64: small, fast, reproducible.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        // splitmix64 of the seed and stream, so nearby seeds give unrelated
        // sequences and the state is never zero.
        let mut z = seed.wrapping_add(stream.wrapping_mul(0xA076_1D64_78BD_642F)).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        // Always draw, so the sequence does not depend on the settings.
        let u = self.unit();
        u < p
    }

    /// `delay ± jitter`, uniform, never negative.
    fn delay(&mut self, imp: &Impairment) -> Duration {
        let u = self.unit();
        if imp.jitter.is_zero() {
            return imp.delay;
        }
        let offset = (u * 2.0 - 1.0) * imp.jitter.as_secs_f64();
        Duration::from_secs_f64((imp.delay.as_secs_f64() + offset).max(0.0))
    }
}

/// How long a receiving thread waits for a datagram before it checks whether
/// the relay is stopping; bounds how long dropping a relay takes.
const POLL: Duration = Duration::from_millis(20);

/// The socket buffer size relays ask for (the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`).
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Asks the kernel for `bytes` of receive and send buffer on `socket`, best
/// effort: the kernel caps the request at `net.core.rmem_max` and
/// `net.core.wmem_max`, and on platforms other than Linux this does nothing.
///
/// The default buffers (about 200 KB on Linux) hold only a hundred or so
/// full-size datagrams, so a burst larger than that, sent while the reader is
/// not scheduled, is dropped by the kernel; relays call this on their own
/// sockets, and tests can call it on theirs so that the only loss is the one
/// they asked for.
pub fn enlarge_socket_buffers(socket: &UdpSocket, bytes: usize) {
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64", target_arch = "arm", target_arch = "riscv64")
    ))]
    {
        use std::os::fd::AsRawFd;
        use std::os::raw::{c_int, c_void};
        extern "C" {
            fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: u32) -> c_int;
        }
        const SOL_SOCKET: c_int = 1;
        const SO_SNDBUF: c_int = 7;
        const SO_RCVBUF: c_int = 8;
        let value = c_int::try_from(bytes).unwrap_or(c_int::MAX);
        for name in [SO_RCVBUF, SO_SNDBUF] {
            // SAFETY: the descriptor is open for as long as `socket` is
            // borrowed; the option value is a c_int that outlives the call,
            // and its size is passed. Failure is ignored (best effort).
            unsafe {
                setsockopt(socket.as_raw_fd(), SOL_SOCKET, name, (&value as *const c_int).cast(), std::mem::size_of::<c_int>() as u32);
            }
        }
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64", target_arch = "arm", target_arch = "riscv64")
    )))]
    {
        let _ = (socket, bytes);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unspecified_like(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// The address to reach a listener bound to `addr` (an unspecified address
/// becomes loopback).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => (Ipv4Addr::LOCALHOST, a.port()).into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => (Ipv6Addr::LOCALHOST, a.port()).into(),
        other => other,
    }
}

// ---------------------------------------------------------------- UDP

/// The default bound on the bytes of datagrams waiting in a [`UdpRelay`]'s
/// delay queue (both directions together): 64 MiB.
pub const DEFAULT_UDP_QUEUE_LIMIT: usize = 64 << 20;

/// Counters of one direction of a [`UdpRelay`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams the relay received in this direction.
    pub received: u64,
    /// Datagrams the relay sent on (successfully).
    pub forwarded: u64,
    /// Datagrams dropped on purpose ([`Impairment::loss`]).
    pub dropped: u64,
    /// Datagrams held back and sent after a later one
    /// ([`Impairment::reorder`]).
    pub reordered: u64,
    /// Datagrams dropped because the delay queue was full.
    pub overflowed: u64,
    /// Datagrams whose sending failed (for example the upstream port was
    /// closed).
    pub send_failed: u64,
    /// Datagrams waiting for their due time (or held back) right now.
    pub queued: u64,
}

impl DirectionStats {
    /// Whether every received datagram has been dealt with (forwarded,
    /// dropped or failed): nothing is queued.
    pub fn settled(&self) -> bool {
        self.received == self.forwarded + self.dropped + self.overflowed + self.send_failed
    }
}

/// Counters of a [`UdpRelay`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// From the client to upstream.
    pub to_upstream: DirectionStats,
    /// From upstream to the client.
    pub to_client: DirectionStats,
    /// Datagrams ignored: from an address other than the client, or from
    /// upstream before any client had sent anything.
    pub ignored: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    reordered: AtomicU64,
    overflowed: AtomicU64,
    send_failed: AtomicU64,
    queued: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        // `received` first: a datagram is counted there only after its fate
        // (queued, dropped...), so every datagram this snapshot counts as
        // received has its fate counted too.
        let received = self.received.load(Ordering::SeqCst);
        let forwarded = self.forwarded.load(Ordering::SeqCst);
        let dropped = self.dropped.load(Ordering::SeqCst);
        let reordered = self.reordered.load(Ordering::SeqCst);
        let overflowed = self.overflowed.load(Ordering::SeqCst);
        let send_failed = self.send_failed.load(Ordering::SeqCst);
        let queued = self.queued.load(Ordering::SeqCst);
        DirectionStats { received, forwarded, dropped, reordered, overflowed, send_failed, queued }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::SeqCst);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToUpstream = 0,
    ToClient = 1,
}

#[derive(Debug)]
struct Scheduled {
    due: Instant,
    seq: u64,
    dir: Dir,
    payload: Vec<u8>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest due
    /// first, and among equal due times the first scheduled.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

#[derive(Debug, Default)]
struct Queue {
    heap: BinaryHeap<Scheduled>,
    bytes: usize,
    seq: u64,
}

#[derive(Debug)]
struct UdpShared {
    stop: AtomicBool,
    queue: Mutex<Queue>,
    wake: Condvar,
    client: OnceLock<SocketAddr>,
    counters: [Counters; 2],
    ignored: AtomicU64,
    queue_limit: usize,
}

impl UdpShared {
    fn counters(&self, dir: Dir) -> &Counters {
        &self.counters[dir as usize]
    }

    /// Queues `payload` for `due`, or drops it if the queue is full.
    /// `held` says whether it is already counted as queued (it was held
    /// back for reordering). False if it was dropped.
    fn schedule(&self, dir: Dir, due: Instant, payload: Vec<u8>, held: bool) -> bool {
        let c = self.counters(dir);
        let mut q = lock(&self.queue);
        if q.bytes + payload.len() > self.queue_limit {
            drop(q);
            bump(&c.overflowed);
            if held {
                c.queued.fetch_sub(1, Ordering::SeqCst);
            }
            return false;
        }
        if !held {
            // Before the sender can see it (and count it out).
            c.queued.fetch_add(1, Ordering::SeqCst);
        }
        q.bytes += payload.len();
        q.seq += 1;
        let seq = q.seq;
        let earliest = !matches!(q.heap.peek(), Some(top) if top.due <= due);
        q.heap.push(Scheduled { due, seq, dir, payload });
        drop(q);
        if earliest {
            self.wake.notify_one();
        }
        true
    }
}

/// A datagram held back to be sent after the next one.
#[derive(Debug)]
struct Held {
    payload: Vec<u8>,
    due: Instant,
    /// When it is sent anyway if no later datagram came.
    deadline: Instant,
}

/// A UDP relay between one client and an upstream address, impairing
/// traffic in both directions (see the [module documentation](self)).
///
/// The client is the first address that sends a datagram to the relay;
/// later datagrams from that address go upstream, and datagrams from
/// upstream go to it. Datagrams from any other address are ignored (and
/// counted in [`UdpStats::ignored`]). Use one relay per client.
///
/// Dropping the relay stops it: its threads exit and its sockets close
/// before `drop` returns (within a few tens of milliseconds); datagrams still
/// queued are discarded.
#[derive(Debug)]
pub struct UdpRelay {
    local: SocketAddr,
    shared: Arc<UdpShared>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpRelay {
    /// A relay on `127.0.0.1` (an ephemeral port) in front of `upstream`.
    ///
    /// # Errors
    /// Invalid impairment ([`Impairment::validate`]) or a socket error.
    pub fn start(upstream: SocketAddr, impairment: Impairment) -> io::Result<Self> {
        Self::bind((Ipv4Addr::LOCALHOST, 0).into(), upstream, impairment)
    }

    /// A relay listening on `listen` in front of `upstream`, with the default
    /// queue limit ([`DEFAULT_UDP_QUEUE_LIMIT`]).
    ///
    /// # Errors
    /// Invalid impairment ([`Impairment::validate`]) or a socket error.
    pub fn bind(listen: SocketAddr, upstream: SocketAddr, impairment: Impairment) -> io::Result<Self> {
        Self::bind_with_queue_limit(listen, upstream, impairment, DEFAULT_UDP_QUEUE_LIMIT)
    }

    /// A relay listening on `listen` in front of `upstream` that keeps at
    /// most `queue_limit` bytes of datagrams waiting for their due time;
    /// datagrams beyond that are dropped and counted in
    /// [`DirectionStats::overflowed`].
    ///
    /// # Errors
    /// Invalid impairment ([`Impairment::validate`]) or a socket error.
    pub fn bind_with_queue_limit(listen: SocketAddr, upstream: SocketAddr, impairment: Impairment, queue_limit: usize) -> io::Result<Self> {
        impairment.validate()?;
        let front = UdpSocket::bind(listen)?;
        let back = UdpSocket::bind(unspecified_like(&upstream))?;
        back.connect(upstream)?;
        for s in [&front, &back] {
            s.set_read_timeout(Some(POLL))?;
            enlarge_socket_buffers(s, SOCKET_BUFFER_BYTES);
        }
        let local = front.local_addr()?;
        let front = Arc::new(front);
        let back = Arc::new(back);
        let shared = Arc::new(UdpShared {
            stop: AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            client: OnceLock::new(),
            counters: Default::default(),
            ignored: AtomicU64::new(0),
            queue_limit,
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| thread::Builder::new().name(format!("relay-udp-{name}")).spawn(f);
        // If a thread cannot be started, `relay` is dropped on return, which
        // stops those already running.
        let mut relay = UdpRelay { local, shared: shared.clone(), threads: Vec::new() };
        let (sh, f, b) = (shared.clone(), front.clone(), back.clone());
        relay.threads.push(spawn("send", Box::new(move || udp_sender(&sh, &f, &b)))?);
        let sh = shared.clone();
        relay.threads.push(spawn("from-client", Box::new(move || udp_receiver(&sh, &front, Dir::ToUpstream, &impairment)))?);
        relay.threads.push(spawn("from-upstream", Box::new(move || udp_receiver(&shared, &back, Dir::ToClient, &impairment)))?);
        Ok(relay)
    }

    /// The address clients should send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The client, once one has sent a datagram.
    pub fn client(&self) -> Option<SocketAddr> {
        self.shared.client.get().copied()
    }

    /// The counters so far.
    pub fn stats(&self) -> UdpStats {
        UdpStats {
            to_upstream: self.shared.counters(Dir::ToUpstream).snapshot(),
            to_client: self.shared.counters(Dir::ToClient).snapshot(),
            ignored: self.shared.ignored.load(Ordering::SeqCst),
        }
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            // Taking the lock orders the flag before the sender's next wait.
            let _q = lock(&self.shared.queue);
            self.shared.wake.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Receives datagrams on `socket` and schedules them in direction `dir`.
fn udp_receiver(shared: &UdpShared, socket: &UdpSocket, dir: Dir, imp: &Impairment) {
    let mut rng = Rng::new(imp.seed, dir as u64);
    let counters = shared.counters(dir);
    let mut buf = vec![0u8; 65_536];
    let mut held: Option<Held> = None;
    let mut timeout = POLL;
    while !shared.stop.load(Ordering::SeqCst) {
        // Wake up in time to release a held datagram.
        let wanted = match &held {
            Some(h) => h.deadline.saturating_duration_since(Instant::now()).clamp(Duration::from_micros(100), POLL),
            None => POLL,
        };
        if wanted != timeout && socket.set_read_timeout(Some(wanted)).is_ok() {
            timeout = wanted;
        }
        let received = match dir {
            Dir::ToUpstream => socket.recv_from(&mut buf),
            Dir::ToClient => socket.recv(&mut buf).map(|n| (n, SocketAddr::from(([0; 4], 0)))),
        };
        let now = Instant::now();
        if let Some(h) = held.take_if(|h| h.deadline <= now) {
            // Nothing overtook it in time: send it as it is.
            let _ = shared.schedule(dir, h.due, h.payload, true);
        }
        let n = match received {
            Ok((n, from)) => {
                let accepted = match dir {
                    Dir::ToUpstream => *shared.client.get_or_init(|| from) == from,
                    Dir::ToClient => shared.client.get().is_some(),
                };
                if !accepted {
                    bump(&shared.ignored);
                    continue;
                }
                n
            }
            // Timeouts, and errors left by ICMP (an upstream port that
            // was closed), and interruptions: keep going.
            Err(_) => continue,
        };
        let lost = rng.chance(imp.loss);
        let due = now + rng.delay(imp);
        let hold = rng.chance(imp.reorder);
        if lost {
            bump(&counters.dropped);
        } else if let Some(h) = held.take() {
            // This one overtakes the held one, which follows right after
            // (same or later due time, later sequence number).
            let after = h.due.max(due);
            if shared.schedule(dir, due, buf[..n].to_vec(), false) {
                bump(&counters.reordered);
            }
            let _ = shared.schedule(dir, after, h.payload, true);
        } else if hold {
            counters.queued.fetch_add(1, Ordering::SeqCst);
            held = Some(Held { payload: buf[..n].to_vec(), due, deadline: due + imp.delay.max(Duration::from_millis(10)) });
        } else {
            let _ = shared.schedule(dir, due, buf[..n].to_vec(), false);
        }
        // Counted last (and read first by `stats`), so that a snapshot
        // never shows a datagram received without its fate.
        bump(&counters.received);
    }
}

/// Sends queued datagrams when they are due.
fn udp_sender(shared: &UdpShared, front: &UdpSocket, back: &UdpSocket) {
    let mut batch: Vec<Scheduled> = Vec::new();
    loop {
        {
            let mut q = lock(&shared.queue);
            let now = loop {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let now = Instant::now();
                match q.heap.peek() {
                    None => q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
                    Some(top) if top.due <= now => break now,
                    Some(top) => {
                        let wait = top.due - now;
                        q = shared.wake.wait_timeout(q, wait).unwrap_or_else(|e| e.into_inner()).0;
                    }
                }
            };
            while q.heap.peek().is_some_and(|top| top.due <= now) {
                let item = q.heap.pop().expect("peeked");
                q.bytes -= item.payload.len();
                batch.push(item);
            }
        }
        for item in batch.drain(..) {
            let c = shared.counters(item.dir);
            // Counted first, so that whoever receives the datagram sees it
            // counted.
            bump(&c.forwarded);
            c.queued.fetch_sub(1, Ordering::SeqCst);
            let sent = match item.dir {
                Dir::ToUpstream => back.send(&item.payload),
                Dir::ToClient => match shared.client.get() {
                    Some(client) => front.send_to(&item.payload, client),
                    None => Err(ErrorKind::NotConnected.into()),
                },
            };
            if sent.is_err() {
                bump(&c.send_failed);
                c.forwarded.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

// ---------------------------------------------------------------- TCP

/// The default bound on the bytes a [`TcpRelay`] holds in each direction of
/// each connection: 16 MiB. When it is reached the relay stops reading
/// until some are delivered, so TCP's flow control slows the sender.
pub const DEFAULT_TCP_BUFFER_LIMIT: usize = 16 << 20;

/// Counters of a [`TcpRelay`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Connections accepted from clients.
    pub accepted: u64,
    /// Accepted connections closed at once because upstream could not be
    /// reached.
    pub upstream_failed: u64,
    /// Bytes delivered to upstream.
    pub bytes_to_upstream: u64,
    /// Bytes delivered to clients.
    pub bytes_to_client: u64,
}

#[derive(Debug, Default)]
struct TcpCounters {
    accepted: AtomicU64,
    upstream_failed: AtomicU64,
    bytes_to_upstream: AtomicU64,
    bytes_to_client: AtomicU64,
}

#[derive(Debug)]
enum Chunk {
    Data(Instant, Vec<u8>),
    Eof(Instant),
}

#[derive(Debug, Default)]
struct PipeState {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    closed: bool,
}

/// A byte-bounded queue of delayed chunks between a reading and a writing
/// thread.
#[derive(Debug)]
struct Pipe {
    state: Mutex<PipeState>,
    cond: Condvar,
    limit: usize,
}

impl Pipe {
    fn new(limit: usize) -> Self {
        Pipe { state: Mutex::new(PipeState::default()), cond: Condvar::new(), limit }
    }

    /// Queues `chunk`, waiting while the pipe is full; false if it closed.
    fn push(&self, chunk: Chunk) -> bool {
        let mut s = lock(&self.state);
        while !s.closed && s.bytes >= self.limit {
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.closed {
            return false;
        }
        if let Chunk::Data(_, d) = &chunk {
            s.bytes += d.len();
        }
        s.chunks.push_back(chunk);
        drop(s);
        self.cond.notify_all();
        true
    }

    /// The next chunk, waiting while the pipe is empty; `None` once closed.
    fn pop(&self) -> Option<Chunk> {
        let mut s = lock(&self.state);
        loop {
            if s.closed {
                return None;
            }
            if let Some(chunk) = s.chunks.pop_front() {
                if let Chunk::Data(_, d) = &chunk {
                    s.bytes -= d.len();
                }
                drop(s);
                self.cond.notify_all();
                return Some(chunk);
            }
            s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits until `due`; false if the pipe closed meanwhile.
    fn wait_until(&self, due: Instant) -> bool {
        let mut s = lock(&self.state);
        loop {
            if s.closed {
                return false;
            }
            let now = Instant::now();
            if now >= due {
                return true;
            }
            s = self.cond.wait_timeout(s, due - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.cond.notify_all();
    }
}

/// The two sockets and two pipes of one relayed connection.
#[derive(Debug)]
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    pipes: [Arc<Pipe>; 2],
}

impl Conn {
    /// Tears the whole connection down (an error on either side, or the
    /// relay stopping).
    fn abort(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
        for p in &self.pipes {
            p.close();
        }
    }
}

#[derive(Debug)]
struct ConnHandle {
    conn: Arc<Conn>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct TcpShared {
    stop: AtomicBool,
    conns: Mutex<Vec<ConnHandle>>,
    counters: TcpCounters,
}

/// A TCP relay: each accepted connection is forwarded to the upstream
/// address, every chunk of bytes delayed by [`Impairment::delay`] ±
/// [`Impairment::jitter`] in each direction, in order (see the [module
/// documentation](self) for what this does not simulate). Loss and
/// reordering settings are ignored.
///
/// End of stream is forwarded (delayed like data) in each direction
/// separately; an error on either side closes both.
///
/// Dropping the relay stops it: it stops accepting, closes every relayed
/// connection, and its threads exit before `drop` returns.
#[derive(Debug)]
pub struct TcpRelay {
    local: SocketAddr,
    shared: Arc<TcpShared>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpRelay {
    /// A relay on `127.0.0.1` (an ephemeral port) in front of `upstream`.
    ///
    /// # Errors
    /// Invalid impairment ([`Impairment::validate`]) or a socket error.
    pub fn start(upstream: SocketAddr, impairment: Impairment) -> io::Result<Self> {
        Self::bind((Ipv4Addr::LOCALHOST, 0).into(), upstream, impairment)
    }

    /// A relay listening on `listen` in front of `upstream`, holding at most
    /// [`DEFAULT_TCP_BUFFER_LIMIT`] bytes per direction per connection.
    ///
    /// # Errors
    /// Invalid impairment ([`Impairment::validate`]) or a socket error.
    pub fn bind(listen: SocketAddr, upstream: SocketAddr, impairment: Impairment) -> io::Result<Self> {
        Self::bind_with_buffer_limit(listen, upstream, impairment, DEFAULT_TCP_BUFFER_LIMIT)
    }

    /// A relay listening on `listen` in front of `upstream`, holding at most
    /// about `buffer_limit` bytes per direction per connection (it stops
    /// reading when that many are waiting for their due time).
    ///
    /// # Errors
    /// Invalid impairment ([`Impairment::validate`]) or a socket error.
    pub fn bind_with_buffer_limit(
        listen: SocketAddr,
        upstream: SocketAddr,
        impairment: Impairment,
        buffer_limit: usize,
    ) -> io::Result<Self> {
        impairment.validate()?;
        let listener = TcpListener::bind(listen)?;
        let local = listener.local_addr()?;
        let shared = Arc::new(TcpShared { stop: AtomicBool::new(false), conns: Mutex::new(Vec::new()), counters: TcpCounters::default() });
        let sh = shared.clone();
        let acceptor = thread::Builder::new()
            .name("relay-tcp-accept".into())
            .spawn(move || tcp_acceptor(&sh, &listener, upstream, &impairment, buffer_limit))?;
        Ok(TcpRelay { local, shared, acceptor: Some(acceptor) })
    }

    /// The address clients should connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The counters so far.
    pub fn stats(&self) -> TcpStats {
        let c = &self.shared.counters;
        TcpStats {
            accepted: c.accepted.load(Ordering::SeqCst),
            upstream_failed: c.upstream_failed.load(Ordering::SeqCst),
            bytes_to_upstream: c.bytes_to_upstream.load(Ordering::SeqCst),
            bytes_to_client: c.bytes_to_client.load(Ordering::SeqCst),
        }
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor with a connection of our own; it sees the flag.
        let _ = TcpStream::connect_timeout(&reachable(self.local), Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for c in &conns {
            c.conn.abort();
        }
        for c in conns {
            for t in c.threads {
                let _ = t.join();
            }
        }
    }
}

fn tcp_acceptor(shared: &Arc<TcpShared>, listener: &TcpListener, upstream: SocketAddr, imp: &Impairment, buffer_limit: usize) {
    let mut index = 0u64;
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        bump(&shared.counters.accepted);
        let Ok(upstream) = TcpStream::connect_timeout(&upstream, Duration::from_secs(10)) else {
            bump(&shared.counters.upstream_failed);
            continue;
        };
        index += 1;
        if let Err(e) = start_conn(shared, client, upstream, imp, buffer_limit, index) {
            eprintln!("farcall relay: cannot relay a connection: {e}");
        }
    }
}

fn start_conn(
    shared: &Arc<TcpShared>,
    client: TcpStream,
    upstream: TcpStream,
    imp: &Impairment,
    buffer_limit: usize,
    index: u64,
) -> io::Result<()> {
    for s in [&client, &upstream] {
        s.set_nodelay(true)?;
    }
    let conn = Arc::new(Conn {
        client: client.try_clone()?,
        upstream: upstream.try_clone()?,
        pipes: [Arc::new(Pipe::new(buffer_limit)), Arc::new(Pipe::new(buffer_limit))],
    });
    let mut conns = lock(&shared.conns);
    conns.retain(|c| !c.threads.iter().all(JoinHandle::is_finished));
    if shared.stop.load(Ordering::SeqCst) {
        conn.abort();
        return Ok(());
    }
    let mut handle = ConnHandle { conn: conn.clone(), threads: Vec::new() };
    let result = spawn_directions(shared, &conn, client, upstream, imp, index, &mut handle);
    if result.is_err() {
        conn.abort();
    }
    conns.push(handle);
    result
}

/// Starts the reading and writing threads of both directions.
fn spawn_directions(
    shared: &Arc<TcpShared>,
    conn: &Arc<Conn>,
    client: TcpStream,
    upstream: TcpStream,
    imp: &Impairment,
    index: u64,
    handle: &mut ConnHandle,
) -> io::Result<()> {
    let directions = [(Dir::ToUpstream, client, upstream.try_clone()?), (Dir::ToClient, upstream, conn.client.try_clone()?)];
    for (dir, src, dst) in directions {
        let name = match dir {
            Dir::ToUpstream => "to-upstream",
            Dir::ToClient => "to-client",
        };
        let (c, pipe) = (conn.clone(), conn.pipes[dir as usize].clone());
        let mut rng = Rng::new(imp.seed, (index << 1) | dir as u64);
        let imp = *imp;
        handle
            .threads
            .push(thread::Builder::new().name(format!("relay-tcp-read-{name}")).spawn(move || tcp_read(&c, src, &pipe, &mut rng, &imp))?);
        let (c, pipe, sh) = (conn.clone(), conn.pipes[dir as usize].clone(), shared.clone());
        handle.threads.push(thread::Builder::new().name(format!("relay-tcp-write-{name}")).spawn(move || {
            let delivered = match dir {
                Dir::ToUpstream => &sh.counters.bytes_to_upstream,
                Dir::ToClient => &sh.counters.bytes_to_client,
            };
            tcp_write(&c, dst, &pipe, delivered)
        })?);
    }
    Ok(())
}

/// Reads chunks from `src`, stamps them with their due time (never earlier
/// than the previous chunk's), and queues them.
fn tcp_read(conn: &Conn, mut src: TcpStream, pipe: &Pipe, rng: &mut Rng, imp: &Impairment) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_due = Instant::now();
    loop {
        let read = src.read(&mut buf);
        let due = (Instant::now() + rng.delay(imp)).max(last_due);
        last_due = due;
        match read {
            Ok(0) => {
                pipe.push(Chunk::Eof(due));
                return;
            }
            Ok(n) => {
                if !pipe.push(Chunk::Data(due, buf[..n].to_vec())) {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                conn.abort();
                return;
            }
        }
    }
}

/// Writes queued chunks to `dst` when they are due.
fn tcp_write(conn: &Conn, mut dst: TcpStream, pipe: &Pipe, delivered: &AtomicU64) {
    while let Some(chunk) = pipe.pop() {
        let (Chunk::Data(due, _) | Chunk::Eof(due)) = chunk;
        if !pipe.wait_until(due) {
            return;
        }
        match chunk {
            Chunk::Data(_, data) => {
                // Counted first, so that whoever reads the bytes sees them
                // counted.
                delivered.fetch_add(data.len() as u64, Ordering::SeqCst);
                if dst.write_all(&data).is_err() {
                    delivered.fetch_sub(data.len() as u64, Ordering::SeqCst);
                    conn.abort();
                    return;
                }
            }
            Chunk::Eof(_) => {
                let _ = dst.shutdown(Shutdown::Write);
                return;
            }
        }
    }
}
