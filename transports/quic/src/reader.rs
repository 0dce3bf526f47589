//! Reading frames from QUIC streams.
//!
//! Every stream being read is a [`Cell`]: a [`Reader`] (the stream and its
//! frame parser) plus a waker of its own. When quinn finds data for a
//! stream it wakes that stream's cell, which queues itself in the
//! connection's [`Hub`] and wakes the thread blocked in `recv`; that thread
//! then polls only the cells that were woken (like `FuturesUnordered`), so
//! many calls in flight cost nothing while they wait.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Buf, Bytes, BytesMut};
use farcall_core::FrameError;
use quinn::{ReadError, RecvStream, SendStream};

use crate::connection::ReplySlot;
use crate::lock;

/// Bytes of the header that opens each half of a bidirectional stream: the
/// number of one-way frames its writer had sent before (big-endian).
pub(crate) const BARRIER_LEN: usize = 8;

/// Where woken cells wait for the thread in `recv`.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    inner: Mutex<HubInner>,
}

#[derive(Debug, Default)]
struct HubInner {
    ready: Vec<Arc<Cell>>,
    /// The waker of the thread in (or last in) `recv`.
    waker: Option<Waker>,
}

impl Hub {
    fn push(&self, cell: Arc<Cell>) {
        let waker = {
            let mut inner = lock(&self.inner);
            inner.ready.push(cell);
            inner.waker.clone()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Wakes the thread in `recv` (to see that the connection was shut down).
    pub(crate) fn wake(&self) {
        let waker = lock(&self.inner).waker.clone();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Registers `cx` as the one to wake and moves the woken cells to `into`.
    pub(crate) fn take(&self, cx: &Context<'_>, into: &mut std::collections::VecDeque<Arc<Cell>>) {
        let mut inner = lock(&self.inner);
        if !inner.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            inner.waker = Some(cx.waker().clone());
        }
        into.extend(inner.ready.drain(..));
    }

    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.inner).ready.is_empty()
    }
}

/// A stream being read, with its own waker.
#[derive(Debug)]
pub(crate) struct Cell {
    queued: AtomicBool,
    hub: Weak<Hub>,
    pub(crate) reader: Mutex<Reader>,
}

impl Cell {
    pub(crate) fn new(reader: Reader, hub: &Arc<Hub>) -> Arc<Cell> {
        Arc::new(Cell { queued: AtomicBool::new(false), hub: Arc::downgrade(hub), reader: Mutex::new(reader) })
    }

    /// The waker quinn calls when this stream has news.
    pub(crate) fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(self.clone())
    }

    /// Called before the cell is polled, so that news arriving during the
    /// poll queue it again.
    pub(crate) fn unqueue(&self) {
        self.queued.store(false, Ordering::SeqCst);
    }

    /// Queues the cell for the thread in `recv`.
    pub(crate) fn queue(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::SeqCst) {
            if let Some(hub) = self.hub.upgrade() {
                hub.push(self.clone());
            }
        }
    }

    /// Registers the cell's waker with quinn by reading the stream's header
    /// (nothing is there yet for a call just sent); queues the cell if
    /// something already happened.
    pub(crate) fn arm(self: &Arc<Self>) {
        let waker = self.waker();
        let mut cx = Context::from_waker(&waker);
        if lock(&self.reader).poll_head(&mut cx).is_ready() {
            self.queue();
        }
    }
}

impl Wake for Cell {
    fn wake(self: Arc<Self>) {
        self.queue();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue();
    }
}

/// What a stream carries.
#[derive(Debug)]
pub(crate) enum Kind {
    /// The peer's one-way stream.
    Oneway,
    /// The reply half of a call this side sent.
    Reply,
    /// A stream the peer opened for a call; its send half carries the reply.
    Incoming {
        /// The send half, until a request is seen on the stream.
        send: Option<SendStream>,
        /// Where replies to this stream's requests go, once one is seen.
        slot: Option<Arc<ReplySlot>>,
    },
}

/// How a stream ended before its header was complete.
#[derive(Debug)]
pub(crate) enum HeadEnd {
    /// Finished cleanly (after `got` header bytes).
    Finished,
    /// Failed.
    Failed(ReadError),
}

/// One stream being read: its header, then frames.
#[derive(Debug)]
pub(crate) struct Reader {
    recv: RecvStream,
    pub(crate) kind: Kind,
    head: [u8; BARRIER_LEN],
    head_got: usize,
    barrier: Option<u64>,
    end: Option<HeadEnd>,
    pub(crate) parser: FrameParser,
}

impl Reader {
    pub(crate) fn new(recv: RecvStream, kind: Kind, max_frame: usize) -> Self {
        let barrier = matches!(kind, Kind::Oneway).then_some(0);
        Reader { recv, kind, head: [0; BARRIER_LEN], head_got: 0, barrier, end: None, parser: FrameParser::new(max_frame) }
    }

    /// The barrier from the stream's header, once read.
    pub(crate) fn barrier(&self) -> Option<u64> {
        self.barrier
    }

    /// Bytes of the header received (to report a stream cut short).
    pub(crate) fn head_got(&self) -> usize {
        self.head_got
    }

    /// How the stream ended before its header was complete, if it did.
    pub(crate) fn take_end(&mut self) -> Option<HeadEnd> {
        self.end.take()
    }

    /// Reads the header; ready once it is complete or the stream ended.
    pub(crate) fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.barrier.is_none() && self.end.is_none() {
            let polled = {
                let fut = pin!(self.recv.read_chunk(BARRIER_LEN - self.head_got, true));
                fut.poll(cx)
            };
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(chunk))) => {
                    let n = chunk.bytes.len();
                    self.head[self.head_got..self.head_got + n].copy_from_slice(&chunk.bytes);
                    self.head_got += n;
                    if self.head_got == BARRIER_LEN {
                        self.barrier = Some(u64::from_be_bytes(self.head));
                    }
                }
                Poll::Ready(Ok(None)) => self.end = Some(HeadEnd::Finished),
                Poll::Ready(Err(e)) => self.end = Some(HeadEnd::Failed(e)),
            }
        }
        Poll::Ready(())
    }

    /// Reads the chunks available (up to `bufs.len()`), without copying.
    pub(crate) fn poll_chunks(&mut self, cx: &mut Context<'_>, bufs: &mut [Bytes]) -> Poll<Result<Option<usize>, ReadError>> {
        pin!(self.recv.read_chunks(bufs)).poll(cx)
    }

    /// Refuses the rest of the stream (after a frame over the limit): the
    /// peer's writes fail, and for a stream of the peer's call, its reply
    /// half is reset.
    pub(crate) fn refuse(&mut self) {
        let code = quinn::VarInt::from_u32(1);
        let _ = self.recv.stop(code);
        if let Kind::Incoming { send: Some(send), .. } = &mut self.kind {
            let _ = send.reset(code);
        }
    }
}

/// A receive buffer kept from frame to frame for frames that span several
/// packets.
///
/// A frame is handed out as a [`Bytes`] view of the buffer; once the caller
/// drops it, the memory is reclaimed for the next large frame, so a stream
/// of large replies does not fault in fresh pages for each (on a virtual
/// machine that costs more than the copy itself). Buffers larger than
/// `max_retained` are not kept.
#[derive(Debug)]
pub(crate) struct BufferPool {
    spare: Option<BytesMut>,
    max_retained: usize,
}

impl BufferPool {
    pub(crate) fn new(max_retained: usize) -> Self {
        BufferPool { spare: None, max_retained }
    }

    /// An empty buffer with room for `len` bytes.
    fn take(&mut self, len: usize) -> BytesMut {
        match self.spare.take() {
            // `reserve` reuses the allocation when the frames cut from it are gone.
            Some(mut buf) if len <= self.max_retained => {
                buf.reserve(len);
                buf
            }
            _ => BytesMut::with_capacity(len),
        }
    }

    /// Keeps what remains of a buffer a frame was cut from.
    fn give_back(&mut self, buf: BytesMut) {
        if self.spare.is_none() && buf.capacity() + buf.len() <= self.max_retained {
            self.spare = Some(buf);
        }
    }
}

/// Splits a byte stream into length-prefixed frames (4-byte big-endian
/// length, then the body), refusing a frame over the limit before
/// allocating it. A frame that lies within one received chunk is handed out
/// as a slice of that chunk, without a copy.
#[derive(Debug)]
pub(crate) struct FrameParser {
    max: usize,
    head: [u8; 4],
    head_got: usize,
    body: Option<BytesMut>,
    want: usize,
}

impl FrameParser {
    pub(crate) fn new(max: usize) -> Self {
        FrameParser { max, head: [0; 4], head_got: 0, body: None, want: 0 }
    }

    /// Feeds the next chunk of the stream; `out` receives each complete
    /// frame. Frames that span chunks are assembled in `pool`'s memory when
    /// it is free (see [`BufferPool`]).
    pub(crate) fn feed(&mut self, mut chunk: Bytes, pool: &mut BufferPool, out: &mut dyn FnMut(Bytes)) -> Result<(), FrameError> {
        while !chunk.is_empty() {
            if let Some(body) = &mut self.body {
                let n = (self.want - body.len()).min(chunk.len());
                body.extend_from_slice(&chunk[..n]);
                chunk.advance(n);
                if body.len() == self.want {
                    let mut body = self.body.take().expect("a body being read");
                    let frame = body.split().freeze();
                    pool.give_back(body);
                    out(frame);
                }
                continue;
            }
            let n = (4 - self.head_got).min(chunk.len());
            self.head[self.head_got..self.head_got + n].copy_from_slice(&chunk[..n]);
            self.head_got += n;
            chunk.advance(n);
            if self.head_got < 4 {
                break;
            }
            self.head_got = 0;
            let len = u32::from_be_bytes(self.head) as usize;
            if len > self.max {
                return Err(FrameError::TooLarge { len, max: self.max });
            }
            if chunk.len() >= len {
                out(chunk.split_to(len));
            } else {
                let mut body = pool.take(len);
                body.extend_from_slice(&chunk);
                chunk.clear();
                self.body = Some(body);
                self.want = len;
            }
        }
        Ok(())
    }

    /// The error to report when the stream ends now: `None` between frames.
    pub(crate) fn truncated(&self) -> Option<FrameError> {
        if let Some(body) = &self.body {
            Some(FrameError::Truncated { got: body.len(), want: self.want })
        } else if self.head_got > 0 {
            Some(FrameError::Truncated { got: self.head_got, want: 4 })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parser: &mut FrameParser, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut got = Vec::new();
        let mut pool = BufferPool::new(1 << 20);
        for c in chunks {
            parser.feed(Bytes::copy_from_slice(c), &mut pool, &mut |f| got.push(f.to_vec()))?;
        }
        Ok(got)
    }

    #[test]
    fn frames_split_anywhere_are_reassembled() {
        let mut wire = Vec::new();
        for body in [&b"hello"[..], b"", b"a longer frame body"] {
            wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
            wire.extend_from_slice(body);
        }
        for cut in 0..wire.len() {
            for cut2 in cut..wire.len() {
                let mut p = FrameParser::new(100);
                let got = frames(&mut p, &[&wire[..cut], &wire[cut..cut2], &wire[cut2..]]).unwrap();
                assert_eq!(got, vec![b"hello".to_vec(), vec![], b"a longer frame body".to_vec()]);
                assert!(p.truncated().is_none());
            }
        }
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_and_a_cut_frame_reported() {
        let mut p = FrameParser::new(4);
        let err = frames(&mut p, &[&[0, 0, 0, 5, 1]]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 5, max: 4 }), "{err}");
        let mut p = FrameParser::new(10);
        frames(&mut p, &[&[0, 0, 0, 5, 1, 2]]).unwrap();
        assert!(matches!(p.truncated(), Some(FrameError::Truncated { got: 2, want: 5 })));
        let mut p = FrameParser::new(10);
        frames(&mut p, &[&[0, 0]]).unwrap();
        assert!(matches!(p.truncated(), Some(FrameError::Truncated { got: 2, want: 4 })));
    }
}
