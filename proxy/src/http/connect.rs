//! The HTTP/1 client's connector: TCP to the request's `ip:port`, and for
//! `https` requests mesh mTLS on top, checked to be the identity the
//! endpoint was discovered with.

use crate::{
    http2::CONNECT_TIMEOUT,
    tls::{Alpn, MeshTls},
};
use hyper_util::{
    client::legacy::connect::{Connected, Connection},
    rt::TokioIo,
};
use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// Connects for the HTTP/1 pool; cheap to clone.
#[derive(Clone, Debug)]
pub struct MeshConnector {
    tls: Option<Arc<MeshTls>>,
    /// The identity each TLS endpoint must prove, by address; set by the
    /// request path just before a request to it.
    identities: Arc<Mutex<HashMap<SocketAddr, Arc<str>>>>,
}

impl MeshConnector {
    pub fn new(tls: Option<Arc<MeshTls>>) -> Self {
        Self {
            tls,
            identities: Arc::default(),
        }
    }

    /// Remembers that `addr` must prove `id` (a cheap check when it already is).
    pub fn expect_identity(&self, addr: SocketAddr, id: &Arc<str>) {
        let mut identities = self.identities.lock().expect("lock is never poisoned");
        if identities.get(&addr) != Some(id) {
            // Bounded by the endpoints in use: forget the rest first.
            if identities.len() >= 4096 {
                identities.clear();
            }
            identities.insert(addr, id.clone());
        }
    }

    async fn connect(self, uri: http::Uri) -> io::Result<TokioIo<Upstream>> {
        let authority = uri.authority().map_or("", |a| a.as_str());
        let addr: SocketAddr = authority.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{authority:?} is not an ip:port address"),
            )
        })?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let _ = stream.set_nodelay(true);
        if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Ok(TokioIo::new(Upstream::Plain(stream)));
        }
        let id = self
            .identities
            .lock()
            .expect("lock is never poisoned")
            .get(&addr)
            .cloned();
        let (Some(tls), Some(id)) = (&self.tls, id) else {
            return Err(io::Error::other(format!("no identity to check for {addr}")));
        };
        let stream = tls.connect(stream, &id, Alpn::Http1).await?;
        Ok(TokioIo::new(Upstream::Tls(Box::new(stream))))
    }
}

impl tower::Service<http::Uri> for MeshConnector {
    type Response = TokioIo<Upstream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Upstream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// An HTTP/1 upstream connection.
#[derive(Debug)]
pub enum Upstream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Upstream::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Upstream::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(io) => Pin::new(io).poll_flush(cx),
            Upstream::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Upstream::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
