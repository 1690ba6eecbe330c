//! Bodies: what arrives from a peer ([`Received`], over HTTP/1 through
//! hyper or over HTTP/2 through [`crate::http2`]), and the response bodies the proxy
//! sends ([`ProxyBody`]: an upstream body observed for metrics, or a small
//! body the proxy made itself, an error).
//!
//! Metrics are recorded once per response, when its stream ends (reading
//! `grpc-status` from trailers) or when it is dropped unfinished (a client
//! that went away, an upstream that reset).

use crate::{
    http2::RecvBody,
    metrics::{RouteLabels, RouteMetrics, paths::Call},
};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::time::Instant;

/// Records one response's outcome when it is finished or dropped: into its
/// endpoint's metrics and, for the answer the client gets, its route's.
#[derive(Debug)]
pub struct Recorder {
    metrics: Arc<RouteMetrics>,
    started: Instant,
    status_code: u16,
    grpc_status: Option<u8>,
    call: Option<Call>,
}

impl Recorder {
    pub fn new(metrics: Arc<RouteMetrics>, started: Instant) -> Self {
        metrics.request();
        Self {
            metrics,
            started,
            status_code: 0,
            grpc_status: None,
            call: None,
        }
    }

    /// This response is the client's answer to `call`: it ends the call
    /// too.
    pub fn answers(&mut self, call: Call) {
        self.call = Some(call);
    }

    /// The route whose metrics it records into.
    pub fn route(&self) -> &RouteLabels {
        self.metrics.route()
    }

    /// Notes the response head; a trailers-only gRPC response carries its
    /// status here.
    pub fn head(&mut self, status: http::StatusCode, headers: &http::HeaderMap) {
        self.status_code = status.as_u16();
        if let Some(code) = grpc_status(headers) {
            self.grpc_status = Some(code);
        }
    }

    fn trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some(code) = grpc_status(trailers) {
            self.grpc_status = Some(code);
        }
    }

    pub fn finish(self, complete: bool) {
        self.metrics.response(
            self.status_code,
            self.grpc_status,
            complete,
            self.started.elapsed().as_secs_f64(),
        );
        if let Some(call) = self.call {
            call.answered(self.status_code, self.grpc_status, complete);
        }
    }
}

/// The gRPC status a response head carries (a trailers-only response).
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u8> {
    headers
        .get(crate::names::GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A body arriving from a peer: a client's request or an upstream's
/// response.
#[derive(Debug)]
pub enum Received {
    Http1(Incoming),
    Http2(RecvBody),
}

/// A received body failed: the peer reset the stream, or broke the
/// connection or the protocol.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Http1(hyper::Error),
    #[error(transparent)]
    Http2(crate::http2::StreamError),
}

impl Body for Received {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Received::Http1(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BodyError::Http1))),
            Received::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BodyError::Http2))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Received::Http1(body) => body.is_end_stream(),
            Received::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Received::Http1(body) => body.size_hint(),
            Received::Http2(body) => body.size_hint(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The body of every response the proxy returns.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        Upstream { #[pin] inner: Received, recorder: Option<Recorder> },
        Local { data: Option<Bytes> },
    }

    impl PinnedDrop for ProxyBody {
        fn drop(this: Pin<&mut Self>) {
            if let ProxyBodyProj::Upstream { recorder, .. } = this.project()
                && let Some(recorder) = recorder.take()
            {
                recorder.finish(false);
            }
        }
    }
}

impl ProxyBody {
    /// `recorder` must have seen the response head already.
    pub fn upstream(inner: Received, recorder: Recorder) -> Self {
        // An empty body (a trailers-only gRPC response) is never polled:
        // it is finished as it is made.
        let recorder = if inner.is_end_stream() {
            recorder.finish(true);
            None
        } else {
            Some(recorder)
        };
        ProxyBody::Upstream { inner, recorder }
    }

    pub fn local(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        ProxyBody::Local {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            ProxyBodyProj::Local { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBodyProj::Upstream {
                mut inner,
                recorder,
            } => {
                let polled = inner.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        // Trailers end a stream, and a server may never poll
                        // past them; record now rather than at drop.
                        if let Some(trailers) = frame.trailers_ref() {
                            if let Some(mut recorder) = recorder.take() {
                                recorder.trailers(trailers);
                                recorder.finish(true);
                            }
                        } else if inner.is_end_stream()
                            && let Some(recorder) = recorder.take()
                        {
                            recorder.finish(true);
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(recorder) = recorder.take() {
                            recorder.finish(true);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(recorder) = recorder.take() {
                            recorder.finish(false);
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local { data } => data.is_none(),
            // Passed through so that an empty upstream body stays empty: a
            // trailers-only gRPC response must stay one HEADERS frame with
            // END_STREAM, which strict clients (grpcio) require.
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

/// A body of fixed frames, as a client would send them; for tests.
#[cfg(test)]
pub(crate) struct Frames(pub std::collections::VecDeque<Frame<Bytes>>);

#[cfg(test)]
impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}
