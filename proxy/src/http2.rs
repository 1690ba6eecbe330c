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

use crate::{
    body::{BodyError, ProxyBody, Received},
    limits::LimitsConfig,
    retry::replay::BoxError,
};
use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body, Frame};
use std::{
    collections::HashMap,
    future::{Future, poll_fn},
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
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
fn reset_reason(err: &(dyn std::error::Error + 'static)) -> Reason {
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

/// Why a request got no response over HTTP/2.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr} timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { addr: SocketAddr },
    #[error("HTTP/2 handshake with {addr} failed")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: h2::Error,
    },
    #[error("HTTP/2 request failed")]
    Request(#[source] h2::Error),
    /// The request's own body failed before a response came: its client
    /// reset the stream or went away. Not the upstream's doing.
    #[error("the request body failed")]
    RequestBody(#[source] BoxError),
}

/// One upstream connection's handle.
#[derive(Clone)]
struct Connection {
    sender: h2::client::SendRequest<Bytes>,
    /// Set when the connection's task ends, or once the peer said GOAWAY:
    /// no new request goes to it.
    closed: Arc<AtomicBool>,
}

/// Connections to upstreams: one multiplexed HTTP/2 connection per address,
/// shared by every request to it, opened on first use and again after it
/// closes. A request takes one uncontended lock to find its connection.
#[derive(Default)]
pub struct Client {
    connections: Mutex<HashMap<SocketAddr, Connection>>,
    /// Held while connecting, per address, so concurrent first requests
    /// share one new connection.
    connecting: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("http2::Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Sends `request` (with an absolute `http://ip:port/...` URI) to `addr`.
    /// The request body is sent while the response is awaited; a body still
    /// streaming when the response arrives continues in a task of its own.
    pub async fn send<B>(
        &self,
        addr: SocketAddr,
        request: http::Request<B>,
    ) -> Result<http::Response<RecvBody>, ClientError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let connection = match self.live(addr) {
            Some(connection) => connection,
            // Boxed: connecting is rare, and its future, large, would
            // otherwise be part of every request's.
            None => Box::pin(self.connect(addr)).await?,
        };
        // Waits while the connection is at its peer's stream limit.
        let mut sender = match connection.sender.ready().await {
            Ok(sender) => sender,
            Err(_) => {
                // Closed, or going away (the peer sent GOAWAY, and the
                // connection lives on only for the streams it had): new
                // requests go to a new connection.
                connection.closed.store(true, Ordering::Release);
                Box::pin(self.connect(addr))
                    .await?
                    .sender
                    .ready()
                    .await
                    .map_err(ClientError::Request)?
            }
        };
        let (head, body) = request.into_parts();
        let end = body.is_end_stream();
        let (mut response, stream) = sender
            .send_request(http::Request::from_parts(head, ()), end)
            .map_err(|err| {
                // A GOAWAY that arrived since `ready`: this request fails
                // (and may be retried elsewhere), the next one reconnects.
                if err.is_go_away() {
                    connection.closed.store(true, Ordering::Release);
                }
                ClientError::Request(err)
            })?;
        let response = if end {
            response.await.map_err(ClientError::Request)
        } else {
            let mut pipe = Some(Pipe::new(body, stream));
            let response = poll_fn(|cx| {
                if let Some(sending) = pipe.as_mut()
                    && let Poll::Ready(piped) = Pin::new(sending).poll(cx)
                {
                    pipe = None;
                    if let Piped::BodyFailed(err) = piped {
                        return Poll::Ready(Err(ClientError::RequestBody(err)));
                    }
                }
                Pin::new(&mut response)
                    .poll(cx)
                    .map_err(ClientError::Request)
            })
            .await;
            // A request still streaming (a client stream, a bidirectional
            // call) goes on beside its response.
            if let (Ok(_), Some(pipe)) = (&response, pipe) {
                tokio::spawn(pipe);
            }
            response
        };
        let response = response?;
        Ok(response.map(RecvBody::new))
    }

    fn live(&self, addr: SocketAddr) -> Option<Connection> {
        let connections = self
            .connections
            .lock()
            .expect("connection map lock is never poisoned");
        connections
            .get(&addr)
            .filter(|connection| !connection.closed.load(Ordering::Acquire))
            .cloned()
    }

    /// A new connection to `addr`, unless a concurrent request just made one.
    async fn connect(&self, addr: SocketAddr) -> Result<Connection, ClientError> {
        let gate = self
            .connecting
            .lock()
            .expect("connect map lock is never poisoned")
            .entry(addr)
            .or_default()
            .clone();
        let _connecting = gate.lock().await;
        if let Some(connection) = self.live(addr) {
            return Ok(connection);
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout { addr })?
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(CLIENT_STREAM_WINDOW)
            .initial_connection_window_size(CLIENT_CONNECTION_WINDOW)
            .max_send_buffer_size(CLIENT_SEND_BUFFER)
            .enable_push(false)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|source| ClientError::Handshake { addr, source })?;
        let closed = Arc::new(AtomicBool::new(false));
        let closed_by_task = closed.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%addr, %err, "upstream HTTP/2 connection ended with an error");
            }
            closed_by_task.store(true, Ordering::Release);
        });
        {
            // Connecting is rare: the moment to forget connections that
            // closed (endpoints gone, peers restarted), so neither map grows
            // with every address ever used.
            let mut connections = self
                .connections
                .lock()
                .expect("connection map lock is never poisoned");
            connections.retain(|_, connection| !connection.closed.load(Ordering::Acquire));
            let connection = Connection { sender, closed };
            connections.insert(addr, connection.clone());
            let live: Vec<SocketAddr> = connections.keys().copied().collect();
            drop(connections);
            self.connecting
                .lock()
                .expect("connect map lock is never poisoned")
                .retain(|a, gate| *a == addr || live.contains(a) || Arc::strong_count(gate) > 1);
            Ok(connection)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        body::{Frames, Recorder},
        metrics::{Direction, Metrics, RouteLabels},
    };
    use http_body_util::BodyExt as _;
    use std::{collections::VecDeque, time::Instant};
    use tokio::net::TcpListener;

    fn recorder() -> Recorder {
        let metrics = Arc::new(Metrics::default());
        let route = metrics.route(RouteLabels {
            direction: Direction::Inbound,
            target: "test".into(),
            endpoint: "test".into(),
        });
        Recorder::new(Arc::new(route), tokio::time::Instant::now())
    }

    /// Serves HTTP/2 on a fresh loopback port with `handle`.
    async fn server<H, F>(handle: H) -> SocketAddr
    where
        H: Fn(http::Request<Received>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = http::Response<ProxyBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (drain_tx, drain) = watch::channel(false);
        tokio::spawn(async move {
            let _drain_tx = drain_tx;
            while let Ok((conn, _)) = listener.accept().await {
                let (drain, handle) = (drain.clone(), handle.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &LimitsConfig::default(), drain, handle).await;
                });
            }
        });
        addr
    }

    fn request<B>(addr: SocketAddr, body: B) -> http::Request<B> {
        http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/echo"))
            .body(body)
            .unwrap()
    }

    #[tokio::test]
    async fn a_body_larger_than_every_window_is_echoed_whole_with_its_trailers() {
        // The request streams back as the response while it is still being
        // sent: both directions must release and wait for window, and the
        // request keeps streaming after the response head arrived.
        let addr = server(|request: http::Request<Received>| async move {
            http::Response::new(ProxyBody::upstream(request.into_body(), recorder()))
        })
        .await;
        let chunk: Bytes = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let chunks = 8 * 1024 * 1024 / chunk.len();
        let mut frames: VecDeque<_> = (0..chunks).map(|_| Frame::data(chunk.clone())).collect();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        frames.push_back(Frame::trailers(trailers));

        let client = Client::default();
        let response = client
            .send(addr, request(addr, Frames(frames)))
            .await
            .unwrap();
        let collected =
            tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
                .await
                .expect("the echo finishes")
                .unwrap();
        let trailers = collected.trailers().cloned();
        let bytes = collected.to_bytes();
        assert_eq!(bytes.len(), chunks * chunk.len());
        assert!(bytes.chunks(chunk.len()).all(|c| c == chunk));
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
    }

    #[tokio::test]
    async fn a_response_without_a_body_stays_one_headers_frame() {
        let addr = server(|_request| async move {
            let mut response = http::Response::new(ProxyBody::local(""));
            response
                .headers_mut()
                .insert("grpc-status", "14".parse().unwrap());
            response
        })
        .await;
        let response = Client::default()
            .send(addr, request(addr, Frames(VecDeque::new())))
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "14");
        assert!(
            response.body().is_end_stream(),
            "END_STREAM on the HEADERS frame"
        );
    }

    #[tokio::test]
    async fn a_client_that_gives_up_cancels_the_handler() {
        struct Dropped(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.take().map(|tx| tx.send(()));
            }
        }
        let (started_tx, started) = tokio::sync::mpsc::unbounded_channel();
        let addr = server(move |_request| {
            let started_tx = started_tx.clone();
            async move {
                let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
                let _guard = Dropped(Some(dropped_tx));
                let _ = started_tx.send(dropped);
                std::future::pending::<()>().await;
                unreachable!()
            }
        })
        .await;
        let client = Client::default();
        let mut started = started;
        let dropped = {
            let sending = client.send(addr, request(addr, Frames(VecDeque::new())));
            tokio::pin!(sending);
            tokio::select! {
                _ = &mut sending => panic!("the handler never answers"),
                dropped = started.recv() => dropped.unwrap(),
            }
            // Leaving this block drops the request: RST_STREAM(CANCEL).
        };
        tokio::time::timeout(Duration::from_secs(10), dropped)
            .await
            .expect("the handler is dropped when its client resets the stream")
            .unwrap();
    }

    #[tokio::test]
    async fn after_a_goaway_new_requests_go_to_a_new_connection() {
        // The first connection is drained (GOAWAY) while a request holds it
        // open; later connections are not.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (drain_first, drain) = watch::channel(false);
        let release = Arc::new(tokio::sync::Notify::new());
        let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
        let handle = {
            let release = release.clone();
            move |request: http::Request<Received>| {
                let (release, held_tx) = (release.clone(), held_tx.clone());
                async move {
                    if request.uri().path() == "/hold" {
                        let _ = held_tx.send(());
                        release.notified().await;
                    }
                    http::Response::new(ProxyBody::local("ok"))
                }
            }
        };
        tokio::spawn(async move {
            let mut first = Some(drain);
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                let drain = first.take().unwrap_or_else(|| watch::channel(false).1);
                let handle = handle.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, &LimitsConfig::default(), drain, handle).await;
                });
            }
        });

        let client = Arc::new(Client::default());
        let uri = |path: &str| format!("http://{addr}{path}");
        let get = |path: &str| {
            http::Request::builder()
                .uri(uri(path))
                .body(Frames(VecDeque::new()))
                .unwrap()
        };
        let holding = tokio::spawn({
            let (client, request) = (client.clone(), get("/hold"));
            async move { client.send(addr, request).await.map(|r| r.status()) }
        });
        held.recv().await.unwrap();
        drain_first.send(true).unwrap();

        // Requests go on while the old connection drains: none may fail.
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut sent = 0;
        while Instant::now() < deadline && sent < 200 {
            let response = client.send(addr, get("/quick")).await;
            assert_eq!(
                response.unwrap().status(),
                200,
                "request {sent} after GOAWAY"
            );
            sent += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        release.notify_one();
        let held_status = tokio::time::timeout(Duration::from_secs(10), holding)
            .await
            .expect("the held request finishes on the draining connection")
            .unwrap();
        assert_eq!(held_status.unwrap(), 200);
    }

    #[test]
    fn a_reset_passes_on_its_reason() {
        let err: BoxError = Box::new(BodyError::Http2(h2::Error::from(Reason::CANCEL)));
        assert_eq!(reset_reason(&*err), Reason::CANCEL);
        let err: BoxError = "something else".into();
        assert_eq!(reset_reason(&*err), Reason::INTERNAL_ERROR);
    }
}
