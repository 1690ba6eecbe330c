//! The upstream side: one multiplexed HTTP/2 connection per endpoint
//! address (and identity, over mTLS), shared by every request to it.

use super::{
    CLIENT_CONNECTION_WINDOW, CLIENT_SEND_BUFFER, CLIENT_STREAM_WINDOW, CONNECT_TIMEOUT, RecvBody,
    pipe::{Pipe, Piped},
};
use crate::{
    retry::replay::BoxError,
    tls::{Alpn, MeshTls},
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
        atomic::{AtomicBool, Ordering},
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

/// Where a connection goes: an address, and the identity it must prove
/// over mTLS (`None`: plaintext).
type Key = (SocketAddr, Option<Arc<str>>);

/// Connections to upstreams: one multiplexed HTTP/2 connection per address,
/// shared by every request to it, opened on first use and again after it
/// closes. A request takes one uncontended lock to find its connection.
#[derive(Default)]
pub struct Client {
    connections: Mutex<HashMap<Key, Connection>>,
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
        let connection = match self.live(&key) {
            Some(connection) => connection,
            // Boxed: connecting is rare, and its future, large, would
            // otherwise be part of every request's.
            None => Box::pin(self.connect(&key)).await?,
        };
        // Waits while the connection is at its peer's stream limit.
        let mut sender = match connection.sender.ready().await {
            Ok(sender) => sender,
            Err(_) => {
                // Closed, or going away (the peer sent GOAWAY, and the
                // connection lives on only for the streams it had): new
                // requests go to a new connection.
                connection.closed.store(true, Ordering::Release);
                Box::pin(self.connect(&key))
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

    fn live(&self, key: &Key) -> Option<Connection> {
        let connections = self
            .connections
            .lock()
            .expect("connection map lock is never poisoned");
        connections
            .get(key)
            .filter(|connection| !connection.closed.load(Ordering::Acquire))
            .cloned()
    }

    /// A new connection for `key`, unless a concurrent request just made one.
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
        if let Some(connection) = self.live(key) {
            return Ok(connection);
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout { addr })?
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let closed = Arc::new(AtomicBool::new(false));
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
                handshake(addr, stream, closed.clone()).await?
            }
            _ => handshake(addr, stream, closed.clone()).await?,
        };
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
            connections.insert(key.clone(), connection.clone());
            let live: Vec<Key> = connections.keys().cloned().collect();
            drop(connections);
            self.connecting
                .lock()
                .expect("connect map lock is never poisoned")
                .retain(|k, gate| k == key || live.contains(k) || Arc::strong_count(gate) > 1);
            Ok(connection)
        }
    }
}

/// The HTTP/2 handshake over `io`; the connection is driven by a task of
/// its own, which sets `closed` when it ends.
async fn handshake<I>(
    addr: SocketAddr,
    io: I,
    closed: Arc<AtomicBool>,
) -> Result<h2::client::SendRequest<Bytes>, ClientError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(CLIENT_STREAM_WINDOW)
        .initial_connection_window_size(CLIENT_CONNECTION_WINDOW)
        .max_send_buffer_size(CLIENT_SEND_BUFFER)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|source| ClientError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%addr, %err, "upstream HTTP/2 connection ended with an error");
        }
        closed.store(true, Ordering::Release);
    });
    Ok(sender)
}
