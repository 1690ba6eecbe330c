//! When bytes or frames last moved on a relay, a stream or a connection,
//! and what ends them once nothing has moved for a while: the idle
//! timeouts of opaque relays ([`crate::tcp`]), of HTTP/2 streams
//! ([`crate::http2`]), of HTTP/1 connections ([`crate::http`]) and of the
//! admin server's connections.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::{
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

/// Whether something moved: a count of moves, which costs an atomic add
/// and no clock read per move (a stream moves several times per request);
/// and, for a stream, whether its request body has ended.
#[derive(Debug, Default)]
pub struct Activity {
    moves: AtomicU64,
    request_ended: AtomicBool,
}

/// Why a stream was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    /// Nothing moved for the idle timeout.
    Idle,
    /// Its request body had not ended within the request body timeout.
    RequestBody,
}

impl Activity {
    /// Something moved now.
    pub fn moved(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    /// The stream's request body has ended.
    pub fn request_ended(&self) {
        self.request_ended.store(true, Ordering::Relaxed);
    }

    /// Returns once nothing moved for `idle`, checked every quarter of it:
    /// between `idle` and 1.25 × `idle` after the last move. One timer,
    /// set again each quarter only while the wait lasts.
    pub async fn idle_for(&self, idle: Duration) {
        self.stalled(idle, None).await;
    }

    /// Returns once nothing moved for `idle`, or, with a `body_timeout`,
    /// once that long passed without the request body ending; each
    /// checked every quarter of the shorter, so it is noticed within a
    /// quarter more.
    pub async fn stalled(&self, idle: Duration, body_timeout: Option<Duration>) -> Stalled {
        let every = body_timeout.map_or(idle, |body| body.min(idle)) / 4;
        let mut check = pin!(tokio::time::sleep(every));
        let mut seen = self.moves.load(Ordering::Relaxed);
        let (mut quiet, mut waited) = (Duration::ZERO, Duration::ZERO);
        loop {
            check.as_mut().await;
            waited += every;
            if body_timeout.is_some_and(|body| waited >= body)
                && !self.request_ended.load(Ordering::Relaxed)
            {
                return Stalled::RequestBody;
            }
            let moves = self.moves.load(Ordering::Relaxed);
            if moves == seen {
                quiet += every;
                if quiet >= idle {
                    return Stalled::Idle;
                }
            } else {
                (seen, quiet) = (moves, Duration::ZERO);
            }
            let next = check.deadline() + every;
            check.as_mut().reset(next);
        }
    }
}

pin_project_lite::pin_project! {
    /// A body whose every frame counts as its stream moving.
    pub struct Watched<B> {
        #[pin]
        inner: B,
        activity: Arc<Activity>,
    }
}

impl<B> Watched<B> {
    pub fn new(inner: B, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<B: Body<Data = Bytes>> Body for Watched<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(_)) = &frame {
            this.activity.moved();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error an [`IdleIo`] fails with, inside an `io::Error` of kind
/// `TimedOut`.
#[derive(Debug, thiserror::Error)]
#[error("no byte moved either way for {0:?}")]
pub struct IdleTimedOut(pub Duration);

/// A connection whose reads fail with [`IdleTimedOut`] once no byte moved
/// either way for its timeout (checked every quarter of it, as
/// [`Activity::idle_for`]), which ends whatever serves it (and tells
/// [`IdleIo::expired`]: the server that ended may not say why).
#[derive(Debug)]
pub struct IdleIo<I> {
    io: I,
    timeout: Duration,
    /// Reads and writes that moved bytes, and how many the last check saw.
    moves: u64,
    seen: u64,
    /// How long the checks found nothing moved.
    quiet: Duration,
    check: Pin<Box<Sleep>>,
    expired: Arc<AtomicBool>,
}

impl<I> IdleIo<I> {
    pub fn new(io: I, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            moves: 0,
            seen: 0,
            quiet: Duration::ZERO,
            check: Box::pin(tokio::time::sleep(timeout / 4)),
            expired: Arc::default(),
        }
    }

    /// Turns true when the connection timed out.
    pub fn expired(&self) -> Arc<AtomicBool> {
        self.expired.clone()
    }

    /// Counts a write that moved bytes.
    fn count(&mut self, written: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(Ok(1..)) = written {
            self.moves += 1;
        }
        written
    }

    /// `Ready` once the connection has been idle for its timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let every = self.timeout / 4;
        loop {
            ready!(self.check.as_mut().poll(cx));
            if self.moves == self.seen {
                self.quiet += every;
                if self.quiet >= self.timeout {
                    self.expired.store(true, Ordering::Relaxed);
                    return Poll::Ready(());
                }
            } else {
                (self.seen, self.quiet) = (self.moves, Duration::ZERO);
            }
            let next = self.check.deadline() + every;
            self.check.as_mut().reset(next);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for IdleIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(read) => {
                if buf.filled().len() > before {
                    this.moves += 1;
                }
                Poll::Ready(read)
            }
            Poll::Pending => this.poll_idle(cx).map(|()| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    IdleTimedOut(this.timeout),
                ))
            }),
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for IdleIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, data);
        this.count(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.count(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        time::Instant,
    };

    #[tokio::test(start_paused = true)]
    async fn an_idle_io_fails_its_read_once_nothing_moved_for_its_timeout() {
        let (mut peer, ours) = tokio::io::duplex(1024);
        let mut ours = IdleIo::new(ours, Duration::from_secs(10));
        let expired = ours.expired();
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            loop {
                match ours.read(&mut buf).await {
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(err) => return (got, err, Instant::now()),
                }
            }
        });
        // Bytes every 6 s keep it open past the timeout.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            peer.write_all(b"x").await.unwrap();
        }
        let last = Instant::now();
        let (got, err, at) = reading.await.unwrap();
        assert_eq!(got, b"xxx");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(expired.load(Ordering::Relaxed));
        // Checked every quarter of the timeout.
        let quiet = at - last;
        assert!(quiet >= Duration::from_secs(10), "{quiet:?}");
        assert!(quiet <= Duration::from_millis(12_500), "{quiet:?}");
    }
}
