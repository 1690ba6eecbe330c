//! Sending a body on an HTTP/2 stream as fast as the peer's window allows:
//! a served response, or a request to an upstream.

use crate::{body::BodyError, retry::replay::BoxError};
use bytes::Bytes;
use h2::{Reason, SendStream};
use http_body::Body;
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

/// How a [`Pipe`] ended.
#[derive(Debug)]
pub enum Piped {
    /// The whole body was sent.
    Sent,
    /// The peer reset the stream or the connection closed.
    PeerGone,
    /// The body failed (its own sender went away); the stream was reset.
    BodyFailed(BoxError),
}

pin_project_lite::pin_project! {
    /// Sends a body on an HTTP/2 stream as fast as the peer's window allows,
    /// then its trailers or the end of the stream. Stops when the peer resets
    /// the stream; resets it when the body fails.
    pub struct Pipe<B> {
        #[pin]
        body: B,
        stream: SendStream<Bytes>,
        // Data read from the body and not yet sent, and whether it ends it.
        pending: Option<(Bytes, bool)>,
    }
}

impl<B> Pipe<B> {
    pub fn new(body: B, stream: SendStream<Bytes>) -> Self {
        Self {
            body,
            stream,
            pending: None,
        }
    }

    /// Gives up on the stream: resets it with `reason`.
    pub fn reset(self: Pin<&mut Self>, reason: Reason) {
        self.project().stream.send_reset(reason);
    }
}

impl<B> Future for Pipe<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Piped;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Piped> {
        let mut this = self.project();
        loop {
            if let Some((data, end)) = this.pending.as_mut() {
                this.stream.reserve_capacity(data.len());
                let granted = match this.stream.capacity() {
                    0 => match ready!(this.stream.poll_capacity(cx)) {
                        Some(Ok(granted)) => granted,
                        // Reset or closed: nothing more can be sent.
                        Some(Err(_)) | None => return Poll::Ready(Piped::PeerGone),
                    },
                    granted => granted,
                };
                let chunk = data.split_to(granted.min(data.len()));
                let last = data.is_empty();
                let end_stream = last && *end;
                if last {
                    *this.pending = None;
                }
                if this.stream.send_data(chunk, end_stream).is_err() {
                    return Poll::Ready(Piped::PeerGone);
                }
                if end_stream {
                    return Poll::Ready(Piped::Sent);
                }
                continue;
            }
            let frame = match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Waiting on the body: notice a peer that gives up.
                    return this.stream.poll_reset(cx).map(|_| Piped::PeerGone);
                }
            };
            match frame {
                None => return Poll::Ready(finish(this.stream.send_data(Bytes::new(), true))),
                Some(Err(err)) => {
                    let err: BoxError = err.into();
                    tracing::debug!(%err, "body failed; resetting the stream");
                    this.stream.send_reset(reset_reason(&*err));
                    return Poll::Ready(Piped::BodyFailed(err));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = this.body.is_end_stream();
                        if data.is_empty() {
                            if end {
                                return Poll::Ready(finish(this.stream.send_data(data, true)));
                            }
                            continue;
                        }
                        *this.pending = Some((data, end));
                    }
                    Err(frame) => {
                        return Poll::Ready(match frame.into_trailers() {
                            Ok(trailers) => finish(this.stream.send_trailers(trailers)),
                            // A frame of a kind HTTP/2 has no use for.
                            Err(_) => Piped::Sent,
                        });
                    }
                },
            }
        }
    }
}

/// How a pipe ended after its last frame was handed to h2.
fn finish(sent: Result<(), h2::Error>) -> Piped {
    match sent {
        Ok(()) => Piped::Sent,
        Err(_) => Piped::PeerGone,
    }
}

/// The reset to pass on for a body that failed: the peer's own reason when
/// it was an HTTP/2 reset (a CANCEL stays a CANCEL), else INTERNAL_ERROR.
pub(super) fn reset_reason(err: &(dyn std::error::Error + 'static)) -> Reason {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(reason) = err.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        if let Some(BodyError::Http2(err)) = err.downcast_ref::<BodyError>()
            && let Some(reason) = err.reason()
        {
            return reason;
        }
        cause = err.source();
    }
    Reason::INTERNAL_ERROR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_passes_on_its_reason() {
        let err: BoxError = Box::new(BodyError::Http2(h2::Error::from(Reason::CANCEL)));
        assert_eq!(reset_reason(&*err), Reason::CANCEL);
        let err: BoxError = "something else".into();
        assert_eq!(reset_reason(&*err), Reason::INTERNAL_ERROR);
    }
}
