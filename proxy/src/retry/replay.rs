//! A request body that can be sent again: it forwards the client's body as
//! it arrives and keeps a copy of it, up to a limit, so that a retry can
//! replay what was already sent and then continue from the client.
//!
//! Every attempt gets its own [`ReplayBody`] over one shared state. Starting
//! a new attempt supersedes the previous one: the old body answers an error
//! if it is polled again, which makes its HTTP client abort that stream (an
//! HTTP/2 RST_STREAM, a closed HTTP/1 connection) instead of waiting forever.
//! Once more than the limit went by, nothing can be replayed and the body
//! only streams through, with nothing kept.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

/// The body error type the proxy's upstream clients accept.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An older attempt's body was polled after a retry replaced it.
#[derive(Debug, thiserror::Error)]
#[error("the request body was handed to a retry")]
pub struct Superseded;

#[derive(Debug)]
struct Shared<B> {
    source: B,
    /// The source ended (after its data, or with trailers).
    source_done: bool,
    /// What the source sent so far, while it fits in `max_bytes`.
    chunks: Vec<Bytes>,
    buffered_bytes: usize,
    trailers: Option<http::HeaderMap>,
    /// Too large to keep, or the source failed: no replay is possible.
    unreplayable: bool,
    /// The source failed: its client broke the request off.
    source_failed: bool,
    max_bytes: usize,
    /// The attempt whose body may read; older ones are superseded.
    generation: u32,
}

/// One attempt's view of a request body.
#[derive(Debug)]
pub struct ReplayBody<B> {
    shared: Arc<Mutex<Shared<B>>>,
    generation: u32,
    /// Index into `chunks` of the next buffered chunk this attempt sends.
    next_chunk: usize,
    sent_trailers: bool,
}

impl<B> ReplayBody<B> {
    /// The first attempt's body; up to `max_bytes` are kept for replay.
    pub fn new(source: B, max_bytes: usize) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                source,
                source_done: false,
                chunks: Vec::new(),
                buffered_bytes: 0,
                trailers: None,
                unreplayable: false,
                source_failed: false,
                max_bytes,
                generation: 0,
            })),
            generation: 0,
            next_chunk: 0,
            sent_trailers: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared<B>> {
        self.shared.lock().expect("replay lock is never poisoned")
    }

    /// Whether a retry could send the whole body again.
    pub fn can_replay(&self) -> bool {
        !self.lock().unreplayable
    }

    /// Whether the client's body failed (it reset the stream or went away
    /// while sending): then a failed attempt is the client's doing, not the
    /// endpoint's.
    pub fn source_failed(&self) -> bool {
        self.lock().source_failed
    }

    /// A body for the next attempt, replaying from the start; the previous
    /// attempts' bodies stop. `None` when the body cannot be replayed.
    pub fn retry(&self) -> Option<Self> {
        let mut shared = self.lock();
        if shared.unreplayable {
            return None;
        }
        shared.generation += 1;
        Some(Self {
            shared: self.shared.clone(),
            generation: shared.generation,
            next_chunk: 0,
            sent_trailers: false,
        })
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut shared = this.shared.lock().expect("replay lock is never poisoned");
        if shared.generation != this.generation {
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        // First what earlier attempts already read from the client.
        if !shared.unreplayable && this.next_chunk < shared.chunks.len() {
            let chunk = shared.chunks[this.next_chunk].clone();
            this.next_chunk += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if shared.source_done {
            return match &shared.trailers {
                Some(trailers) if !this.sent_trailers => {
                    this.sent_trailers = true;
                    Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))))
                }
                _ => Poll::Ready(None),
            };
        }
        // Then the rest, kept while it fits.
        let shared = &mut *shared;
        match Pin::new(&mut shared.source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.source_done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                shared.unreplayable = true;
                shared.source_failed = true;
                shared.chunks = Vec::new();
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if !shared.unreplayable {
                        if shared.buffered_bytes + data.len() > shared.max_bytes {
                            shared.unreplayable = true;
                            shared.chunks = Vec::new();
                        } else {
                            shared.buffered_bytes += data.len();
                            shared.chunks.push(data.clone());
                            this.next_chunk = shared.chunks.len();
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        shared.source_done = true;
                        shared.trailers = Some(trailers.clone());
                        this.sent_trailers = true;
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    // Neither data nor trailers: a frame kind newer than
                    // this proxy; there is nothing to forward.
                    Err(_) => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                },
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.lock();
        if shared.generation != self.generation {
            return false;
        }
        let replay_left = !shared.unreplayable && self.next_chunk < shared.chunks.len();
        if replay_left {
            return false;
        }
        if shared.source_done {
            shared.trailers.is_none() || self.sent_trailers
        } else {
            shared.source.is_end_stream()
        }
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.lock();
        let replay_left: u64 = if shared.unreplayable {
            0
        } else {
            shared.chunks[self.next_chunk.min(shared.chunks.len())..]
                .iter()
                .map(|c| c.len() as u64)
                .sum()
        };
        if shared.source_done {
            return SizeHint::with_exact(replay_left);
        }
        let source = shared.source.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(source.lower() + replay_left);
        if let Some(upper) = source.upper() {
            hint.set_upper(upper + replay_left);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Frames;
    use http_body_util::BodyExt as _;

    fn body(chunks: &[&'static str], trailers: bool) -> Frames {
        let mut frames: std::collections::VecDeque<_> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c.as_bytes())))
            .collect();
        if trailers {
            let mut map = http::HeaderMap::new();
            map.insert("grpc-status", "0".parse().unwrap());
            frames.push_back(Frame::trailers(map));
        }
        Frames(frames)
    }

    async fn read_all<B>(body: B) -> (Bytes, Option<http::HeaderMap>)
    where
        B: Body<Data = Bytes, Error = BoxError>,
    {
        let collected = body.collect().await.expect("no error");
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn a_retry_sends_the_same_bytes_and_trailers() {
        let first = ReplayBody::new(body(&["ab", "cd"], true), 64);
        let second = first.retry().expect("replayable");
        // The first attempt never read; the second reads from the source.
        let (bytes, trailers) = read_all(second).await;
        assert_eq!(bytes, "abcd");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
    }

    #[tokio::test]
    async fn a_retry_after_a_full_read_replays_from_the_copy() {
        let mut first = ReplayBody::new(body(&["ab", "cd"], true), 64);
        while let Some(frame) = first.frame().await {
            frame.unwrap();
        }
        let third = first.retry().unwrap().retry().unwrap();
        assert!(!third.is_end_stream());
        assert_eq!(third.size_hint().exact(), Some(4));
        let (bytes, trailers) = read_all(third).await;
        assert_eq!(bytes, "abcd");
        assert!(trailers.is_some());
    }

    #[tokio::test]
    async fn a_retry_mid_body_replays_then_continues_from_the_source() {
        let mut first = ReplayBody::new(body(&["ab", "cd", "ef"], false), 64);
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        let second = first.retry().unwrap();
        let err = first.frame().await.unwrap().unwrap_err();
        assert!(err.is::<Superseded>(), "{err}");
        assert_eq!(read_all(second).await.0, "abcdef");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_streams_through_but_cannot_be_replayed() {
        let mut first = ReplayBody::new(body(&["abc", "def", "ghi"], false), 5);
        let mut seen = Vec::new();
        while let Some(frame) = first.frame().await {
            seen.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(seen, b"abcdefghi");
        assert!(!first.can_replay());
        assert!(first.retry().is_none());
        assert!(!first.source_failed(), "too large is not a failure");
    }

    #[tokio::test]
    async fn a_client_body_that_fails_is_marked_as_the_clients_doing() {
        /// One chunk, then the client's connection breaks.
        struct Broken(bool);
        impl Body for Broken {
            type Data = Bytes;
            type Error = std::io::Error;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                if std::mem::replace(&mut self.0, true) {
                    let broken = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
                    return Poll::Ready(Some(Err(broken)));
                }
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"ab")))))
            }
        }
        let mut first = ReplayBody::new(Broken(false), 64);
        assert!(first.frame().await.unwrap().is_ok());
        assert!(!first.source_failed());
        assert!(first.frame().await.unwrap().is_err());
        assert!(first.source_failed());
        assert!(first.retry().is_none());
    }

    #[tokio::test]
    async fn an_empty_body_is_at_its_end_from_the_start() {
        let first = ReplayBody::new(http_body_util::Empty::<Bytes>::new(), 64);
        assert!(first.is_end_stream());
        let second = first.retry().unwrap();
        assert!(second.is_end_stream());
    }
}
