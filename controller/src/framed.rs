//! A framed connection driven by one task: reading a frame also pushes out
//! queued answers, so a peer that is busy sending never stalls our replies
//! and no wakeup is lost.
//!
//! (Splitting a TLS stream into read and write halves driven by two tasks
//! can lose a wakeup: the TLS read path also writes, and the socket keeps
//! one write waker, so the writer task may never be woken again. A snapshot
//! of a 1 GiB tree hung that way.)

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use pulih_core::protocol::{self, ErrorCode, Message};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::session::SessionError;

/// Largest step by which the read buffer grows.
const READ_STEP: usize = 256 * 1024;

/// Frames over a byte stream.
pub struct Framed<S> {
    stream: S,
    rbuf: Vec<u8>,
    rstart: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    need_flush: bool,
    scratch: Box<[u8]>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            rbuf: Vec::with_capacity(64 * 1024),
            rstart: 0,
            wbuf: Vec::new(),
            wpos: 0,
            need_flush: false,
            scratch: vec![0u8; READ_STEP].into_boxed_slice(),
        }
    }

    /// Queues a message; it is written while the next frame is awaited, or
    /// by [`Framed::finish`].
    pub fn queue(&mut self, msg: &Message) {
        protocol::encode(msg, &mut self.wbuf);
    }

    /// Bytes queued and not yet written.
    pub fn pending_out(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// The next message; `None` at a clean end of stream. Cancel-safe.
    pub async fn next(&mut self) -> anyhow::Result<Option<Message>> {
        loop {
            match protocol::decode(&self.rbuf[self.rstart..]) {
                Ok(Some((msg, used))) => {
                    self.rstart += used;
                    return Ok(Some(msg));
                }
                Ok(None) => {}
                Err(e) => return Err(SessionError::new(ErrorCode::Protocol, e.to_string()).into()),
            }
            if self.rstart > 0 {
                self.rbuf.drain(..self.rstart);
                self.rstart = 0;
            }
            let n = poll_fn(|cx| self.poll_io(cx)).await?;
            if n == 0 {
                if self.rbuf.is_empty() {
                    return Ok(None);
                }
                return Err(SessionError::new(
                    ErrorCode::Protocol,
                    format!("connection closed inside a frame ({} bytes buffered)", self.rbuf.len()),
                )
                .into());
            }
        }
    }

    /// Writes queued data and flushes; then reads once. Returns the bytes read.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Err(e)) = self.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        // Never read more than the frame being assembled needs (its length
        // was checked against MAX_FRAME_LEN when its header was decoded).
        let want = match protocol::frame::peek_len(&self.rbuf) {
            Ok(Some(len)) => (4 + len as usize).saturating_sub(self.rbuf.len()),
            _ => 4usize.saturating_sub(self.rbuf.len()),
        }
        .clamp(1, READ_STEP);
        let mut rb = ReadBuf::new(&mut self.scratch[..want]);
        match Pin::new(&mut self.stream).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                self.rbuf.extend_from_slice(rb.filled());
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf[self.wpos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.wpos += n;
                    self.need_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        if self.need_flush {
            match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes everything queued (a long answer, sent in parts).
    pub async fn write_out(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// Writes what the stream takes now, without waiting for the rest
    /// (answers that are ready while reading is paused for back-pressure).
    pub async fn write_some(&mut self) -> io::Result<()> {
        poll_fn(|cx| match self.poll_write_out(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => Poll::Ready(Ok(())),
        })
        .await
    }

    /// Writes everything queued, then shuts the stream down.
    pub async fn finish(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_write_out(cx)).await?;
        poll_fn(|cx| Pin::new(&mut self.stream).poll_shutdown(cx)).await
    }

    /// After [`Framed::finish`], reads and discards what the peer still
    /// sends, for at most `limit` bytes: closing a socket with unread data
    /// makes the kernel send a reset, which can destroy our error message
    /// before the peer reads it ("lingering close").
    pub async fn drain(&mut self, limit: usize) {
        let mut seen = 0;
        while seen < limit {
            let mut rb = ReadBuf::new(&mut self.scratch[..]);
            match poll_fn(|cx| Pin::new(&mut self.stream).poll_read(cx, &mut rb)).await {
                Ok(()) if !rb.filled().is_empty() => seen += rb.filled().len(),
                _ => break,
            }
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}
