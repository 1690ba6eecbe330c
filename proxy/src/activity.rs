//! When bytes or frames last moved on a relay or a stream, and a wait that
//! ends once nothing has moved for a while: the idle timeouts of opaque
//! relays ([`crate::tcp`]) and of HTTP/2 streams ([`crate::http2`]).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::time::Instant;

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
