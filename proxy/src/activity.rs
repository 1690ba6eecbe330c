//! When bytes or frames last moved on a relay, a stream or a connection,
//! and what ends them once nothing has moved for a while: the idle
//! timeouts of opaque relays ([`crate::tcp`]), of HTTP/2 streams
//! ([`crate::http2`]), of HTTP/1 connections ([`crate::http`]) and of the
//! admin server's connections.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// When something last moved, in milliseconds since it was made.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Something moved now.
    pub fn moved(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        // Only ever forward; a plain store would do, but a read is cheaper
        // than a write when nothing changed this millisecond.
        if self.last_ms.load(Ordering::Relaxed) != ms {
            self.last_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// Returns once nothing moved for `idle`. One timer, set again only
    /// when it fires and something moved meanwhile.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
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
/// either way for its timeout, which ends whatever serves it (and tells
/// [`IdleIo::expired`]: the server that ended may not say why). One timer,
/// set again only when it fires and bytes moved meanwhile.
#[derive(Debug)]
pub struct IdleIo<I> {
    io: I,
    timeout: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    expired: Arc<AtomicBool>,
}

impl<I> IdleIo<I> {
    pub fn new(io: I, timeout: Duration) -> Self {
        let last = Instant::now();
        Self {
            io,
            timeout,
            last,
            timer: Box::pin(tokio::time::sleep_until(last + timeout)),
            expired: Arc::default(),
        }
    }

    /// Turns true when the connection timed out.
    pub fn expired(&self) -> Arc<AtomicBool> {
        self.expired.clone()
    }

    /// `Ready` once the connection has been idle for its timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.last + self.timeout;
            if Instant::now() >= deadline {
                self.expired.store(true, Ordering::Relaxed);
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(deadline);
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
                    this.last = Instant::now();
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
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            this.last = Instant::now();
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            this.last = Instant::now();
        }
        written
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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
        assert_eq!(at - last, Duration::from_secs(10));
    }
}
