//! The few system calls the backend needs beyond `std`: non-blocking pipes
//! waited on with `poll` (with a deadline and a wake-up pipe), waiting for a
//! process's exit without reaping it, signals.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// Puts `fd` in non-blocking mode.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Asks for a pipe buffer of `bytes` (Linux; fewer round trips through the
/// scheduler for large messages). Best effort: the default stays otherwise.
pub(crate) fn grow_pipe(fd: RawFd, bytes: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: F_SETPIPE_SZ takes an integer; failure leaves the pipe as it was.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, bytes as libc::c_int);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (fd, bytes);
}

/// A pipe whose read end becomes readable, for good, once anything is
/// written to it: a level-triggered "stop waiting" signal for `poll`.
#[derive(Debug)]
pub(crate) struct WakePipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl WakePipe {
    pub(crate) fn new() -> io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and ours.
        Ok(unsafe { WakePipe { read: OwnedFd::from_raw_fd(fds[0]), write: OwnedFd::from_raw_fd(fds[1]) } })
    }

    /// Wakes every present and future waiter.
    pub(crate) fn wake(&self) {
        // SAFETY: writes one byte from a valid buffer; errors (a full pipe) are fine.
        unsafe { libc::write(self.write.as_raw_fd(), b"!".as_ptr().cast(), 1) };
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

/// What [`wait_ready`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The descriptor is ready (or in error: the next read or write says which).
    Ready,
    /// The wake-up pipe was signalled.
    Woken,
    /// The deadline passed.
    TimedOut,
}

/// Waits until `fd` is ready for `events` (`POLLIN`/`POLLOUT`), `wake` is
/// signalled (a negative `wake` is ignored), or `deadline` passes.
pub(crate) fn wait_ready(fd: RawFd, events: libc::c_short, wake: RawFd, deadline: Option<Instant>) -> io::Result<Wait> {
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Wait::TimedOut);
                }
                // Round up, so that we never wake just before the deadline.
                left.as_millis().saturating_add(1).min(i32::MAX as u128) as libc::c_int
            }
        };
        let mut fds = [libc::pollfd { fd, events, revents: 0 }, libc::pollfd { fd: wake, events: libc::POLLIN, revents: 0 }];
        // SAFETY: `fds` is a valid array of two pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0 {
            return Ok(Wait::Ready);
        }
        if fds[1].revents != 0 {
            return Ok(Wait::Woken);
        }
    }
}

/// Runs a non-blocking I/O system call, retrying it when interrupted:
/// `Ok(None)` when it would block.
fn nonblocking(mut syscall: impl FnMut() -> isize) -> io::Result<Option<usize>> {
    loop {
        let n = syscall();
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// `read(2)` on a non-blocking descriptor: `Ok(None)` when nothing is there yet.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is valid for `buf.len()` bytes.
    nonblocking(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// `writev(2)` on a non-blocking descriptor: `Ok(None)` when the pipe is full.
pub(crate) fn writev(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<Option<usize>> {
    let count = bufs.len().min(64) as libc::c_int;
    // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix, and at most
    // `bufs.len()` of them are passed.
    nonblocking(|| unsafe { libc::writev(fd, bufs.as_ptr().cast(), count) })
}

/// Blocks until process `pid` (a child of ours) has ended, without reaping
/// it: it stays a zombie, so its pid cannot be reused until [`reap`].
pub(crate) fn wait_exit(pid: libc::pid_t) -> io::Result<()> {
    loop {
        // SAFETY: `info` is a valid siginfo_t for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above; WNOWAIT leaves the child waitable.
        let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It could not be waited for (not our child any more).
    Unknown,
}

/// Reaps process `pid` (which has ended: see [`wait_exit`]).
pub(crate) fn reap(pid: libc::pid_t) -> Exit {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int for waitpid to fill.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return Exit::Unknown;
    }
    if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Unknown
    }
}

/// Sends SIGKILL to process group `pgid` (the worker and every process it
/// started). Only call while the group leader is not reaped.
pub(crate) fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill takes plain integers. A negative pid names the group.
    unsafe {
        if libc::kill(-pgid, libc::SIGKILL) < 0 {
            // Not a group leader after all (it changed its group): the process alone.
            libc::kill(pgid, libc::SIGKILL);
        }
    }
}

/// Makes writing to a pipe whose reader is gone an error (`EPIPE`) rather
/// than a fatal signal, if the host program has not done so already (Rust
/// binaries and Python both have). Returns whether it changed anything.
pub(crate) fn ignore_sigpipe() -> bool {
    // SAFETY: reads the current disposition and, when it is the default,
    // replaces it with SIG_IGN; no handler function is involved.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut current) == 0 && current.sa_sigaction == libc::SIG_DFL {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            return true;
        }
    }
    false
}

/// Sets the address-space limit of the calling process; for `pre_exec`
/// (async-signal-safe).
pub(crate) fn limit_address_space(bytes: u64) -> io::Result<()> {
    let limit = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
    // SAFETY: `limit` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The name and meaning of a signal (`SIGSEGV`, "segmentation fault").
pub(crate) fn signal_name(sig: i32) -> (String, &'static str) {
    let known = [
        (libc::SIGSEGV, "SIGSEGV", "segmentation fault"),
        (libc::SIGABRT, "SIGABRT", "aborted"),
        (libc::SIGKILL, "SIGKILL", "killed"),
        (libc::SIGBUS, "SIGBUS", "bus error"),
        (libc::SIGILL, "SIGILL", "illegal instruction"),
        (libc::SIGFPE, "SIGFPE", "arithmetic error"),
        (libc::SIGTERM, "SIGTERM", "terminated"),
        (libc::SIGINT, "SIGINT", "interrupted"),
        (libc::SIGHUP, "SIGHUP", "hang-up"),
        (libc::SIGPIPE, "SIGPIPE", "broken pipe"),
        (libc::SIGXCPU, "SIGXCPU", "CPU time limit exceeded"),
        (libc::SIGSYS, "SIGSYS", "bad system call"),
    ];
    match known.iter().find(|k| k.0 == sig) {
        Some(&(_, name, what)) => (name.to_owned(), what),
        None => (format!("signal {sig}"), "signal"),
    }
}

/// Whether a process with this pid exists and is not a zombie (for tests
/// and diagnostics).
pub fn process_is_running(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the command name in parentheses.
        Ok(stat) => {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z" && state != "X")
        }
        Err(_) => !cfg!(target_os = "linux"),
    }
}
