//! Length-prefixed framing over byte streams: a 4-byte big-endian length, then
//! the body. The maximum frame size is checked before anything is allocated.

use std::io::{self, IoSlice, Read, Write};

use bytes::{Buf, Bytes, BytesMut};

use crate::codec::Frame;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream cleanly between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The stream ended inside a frame.
    #[error("connection closed in the middle of a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        want: usize,
    },
    /// The length prefix announces more than the configured maximum.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes (limits.max_message_bytes)")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An I/O error from the stream.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Reads exactly `buf.len()` bytes; `Ok(n < len)` means EOF after `n` bytes.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Bytes asked of the stream at least per read, so small frames arrive in
/// one system call.
const READ_CHUNK: usize = 64 * 1024;

/// Reads frames from a stream through a buffer that is reused from frame to
/// frame.
///
/// Frames are handed out as [`Bytes`] views of the buffer; once the caller
/// drops them the buffer's memory is reclaimed for the next frame, so a
/// stream of large frames does not fault in fresh pages for each one (on a
/// virtual machine that costs more than the copy itself). Frames longer than
/// `max_retained` get a buffer of their own, so a connection never keeps more
/// than about `max_retained` bytes between frames.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_frame: usize,
    max_retained: usize,
}

impl FrameReader {
    /// A reader refusing frames over `max_frame` bytes and keeping a buffer
    /// of at most about `max_retained` bytes.
    pub fn new(max_frame: usize, max_retained: usize) -> Self {
        FrameReader { buf: BytesMut::new(), max_frame, max_retained }
    }

    /// Reads the next frame body.
    pub fn read(&mut self, r: &mut impl Read) -> Result<Bytes, FrameError> {
        while self.buf.len() < 4 {
            if fill(r, &mut self.buf, 4)? == 0 {
                return match self.buf.len() {
                    0 => Err(FrameError::Closed),
                    got => Err(FrameError::Truncated { got, want: 4 }),
                };
            }
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge { len, max: self.max_frame });
        }
        let total = 4 + len;
        if total > self.max_retained && self.buf.len() < total {
            // A one-off buffer: what is buffered of this frame, then the rest.
            let mut body = BytesMut::with_capacity(len);
            body.extend_from_slice(&self.buf[4..]);
            self.buf.clear();
            while body.len() < len {
                if fill_exact(r, &mut body, len)? == 0 {
                    return Err(FrameError::Truncated { got: body.len(), want: len });
                }
            }
            return Ok(body.freeze());
        }
        while self.buf.len() < total {
            if fill(r, &mut self.buf, total)? == 0 {
                return Err(FrameError::Truncated { got: self.buf.len() - 4, want: len });
            }
        }
        self.buf.advance(4);
        Ok(self.buf.split_to(len).freeze())
    }
}

/// One `read` into `buf`'s spare capacity, growing it towards `want` bytes
/// (or by [`READ_CHUNK`], reading ahead); returns the bytes read, 0 at end of stream.
fn fill(r: &mut impl Read, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
    let room = want.saturating_sub(buf.len()).max(READ_CHUNK);
    read_into(r, buf, room)
}

/// Like [`fill`] but never reads past `want` bytes in `buf`.
fn fill_exact(r: &mut impl Read, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
    let room = want.saturating_sub(buf.len());
    read_into(r, buf, room)
}

/// One `read` of at most `room` bytes appended to `buf`.
fn read_into(r: &mut impl Read, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
    buf.reserve(room);
    let spare = &mut buf.spare_capacity_mut()[..room];
    // SAFETY: `Read` implementations write into the slice and report how
    // much they wrote; the streams used here (sockets, TLS) never read the
    // uninitialised bytes. Only the `n` bytes written are exposed below.
    let slice = unsafe { &mut *(spare as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
    loop {
        match r.read(slice) {
            Ok(n) => {
                // SAFETY: `n` bytes were just initialised by `read`.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads one frame body of at most `max` bytes, reading exactly that frame
/// from the stream (no read-ahead; see [`FrameReader`] for connections).
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Bytes, FrameError> {
    let mut head = [0u8; 4];
    match read_full(r, &mut head)? {
        0 => return Err(FrameError::Closed),
        4 => {}
        got => return Err(FrameError::Truncated { got, want: 4 }),
    }
    let len = u32::from_be_bytes(head) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body)?;
    if got < len {
        return Err(FrameError::Truncated { got, want: len });
    }
    Ok(body.into())
}

/// Writes a frame (length prefix and chunks) with vectored writes, without
/// copying its chunks.
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> io::Result<()> {
    let len = u32::try_from(frame.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame longer than 4 GiB"))?;
    let head = len.to_be_bytes();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(1 + frame.chunks().len());
    parts.push(&head);
    parts.extend(frame.chunks().iter().map(|c| &c[..]));
    write_all_vectored(w, &parts)
}

/// Writes several frames in one go (one syscall when they fit).
pub fn write_frames(w: &mut impl Write, frames: &[&Frame]) -> io::Result<()> {
    let heads: Vec<[u8; 4]> = frames
        .iter()
        .map(|f| u32::try_from(f.len()).map(u32::to_be_bytes))
        .collect::<Result<_, _>>()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame longer than 4 GiB"))?;
    let mut parts: Vec<&[u8]> = Vec::new();
    for (f, h) in frames.iter().zip(&heads) {
        parts.push(h);
        parts.extend(f.chunks().iter().map(|c| &c[..]));
    }
    write_all_vectored(w, &parts)
}

fn write_all_vectored(w: &mut impl Write, parts: &[&[u8]]) -> io::Result<()> {
    let mut idx = 0; // first part not fully written
    let mut off = 0; // bytes of parts[idx] already written
    while idx < parts.len() {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity((parts.len() - idx).min(64));
        slices.push(IoSlice::new(&parts[idx][off..]));
        slices.extend(parts[idx + 1..].iter().take(63).map(|p| IoSlice::new(p)));
        let mut n = match w.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 && idx < parts.len() {
            let left = parts[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
        while idx < parts.len() && parts[idx].len() == off {
            idx += 1;
            off = 0;
        }
    }
    w.flush()
}
