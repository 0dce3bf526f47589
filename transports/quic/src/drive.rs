//! Who runs quinn: the threads that call `send` and `recv`, whenever they can.
//!
//! quinn does its I/O in tasks (an endpoint driver reading the UDP socket, a
//! driver per connection that encrypts and sends). On a separate runtime
//! thread, every call would cost four thread hand-offs (caller → runtime to
//! send, runtime → caller when the reply is read, the same on the other
//! side), and on a virtual machine each hand-off costs about as much as the
//! network itself (DESIGN.md, performance notes).
//!
//! So each endpoint (a client connection's, a listener's) has a tokio
//! *current-thread* runtime, and the calling threads drive it themselves:
//! `block_on` from a caller takes the runtime's core when it is free, so the
//! thread waiting in `recv` sleeps in `epoll` on the UDP socket itself and
//! is woken by the kernel when the reply arrives, and a `send` encrypts and
//! transmits its packets on its own thread. While one caller drives, others
//! wait for their own streams as usual (tokio hands them the core when it
//! is released).
//!
//! A thread entering `recv` right after another received a request leaves
//! the runtime to the replying thread until its reply is sent (see
//! [`Driver::reply_expected`]).
//!
//! When no caller has been inside for [`GRACE`], a keeper thread drives
//! instead (acknowledgements, retransmissions, keep-alives, handshakes of
//! new clients), and hands the core back as soon as a caller comes in.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use farcall_core::TransportError;
use tokio::runtime::{Handle, Runtime};

use crate::lock;

/// How long the callers may leave the runtime alone before the keeper
/// drives it. Busy connections (calls back to back) keep driving it
/// themselves; when the calls stop, timers and acknowledgements wait at
/// most this long.
const GRACE: Duration = Duration::from_millis(2);

/// How long the keeper still drives after the last user is gone, so that
/// the final close reaches the peer.
const FLUSH: Duration = Duration::from_millis(50);

/// How long a thread entering `recv` leaves the runtime to a thread that is
/// about to send a reply (see [`Driver::reply_expected`]).
const HANDOFF: Duration = Duration::from_micros(300);

/// A current-thread runtime shared by the callers of one endpoint, with its
/// keeper thread.
pub(crate) struct Driver {
    rt: Runtime,
    state: Mutex<State>,
    /// Wakes the keeper thread (state changes).
    changed: Condvar,
    /// Asks the keeper to hand the runtime over.
    release: tokio::sync::Notify,
    /// Wakes the threads that wait to drive until a reply is sent.
    replied: Condvar,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Driver")
    }
}

#[derive(Debug)]
struct State {
    /// Callers inside `block_on`.
    callers: usize,
    /// When the last caller left.
    last_exit: Instant,
    /// Times a caller left (to tell calls back to back from a long wait).
    exits: u64,
    /// The keeper waits to hear that the callers are gone.
    keeper_waiting: bool,
    /// The keeper is inside `block_on`.
    keeper_driving: bool,
    /// Live [`DriverUse`]s; the keeper ends when there are none.
    users: usize,
    /// Until when a reply is expected from a thread that just received a
    /// request (see [`Driver::reply_expected`]).
    reply_due: Option<Instant>,
    /// Threads waiting in [`Driver::await_reply`].
    reply_waiters: usize,
    /// The keeper should drive as soon as no caller does (see [`Driver::idle_now`]).
    drive_now: bool,
    /// Until when the keeper leaves the runtime free for a caller about to
    /// come in (see [`Driver::expect_caller`]).
    caller_due: Option<Instant>,
}

/// A handle on a [`Driver`] that keeps its keeper alive.
#[derive(Debug)]
pub(crate) struct DriverUse {
    driver: Arc<Driver>,
}

impl Driver {
    /// A new runtime and its keeper thread.
    pub(crate) fn start() -> Result<DriverUse, TransportError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TransportError::io("starting a QUIC runtime", e))?;
        let driver = Arc::new(Driver {
            rt,
            state: Mutex::new(State {
                callers: 0,
                last_exit: Instant::now(),
                exits: 0,
                keeper_waiting: false,
                keeper_driving: false,
                users: 1,
                reply_due: None,
                reply_waiters: 0,
                drive_now: false,
                caller_due: None,
            }),
            changed: Condvar::new(),
            replied: Condvar::new(),
            release: tokio::sync::Notify::new(),
        });
        let keeper = driver.clone();
        std::thread::Builder::new()
            .name("farcall-quic".into())
            .spawn(move || keeper.keep())
            .map_err(|e| TransportError::io("starting the QUIC keeper thread", e))?;
        Ok(DriverUse { driver })
    }

    /// The keeper thread: drives the runtime while no caller does.
    fn keep(self: Arc<Self>) {
        let mut seen_exits = None;
        loop {
            {
                let mut st = lock(&self.state);
                loop {
                    if st.users == 0 {
                        drop(st);
                        return self.finish();
                    }
                    if st.callers > 0 {
                        // While callers come and go (calls back to back),
                        // check back every GRACE rather than be woken at
                        // each exit (a wake-up costs the caller several µs);
                        // while one stays inside (a thread waiting in
                        // `recv`), sleep until the last one leaves.
                        if seen_exits == Some(st.exits) {
                            st.keeper_waiting = true;
                            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                            st.keeper_waiting = false;
                            seen_exits = None;
                        } else {
                            seen_exits = Some(st.exits);
                            st = self.changed.wait_timeout(st, GRACE).unwrap_or_else(|p| p.into_inner()).0;
                        }
                        continue;
                    }
                    if let Some(due) = st.caller_due {
                        let now = Instant::now();
                        if now < due {
                            st = self.changed.wait_timeout(st, due - now).unwrap_or_else(|p| p.into_inner()).0;
                            continue;
                        }
                        st.caller_due = None;
                    }
                    let idle = st.last_exit.elapsed();
                    if idle >= GRACE || st.drive_now {
                        st.drive_now = false;
                        break;
                    }
                    st = self.changed.wait_timeout(st, GRACE - idle).unwrap_or_else(|p| p.into_inner()).0;
                }
                st.keeper_driving = true;
            }
            self.rt.block_on(async {
                loop {
                    {
                        let st = lock(&self.state);
                        if st.callers > 0 || st.users == 0 || st.caller_due.is_some() {
                            return;
                        }
                    }
                    self.release.notified().await;
                }
            });
            lock(&self.state).keeper_driving = false;
        }
    }

    /// The last user is gone: drive a little longer (the close reaches the
    /// peer), then let the runtime go on this thread.
    fn finish(self: Arc<Self>) {
        self.rt.block_on(async { tokio::time::sleep(FLUSH).await });
        // Users drop their reference right after leaving; the runtime must
        // be dropped here, not inside one of its own tasks.
        let deadline = Instant::now() + Duration::from_secs(1);
        while Arc::strong_count(&self) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Runs `f` on the calling thread, driving the runtime if it is free.
    /// Not to be called from inside an async context.
    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        {
            let mut st = lock(&self.state);
            st.callers += 1;
            st.caller_due = None;
            if st.keeper_driving {
                self.release.notify_one();
            }
        }
        struct Leave<'a>(&'a Driver);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                let mut st = lock(&self.0.state);
                st.callers -= 1;
                st.last_exit = Instant::now();
                st.exits += 1;
                let wake = st.callers == 0 && st.keeper_waiting;
                drop(st);
                if wake {
                    self.0.changed.notify_one();
                }
            }
        }
        let _leave = Leave(self);
        self.rt.block_on(f)
    }

    /// A request was just handed to a thread that will evaluate it and send
    /// the reply (a server thread, while another takes its place in `recv`).
    ///
    /// Whoever drives the runtime sleeps in `epoll`; if the thread now
    /// entering `recv` took the runtime, the reply's packets could only
    /// leave once that thread was woken to send them: one more thread
    /// wake-up on every call (on a virtual machine as costly as the network
    /// itself). So for a short while ([`HANDOFF`]), or until the reply is
    /// sent, `recv` leaves the runtime free ([`Driver::await_reply`]): the
    /// replying thread drives it and sends its packets itself, and the
    /// thread in `recv` takes over afterwards, off the call's path. A slow
    /// call only makes the next `recv` wait [`HANDOFF`], once.
    pub(crate) fn reply_expected(&self) {
        lock(&self.state).reply_due = Some(Instant::now() + HANDOFF);
    }

    /// A reply was sent (see [`Driver::reply_expected`]).
    pub(crate) fn reply_sent(&self) {
        let mut st = lock(&self.state);
        let wake = st.reply_due.take().is_some() && st.reply_waiters > 0;
        drop(st);
        if wake {
            self.replied.notify_all();
        }
    }

    /// A caller is about to come in (a new connection is being made, or was
    /// just accepted and its thread is starting): the keeper stops driving
    /// now, and for up to [`GRACE`] leaves the runtime free, so that the
    /// caller takes it at once instead of waiting for the keeper to be woken
    /// and hand it over (two thread wake-ups on the connection's set-up
    /// path). Packets arriving meanwhile wait in the socket for the caller.
    pub(crate) fn expect_caller(&self) {
        let mut st = lock(&self.state);
        if st.callers > 0 {
            return;
        }
        st.caller_due = Some(Instant::now() + GRACE);
        if st.keeper_driving {
            self.release.notify_one();
        }
    }

    /// A connection was shut down: its callers are not coming back, so the
    /// keeper drives as soon as no other caller does, rather than after
    /// [`GRACE`] (a client reconnecting at once is served without delay).
    pub(crate) fn idle_now(&self) {
        lock(&self.state).drive_now = true;
        self.changed.notify_one();
    }

    /// Before driving the runtime to wait for frames: waits while a reply
    /// is expected from another thread (see [`Driver::reply_expected`]).
    pub(crate) fn await_reply(&self) {
        let mut st = lock(&self.state);
        while let Some(due) = st.reply_due {
            let now = Instant::now();
            if now >= due {
                st.reply_due = None;
                break;
            }
            st.reply_waiters += 1;
            st = self.replied.wait_timeout(st, due - now).unwrap_or_else(|p| p.into_inner()).0;
            st.reply_waiters -= 1;
        }
    }

    pub(crate) fn handle(&self) -> &Handle {
        self.rt.handle()
    }
}

impl DriverUse {
    pub(crate) fn driver(&self) -> &Driver {
        &self.driver
    }

    /// The quinn runtime that spawns on this driver.
    pub(crate) fn quinn_runtime(&self) -> Arc<dyn quinn::Runtime> {
        Arc::new(OnHandle(self.driver.handle().clone()))
    }
}

impl Clone for DriverUse {
    fn clone(&self) -> Self {
        lock(&self.driver.state).users += 1;
        DriverUse { driver: self.driver.clone() }
    }
}

impl Drop for DriverUse {
    fn drop(&mut self) {
        let mut st = lock(&self.driver.state);
        st.users -= 1;
        if st.users == 0 {
            self.driver.changed.notify_one();
            if st.keeper_driving {
                self.driver.release.notify_one();
            }
        }
    }
}

/// quinn's tokio integration, bound to one runtime (quinn's own spawns on
/// whatever runtime is current).
#[derive(Debug)]
struct OnHandle(Handle);

impl quinn::Runtime for OnHandle {
    fn new_timer(&self, t: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        let _context = self.0.enter();
        quinn::TokioRuntime.new_timer(t)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.0.spawn(future);
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        let _context = self.0.enter();
        quinn::TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> Instant {
        quinn::TokioRuntime.now()
    }
}
