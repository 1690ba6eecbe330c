//! The admin listener's own limits, apart from the data plane's: at most
//! [`AdminLimits::max_connections`] connections at once (more are closed as
//! they are accepted), each closed after [`AdminLimits::idle_timeout`] with
//! no byte either way. Probes and scrapes need few connections, briefly; a
//! peer that opens many and holds them can use up this listener's share,
//! never file descriptors or permits the proxied traffic needs.

use crate::activity::IdleIo;
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// How many connections the admin server keeps, and for how long idle.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    pub max_connections: usize,
    /// Longer than a scrape interval of a minute, so a scraper's kept-alive
    /// connection is not closed between two scrapes.
    pub idle_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 128,
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// A listener that admits connections within [`AdminLimits`].
pub struct Limited {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limits: AdminLimits,
}

impl Limited {
    pub fn new(listener: TcpListener, limits: AdminLimits) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
        }
    }
}

impl axum::serve::Listener for Limited {
    type Io = Admitted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Admitted, SocketAddr) {
        loop {
            let (io, peer) = axum::serve::Listener::accept(&mut self.listener).await;
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => return (Admitted::new(io, permit, self.limits.idle_timeout), peer),
                Err(_) => tracing::debug!(
                    %peer,
                    max = self.limits.max_connections,
                    "admin connection refused: the admin listener has its maximum open"
                ),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An admitted connection: holds its permit, and ends once no byte moved
/// either way for the idle timeout.
pub struct Admitted {
    io: IdleIo<TcpStream>,
    _permit: OwnedSemaphorePermit,
}

impl Admitted {
    fn new(io: TcpStream, permit: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        Self {
            io: IdleIo::new(io, idle_timeout),
            _permit: permit,
        }
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::IntoFuture as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// An admin-like server on a fresh port with `limits`.
    async fn server(limits: AdminLimits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/live", axum::routing::get(|| async { "live\n" }));
        tokio::spawn(axum::serve(Limited::new(listener, limits), app).into_future());
        addr
    }

    async fn live(addr: SocketAddr) -> io::Result<String> {
        let mut conn = TcpStream::connect(addr).await?;
        conn.write_all(b"GET /live HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    /// Reads until the server closes; `None` if it is still open after 5 s.
    async fn closed_within_5s(conn: &mut TcpStream) -> Option<()> {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut byte)).await {
            Ok(Ok(0) | Err(_)) => Some(()),
            Ok(Ok(_)) => panic!("an idle connection got bytes"),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn connections_past_the_maximum_are_closed_and_idle_ones_time_out() {
        let addr = server(AdminLimits {
            max_connections: 2,
            idle_timeout: Duration::from_millis(300),
        })
        .await;
        let mut idle = Vec::new();
        for _ in 0..2 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // The third is accepted and closed at once.
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within_5s(&mut third).await.is_some());
        // The idle two are closed after the idle timeout, and then the
        // listener serves again.
        for conn in &mut idle {
            assert!(closed_within_5s(conn).await.is_some());
        }
        let answer = live(addr).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("live\n"), "{answer}");
    }
}
