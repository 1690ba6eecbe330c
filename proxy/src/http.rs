//! HTTP plumbing both directions share: the upstream clients (HTTP/2 in
//! [`crate::http2`]; pooled HTTP/1 connections through hyper), serving a
//! detected connection, and header hygiene.

mod connect;

use crate::{
    activity::IdleIo,
    body::{ProxyBody, Received},
    detect::Protocol,
    http2,
    limits::{LimitsConfig, Refusal, StreamLimits},
    retry::replay::BoxError,
    tls::{MeshTls, PeerTls, ServerIo},
    wire::frame::ErrorCode,
};
use bytes::Bytes;
use connect::MeshConnector;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};
use tokio::sync::{mpsc, watch};

/// Why a request got no response from its upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Http2(#[from] http2::ClientError),
    #[error("HTTP/1 request failed")]
    Http1(#[source] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// The endpoint closed the shared connection for what came over it:
    /// with GOAWAY(ENHANCE_YOUR_CALM), or in any way right after the proxy
    /// cancelled many streams on it (the resets it passes on for clients
    /// that reset theirs, such as a Rapid Reset attack). That is the
    /// endpoint's reset limit, not a failure of its own: the requests the
    /// connection took with it are retried, and the endpoint is not charged
    /// for them.
    pub fn is_provoked(&self) -> bool {
        match self {
            UpstreamError::Http2(http2::ClientError::Provoked { .. }) => true,
            UpstreamError::Http2(http2::ClientError::Request(err)) => {
                *err == http2::StreamError::ConnectionLost(Some(ErrorCode::ENHANCE_YOUR_CALM))
            }
            _ => false,
        }
    }
}

/// Clients to upstreams, sending request bodies of type `B`: one
/// multiplexed HTTP/2 connection per endpoint address ([`http2::Client`]),
/// pooled HTTP/1 connections. With the mesh's TLS, connections to an
/// endpoint that has an identity are mTLS, checked to be that identity.
pub struct Upstream<B> {
    http2: http2::Client,
    h1: Client<MeshConnector, B>,
    connector: MeshConnector,
    tls: Option<Arc<MeshTls>>,
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
    B::Error: Into<BoxError>,
{
    fn default() -> Self {
        Self::new(None)
    }
}

impl<B> Upstream<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Clients that speak mTLS to endpoints with identities when `tls` is set.
    pub fn new(tls: Option<Arc<MeshTls>>) -> Self {
        let connector = MeshConnector::new(tls.clone());
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        Self {
            http2: http2::Client::new(tls.clone()),
            h1,
            connector,
            tls,
        }
    }
}

impl<B> Upstream<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Sends `request`, already addressed to `http://{addr}/...`, to
    /// `addr` (the caller's socket address, so that it is not parsed back
    /// from the URI) with the protocol the client spoke; over mTLS when the
    /// endpoint proves `server_id` and this proxy has the mesh's TLS.
    pub async fn send(
        &self,
        protocol: Protocol,
        addr: SocketAddr,
        mut request: http::Request<B>,
        server_id: Option<&Arc<str>>,
    ) -> Result<http::Response<Received>, UpstreamError> {
        let server_id = server_id.filter(|_| self.tls.is_some());
        if protocol != Protocol::Http2 {
            if let Some(id) = server_id {
                // The pool keeps TLS connections apart by scheme; the
                // connector learns which identity to check for the address.
                self.connector.expect_identity(addr, id);
                set_scheme(&mut request, http::uri::Scheme::HTTPS);
            }
            // Boxed: hyper's HTTP/1 client future is large, and inline it
            // would enlarge every request's future, HTTP/2 ones too.
            let response = Box::pin(self.h1.request(request))
                .await
                .map_err(UpstreamError::Http1)?;
            return Ok(response.map(Received::Http1));
        }
        let response = self.http2.send(addr, server_id, request).await?;
        Ok(response.map(Received::Http2))
    }

    /// What a connection to an endpoint proving `server_id` is: mesh TLS
    /// when both sides have identities.
    pub fn peer_tls(&self, server_id: Option<&Arc<str>>) -> PeerTls {
        match (server_id, &self.tls) {
            (Some(id), Some(_)) => PeerTls::Mesh {
                id: Some(id.clone()),
            },
            _ => PeerTls::None,
        }
    }
}

fn set_scheme<B>(request: &mut http::Request<B>, scheme: http::uri::Scheme) {
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(scheme);
    *request.uri_mut() = http::Uri::from_parts(parts).expect("only the scheme changed");
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

/// A client connection ended with an error of its peer's: a broken
/// protocol, a head too large or too slow.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Http1(hyper::Error),
    #[error(transparent)]
    Http2(http2::connection::ConnectionError),
    /// The proxy closed the connection for a limit.
    #[error("connection closed by the proxy: {}", .0.as_str())]
    Refused(Refusal),
}

/// Serves one HTTP connection of the detected `protocol` with `handle` as
/// the per-request function, until it closes, within `limits`. When `drain`
/// turns true the connection shuts down gracefully (HTTP/2 GOAWAY; HTTP/1
/// closes after the current response) and in-flight requests finish.
pub async fn serve<H, F>(
    protocol: Protocol,
    io: ServerIo,
    limits: &LimitsConfig,
    streams: &Arc<StreamLimits>,
    mut drain: watch::Receiver<bool>,
    _guard: DrainGuard,
    handle: H,
) -> Result<(), ServeError>
where
    H: Fn(http::Request<Received>) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = http::Response<ProxyBody>> + Send + 'static,
{
    if protocol == Protocol::Http2 {
        return match http2::serve(io, limits, streams, drain, handle).await {
            Ok(http2::Ended::Refused(reason)) => Err(ServeError::Refused(reason)),
            Ok(http2::Ended::Idle) => {
                tracing::debug!(idle = ?limits.idle_timeout, "idle connection closed");
                Ok(())
            }
            Ok(http2::Ended::Closed) => Ok(()),
            Err(err) => Err(ServeError::Http2(err)),
        };
    }
    let service = hyper::service::service_fn(move |request: http::Request<_>| {
        let response = handle(request.map(Received::Http1));
        async move { Ok::<_, Infallible>(response.await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.transport_header_bytes());
    // A request whose body stops coming, a response its client stops
    // reading: nothing moves, and the connection is closed after the
    // stream idle timeout (idle keep-alive connections go sooner, at the
    // header read timeout).
    let io = IdleIo::new(io, limits.stream_idle_timeout);
    let idle = io.expired();
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        result = conn.as_mut() => result,
        // The watch guard must not live across the await below.
        _ = async { drain.wait_for(|draining| *draining).await.is_ok() } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    // Whether hyper calls it an error depends on where it was reading.
    if idle.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ServeError::Refused(Refusal::StreamIdleTimeout));
    }
    served.map_err(ServeError::Http1)
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
