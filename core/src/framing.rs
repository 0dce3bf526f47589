//! Length-prefixed framing over byte streams: a 4-byte big-endian length, then
//! the body. The maximum frame size is checked before anything is allocated.

use std::io::{self, IoSlice, Read, Write};

use bytes::Bytes;

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

/// Reads one frame body of at most `max` bytes.
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
    let len = u32::try_from(frame.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame longer than 4 GiB"))?;
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
