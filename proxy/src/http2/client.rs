//! The upstream side: multiplexed HTTP/2 connections per endpoint address
//! (and identity, over mTLS), shared by every request to it: one while it
//! has room, more (a few) when the streams open on it reach what the
//! endpoint allows, so that one client holding many streams does not make
//! every other client's request wait behind them.

use super::{
    CLIENT_CONNECTION_WINDOW, CONNECT_TIMEOUT, STREAM_WINDOW,
    connection::{Driver, Piped, RecvBody, Requester, StreamError},
};
use crate::{
    retry::replay::BoxError,
    tls::{Alpn, MeshTls},
    wire::conn::{Config, Role},
};
use bytes::Bytes;
use http_body::Body;
use std::{
    collections::HashMap,
    future::{Future, poll_fn},
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::Poll,
};
use tokio::net::TcpStream;

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
    #[error("TLS with {addr} failed (expected identity {identity})")]
    Tls {
        addr: SocketAddr,
        identity: Arc<str>,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/2 request failed")]
    Request(#[source] StreamError),
    /// The request failed with its connection, right after the proxy
    /// cancelled many streams on it for clients that reset theirs: what an
    /// HTTP/2 server's reset limit does (GOAWAY, often read only as a
    /// broken connection), not a failure of the endpoint's own.
    #[error("HTTP/2 request failed after {cancels} recent cancellations on its connection")]
    Provoked {
        cancels: u32,
        #[source]
        source: StreamError,
    },
    /// The request's own body failed before a response came: its client
    /// reset the stream or went away. Not the upstream's doing.
    #[error("the request body failed")]
    RequestBody(#[source] BoxError),
}

/// One upstream connection's handle.
#[derive(Clone)]
struct Connection {
    sender: Requester,
    streams: Arc<Streams>,
}

/// What a connection's requests share: whether it closed, how many are
/// open, and how many the proxy cancelled lately.
#[derive(Debug, Default)]
struct Streams {
    /// Set when the connection's task ends, or once a request found that
    /// the peer said GOAWAY: no new request goes to it.
    closed: AtomicBool,
    open: AtomicUsize,
    cancels: Mutex<Decaying>,
}

/// A count that halves every second: recent events, without the edges of
/// a window. Touched only when a stream is cancelled or fails.
#[derive(Debug, Default)]
struct Decaying {
    value: f64,
    at: Option<tokio::time::Instant>,
}

impl Decaying {
    fn now(&mut self) -> f64 {
        let now = tokio::time::Instant::now();
        if let Some(at) = self.at {
            self.value *= 0.5f64.powf(now.duration_since(at).as_secs_f64());
        }
        self.at = Some(now);
        self.value
    }
}

/// Recent cancellations on a connection from which its failure is taken
/// for the endpoint's answer to them: HTTP/2 servers allow about 20 resets
/// before they accept a stream (h2, hence hyper and tonic), and a steady
/// rate of cancellations reaches this at about 14 a second.
const PROVOKING_CANCELS: f64 = 20.0;

impl Streams {
    fn cancelled(&self) {
        let mut cancels = self
            .cancels
            .lock()
            .expect("cancel count lock is never poisoned");
        cancels.now();
        cancels.value += 1.0;
    }

    /// How `err`, which failed a request on this connection, is told.
    fn failed(&self, err: StreamError) -> ClientError {
        let cancels = self
            .cancels
            .lock()
            .expect("cancel count lock is never poisoned")
            .now();
        if cancels >= PROVOKING_CANCELS {
            ClientError::Provoked {
                cancels: cancels as u32,
                source: err,
            }
        } else {
            ClientError::Request(err)
        }
    }
}

impl Connection {
    fn is_live(&self) -> bool {
        !self.streams.closed.load(Ordering::Acquire)
    }

    /// Whether a new stream would open at once: fewer streams open than
    /// the endpoint allows (its SETTINGS) and than [`MAX_STREAMS_PER_CONNECTION`].
    fn has_room(&self) -> bool {
        let open = self.streams.open.load(Ordering::Relaxed);
        open < MAX_STREAMS_PER_CONNECTION && open < self.sender.max_streams()
    }
}

/// Streams one upstream connection carries at most: with the connection
/// window this many times a stream's, streams that stop being read (their
/// client gives no window) can hold only their own windows, never the
/// connection's.
pub(super) const MAX_STREAMS_PER_CONNECTION: usize = 256;

/// Connections to one endpoint at most. Past them all being full, a
/// request waits on the least busy one for the endpoint's stream limit.
const MAX_CONNECTIONS_PER_ENDPOINT: usize = 4;

/// A request's place on its connection, given back when its response
/// ends (or fails), so the pool knows which connection has room. One given
/// back before then was cancelled by the proxy (its client reset or went
/// away), which the connection counts.
#[derive(Debug)]
pub struct StreamSlot {
    streams: Arc<Streams>,
    ended: bool,
}

impl StreamSlot {
    fn take(streams: &Arc<Streams>) -> Self {
        streams.open.fetch_add(1, Ordering::Relaxed);
        Self {
            streams: streams.clone(),
            ended: false,
        }
    }

    /// The response ended, or the request failed: not cancelled.
    pub(super) fn ended(&mut self) {
        self.ended = true;
    }

    pub(super) fn is_ended(&self) -> bool {
        self.ended
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.streams.open.fetch_sub(1, Ordering::Relaxed);
        if !self.ended {
            self.streams.cancelled();
        }
    }
}

/// Where a connection goes: an address, and the identity it must prove
/// over mTLS (`None`: plaintext).
type Key = (SocketAddr, Option<Arc<str>>);

/// Connections to upstreams: multiplexed HTTP/2 connections per address,
/// shared by every request to it, opened on first use, again after one
/// closes, and beside it when it is full. A request takes one uncontended
/// lock to find its connection.
#[derive(Default)]
pub struct Client {
    /// Looked up on every request: foldhash, not SipHash (keys come from
    /// discovery, not from clients).
    connections: Mutex<foldhash::HashMap<Key, Vec<Connection>>>,
    /// Held while connecting, per address, so concurrent first requests
    /// share one new connection.
    connecting: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    tls: Option<Arc<MeshTls>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("http2::Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client that speaks mTLS to servers with identities when `tls` is set.
    pub fn new(tls: Option<Arc<MeshTls>>) -> Self {
        Self {
            tls,
            ..Self::default()
        }
    }

    /// Sends `request` (with an absolute `http://ip:port/...` URI) to `addr`,
    /// over mTLS to a server proving `server_id` when one is given.
    /// The request body is sent while the response is awaited; a body still
    /// streaming when the response arrives continues in a task of its own.
    pub async fn send<B>(
        &self,
        addr: SocketAddr,
        server_id: Option<&Arc<str>>,
        request: http::Request<B>,
    ) -> Result<http::Response<RecvBody>, ClientError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let key = (addr, server_id.cloned());
        let connection = match self.pick(&key) {
            Pick::Use(connection) => connection,
            // Boxed: connecting is rare, and its future, large, would
            // otherwise be part of every request's.
            Pick::Open => Box::pin(self.connect(&key)).await?,
        };
        let (head, body) = request.into_parts();
        let end = body.is_end_stream();
        let (sent, streams) = match connection.sender.send_request(&head, end).await {
            Ok(sent) => (sent, connection.streams),
            Err(err) => {
                // Closed, or going away (the peer sent GOAWAY, and the
                // connection lives on only for the streams it had): this
                // and new requests go to a new connection.
                connection.streams.closed.store(true, Ordering::Release);
                let connection = Box::pin(self.connect(&key)).await?;
                match connection.sender.send_request(&head, end).await {
                    Ok(sent) => (sent, connection.streams),
                    Err(second) => {
                        connection.streams.closed.store(true, Ordering::Release);
                        tracing::debug!(%err, %second, "a new connection refused the request too");
                        return Err(connection.streams.failed(second));
                    }
                }
            }
        };
        let mut slot = StreamSlot::take(&streams);
        let failed = |err| streams.failed(err);
        let (mut response, stream) = sent;
        let response = if end {
            (&mut response).await.map_err(failed)
        } else {
            let mut pipe = Some(stream.pipe(body));
            let response = poll_fn(|cx| {
                if let Some(sending) = pipe.as_mut()
                    && let Poll::Ready(piped) = Pin::new(sending).poll(cx)
                {
                    pipe = None;
                    if let Piped::BodyFailed(err) = piped {
                        return Poll::Ready(Err(ClientError::RequestBody(err)));
                    }
                }
                Pin::new(&mut response).poll(cx).map_err(failed)
            })
            .await;
            // A request still streaming (a client stream, a bidirectional
            // call) goes on beside its response.
            if let (Ok(_), Some(pipe)) = (&response, pipe) {
                tokio::spawn(pipe);
            }
            response
        };
        match &response {
            // Its client's body failed: the stream was reset for it, which
            // counts as cancelled.
            Err(ClientError::RequestBody(_)) => {}
            // Failed, or nothing to read (a trailers-only response).
            Err(_) => slot.ended(),
            Ok(response) if response.body().is_end_stream() => slot.ended(),
            Ok(_) => {}
        }
        let response = response?;
        Ok(response.map(|body| body.holding(slot)))
    }

    /// The connection a request to `key` goes on: the first with room;
    /// when all are full, a new one while there are fewer than
    /// [`MAX_CONNECTIONS_PER_ENDPOINT`], else the least busy.
    fn pick(&self, key: &Key) -> Pick {
        let mut connections = self
            .connections
            .lock()
            .expect("connection map lock is never poisoned");
        let Some(pool) = connections.get_mut(key) else {
            return Pick::Open;
        };
        if pool.len() > 1 || pool.first().is_some_and(|c| !c.is_live()) {
            pool.retain(Connection::is_live);
        }
        if let Some(connection) = pool.iter().find(|c| c.has_room()) {
            return Pick::Use(connection.clone());
        }
        if pool.len() < MAX_CONNECTIONS_PER_ENDPOINT {
            return Pick::Open;
        }
        pool.iter()
            .min_by_key(|c| c.streams.open.load(Ordering::Relaxed))
            .cloned()
            .map_or(Pick::Open, Pick::Use)
    }

    /// A new connection for `key`, unless a concurrent request just made
    /// one with room (or the endpoint has all it may have).
    async fn connect(&self, key: &Key) -> Result<Connection, ClientError> {
        let addr = key.0;
        let gate = self
            .connecting
            .lock()
            .expect("connect map lock is never poisoned")
            .entry(key.clone())
            .or_default()
            .clone();
        let _connecting = gate.lock().await;
        if let Pick::Use(connection) = self.pick(key) {
            return Ok(connection);
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout { addr })?
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let streams = Arc::new(Streams::default());
        let sender = match (&key.1, &self.tls) {
            (Some(identity), Some(tls)) => {
                let stream =
                    tls.connect(stream, identity, Alpn::Http2)
                        .await
                        .map_err(|source| ClientError::Tls {
                            addr,
                            identity: identity.clone(),
                            source,
                        })?;
                handshake(addr, stream, streams.clone())
            }
            _ => handshake(addr, stream, streams.clone()),
        };
        let connection = Connection { sender, streams };
        // Connecting is rare: the moment to forget connections that closed
        // (endpoints gone, peers restarted), so neither map grows with
        // every address ever used.
        let mut connections = self
            .connections
            .lock()
            .expect("connection map lock is never poisoned");
        connections.retain(|_, pool| {
            pool.retain(Connection::is_live);
            !pool.is_empty()
        });
        connections
            .entry(key.clone())
            .or_default()
            .push(connection.clone());
        let live: Vec<Key> = connections.keys().cloned().collect();
        drop(connections);
        self.connecting
            .lock()
            .expect("connect map lock is never poisoned")
            .retain(|k, gate| k == key || live.contains(k) || Arc::strong_count(gate) > 1);
        Ok(connection)
    }
}

/// Where a request goes.
enum Pick {
    Use(Connection),
    /// Every connection is full (or there is none): open one.
    Open,
}

/// An HTTP/2 connection over `io`, driven by a task of its own, which
/// marks the connection closed when it ends.
fn handshake<I>(addr: SocketAddr, io: I, streams: Arc<Streams>) -> Requester
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = Config {
        // Push is off: the endpoint opens no stream of its own.
        max_concurrent_streams: 0,
        stream_window: STREAM_WINDOW,
        connection_window: CLIENT_CONNECTION_WINDOW,
        max_frame_size: crate::wire::frame::DEFAULT_MAX_FRAME_SIZE,
        max_header_list_size: MAX_RESPONSE_HEADER_BYTES,
    };
    let driver = Driver::new(Role::Client, io, config, STREAM_WINDOW as usize);
    let sender = driver.requester();
    tokio::spawn(async move {
        if let Err(err) = driver.run().await {
            tracing::debug!(%addr, %err, "upstream HTTP/2 connection ended with an error");
        }
        streams.closed.store(true, Ordering::Release);
    });
    sender
}

/// The largest response head an endpoint may send (as HTTP/2 counts it);
/// a larger one fails its request.
const MAX_RESPONSE_HEADER_BYTES: u32 = 1 << 20;
