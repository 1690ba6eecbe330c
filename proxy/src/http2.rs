//! HTTP/2 on the `h2` library, both ways: serving a client's connection,
//! and the one multiplexed connection per upstream address.
//!
//! Why not through hyper, as HTTP/1 goes: hyper sends every request through
//! a channel to a dispatch task and spawns two tasks per request it sends
//! (the response and the request body), each of which hands frames to its
//! connection and wakes it. Here a request is written to the upstream
//! connection by the stream's own task, and a request body that is complete
//! before its response (every unary call) is sent without a task of its
//! own: per request, one task (the served stream) instead of three, and no
//! channel. The profile and the ratios are in docs/benchmarks.md.
//!
//! Flow control: a received body releases its window as it is read, so a
//! reader that stops slows its sender; a body is sent only as fast as the
//! peer grants window, so nothing buffers beyond what HTTP/2 allows.
//!
//! Layout: serving (here), [`client`] (the upstream connections), [`pipe`]
//! (sending a body on a stream).

mod client;
mod pipe;

pub use client::{Client, ClientError};
pub use pipe::{Pipe, Piped};

use crate::{
    body::{ProxyBody, Received},
    limits::LimitsConfig,
};
use bytes::Bytes;
use h2::RecvStream;
use http_body::{Body, Frame};
use std::{
    future::{Future, poll_fn},
    pin::{Pin, pin},
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};
use tracing::Instrument as _;

// Windows and buffers as hyper sets them: h2's own defaults (64 KiB
// windows) would throttle any body larger than a few messages.
const SERVER_STREAM_WINDOW: u32 = 1024 * 1024;
const SERVER_CONNECTION_WINDOW: u32 = 1024 * 1024;
const SERVER_SEND_BUFFER: usize = 400 * 1024;
const CLIENT_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CLIENT_CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const CLIENT_SEND_BUFFER: usize = 1024 * 1024;

/// How long connecting to an upstream may take, HTTP/1 or HTTP/2.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A body arriving over HTTP/2: a client's request or an upstream's
/// response. Reading it releases flow-control window to its sender.
#[derive(Debug)]
pub struct RecvBody {
    stream: RecvStream,
    data_done: bool,
}

impl RecvBody {
    pub fn new(stream: RecvStream) -> Self {
        Self {
            stream,
            data_done: false,
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Fails only when the stream is already gone.
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => self.data_done = true,
            }
        }
        match ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(err) => Poll::Ready(Some(Err(err))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}

/// Serves one client's HTTP/2 connection with `handle` as the per-request
/// function, until the connection closes. When `drain` turns true it sends
/// GOAWAY and lets the streams in flight finish.
pub async fn serve<I, H, F>(
    io: I,
    limits: &LimitsConfig,
    mut drain: watch::Receiver<bool>,
    handle: H,
) -> Result<(), h2::Error>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: Fn(http::Request<Received>) -> F + Clone + Send + 'static,
    F: Future<Output = http::Response<ProxyBody>> + Send + 'static,
{
    let mut connection = h2::server::Builder::new()
        .initial_window_size(SERVER_STREAM_WINDOW)
        .initial_connection_window_size(SERVER_CONNECTION_WINDOW)
        .max_send_buffer_size(SERVER_SEND_BUFFER)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.transport_header_bytes()).unwrap_or(u32::MAX))
        .handshake::<_, Bytes>(io)
        .await?;
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = connection.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    // A task per stream, so that a proxy with several
                    // workers spreads one connection's streams over them.
                    // Polling the streams inside this task instead measured
                    // the same CPU per request (docs/benchmarks.md).
                    let stream = respond_to(request, respond, handle.clone());
                    tokio::spawn(stream.in_current_span());
                }
                Some(Err(err)) => return Err(err),
                // Closed, and after a GOAWAY only once every stream ended.
                None => return Ok(()),
            },
            // The watch guard must not live across an await.
            _ = async { drain.wait_for(|draining| *draining).await.is_ok() }, if !draining => {
                draining = true;
                connection.graceful_shutdown();
            }
        }
    }
}

/// One stream of a served connection: the handler's response, then its
/// body. A client that resets the stream cancels both (and with them the
/// upstream request).
async fn respond_to<H, F>(
    request: http::Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    handle: H,
) where
    H: Fn(http::Request<Received>) -> F,
    F: Future<Output = http::Response<ProxyBody>>,
{
    let request = request.map(|body| Received::Http2(RecvBody::new(body)));
    let mut response = pin!(handle(request));
    let response = poll_fn(|cx| {
        if let Poll::Ready(response) = response.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        respond.poll_reset(cx).map(|_| None)
    })
    .await;
    let Some(response) = response else {
        return;
    };
    let (head, body) = response.into_parts();
    // A response without a body (a trailers-only gRPC status) stays one
    // HEADERS frame, as strict clients require.
    let end = body.is_end_stream();
    match respond.send_response(http::Response::from_parts(head, ()), end) {
        Ok(stream) if !end => {
            // How it ended is the response's business: the recorder saw it.
            let _ = Pipe::new(body, stream).await;
        }
        Ok(_) => {}
        Err(err) => tracing::debug!(%err, "cannot send a response head"),
    }
}

#[cfg(test)]
mod tests;
