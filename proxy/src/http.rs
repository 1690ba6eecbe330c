//! HTTP plumbing both directions share: the upstream clients (one HTTP/2
//! connection per endpoint, multiplexed; pooled HTTP/1 connections),
//! serving a detected connection with hyper, and header hygiene.

use crate::{
    body::ProxyBody,
    detect::{Prefixed, Protocol},
    limits::LimitsConfig,
};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use std::{
    collections::HashMap, convert::Infallible, future::Future, net::SocketAddr, sync::Arc,
    time::Duration,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

/// Why a request got no response from its upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
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
        source: hyper::Error,
    },
    #[error("the request's authority {0:?} is not an ip:port address")]
    NotAnAddress(String),
    #[error("HTTP/2 request failed")]
    Http2(#[source] hyper::Error),
    #[error("HTTP/1 request failed")]
    Http1(#[source] hyper_util::client::legacy::Error),
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Clients to upstreams, sending request bodies of type `B`: one
/// multiplexed HTTP/2 connection per endpoint address, shared by every
/// request to it, opened on first use and again after it closes; pooled
/// HTTP/1 connections.
///
/// The HTTP/2 side holds hyper's connection handles directly rather than
/// going through a general-purpose pool: a request takes one uncontended
/// lock to find its endpoint's handle, and nothing is boxed or spawned per
/// request (the profile of the first version showed the pool's per-request
/// future copies and allocations; see docs/benchmarks.md).
pub struct Upstream<B> {
    h2: std::sync::Mutex<HashMap<SocketAddr, SendRequest<B>>>,
    /// Held while connecting, per address, so concurrent first requests
    /// share one new connection.
    connecting: std::sync::Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    h1: Client<HttpConnector, B>,
}

impl<B> std::fmt::Debug for Upstream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

impl<B> Default for Upstream<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            h2: Default::default(),
            connecting: Default::default(),
            h1,
        }
    }
}

impl<B> Upstream<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Sends `request` (already addressed to `http://ip:port/...`) with the
    /// protocol the client spoke.
    pub async fn send(
        &self,
        protocol: Protocol,
        request: http::Request<B>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        if protocol != Protocol::Http2 {
            return self.h1.request(request).await.map_err(UpstreamError::Http1);
        }
        let authority = request.uri().authority().map_or("", |a| a.as_str());
        let addr: SocketAddr = authority
            .parse()
            .map_err(|_| UpstreamError::NotAnAddress(authority.to_owned()))?;
        let mut sender = match self.live_sender(addr) {
            Some(sender) => sender,
            None => self.connect(addr).await?,
        };
        // Waits while the connection is at its peer's stream limit.
        if sender.ready().await.is_err() {
            // Closed since we looked (GOAWAY, reset): one new connection.
            sender = self.connect(addr).await?;
            sender.ready().await.map_err(UpstreamError::Http2)?;
        }
        sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Http2)
    }

    fn live_sender(&self, addr: SocketAddr) -> Option<SendRequest<B>> {
        let connections = self
            .h2
            .lock()
            .expect("connection map lock is never poisoned");
        connections
            .get(&addr)
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    /// A new connection to `addr`, unless a concurrent request just made one.
    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<B>, UpstreamError> {
        let gate = self
            .connecting
            .lock()
            .expect("connect map lock is never poisoned")
            .entry(addr)
            .or_default()
            .clone();
        let _connecting = gate.lock().await;
        if let Some(sender) = self.live_sender(addr) {
            return Ok(sender);
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout { addr })?
            .map_err(|source| UpstreamError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        let (sender, connection) = builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%addr, %err, "upstream HTTP/2 connection ended with an error");
            }
        });
        {
            // Connecting is rare: the moment to forget connections that
            // closed (endpoints gone, peers restarted), so neither map grows
            // with every address ever used.
            let mut connections = self
                .h2
                .lock()
                .expect("connection map lock is never poisoned");
            connections.retain(|_, sender| !sender.is_closed());
            connections.insert(addr, sender.clone());
            let live: Vec<SocketAddr> = connections.keys().copied().collect();
            drop(connections);
            self.connecting
                .lock()
                .expect("connect map lock is never poisoned")
                .retain(|a, gate| *a == addr || live.contains(a) || Arc::strong_count(gate) > 1);
        }
        Ok(sender)
    }
}

/// Points `request` at `authority`, keeping its path and query.
pub fn set_authority<B>(request: &mut http::Request<B>, authority: http::uri::Authority) {
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *request.uri_mut() =
        http::Uri::from_parts(parts).expect("scheme, authority and path make a URI");
}

/// Removes HTTP/1 hop-by-hop headers, which describe one connection and
/// must not be forwarded (RFC 9110 section 7.6.1).
pub fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    use http::header::{CONNECTION, PROXY_AUTHENTICATE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
    let named: Vec<http::HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| name.trim().parse().ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        CONNECTION,
        PROXY_AUTHENTICATE,
        TRANSFER_ENCODING,
        UPGRADE,
        TRAILER,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    // `te: trailers` is what gRPC needs and is allowed end to end.
    if headers.get(TE).is_some_and(|v| v != "trailers") {
        headers.remove(TE);
    }
}

/// Held by every connection task; the drain waits until all are dropped.
pub type DrainGuard = mpsc::Sender<()>;

/// Serves one HTTP connection of the detected `protocol` with `handle` as
/// the per-request function, until it closes, within `limits`. When `drain`
/// turns true the connection shuts down gracefully (HTTP/2 GOAWAY; HTTP/1
/// closes after the current response) and in-flight requests finish. The
/// error is the peer's: a broken protocol, a head too large or too slow.
pub async fn serve<H, F>(
    protocol: Protocol,
    io: Prefixed<TcpStream>,
    limits: &LimitsConfig,
    mut drain: watch::Receiver<bool>,
    _guard: DrainGuard,
    handle: H,
) -> Result<(), hyper::Error>
where
    H: Fn(http::Request<Incoming>) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = http::Response<ProxyBody>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let handle = handle.clone();
        async move { Ok::<_, Infallible>(handle(request).await) }
    });
    let io = TokioIo::new(io);
    // Both connection types shut down the same way; a macro spares writing
    // the select twice for two unrelated types.
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => result,
                // The watch guard must not live across the await below.
                _ = async { drain.wait_for(|draining| *draining).await.is_ok() } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }};
    }
    let transport_header_bytes = limits.transport_header_bytes();
    match protocol {
        Protocol::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_concurrent_streams)
                .max_header_list_size(u32::try_from(transport_header_bytes).unwrap_or(u32::MAX));
            drive!(builder.serve_connection(io, service))
        }
        _ => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(transport_header_bytes);
            drive!(builder.serve_connection(io, service))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_and_end_to_end_kept() {
        let mut headers = http::HeaderMap::new();
        headers.insert("connection", "close, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("te", "trailers".parse().unwrap());
        headers.insert("content-type", "application/grpc".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(headers.contains_key("te") && headers.contains_key("content-type"));
    }
}
