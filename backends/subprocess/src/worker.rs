//! One worker process: starting it, talking to it, and noticing how it ended.
//!
//! Calls are matched to replies by request id. The threads waiting for
//! replies take turns at reading the worker's output (leader/followers): the
//! one reading delivers what it reads to its owner and, when its own reply
//! arrives, hands the reading role over. With one call in flight, the caller
//! reads its own reply: no thread hand-off on the way back.
//!
//! The worker also sends requests of its own (callbacks: user code calling
//! an object of the client) and releases of the client's objects. The
//! thread that reads a callback gives up the reading role, forwards the
//! request with [`Callbacks::request`] (blocking; meanwhile other threads,
//! and calls nested in the callback on this very thread, read), writes the
//! reply down and goes back to waiting for its own reply. Releases are
//! handed to [`Callbacks::release`] by the thread that reads them.
//!
//! Every worker has two small threads of its own: one waits for the process
//! to end (then reaps it and fails the calls still waiting), the other
//! forwards its standard error to the log and keeps the last lines for the
//! error that reports its death. Once a session passes an object of the
//! client to its worker, a third, the idle reader, reads whatever the worker
//! sends while no call waits for a reply (a callback made between calls by a
//! thread of the worker); it only waits for output without the reading role,
//! so callers still read their own replies.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use farcall_core::codec::{self, Frame, Route};
use farcall_core::framing;
use farcall_core::{Callbacks, Message, NoCallbacks, Release, RemoteException, Request, RequestId, Value};

use crate::sys::{self, Exit, Wait, WakePipe};
use crate::{SEMANTICS_PY, WORKER_PROTOCOL, WORKER_PY};

/// The exit status the worker uses when it ran out of memory (`EXIT_OUT_OF_MEMORY` in `farcall_worker.py`).
const EXIT_OUT_OF_MEMORY: i32 = 71;

/// The program given to `python -c`: refuses Pythons older than 3.9 with a
/// clear message (in syntax old Pythons can parse), then reads the two
/// modules' sources from stdin and runs the worker.
pub(crate) const BOOTSTRAP: &str = r#"import sys
if sys.version_info < (3, 9):
    sys.stderr.write("farcall: this is Python %s; the subprocess backend needs Python 3.9 or newer\n" % sys.version.split()[0])
    sys.stderr.flush()
    sys.exit(78)
def _farcall_boot():
    import os, linecache, types
    def read(n):
        parts = []
        while n:
            chunk = os.read(0, n)
            if not chunk:
                os._exit(0)
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)
    for name in ("farcall_semantics", "farcall_worker"):
        source = read(int.from_bytes(read(4), "big")).decode("utf-8")
        filename = "<%s>" % name
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        module = types.ModuleType(name)
        sys.modules[name] = module
        exec(compile(source, filename, "exec"), module.__dict__)
    return sys.modules["farcall_worker"]
_farcall_worker = _farcall_boot()
del _farcall_boot
_farcall_worker.main()
"#;

/// Start-up failures whose exit status says more.
const ENDED: &str = "ended without answering";
const STOPPED: &str = "stopped before reading farcall's worker code";

/// Pipe buffers asked for, so that large messages need fewer wake-ups.
const PIPE_BYTES: usize = 1 << 20;

/// How long a worker whose pipes broke gets to end by itself before it is
/// killed (its pipes close just before it ends; killing it at once could
/// hide how it really ended).
const KILL_AFTER: Duration = Duration::from_millis(500);

/// How long a worker that broke its pipes gets to be reaped before its
/// death is reported without a status.
const BROKEN_GRACE: Duration = Duration::from_secs(10);

/// How long the death report waits for the last lines of standard error.
const STDERR_GRACE: Duration = Duration::from_millis(300);

/// How long the death report waits for the last frames of an ended worker.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Bytes of standard error kept for the death report.
const STDERR_TAIL: usize = 8192;

/// Lines of standard error shown in the death report.
const STDERR_LINES: usize = 20;

/// Stack of the two threads each worker has.
const THREAD_STACK: usize = 128 << 10;

/// How a worker is started.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The interpreter.
    pub python: String,
    /// Address-space limit in MiB, 0 for none.
    pub max_memory_mb: u64,
    /// Longest a call may take.
    pub call_timeout: Option<Duration>,
    /// Longest a worker may take to say hello.
    pub start_timeout: Duration,
}

/// The settings frame sent to a new worker.
#[derive(serde::Serialize)]
struct Settings {
    max_memory_mb: u64,
}

/// The worker's hello.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct Hello {
    /// The worker protocol's version.
    pub farcall_worker: u32,
    /// `3.11.7`.
    pub python_version: String,
    /// `sys.prefix`.
    pub prefix: String,
    /// `sys.executable`.
    pub executable: String,
    /// The worker's process id.
    pub pid: u32,
}

/// Why farcall killed a worker.
#[derive(Debug, Clone)]
enum KillReason {
    /// A call exceeded `call_timeout`.
    Timeout(Duration),
    /// It sent something that is not a message.
    Malformed(String),
    /// Its session was closed.
    Closed,
    /// It closed a pipe (or failed at start-up) but had not ended.
    BrokenPipe,
}

/// What the worker said before ending itself.
#[derive(Debug, Clone, serde::Deserialize)]
struct Notice {
    _kind: u8,
    reason: String,
    detail: String,
}

/// A message from the worker.
enum Incoming {
    Reply(u64, Result<Value, RemoteException>),
    /// A callback: a request of the worker to the client.
    Request(u64, Request),
    /// The worker gives back references to client objects.
    Release(Vec<Release>),
    Notice(Notice),
}

/// Why reading from or writing to the worker failed.
enum PipeError {
    /// The caller's deadline passed.
    TimedOut,
    /// The worker is gone (or going).
    Broken,
    /// The worker sent something that is not a message.
    Malformed(String),
}

/// The call state shared by the threads of a session.
#[derive(Default)]
struct State {
    next_id: u64,
    /// A thread holds the reading role.
    reading: bool,
    /// Threads waiting for a reply that can take the reading role (not
    /// busy forwarding a callback): the idle reader reads only when none can.
    able: usize,
    /// Calls in flight, and their replies once read.
    pending: HashMap<u64, Option<Result<Value, RemoteException>>>,
    /// The client's request id → the worker's, for calls in flight that
    /// the client may cancel.
    by_client: HashMap<RequestId, u64>,
    kill_reason: Option<KillReason>,
    notice: Option<Notice>,
    /// When a thread found the pipes broken or decided to kill the worker.
    broken: Option<Instant>,
    /// The worker was sent SIGKILL.
    killed: bool,
    /// How the worker ended, once it has.
    dead: Option<RemoteException>,
}

/// Standard error of the worker: the last bytes, and whether it ended.
#[derive(Default)]
struct Stderr {
    tail: VecDeque<u8>,
    done: bool,
}

/// Everything about one worker that its threads share.
struct Shared {
    pid: libc::pid_t,
    config: Arc<Config>,
    hello: Mutex<Option<Hello>>,
    /// The session it serves (0 while in the pool), for the logs.
    session: AtomicU64,
    /// The session's way to the client, once it serves one.
    callbacks: OnceLock<Arc<dyn Callbacks>>,
    /// The idle reader runs (see [`Shared::idle_reader`]).
    idle_reader: AtomicBool,
    input: Mutex<ChildStdin>,
    output: Mutex<Output>,
    state: Mutex<State>,
    state_changed: Condvar,
    /// Signalled once the worker is dead: wakes threads blocked on its pipes.
    wake: WakePipe,
    /// `Some` once reaped.
    process: Mutex<Option<Exit>>,
    reaped: Condvar,
    stderr: Mutex<Stderr>,
    stderr_done: Condvar,
}

struct Output {
    stdout: ChildStdout,
    frames: PipeFrames,
}

/// Bytes read at a time from the worker's output (frames are read ahead).
const READ_AHEAD: usize = 64 << 10;

/// Frames read from the worker's output, with read-ahead, and a way to tell
/// whether a whole frame is already buffered (the idle reader must not
/// sleep on the pipe while one is).
#[derive(Default)]
struct PipeFrames {
    buf: BytesMut,
}

impl PipeFrames {
    /// The length of the frame at the front of the buffer, once known.
    fn next_len(&self) -> Option<usize> {
        (self.buf.len() >= 4).then(|| u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize)
    }

    /// Whether a whole frame is buffered.
    fn has_frame(&self) -> bool {
        self.next_len().is_some_and(|len| self.buf.len() >= 4 + len)
    }

    /// The next frame's body. A stream that ends is `UnexpectedEof`.
    fn read(&mut self, r: &mut impl Read) -> io::Result<Bytes> {
        loop {
            let want = match self.next_len() {
                Some(len) if self.buf.len() >= 4 + len => {
                    self.buf.advance(4);
                    return Ok(self.buf.split_to(len).freeze());
                }
                Some(len) if 4 + len > PIPE_BYTES => {
                    // A large frame gets a buffer of its own, read exactly.
                    let mut body = BytesMut::from(&self.buf[4..]);
                    self.buf.clear();
                    let mut got = body.len();
                    body.resize(len, 0);
                    while got < len {
                        got += read_some(r, &mut body[got..])?;
                    }
                    return Ok(body.freeze());
                }
                Some(len) => (4 + len - self.buf.len()).max(READ_AHEAD),
                None => READ_AHEAD,
            };
            self.buf.reserve(want);
            let spare = &mut self.buf.spare_capacity_mut()[..want];
            // SAFETY: the readers used here (`read(2)` on the pipe) only
            // write into the slice and report how much they wrote; only
            // those bytes are exposed below.
            let slice = unsafe { &mut *(spare as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
            let n = read_some(r, slice)?;
            // SAFETY: `n` bytes were just initialised by the read.
            unsafe { self.buf.set_len(self.buf.len() + n) };
        }
    }
}

/// One `read` of at least one byte; the stream ending is `UnexpectedEof`.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A worker process, killed and reaped when dropped.
pub(crate) struct Worker {
    shared: Arc<Shared>,
    hello: Hello,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("pid", &self.shared.pid).field("alive", &self.is_alive()).finish()
    }
}

impl Worker {
    /// Starts a worker and waits for its hello. The error says what went
    /// wrong, for a sentence starting with the interpreter's name.
    pub(crate) fn spawn(config: &Arc<Config>) -> Result<Worker, String> {
        let mut cmd = Command::new(&config.python);
        cmd.arg("-c")
            .arg(BOOTSTRAP)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C does not reach it,
            // and killing the group also kills what it started.
            .process_group(0);
        if config.max_memory_mb > 0 {
            // glibc reserves 64 MiB of address space per thread arena; under
            // an address-space limit that starves a threaded worker.
            if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
                cmd.env("MALLOC_ARENA_MAX", "2");
            }
            let bytes = config.max_memory_mb.saturating_mul(1 << 20);
            // SAFETY: the closure only calls setrlimit, which is
            // async-signal-safe, and allocates nothing.
            unsafe {
                cmd.pre_exec(move || sys::limit_address_space(bytes));
            }
        }
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => "was not found (no such file, or not on PATH)".to_owned(),
            io::ErrorKind::PermissionDenied => "cannot be run (permission denied: not an executable file)".to_owned(),
            _ => format!("could not be started: {e}"),
        })?;
        let pid = child.id() as libc::pid_t;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take()) else {
            unreachable!("all three pipes were asked for");
        };
        // The `Child` is dropped without waiting: the monitor thread reaps.
        drop(child);
        for fd in [stdin.as_raw_fd(), stdout.as_raw_fd()] {
            sys::grow_pipe(fd, PIPE_BYTES);
        }
        let setup =
            sys::set_nonblocking(stdin.as_raw_fd()).and_then(|()| sys::set_nonblocking(stdout.as_raw_fd())).and_then(|()| WakePipe::new());
        let wake = match setup {
            Ok(w) => w,
            Err(e) => {
                sys::kill_group(pid);
                // Reap it here: there is no monitor yet.
                let _ = sys::wait_exit(pid);
                sys::reap(pid);
                return Err(format!("could not be set up: {e}"));
            }
        };
        let shared = Arc::new(Shared {
            pid,
            config: Arc::clone(config),
            hello: Mutex::new(None),
            session: AtomicU64::new(0),
            callbacks: OnceLock::new(),
            idle_reader: AtomicBool::new(false),
            input: Mutex::new(stdin),
            output: Mutex::new(Output { stdout, frames: PipeFrames::default() }),
            state: Mutex::new(State::default()),
            state_changed: Condvar::new(),
            wake,
            process: Mutex::new(None),
            reaped: Condvar::new(),
            stderr: Mutex::new(Stderr::default()),
            stderr_done: Condvar::new(),
        });
        let threads = {
            let s = Arc::clone(&shared);
            let m = std::thread::Builder::new().name(format!("farcall-wait-{pid}")).stack_size(THREAD_STACK).spawn(move || s.monitor());
            let s = Arc::clone(&shared);
            let e = std::thread::Builder::new()
                .name(format!("farcall-stderr-{pid}"))
                .stack_size(THREAD_STACK)
                .spawn(move || s.forward_stderr(stderr));
            m.and(e)
        };
        if let Err(e) = threads {
            // If the monitor did start, it reaps; otherwise the zombie stays
            // until this process exits. Either way the worker is killed.
            sys::kill_group(pid);
            return Err(format!("could not be watched (no thread for it: {e})"));
        }
        let worker_shared = Arc::clone(&shared);
        match shared.start(config.start_timeout) {
            Ok(hello) => {
                *lock(&shared.hello) = Some(hello.clone());
                tracing::debug!(pid, python_pid = hello.pid, python = %config.python, version = %hello.python_version, "worker started");
                Ok(Worker { shared: worker_shared, hello })
            }
            Err(why) => {
                // Dropping kills and reaps it.
                let failed = Worker { shared: worker_shared, hello: Hello::unknown() };
                let error = failed.shared.startup_failure(&why);
                drop(failed);
                Err(error)
            }
        }
    }

    /// The worker's hello.
    pub(crate) fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The worker's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.shared.pid as u32
    }

    /// Whether the worker is still serving (not dead, not being killed).
    pub(crate) fn is_alive(&self) -> bool {
        let st = self.shared.state();
        st.dead.is_none() && st.broken.is_none()
    }

    /// Names the session the worker serves (for the logs) and gives it the
    /// session's way to the client (once; a worker serves one session).
    pub(crate) fn set_session(&self, id: u64, callbacks: Arc<dyn Callbacks>) {
        self.shared.session.store(id, Ordering::Relaxed);
        if self.shared.callbacks.set(callbacks).is_err() {
            tracing::error!(
                pid = self.shared.pid,
                session = id,
                "a worker was given a second session; its callbacks stay those of the first"
            );
        }
    }

    /// Performs one request; blocks until its reply, the worker's death or
    /// the call timeout.
    pub(crate) fn evaluate(&self, client_id: Option<RequestId>, request: Request) -> Result<Value, RemoteException> {
        if !self.shared.idle_reader.load(Ordering::Relaxed) && holds_client_object(&request) {
            self.start_idle_reader();
        }
        self.shared.evaluate(client_id, request)
    }

    /// Asks the worker to stop the call performing the client's request
    /// `client_id` (it raises `TimeoutError` in that call's Python code).
    pub(crate) fn cancel(&self, client_id: RequestId) {
        self.shared.cancel(client_id);
    }

    /// Starts the idle reader (once): the session's worker now holds objects
    /// of the client, which its threads may call at any time.
    fn start_idle_reader(&self) {
        if self.shared.idle_reader.swap(true, Ordering::SeqCst) {
            return;
        }
        let s = Arc::clone(&self.shared);
        let started = std::thread::Builder::new()
            .name(format!("farcall-idle-{}", self.shared.pid))
            .stack_size(THREAD_STACK)
            .spawn(move || s.idle_reader());
        if let Err(e) = started {
            tracing::warn!(pid = self.shared.pid, "no thread to read callbacks made between calls ({e}); they wait for the next call");
        }
    }

    /// Forwards releases (in order before any later request).
    pub(crate) fn release(&self, refs: &[Release]) {
        self.shared.release(refs)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let s = &self.shared;
        {
            let mut st = s.state();
            st.kill_reason.get_or_insert(KillReason::Closed);
        }
        let mut process = lock(&s.process);
        if process.is_none() {
            sys::kill_group(s.pid);
        }
        let deadline = Instant::now() + BROKEN_GRACE;
        while process.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(pid = s.pid, "a killed worker was not reaped within {} s", BROKEN_GRACE.as_secs());
                break;
            }
            process = s.reaped.wait_timeout(process, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

impl Hello {
    fn unknown() -> Self {
        Hello { farcall_worker: 0, python_version: String::new(), prefix: String::new(), executable: String::new(), pid: 0 }
    }
}

/// Reads from a non-blocking pipe, waiting with `poll` (deadline, wake-up).
struct PollRead {
    fd: RawFd,
    wake: RawFd,
    deadline: Option<Instant>,
}

impl Read for PollRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match sys::wait_ready(self.fd, libc::POLLIN, self.wake, self.deadline)? {
                Wait::Ready => {}
                Wait::Woken => return Err(io::ErrorKind::BrokenPipe.into()),
                Wait::TimedOut => return Err(io::ErrorKind::TimedOut.into()),
            }
            if let Some(n) = sys::read(self.fd, buf)? {
                return Ok(n);
            }
        }
    }
}

/// Writes to a non-blocking pipe, waiting with `poll` when it is full.
struct PollWrite {
    fd: RawFd,
    wake: RawFd,
    deadline: Option<Instant>,
}

impl PollWrite {
    fn wait(&self) -> io::Result<()> {
        match sys::wait_ready(self.fd, libc::POLLOUT, self.wake, self.deadline)? {
            Wait::Ready => Ok(()),
            Wait::Woken => Err(io::ErrorKind::BrokenPipe.into()),
            Wait::TimedOut => Err(io::ErrorKind::TimedOut.into()),
        }
    }
}

impl Write for PollWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        loop {
            if let Some(n) = sys::writev(self.fd, bufs)? {
                return Ok(n);
            }
            self.wait()?;
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn pipe_error(e: &io::Error) -> PipeError {
    if e.kind() == io::ErrorKind::TimedOut {
        PipeError::TimedOut
    } else {
        PipeError::Broken
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    // ------------------------------------------------------------ start-up

    /// Sends the sources and settings, then reads the hello.
    fn start(&self, timeout: Duration) -> Result<Hello, String> {
        let deadline = Some(Instant::now() + timeout);
        let settings = rmp_serde::to_vec_named(&Settings { max_memory_mb: self.config.max_memory_mb }).expect("settings encode");
        let mut stopped = false;
        for body in [Bytes::from_static(SEMANTICS_PY.as_bytes()), Bytes::from_static(WORKER_PY.as_bytes()), settings.into()] {
            match self.write(&Frame::from_bytes(Route::Oneway, body), deadline) {
                Ok(()) => {}
                Err(PipeError::TimedOut) => return Err(format!("did not read its input within {} s", timeout.as_secs_f64())),
                Err(_) => {
                    // What it wrote before it stopped reading may say why.
                    stopped = true;
                    break;
                }
            }
        }
        let body = self.read_hello(deadline, timeout).map_err(|e| if stopped && e == ENDED { STOPPED.to_owned() } else { e })?;
        let hello: Hello = rmp_serde::from_slice(&body).map_err(|_| {
            format!("did not answer like a farcall worker (it wrote {:?})", String::from_utf8_lossy(&body[..body.len().min(80)]))
        })?;
        if hello.farcall_worker != WORKER_PROTOCOL {
            return Err(format!("runs worker protocol {} where this server speaks {}", hello.farcall_worker, WORKER_PROTOCOL));
        }
        if !version_at_least(&hello.python_version, 3, 9) {
            return Err(format!("is Python {}; the subprocess backend needs Python 3.9 or newer", hello.python_version));
        }
        Ok(hello)
    }

    /// Reads the hello frame exactly (nothing after it), keeping what a
    /// program that is not the worker wrote for the error message.
    fn read_hello(&self, deadline: Option<Instant>, timeout: Duration) -> Result<Vec<u8>, String> {
        let out = lock(&self.output);
        let mut r = PollRead { fd: out.stdout.as_raw_fd(), wake: self.wake.fd(), deadline };
        let mut got = Vec::new();
        let mut want = 4;
        loop {
            while got.len() < want {
                let mut buf = vec![0u8; want - got.len()];
                match r.read(&mut buf) {
                    Ok(0) if got.is_empty() => return Err(ENDED.into()),
                    Ok(0) => {
                        return Err(format!(
                            "did not answer like a farcall worker (it wrote {:?})",
                            String::from_utf8_lossy(&got[..got.len().min(80)])
                        ))
                    }
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        return Err(format!("did not answer within {} s", timeout.as_secs_f64()))
                    }
                    Err(_) => return Err(ENDED.into()),
                }
            }
            if want > 4 {
                drop(out);
                return Ok(got.split_off(4));
            }
            let len = u32::from_be_bytes([got[0], got[1], got[2], got[3]]) as usize;
            if len > 1 << 16 {
                // Not a hello: show a little more of what it wrote.
                r.deadline = Some(Instant::now() + Duration::from_millis(200));
                let mut more = [0u8; 76];
                let mut n = 0;
                while n < more.len() {
                    match r.read(&mut more[n..]) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                got.extend_from_slice(&more[..n]);
                return Err(format!("did not answer like a farcall worker (it wrote {:?})", String::from_utf8_lossy(&got)));
            }
            want = 4 + len;
        }
    }

    /// The message for a worker that failed to start: why, then how it ended
    /// and what it printed.
    fn startup_failure(&self, why: &str) -> String {
        let ended = why == ENDED || why == STOPPED;
        {
            let mut st = self.state();
            st.kill_reason.get_or_insert(KillReason::BrokenPipe);
        }
        let exit = {
            let mut process = lock(&self.process);
            let started = Instant::now();
            let mut killed = false;
            while process.is_none() && started.elapsed() < BROKEN_GRACE {
                // One that ended (or is ending) by itself is left to end, so
                // that its status tells why.
                if !killed && (!ended || started.elapsed() >= KILL_AFTER) {
                    sys::kill_group(self.pid);
                    killed = true;
                }
                process = self.reaped.wait_timeout(process, Duration::from_millis(50)).unwrap_or_else(PoisonError::into_inner).0;
            }
            *process
        };
        let mut text = why.to_owned();
        if ended {
            match exit {
                Some(Exit::Code(c)) => text = format!("exited with code {c} before it was ready"),
                Some(Exit::Signal(sig)) => {
                    let (name, what) = sys::signal_name(sig);
                    text = format!("was killed by signal {name} ({what}) before it was ready");
                }
                _ => {}
            }
        }
        let tail = self.stderr_tail();
        if !tail.is_empty() {
            text.push_str(&format!("; its last output:\n{tail}"));
        }
        if self.config.max_memory_mb > 0 {
            text.push_str(&format!(
                "\n(with max_memory_mb = {}: a limit this low may keep Python from starting)",
                self.config.max_memory_mb
            ));
        }
        text
    }

    // ------------------------------------------------------------ calls

    fn cancel(&self, client_id: RequestId) {
        let id = {
            let st = self.state();
            match st.by_client.get(&client_id) {
                Some(&id) if st.dead.is_none() && st.broken.is_none() => id,
                _ => return,
            }
        };
        // Advisory: a worker that cannot take it now is past caring.
        if self.write(&codec::encode(&Message::Cancel(id)), None).is_err() {
            self.mark_broken(None);
        }
    }

    fn evaluate(&self, client_id: Option<RequestId>, request: Request) -> Result<Value, RemoteException> {
        let deadline = self.config.call_timeout.map(|t| Instant::now() + t);
        let id = {
            let mut st = self.state();
            if let Some(dead) = &st.dead {
                return Err(dead.clone());
            }
            st.next_id += 1;
            let id = st.next_id;
            st.pending.insert(id, None);
            if let Some(client_id) = client_id {
                st.by_client.insert(client_id, id);
            }
            // From now on this thread may read (the idle reader need not).
            st.able += 1;
            id
        };
        let frame = codec::encode(&Message::Request { id, op: request });
        let result = match self.write(&frame, deadline) {
            Err(PipeError::TimedOut) => self.timed_out(id),
            written => {
                if written.is_err() {
                    self.mark_broken(None);
                }
                self.wait_reply(id, deadline)
            }
        };
        {
            let mut st = self.state();
            st.able -= 1;
            if let Some(client_id) = client_id {
                st.by_client.remove(&client_id);
            }
        }
        if self.idle_reader.load(Ordering::Relaxed) {
            // Perhaps nobody else can read now: the idle reader can.
            self.state_changed.notify_all();
        }
        result
    }

    fn release(&self, refs: &[Release]) {
        if refs.is_empty() {
            return;
        }
        {
            let st = self.state();
            if st.dead.is_some() || st.broken.is_some() {
                return;
            }
        }
        let frame = codec::encode(&Message::Release(refs.to_vec()));
        if self.write(&frame, None).is_err() {
            self.mark_broken(None);
        }
    }

    /// Waits for the reply to `id`, taking the reading role when it is free
    /// (the caller counts in `able`).
    fn wait_reply(&self, id: u64, deadline: Option<Instant>) -> Result<Value, RemoteException> {
        let mut st = self.state();
        loop {
            if let Some(slot) = st.pending.get_mut(&id) {
                if let Some(result) = slot.take() {
                    st.pending.remove(&id);
                    return result;
                }
            }
            if let Some(dead) = st.dead.clone() {
                st.pending.remove(&id);
                return Err(dead);
            }
            if let Some(since) = st.broken {
                // The worker is ending: wait for the monitor to say how, and
                // kill it if it does not end by itself.
                let now = Instant::now();
                if !st.killed && now >= since + KILL_AFTER {
                    st.kill_reason.get_or_insert(KillReason::BrokenPipe);
                    drop(st);
                    self.kill();
                    st = self.state();
                    continue;
                }
                if now >= since + BROKEN_GRACE {
                    let why = "it stopped answering and could not be reaped".to_owned();
                    st.dead = Some(self.death(&why, String::new()));
                    continue;
                }
                let next = if st.killed { since + BROKEN_GRACE } else { since + KILL_AFTER };
                st = self.state_changed.wait_timeout(st, next - now).unwrap_or_else(PoisonError::into_inner).0;
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                drop(st);
                return self.timed_out(id);
            }
            if !st.reading {
                st.reading = true;
                drop(st);
                let got = self.read_message(deadline);
                st = self.state();
                st.reading = false;
                st = self.dispatch(st, got, true);
                continue;
            }
            st = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    self.state_changed.wait_timeout(st, left).unwrap_or_else(PoisonError::into_inner).0
                }
                None => self.state_changed.wait(st).unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// Delivers what the reading thread read (the reading role is given up
    /// already) and wakes the threads waiting. A callback is forwarded by
    /// this thread; `able` says it counts among the threads that could read
    /// (it does not while it forwards).
    fn dispatch<'a>(&'a self, mut st: MutexGuard<'a, State>, got: Result<Incoming, PipeError>, able: bool) -> MutexGuard<'a, State> {
        match got {
            Ok(Incoming::Reply(rid, result)) => match st.pending.get_mut(&rid) {
                Some(slot) => *slot = Some(result),
                None => tracing::warn!(pid = self.pid, request = rid, "the worker replied to a request nobody waits for"),
            },
            Ok(Incoming::Request(cid, op)) => {
                // Other threads (and calls nested in the callback, on this
                // thread) read meanwhile; the idle reader when none can.
                if able {
                    st.able -= 1;
                }
                drop(st);
                self.state_changed.notify_all();
                self.forward_callback(cid, op);
                st = self.state();
                if able {
                    st.able += 1;
                }
            }
            Ok(Incoming::Release(refs)) => {
                drop(st);
                self.callbacks().release(&refs);
                st = self.state();
            }
            Ok(Incoming::Notice(n)) => st.notice = Some(n),
            Err(PipeError::TimedOut) => {}
            Err(PipeError::Broken) => {
                drop(st);
                self.mark_broken(None);
                st = self.state();
            }
            Err(PipeError::Malformed(why)) => {
                drop(st);
                self.mark_broken(Some(KillReason::Malformed(why)));
                st = self.state();
            }
        }
        self.state_changed.notify_all();
        st
    }

    /// The idle reader, started once the worker holds objects of the client
    /// (its threads may then call the client at any time, also between
    /// calls): reads the worker's output whenever no thread waiting for a
    /// reply can, and delivers what it reads as they do (forwarding
    /// callbacks itself). It never holds the reading role while it only
    /// waits for output, so a caller that arrives reads its own reply. Ends
    /// with the worker.
    fn idle_reader(self: Arc<Self>) {
        let stdout = lock(&self.output).stdout.as_raw_fd();
        loop {
            {
                let mut st = self.state();
                loop {
                    if st.dead.is_some() || st.broken.is_some() {
                        return;
                    }
                    if !st.reading && st.able == 0 {
                        break;
                    }
                    st = self.state_changed.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
            }
            // Wait for output without the reading role (never while a whole frame is buffered).
            if !lock(&self.output).frames.has_frame() {
                match sys::wait_ready(stdout, libc::POLLIN, self.wake.fd(), None) {
                    Ok(Wait::Ready) => {}
                    Ok(_) | Err(_) => return,
                }
            }
            let mut st = self.state();
            if st.reading || st.able > 0 || st.dead.is_some() || st.broken.is_some() {
                continue;
            }
            st.reading = true;
            drop(st);
            let got = self.read_message(None);
            let mut st = self.state();
            st.reading = false;
            drop(self.dispatch(st, got, false));
        }
    }

    /// The session's way to the client ([`NoCallbacks`] for a worker that serves none).
    fn callbacks(&self) -> Arc<dyn Callbacks> {
        match self.callbacks.get() {
            Some(c) => Arc::clone(c),
            None => Arc::new(NoCallbacks),
        }
    }

    /// Performs the worker's request `id` (a callback) with the client and
    /// writes the reply down to the worker.
    fn forward_callback(&self, id: u64, op: Request) {
        let result = self.callbacks().request(op);
        let frame = codec::encode(&Message::Reply { id, result });
        if self.write(&frame, None).is_err() {
            self.mark_broken(None);
        }
    }

    /// Call `id` ran out of time: the worker is killed and the call raises
    /// `TimeoutError`.
    fn timed_out(&self, id: u64) -> Result<Value, RemoteException> {
        let timeout = self.config.call_timeout.unwrap_or_default();
        {
            let mut st = self.state();
            if let Some(Some(result)) = st.pending.remove(&id) {
                // The reply came in just in time.
                return result;
            }
            if let Some(dead) = &st.dead {
                return Err(dead.clone());
            }
        }
        self.mark_broken(Some(KillReason::Timeout(timeout)));
        tracing::warn!(pid = self.pid, session = self.session.load(Ordering::Relaxed), "a call exceeded call_timeout_s; worker killed");
        Err(RemoteException::new(
            "builtins",
            "TimeoutError",
            format!("call exceeded call_timeout_s = {}; the session's worker was killed and its objects are lost", timeout.as_secs_f64()),
        ))
    }

    /// The worker cannot be talked to any more. With a reason, farcall
    /// kills it now; without (its pipes broke), it is given [`KILL_AFTER`]
    /// to end by itself. The monitor then reports how it ended.
    fn mark_broken(&self, reason: Option<KillReason>) {
        {
            let mut st = self.state();
            if st.dead.is_some() {
                return;
            }
            st.broken.get_or_insert_with(Instant::now);
            let Some(reason) = reason else {
                drop(st);
                self.state_changed.notify_all();
                return;
            };
            st.kill_reason.get_or_insert(reason);
        }
        self.state_changed.notify_all();
        self.kill();
    }

    /// Sends SIGKILL to the worker's process group, unless it was reaped.
    fn kill(&self) {
        let process = lock(&self.process);
        if process.is_none() {
            sys::kill_group(self.pid);
        }
        drop(process);
        self.state().killed = true;
    }

    fn write(&self, frame: &Frame, deadline: Option<Instant>) -> Result<(), PipeError> {
        let input = lock(&self.input);
        let mut w = PollWrite { fd: input.as_raw_fd(), wake: self.wake.fd(), deadline };
        framing::write_frame(&mut w, frame).map_err(|e| pipe_error(&e))
    }

    fn read_message(&self, deadline: Option<Instant>) -> Result<Incoming, PipeError> {
        let body = {
            let mut out = lock(&self.output);
            let Output { stdout, frames } = &mut *out;
            let mut r = PollRead { fd: stdout.as_raw_fd(), wake: self.wake.fd(), deadline };
            match frames.read(&mut r) {
                Ok(body) => body,
                Err(e) => return Err(pipe_error(&e)),
            }
        };
        decode_incoming(body).map_err(PipeError::Malformed)
    }

    // ------------------------------------------------------------ its end

    /// The monitor thread: waits for the process to end, kills what is left
    /// of its process group, reaps it and fails the calls still waiting.
    fn monitor(self: Arc<Self>) {
        let waited = sys::wait_exit(self.pid);
        match &waited {
            // The worker is a zombie: its pid (and group id) cannot be reused
            // yet, so what is left of its group can be killed safely.
            Ok(()) => sys::kill_group(self.pid),
            // Someone else reaped it (a SIGCHLD handler of the host): it is
            // gone, and its pid may already be another process's.
            Err(e) => tracing::warn!(pid = self.pid, "cannot wait for the worker (reaped by someone else?): {e}"),
        }
        {
            let stderr = lock(&self.stderr);
            let _ = self.stderr_done.wait_timeout_while(stderr, STDERR_GRACE, |s| !s.done);
        }
        let exit = {
            let mut process = lock(&self.process);
            let exit = if waited.is_ok() { sys::reap(self.pid) } else { Exit::Unknown };
            *process = Some(exit);
            exit
        };
        self.reaped.notify_all();
        // Unblock a thread reading its output, then deliver what the worker
        // wrote before it ended: replies it finished, and its last words.
        self.wake.wake();
        self.drain_output();
        let mut st = self.state();
        if st.dead.is_none() {
            let why = self.why(&st, exit);
            let closed = matches!(st.kill_reason, Some(KillReason::Closed));
            if !closed && self.hello_received() {
                tracing::warn!(pid = self.pid, session = self.session.load(Ordering::Relaxed), "worker died: {why}");
            }
            st.dead = Some(self.death(&why, self.stderr_tail()));
        }
        drop(st);
        self.state_changed.notify_all();
        tracing::debug!(pid = self.pid, ?exit, "worker reaped");
    }

    /// Reads the frames left in the pipe of an ended worker and delivers
    /// them (bounded by [`DRAIN_GRACE`], in case something else still holds
    /// the pipe open).
    fn drain_output(&self) {
        let deadline = Some(Instant::now() + DRAIN_GRACE);
        let mut out = lock(&self.output);
        let Output { stdout, frames } = &mut *out;
        // No wake-up pipe: it is signalled already.
        let mut r = PollRead { fd: stdout.as_raw_fd(), wake: -1, deadline };
        while let Ok(body) = frames.read(&mut r) {
            let mut st = self.state();
            match decode_incoming(body) {
                Ok(Incoming::Reply(id, result)) => {
                    if let Some(slot) = st.pending.get_mut(&id) {
                        *slot = Some(result);
                    }
                }
                Ok(Incoming::Notice(n)) => st.notice = Some(n),
                // The worker is gone: nobody waits for a callback's reply.
                Ok(Incoming::Request(..)) => {}
                Ok(Incoming::Release(refs)) => {
                    drop(st);
                    self.callbacks().release(&refs);
                }
                Err(_) => break,
            }
        }
    }

    fn hello_received(&self) -> bool {
        lock(&self.hello).is_some()
    }

    /// Why the worker ended, as the end of "the worker ... died: ".
    ///
    /// The worker's notice says why when it could send one; else its exit
    /// status does (`EXIT_OUT_OF_MEMORY` is the worker's own, see
    /// `farcall_worker.py`).
    fn why(&self, st: &State, exit: Exit) -> String {
        let mb = self.config.max_memory_mb;
        match (&st.kill_reason, &st.notice, exit) {
            (Some(KillReason::Timeout(t)), _, _) => format!("it was killed because a call exceeded call_timeout_s = {}", t.as_secs_f64()),
            (Some(KillReason::Malformed(m)), _, _) => format!("it sent a malformed message and was killed ({m})"),
            (Some(KillReason::Closed), _, _) => "its session was closed".into(),
            (_, Some(n), _) if n.reason == "out_of_memory" => format!("it ran out of memory (max_memory_mb = {mb})"),
            // The worker's own exit status for it, when its notice was lost
            // (the pipe was busy, or the server read the exit first).
            (_, None, Exit::Code(EXIT_OUT_OF_MEMORY)) => format!("it ran out of memory (max_memory_mb = {mb})"),
            (_, Some(n), _) => n.detail.clone(),
            (Some(KillReason::BrokenPipe), None, Exit::Signal(libc::SIGKILL)) => "it closed its pipes to the server and was killed".into(),
            (_, None, Exit::Code(c)) => format!("it exited with code {c}"),
            (_, None, Exit::Signal(sig)) => {
                let (name, what) = sys::signal_name(sig);
                let mut why = format!("it was killed by signal {name} ({what})");
                if sig == libc::SIGKILL {
                    why.push_str(", not by farcall (perhaps by the system's out-of-memory killer)");
                } else if mb > 0 && matches!(sig, libc::SIGSEGV | libc::SIGABRT | libc::SIGBUS) {
                    why.push_str(&format!(", perhaps on reaching its memory limit (max_memory_mb = {mb})"));
                }
                why
            }
            (_, None, Exit::Unknown) => "it ended, how is unknown".into(),
        }
    }

    /// The exception every call of a dead worker raises.
    fn death(&self, why: &str, tail: String) -> RemoteException {
        let message =
            format!("the worker process of this session died: {why}; the session's objects are lost (connect again for a new worker)");
        let mut e = RemoteException::new("farcall", "WorkerDied", message);
        if !tail.is_empty() {
            e.traceback = format!("last output of the worker (pid {}):\n{tail}\n", self.pid);
        }
        e
    }

    /// The last lines the worker wrote to standard error: from Python's
    /// last fatal error report if there is one, else the last few lines.
    fn stderr_tail(&self) -> String {
        let stderr = lock(&self.stderr);
        let (a, b) = stderr.tail.as_slices();
        let text = String::from_utf8_lossy(&[a, b].concat()).into_owned();
        if let Some(at) = text.rfind("Fatal Python error") {
            let start = text[..at].rfind('\n').map_or(0, |n| n + 1);
            return text[start..].trim_end().to_owned();
        }
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(STDERR_LINES);
        lines[start..].join("\n")
    }

    /// The standard error thread: logs each line and keeps the last bytes.
    fn forward_stderr(self: Arc<Self>, mut stderr: std::process::ChildStderr) {
        let mut buf = vec![0u8; 8192];
        let mut line: Vec<u8> = Vec::new();
        loop {
            let n = match stderr.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            {
                let mut s = lock(&self.stderr);
                s.tail.extend(&buf[..n]);
                let excess = s.tail.len().saturating_sub(STDERR_TAIL);
                s.tail.drain(..excess);
            }
            for &b in &buf[..n] {
                if b == b'\n' {
                    self.log_line(&line);
                    line.clear();
                } else if line.len() < 16 << 10 {
                    line.push(b);
                }
            }
        }
        if !line.is_empty() {
            self.log_line(&line);
        }
        lock(&self.stderr).done = true;
        self.stderr_done.notify_all();
    }

    fn log_line(&self, line: &[u8]) {
        let session = self.session.load(Ordering::Relaxed);
        tracing::info!(target: "farcall::worker", pid = self.pid, session, "{}", String::from_utf8_lossy(line));
    }
}

/// Whether `request` passes an object of the client (after which the
/// worker may call the client at any time).
fn holds_client_object(request: &Request) -> bool {
    fn any(v: &Value) -> bool {
        match v {
            Value::SenderObject(_) => true,
            Value::Tuple(items) | Value::FrozenSet(items) | Value::List(items) | Value::Set(items) => items.iter().any(any),
            Value::Dict(pairs) => pairs.iter().any(|(k, v)| any(k) || any(v)),
            Value::Slice(parts) => parts.iter().any(any),
            _ => false,
        }
    }
    match request {
        Request::Call { args, kwargs, .. } => args.iter().any(any) || kwargs.iter().any(|(_, v)| any(v)),
        Request::SetAttr { value, .. } => any(value),
        Request::Builtin { args, .. } => args.iter().any(any),
        _ => false,
    }
}

/// Decodes a frame from the worker: a reply, a callback request, a
/// release or a notice.
fn decode_incoming(body: Bytes) -> Result<Incoming, String> {
    if body.len() >= 2 && body[0] == 0x93 && body[1] == 0x7f {
        return rmp_serde::from_slice::<Notice>(&body).map(Incoming::Notice).map_err(|e| format!("a bad notice: {e}"));
    }
    match codec::decode(body) {
        Ok(Message::Reply { id, result }) => Ok(Incoming::Reply(id, result)),
        Ok(Message::Request { id, op }) => Ok(Incoming::Request(id, op)),
        Ok(Message::Release(refs)) => Ok(Incoming::Release(refs)),
        Ok(Message::Cancel(_)) => Err("it sent a cancel, which a worker never sends".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether a version string (`3.11.7`, `3.13.0rc1`) is at least `major.minor`.
pub(crate) fn version_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.chars().take_while(char::is_ascii_digit).collect::<String>().parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::version_at_least;

    #[test]
    fn versions() {
        assert!(version_at_least("3.9.18", 3, 9));
        assert!(version_at_least("3.13.0rc1", 3, 9));
        assert!(version_at_least("4.0", 3, 9));
        assert!(!version_at_least("3.8.18", 3, 9));
        assert!(!version_at_least("2.7.18", 3, 9));
        assert!(!version_at_least("", 3, 9));
    }
}
